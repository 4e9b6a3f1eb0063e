"""TFF's own program logic (`tff.learning.programs.train_model`) with our state manager and data
source (experiments/tff_program.py, real subprocesses): SIGKILLed while a version is written and
after a saved round, then run again, it ends with every leaf of the program state (the algorithm
state, the round, the data iterator's position) equal to an uninterrupted program's, the same clients
every round, and the same weights and clients as a `tff_resume` run of the same config. The same
program with TFF's own managers (`--managers=tff`), killed the same ways, writes the redone rounds'
TensorBoard points twice, and fails to restart on a damaged newest version. Our release managers
also pass TFF's `ReleaseManager` contract in-process."""

import asyncio
import collections
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

from absl.testing import absltest
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
import tree

from experiments import chaos
from experiments import tensorboard_server
from tensorboard.backend.event_processing import event_file_loader
from tff_resume.program import federated_data
from tff_resume.releases import metrics_release
from tff_resume.releases import release_managers

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ROUNDS = 4
_ENV = dict(os.environ, PYTHONPATH=_REPO_ROOT)
_PROGRAMS = ("straight", "killed_saving", "killed_after", "corrupted", "tff_killed_after")


def _program(root: str, name: str, env: dict[str, str] | None = None,
             managers: str = "tff_resume") -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, "-m", "experiments.tff_program", f"--root_output_dir={root}",
       f"--experiment_name={name}", f"--rounds={_ROUNDS}", f"--managers={managers}"],
      cwd=_REPO_ROOT, env=dict(_ENV, **(env or {})), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)


def _finish(program: subprocess.Popen, seen: str = "") -> tuple[int, str, str]:
  out, err = program.communicate(timeout=300)
  return program.returncode, seen + out, err


def _kill_at_line(program: subprocess.Popen, start: str) -> tuple[int, str, str]:
  """SIGKILLs `program` as soon as it prints a line beginning with `start`."""
  seen = []
  for line in program.stdout:
    seen.append(line)
    if line.startswith(start):
      program.kill()
      break
  return _finish(program, "".join(seen))


def _written_points(program_dir: str) -> collections.Counter:
  """How many times each (tag, step) is in the program's event files."""
  return collections.Counter(
      (value.tag, event.step) for path in metrics_release.event_files(program_dir)
      for event in tf.compat.v1.train.summary_iterator(path) for value in event.summary.value)


def _flip_byte(path: str, offset: int = 100) -> None:
  with open(path, "r+b") as damaged:
    damaged.seek(offset)
    byte = damaged.read(1)
    damaged.seek(offset)
    damaged.write(bytes([byte[0] ^ 0xFF]))


def _clients(*outputs: str) -> dict[int, str]:
  """Each round's clients as the program printed them (a round redone after a kill: its last)."""
  clients = {}
  for out in outputs:
    for round_num, ids in re.findall(r"^round +(\d+)  clients (\S+)$", out, re.MULTILINE):
      clients[int(round_num)] = ids
  return clients


def _state_leaves(program_dir: str, version: int) -> dict[str, str]:
  with np.load(os.path.join(program_dir, "checkpoints", f"version_{version}", "state.npz")) as npz:
    return {key: hashlib.sha256(npz[key].tobytes()).hexdigest() for key in npz.files}


def _final_sha(out: str) -> str:
  return re.search(rf"^Done: {_ROUNDS} rounds; model weights SHA-256 ([0-9a-f]{{64}})$", out,
                   re.MULTILINE).group(1)


class TrainModelProgramTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    straight = _program(cls.root, "straight")
    during_save = _program(cls.root, "killed_saving", {"TFF_RESUME_FAULT": "kill-during-save:2"})
    # TFF's managers killed as ours are below: after round 2's metrics line, version 2 being written
    # (TFF saves in the background. The pause keeps version 2 unfinished at the kill; version 3,
    # whose save starts as round 3 trains, is unfinished because the kill lands within the pause,
    # `fault_hooks.PAUSE_SECONDS`, of its start).
    tff_after_round = _program(cls.root, "tff_killed_after", {
        "TFF_RESUME_FAULT": "pause-during-save:2,pause-during-save:3"}, managers="tff")
    cls.tff_after_round = [_kill_at_line(tff_after_round, "round    2  loss")]
    cls.straight = _finish(straight)
    cls.during_save = [_finish(during_save)]
    cls.during_save.append(_finish(_program(cls.root, "killed_saving")))
    cls.tff_listing_after_kill = sorted(os.listdir(os.path.join(cls.root, "tff_killed_after",
                                                                "checkpoints")))
    cls.tff_points_after_kill = _written_points(os.path.join(cls.root, "tff_killed_after"))
    tff_after_round = _program(cls.root, "tff_killed_after", managers="tff")
    # (Version 2 is saved before round 2's metrics are released: its line comes after the save.)
    cls.after_round = [_kill_at_line(_program(cls.root, "killed_after"), "round    2  loss")]
    cls.after_round.append(_finish(_program(cls.root, "killed_after")))
    cls.tff_after_round.append(_finish(tff_after_round))
    # A finished program whose newest version's state was then damaged: ours resumes from version
    # _ROUNDS - 1 and redoes the last round, whose points and row are already there.
    shutil.copytree(os.path.join(cls.root, "straight"), os.path.join(cls.root, "corrupted"))
    _flip_byte(os.path.join(cls.root, "corrupted", "checkpoints", f"version_{_ROUNDS}",
                            "state.npz"))
    shutil.copytree(os.path.join(cls.root, "tff_killed_after"),
                    os.path.join(cls.root, "tff_corrupted"))
    _flip_byte(os.path.join(cls.root, "tff_corrupted", "checkpoints", f"program_state_{_ROUNDS}",
                            "variables", "variables.data-00000-of-00001"))
    tff_corrupted = _program(cls.root, "tff_corrupted", managers="tff")
    # (Its first start is the straight program's, which "ended" with the damage.)
    cls.corrupted = [(-signal.SIGKILL, cls.straight[1], ""),
                     _finish(_program(cls.root, "corrupted"))]
    cls.tff_corrupted = _finish(tff_corrupted)
    subprocess.run(
        [sys.executable, "-m", "experiments.run_emnist", "--config=configs/demo.py:smoke",
         f"--root_output_dir={cls.root}", "--experiment_name=tff_resume_run",
         "--config.model.name=2nn", f"--config.training.total_rounds={_ROUNDS}"],
        cwd=_REPO_ROOT, env=_ENV, capture_output=True, text=True, timeout=300, check=True)
    cls.reference = chaos.run_outcome(os.path.join(cls.root, "tff_resume_run"))
    # TensorBoard as a user starts it (its default loader), on the three programs' folders.
    cls.tensorboard_root = os.path.join(cls.root, "tensorboard")
    os.makedirs(cls.tensorboard_root)
    for name in _PROGRAMS:
      os.symlink(os.path.join(cls.root, name), os.path.join(cls.tensorboard_root, name))
    cls.server = tensorboard_server.TensorBoardServer(cls.tensorboard_root)

  @classmethod
  def tearDownClass(cls):
    group = cls.server.process.pid
    cls.server.stop()
    assert not tensorboard_server.processes_in_group(group), f"tensorboard group {group} left"
    shutil.rmtree(cls.root)
    super().tearDownClass()

  def _served_points(self, name: str) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of every scalar of the program `name`, as TensorBoard serves them."""
    tags = self.server.wait_for(
        lambda server: (server.get("data/plugin/scalars/tags").get(name) or None),
        f"{name}'s scalars")
    return {tag: [(step, value) for _, step, value in self.server.get(
        "data/plugin/scalars/scalars", run=name, tag=tag)] for tag in sorted(tags)}

  def test_uninterrupted_program_equals_a_tff_resume_run(self):
    status, out, err = self.straight
    self.assertEqual(status, 0, err)
    self.assertIn(f"Starting {self.root}/straight: {_ROUNDS} rounds.\n", out)
    self.assertEqual(_final_sha(out), self.reference["model_weights_sha256"])
    self.assertEqual(_clients(out), {round_num + 1: ",".join(ids) for round_num, ids
                                     in enumerate(self.reference["sampled_clients"])})
    self.assertEqual(sorted(os.listdir(os.path.join(self.root, "straight", "checkpoints"))),
                     [f"version_{v}" for v in range(_ROUNDS + 1)])

  def _assert_resumed_identically(self, starts, name: str, resumed_from: int) -> None:
    (first, first_out, _), (second, second_out, second_err) = starts
    self.assertEqual((first, second), (-signal.SIGKILL, 0), second_err)
    self.assertIn(f"Resuming {self.root}/{name} from version {resumed_from}: {_ROUNDS} rounds.\n",
                  second_out)
    self.assertEqual(_final_sha(second_out), _final_sha(self.straight[1]))
    self.assertEqual(_clients(first_out, second_out), _clients(self.straight[1]))
    # Every leaf: the algorithm state, the round number, the iterator's saved position.
    self.assertEqual(_state_leaves(os.path.join(self.root, name), _ROUNDS),
                     _state_leaves(os.path.join(self.root, "straight"), _ROUNDS))
    self.assertEqual(chaos.leftovers(os.path.join(self.root, name)), [])
    # One CSV row and one TensorBoard point per round, equal to the uninterrupted program's.
    with open(os.path.join(self.root, name, "metrics.csv")) as mine, \
        open(os.path.join(self.root, "straight", "metrics.csv")) as straight:
      self.assertEqual(mine.read(), straight.read())
    # In the event files themselves, once (TensorBoard's loader would also drop the points a restart
    # marker supersedes; other readers would not).
    written = _written_points(os.path.join(self.root, name))
    points = self._served_points(name)
    self.assertEqual(set(written.values()), {1}, written)
    self.assertLen(written, len(points) * _ROUNDS)
    self.assertEqual(points, self._served_points("straight"))
    self.assertEqual([step for step, _ in points["model_metrics/loss"]],
                     list(range(1, _ROUNDS + 1)))

  def test_killed_while_saving_a_version_resumes_identically(self):
    self._assert_resumed_identically(self.during_save, "killed_saving", 1)

  def test_a_corrupt_newest_version_is_redone_with_one_point_per_round(self):
    self._assert_resumed_identically(self.corrupted, "corrupted", _ROUNDS - 1)
    checkpoints = os.listdir(os.path.join(self.root, "corrupted", "checkpoints"))
    self.assertLen([name for name in checkpoints if name.startswith("corrupt_version_")], 1)

  def test_killed_after_a_saved_round_resumes_identically(self):
    self._assert_resumed_identically(self.after_round, "killed_after", 2)

  def test_tff_managers_killed_after_a_released_round_write_its_points_twice(self):
    # TFF saves a version in the background while the next rounds run: killed after round 2's
    # metrics line, it has versions 0 and 1 only, and its TensorBoard manager, which never cuts,
    # writes the rounds the restart redoes (2, and 3 when its metrics were out before the kill)
    # again.
    (first, first_out, _), (second, second_out, second_err) = self.tff_after_round
    self.assertEqual((first, second), (-signal.SIGKILL, 0), second_err)
    self.assertEqual(self.tff_listing_after_kill, ["program_state_0", "program_state_1"])
    self.assertIn(f"Resuming {self.root}/tff_killed_after from version 1: {_ROUNDS} rounds.\n",
                  second_out)
    released_before_kill = max(step for _, step in self.tff_points_after_kill)
    self.assertIn(released_before_kill, (2, 3))
    tags = sorted({tag for tag, _ in self.tff_points_after_kill})
    self.assertLen(tags, 5)
    self.assertEqual(
        _written_points(os.path.join(self.root, "tff_killed_after")),
        collections.Counter({(tag, step): 2 if 2 <= step <= released_before_kill else 1
                             for tag in tags for step in range(1, _ROUNDS + 1)}))
    self.assertEqual([step for step, _ in self._served_points("tff_killed_after")[
        "model_metrics/loss"]], list(range(1, _ROUNDS + 1)))
    # What TFF gets right: the same weights and clients, one CSV row a round (its CSV manager cuts).
    self.assertEqual(_final_sha(second_out), _final_sha(self.straight[1]))
    self.assertEqual(_clients(first_out, second_out), _clients(self.straight[1]))
    with open(os.path.join(self.root, "tff_killed_after", "metrics.csv")) as theirs, \
        open(os.path.join(self.root, "straight", "metrics.csv")) as ours:
      self.assertEqual(theirs.read(), ours.read())
    self.assertEqual(sorted(os.listdir(os.path.join(self.root, "tff_killed_after", "checkpoints"))),
                     [f"program_state_{v}" for v in range(_ROUNDS + 1)])
    # Ours, killed at the same line: each (tag, step) once.
    self.assertEqual(set(_written_points(os.path.join(self.root, "killed_after")).values()), {1})

  def test_tff_managers_fail_to_restart_on_a_damaged_newest_version(self):
    # TFF's `load_latest` tries the newest version only, and its checksum error ends the program.
    status, out, err = self.tff_corrupted
    self.assertEqual(status, 1, err)
    self.assertEqual(out, f"Resuming {self.root}/tff_corrupted from version {_ROUNDS}: "
                          f"{_ROUNDS} rounds.\n")
    self.assertRegex(err.splitlines()[-1], (
        r"^tensorflow\.python\.framework\.errors_impl\.DataLossError: .* TensorBundle at "
        rf"{re.escape(self.root)}/tff_corrupted/checkpoints/program_state_{_ROUNDS}/variables/"
        r"variables shard 0 \(\d+ bytes\): Checksum does not match: stored \d+ vs\. calculated "
        r"on the restored bytes \d+ \[Op:RestoreV2\]$"))
    # Ours, the same damage: resumed from the version before it, each (tag, step) once.
    self.assertEqual(self.corrupted[1][0], 0, self.corrupted[1][2])
    self.assertEqual(set(_written_points(os.path.join(self.root, "corrupted")).values()), {1})


class SeededClientsDataSourceTest(absltest.TestCase):

  def test_position_round_trips_and_a_changed_seed_is_refused(self):
    data = tff.simulation.datasets.TestClientData(
        {client_id: [float(number)] for number, client_id in enumerate("bac")})
    source = federated_data.SeededClientsDataSource("tiny", data, seed=3)
    iterator = source.iterator()
    iterator.select(2)
    iterator.select(2)
    restored = federated_data.SeededClientsIterator.from_bytes(iterator.to_bytes())
    self.assertEqual(restored.next_round, 3)
    self.assertEqual(restored, iterator)
    restored.select(2)
    iterator.select(2)
    self.assertEqual(restored.selected, iterator.selected[2:])
    saved = iterator.to_bytes()
    federated_data.SeededClientsDataSource("tiny", data, seed=4)  # The same name, another seed.
    with self.assertRaisesRegex(ValueError, "was saved with seed 3"):
      federated_data.SeededClientsIterator.from_bytes(saved)


def _round_metrics(loss: float, examples: int) -> collections.OrderedDict:
  """A round's metrics as `train_model` releases them, with every kind of leaf TFF gives."""
  return collections.OrderedDict(
      finalizer=collections.OrderedDict(update_non_finite=np.int32(0)),
      model_metrics=collections.OrderedDict(
          loss=np.float32(loss), num_batches=4, num_examples=np.int64(examples),
          sparse_categorical_accuracy=loss / 4),
      nested=[np.float64(loss), (np.int32(examples), 0.5)],
      converged=np.bool_(False), stopped=True)


