"""Tests for tff_resume.program.training: each round's commit runs while the next round trains, one
at a time, in order; a failed commit stops the loop before anything later is written. The next
round's clients and datasets are built while a round trains, each round's once.

A process of plain Python (its `next` adds 1 to an integer state) and a run record and state manager
that log what happens and when; no TensorFlow computation.
"""

import threading

from absl.testing import absltest

from tff_resume.program import training
from tff_resume.storage import run_record

_WAIT_SECONDS = 10.0


class _Process:
  """`next(state, datasets)` -> (state + 1, metrics); calls `during(round)` as a round trains."""

  def __init__(self, log: list, during=lambda round_num: None):
    self._log, self._during, self._round = log, during, 0

  def next(self, state, datasets):
    del datasets  # Unused.
    self._round += 1
    self._log.append(("train", self._round))
    self._during(self._round)
    return state + 1, {"loss": 1.0 / self._round}


class _Manager:
  """Logs each save; `fail_at` raises a full disk's error at that version."""

  def __init__(self, log: list, fail_at: int | None = None):
    self._log, self._fail_at = log, fail_at

  def save_version(self, state, version: int, metadata) -> None:
    del metadata  # Unused.
    self._log.append(("save", version))
    if version == self._fail_at:
      raise OSError(28, "No space left on device")
    self._log.append(("saved", version, state))


class _Book:
  """What `training.train` needs of `bookkeeping.Bookkeeping`; `during_commit(round)` runs in
  each round's commit."""

  def __init__(self, log: list, manager: _Manager, during_commit=lambda round_num: None):
    self.record = run_record.RunRecord(fingerprint={}, seeds={}, library_versions={},
                                       total_rounds=4)
    self.manager, self._log, self._during_commit = manager, log, during_commit

  def record_round(self, round_num, client_ids, metrics) -> None:
    self._log.append(("commit", round_num))
    self._during_commit(round_num)
    self.record.add_round(f"chain {round_num}", metrics)


def _train(book: _Book, process: _Process, log: list, total_rounds: int = 4):
  return training.train(
      process=process, state=0, book=book, total_rounds=total_rounds, rounds_per_checkpoint=1,
      communication=None, evaluate=None, rounds_per_eval=0,
      select_clients=lambda round_num: [f"client {round_num}"],
      client_datasets=lambda round_num, client_ids: [], should_stop=lambda: False,
      on_round=lambda result: log.append(("done", result.round_num)),
      weights_sha256=lambda state: f"sha {state}")


class BackgroundCommitTest(absltest.TestCase):

  def test_a_commit_runs_while_the_next_round_trains_one_at_a_time(self):
    log = []
    next_round_trains = {round_num: threading.Event() for round_num in range(1, 5)}

    def during_training(round_num: int) -> None:
      next_round_trains[round_num].set()

    def during_commit(round_num: int) -> None:
      # The commit of round N waits until round N+1 trains: a commit on the training thread would
      # wait for ever (and fail here).
      if round_num < 4:
        self.assertTrue(next_round_trains[round_num + 1].wait(_WAIT_SECONDS),
                        f"round {round_num + 1} did not train while round {round_num} committed")

    book = _Book(log, _Manager(log), during_commit)
    state, stopped = _train(book, _Process(log, during_training), log)
    self.assertEqual((state, stopped), (4, False))
    commits = [entry for entry in log if entry[0] != "train"]
    # In order, each one whole before the next begins: history row, version, then the round's line.
    self.assertEqual(commits, [step for round_num in range(1, 5) for step in (
        ("commit", round_num), ("save", round_num), ("saved", round_num, round_num),
        ("done", round_num))])
    # At most one in flight: round N+2 trains only after round N is done.
    for round_num in range(1, 3):
      self.assertLess(log.index(("done", round_num)), log.index(("train", round_num + 2)))
    self.assertEqual(book.record.rounds_done, 4)
    self.assertEqual(book.record.model_weights_sha256, "sha 4")

  def test_a_failed_commit_stops_the_loop_and_nothing_later_is_written(self):
    log = []
    with self.assertRaisesRegex(OSError, "No space left on device"):
      _train(_Book(log, _Manager(log, fail_at=2)), _Process(log), log)
    # Round 3 trained while version 2 was written; its commit never began, round 4 never trained.
    self.assertEqual(sorted(set(log) - {("train", 3), ("save", 2)}), sorted(
        [("train", 1), ("commit", 1), ("save", 1), ("saved", 1, 1), ("done", 1), ("train", 2),
         ("commit", 2)]))
    self.assertIn(("train", 3), log)
    self.assertIn(("save", 2), log)
    self.assertNotIn(("commit", 3), log)
    self.assertNotIn(("train", 4), log)
    self.assertNotIn(("done", 2), log)


class UpcomingRoundTest(absltest.TestCase):

  def test_the_next_rounds_datasets_are_built_while_a_round_trains(self):
    log, trained_with = [], []
    built = {round_num: threading.Event() for round_num in range(1, 6)}

    def client_datasets(round_num, client_ids):
      log.append(("build", round_num, client_ids))
      built[round_num].set()
      return [f"dataset of {client_ids[0]}"]

    class Process(_Process):

      def next(self, state, datasets):
        trained_with.append(datasets)
        return super().next(state, datasets)

    def during_training(round_num: int) -> None:
      # Round N+1's datasets are built while round N trains: built on the training thread, they
      # would come after this wait (and fail here).
      if round_num < 4:
        self.assertTrue(built[round_num + 1].wait(_WAIT_SECONDS),
                        f"round {round_num + 1}'s datasets were not built while round {round_num} "
                        "trained")

    state, _ = training.train(
        process=Process(log, during_training), state=0, book=_Book(log, _Manager(log)),
        total_rounds=4, rounds_per_checkpoint=1, communication=None, evaluate=None,
        rounds_per_eval=0, select_clients=lambda round_num: [f"client {round_num}"],
        client_datasets=client_datasets, should_stop=lambda: False, on_round=lambda result: None,
        weights_sha256=lambda state: f"sha {state}")
    self.assertEqual(state, 4)
    self.assertEqual(trained_with, [[f"dataset of client {n}"] for n in range(1, 5)])
    # Each round's once, none after the last.
    self.assertEqual([entry for entry in log if entry[0] == "build"],
                     [("build", n, [f"client {n}"]) for n in range(1, 5)])

  def test_a_failed_build_stops_the_loop_after_the_round_before_is_committed(self):
    log = []

    def client_datasets(round_num, client_ids):
      del client_ids  # Unused.
      if round_num == 3:
        raise ValueError("client 3's data is unreadable")
      return []

    with self.assertRaisesRegex(ValueError, "client 3's data is unreadable"):
      training.train(
          process=_Process(log), state=0, book=_Book(log, _Manager(log)), total_rounds=4,
          rounds_per_checkpoint=1, communication=None, evaluate=None, rounds_per_eval=0,
          select_clients=lambda round_num: [f"client {round_num}"],
          client_datasets=client_datasets, should_stop=lambda: False,
          on_round=lambda result: log.append(("done", result.round_num)),
          weights_sha256=lambda state: f"sha {state}")
    self.assertIn(("done", 2), log)
    self.assertNotIn(("train", 3), log)


if __name__ == "__main__":
  absltest.main()
