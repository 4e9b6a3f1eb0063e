"""Tests for tff_resume.storage.history and the fixed-size run record: an append-only, hash-chained history
that a checkpoint version points into, so a version's size does not grow with the rounds done."""

import json
import os
import sqlite3

from absl.testing import absltest
import numpy as np

from tff_resume.releases import bookkeeping
from tff_resume.releases import release_managers
from tff_resume.storage import checkpointing
from tff_resume.storage import history
from tff_resume.storage import paths as paths_lib
from tff_resume.storage import run_record


def _round(round_num):
  return ([f"client_{round_num}_{index}" for index in range(3)],
          {"loss": 1.0 / round_num, "communication/aggregated_bits": 1000 * round_num})


def _history_with(path, rounds):
  run_history = history.RunHistory(path)
  run_history.restore(0, history.GENESIS)
  chains = [run_history.append(round_num, *_round(round_num))
            for round_num in range(1, rounds + 1)]
  return run_history, chains


def _rows(path):
  with sqlite3.connect(path) as connection:
    return connection.execute("SELECT round, clients, metrics FROM rounds ORDER BY round").fetchall()


class RunHistoryTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.path = os.path.join(self.create_tempdir().full_path, "history.sqlite")

  def test_restore_keeps_the_version_s_rounds_and_drops_the_rounds_redone(self):
    run_history, chains = _history_with(self.path, 5)
    self.assertEqual(chains[2], history.chain_of([_round(r) for r in (1, 2, 3)]))
    self.assertEqual(run_history.restore(3, chains[2]), 2)
    self.assertEqual([row[0] for row in _rows(self.path)], [1, 2, 3])
    self.assertEqual(list(run_history.rounds(3)), [(r, *_round(r)) for r in (1, 2, 3)])
    self.assertEqual(run_history.append(4, *_round(4)), chains[3])  # The redone round, again.
    run_history.close()

  def test_an_edited_row_is_refused_and_nothing_is_deleted(self):
    run_history, chains = _history_with(self.path, 4)
    with sqlite3.connect(self.path) as connection:
      connection.execute("UPDATE rounds SET metrics = ? WHERE round = 2",
                         (json.dumps({"loss": 0.01, "communication/aggregated_bits": 2000}),))
    before = _rows(self.path)
    with self.assertRaisesRegex(history.HistoryMismatchError,
                                "round 2's row was changed after it was written"):
      run_history.restore(3, chains[2])
    self.assertEqual(_rows(self.path), before)
    run_history.close()

  def test_a_rewritten_chain_or_a_missing_round_is_refused(self):
    run_history, chains = _history_with(self.path, 4)
    forged = history.RunHistory(self.path)
    forged.replace_all([_round(1), (["someone_else"], _round(2)[1]), _round(3), _round(4)])
    with self.assertRaisesRegex(history.HistoryMismatchError, "are not the ones the checkpoint"):
      run_history.restore(4, chains[3])
    forged.close()
    with sqlite3.connect(self.path) as connection:
      connection.execute("DELETE FROM rounds WHERE round = 3")
    with self.assertRaisesRegex(history.HistoryMismatchError, "lacks round 3"):
      run_history.restore(4, chains[3])
    run_history.close()

  def test_append_refuses_a_round_that_does_not_follow(self):
    run_history, _ = _history_with(self.path, 2)
    with self.assertRaisesRegex(ValueError, "round 4 does not follow the history's last round 2"):
      run_history.append(4, *_round(4))
    run_history.close()

  def test_starts_are_logged_in_order(self):
    run_history, _ = _history_with(self.path, 1)
    run_history.log_start(None, 0, 5)
    run_history.log_start(3, 1, 8)
    self.assertEqual([(s["resumed_from_version"], s["rounds_redone"], s["total_rounds"])
                      for s in run_history.starts()], [(None, 0, 5), (3, 1, 8)])
    run_history.close()


class FixedSizeVersionTest(absltest.TestCase):

  def test_a_version_after_10000_rounds_is_the_size_of_one_after_2(self):
    run_dir = self.create_tempdir().full_path
    paths = paths_lib.RunPaths.from_run_dir(run_dir)
    manager = checkpointing.DurableProgramStateManager(paths.checkpoints, keep_total=0)
    state = [np.arange(7850, dtype=np.float32), np.int32(3)]
    sizes = {}
    for rounds_before in (1, 9999):
      run_history = history.RunHistory(history.path_in(paths.checkpoints))
      chain = run_history.replace_all([_round(r) for r in range(1, rounds_before + 1)])
      record = run_record.RunRecord(fingerprint={"model.name": "linear"}, seeds={"training": 0},
                                    library_versions={}, total_rounds=10**5,
                                    rounds_done=rounds_before, history_sha256=chain)
      book = bookkeeping.Bookkeeping(paths, manager, record, run_history, lambda client_id: 7,
                                     release_managers.for_run(paths, {"model.name": "linear"}))
      book.record_round(rounds_before + 1, *_round(rounds_before + 1))
      bookkeeping.save_checkpoint(manager, state, record, "0" * 64)
      book.close()
      folder = manager.version_path(rounds_before + 1)
      sizes[rounds_before + 1] = {name: os.path.getsize(os.path.join(folder, name))
                                  for name in sorted(os.listdir(folder))}
    self.assertEqual(sizes[2]["state.npz"], sizes[10000]["state.npz"])
    # The record holds counts, not lists: only their digits differ.
    self.assertLessEqual(sizes[10000]["metadata.json"] - sizes[2]["metadata.json"], 16)
    self.assertLess(sizes[10000]["metadata.json"], 1024)
    metadata = manager.load_metadata(10000)
    self.assertEqual(sorted(metadata), sorted(run_record.RunRecord.__dataclass_fields__))
    self.assertEqual(metadata["history_sha256"],
                     history.chain_of([_round(r) for r in range(1, 10001)]))
    with bookkeeping.VersionHistory(paths.checkpoints, metadata) as recorded:
      self.assertEqual(recorded.clients(9876), _round(9876)[0])
      self.assertEqual(recorded.last_with("loss"), {"loss": 1.0 / 10000})
    with open(paths.metrics_csv) as csv_file:
      lines = csv_file.read().splitlines()
    self.assertLen(lines, 10001)
    self.assertEqual(lines[-1], "10000,0.0001,10000000")


class LegacyRecordTest(absltest.TestCase):

  def test_a_record_holding_the_whole_history_reads_as_the_fixed_size_record(self):
    rounds = [_round(r) for r in (1, 2, 3)]
    legacy = {"fingerprint": {"a": 1}, "seeds": {"training": 0}, "library_versions": {},
              "total_rounds": 5, "sampled_clients": [c for c, _ in rounds],
              "metrics": [m for _, m in rounds], "model_weights_sha256": "ab" * 32,
              "resume_log": [{"started_at": "2026-01-01T00:00:00+00:00",
                              "resumed_from_version": None, "rounds_redone": 0,
                              "total_rounds": 5}]}
    record = run_record.RunRecord.from_json(legacy)
    self.assertEqual((record.rounds_done, record.history_sha256, record.last_metrics),
                     (3, history.chain_of(rounds), rounds[-1][1]))
    self.assertEqual(run_record.legacy_history(legacy), rounds)
    self.assertIsNone(run_record.legacy_history(record.to_json()))


if __name__ == "__main__":
  absltest.main()