def _event_scalars(logdir: str) -> list[tuple[int, str, float]]:
  """(step, tag, value) of every scalar in `logdir`'s event files, in file order."""
  return [(event.step, value.tag, value.tensor.float_val[0])
          for path in metrics_release.event_files(logdir)
          for event in event_file_loader.EventFileLoader(path).Load()
          for value in event.summary.value]


class _Reference(tff.program.MaterializableValueReference):
  """A value held elsewhere, as a TFF platform releases it (here: in memory)."""

  def __init__(self, value):
    self._value = value

  @property
  def type_signature(self):
    return tff.TensorType(np.asarray(self._value).dtype)

  async def get_value(self):
    return self._value


class ReleaseManagersContractTest(absltest.TestCase):
  """Our release managers under TFF's `tff.program.ReleaseManager` contract, in-process."""

  def setUp(self):
    super().setUp()
    self.logdir = self.create_tempdir().full_path
    self.csv_path = os.path.join(self.logdir, "metrics.csv")

  def _release(self, rounds: dict[int, collections.OrderedDict]) -> None:
    """Releases each round's metrics through a new pair of managers, grouped as TFF does."""
    tensorboard = release_managers.TensorBoardReleaseManager(self.logdir)
    grouped = tff.program.GroupingReleaseManager(
        [tensorboard, release_managers.CsvReleaseManager(self.csv_path)])
    for round_num, value in rounds.items():
      asyncio.run(grouped.release(value, key=round_num))
    tensorboard.close()

  def _expected_scalars(self, rounds: dict[int, tuple[float, int]]) -> list[tuple[int, str, float]]:
    float32 = lambda number: float(np.float32(number))
    return [point for round_num, (loss, examples) in rounds.items() for point in (
        (round_num, "finalizer/update_non_finite", 0.0),
        (round_num, "model_metrics/loss", float32(loss)),
        (round_num, "model_metrics/num_batches", 4.0),
        (round_num, "model_metrics/num_examples", float(examples)),
        (round_num, "model_metrics/sparse_categorical_accuracy", float32(loss / 4)),
        (round_num, "nested/0", float32(loss)), (round_num, "nested/1/0", float(examples)),
        (round_num, "nested/1/1", 0.5))]

  def test_releases_tff_value_types_as_one_point_and_row_a_round(self):
    self._release({1: _round_metrics(0.1, 67), 2: _round_metrics(2.0, 64)})
    with open(self.csv_path) as csv_file:
      self.assertEqual(csv_file.read().splitlines(), [
          "round,finalizer/update_non_finite,model_metrics/loss,model_metrics/num_batches,"
          "model_metrics/num_examples,model_metrics/sparse_categorical_accuracy,nested/0,"
          "nested/1/0,nested/1/1",
          f"1,0,{float(np.float32(0.1))},4,67,0.025,0.1,67,0.5",
          "2,0,2.0,4,64,0.5,2.0,64,0.5"])
    self.assertEqual(_event_scalars(self.logdir), self._expected_scalars({1: (0.1, 67),
                                                                          2: (2.0, 64)}))

  def test_a_restart_at_round_k_cuts_rounds_k_and_later(self):
    self._release({1: _round_metrics(1.0, 10), 2: _round_metrics(2.0, 20),
                   3: _round_metrics(3.0, 30)})
    self._release({2: _round_metrics(5.0, 50)})
    with open(self.csv_path) as csv_file:
      self.assertEqual([line.split(",")[:3] for line in csv_file.read().splitlines()[1:]],
                       [["1", "0", "1.0"], ["2", "0", "5.0"]])
    self.assertEqual(sorted(_event_scalars(self.logdir)),
                     sorted(self._expected_scalars({1: (1.0, 10), 2: (5.0, 50)})))

  def test_value_references_are_materialized_before_release(self):
    rounds = {1: _round_metrics(0.1, 67), 2: _round_metrics(2.0, 64)}
    referenced = {round_num: tree.map_structure(_Reference, value)
                  for round_num, value in rounds.items()}
    self._release(referenced)
    self.assertEqual(_event_scalars(self.logdir), self._expected_scalars({1: (0.1, 67),
                                                                          2: (2.0, 64)}))
    with open(self.csv_path) as csv_file:
      self.assertEqual(csv_file.read().splitlines()[1:], [
          f"1,0,{float(np.float32(0.1))},4,67,0.025,0.1,67,0.5", "2,0,2.0,4,64,0.5,2.0,64,0.5"])

  def test_a_key_that_is_not_a_round_number_is_refused(self):
    for manager in (release_managers.TensorBoardReleaseManager(self.logdir),
                    release_managers.CsvReleaseManager(self.csv_path)):
      for key in (0, -1, 1.0, "1", True, np.float32(2), None):
        with self.assertRaisesRegex(ValueError, "key must be the round number"):
          asyncio.run(manager.release(_round_metrics(1.0, 10), key=key))
    self.assertEqual(os.listdir(self.logdir), [])


if __name__ == "__main__":
  absltest.main()
