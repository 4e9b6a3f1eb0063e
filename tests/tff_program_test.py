"""TFF's own program logic (`tff.learning.programs.train_model`) with our state manager and data
source (experiments/tff_program.py, real subprocesses): SIGKILLed while a version is written and
after a saved round, then run again, it ends with every leaf of the program state (the algorithm
state, the round, the data iterator's position) equal to an uninterrupted program's, the same clients
every round, and the same weights and clients as a `tff_resume` run of the same config."""

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

from experiments import chaos
from experiments import tensorboard_server
from tff_resume.program import federated_data
from tff_resume.releases import metrics_release

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ROUNDS = 4
_ENV = dict(os.environ, PYTHONPATH=_REPO_ROOT)
_PROGRAMS = ("straight", "killed_saving", "killed_after", "corrupted")


def _program(root: str, name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, "-m", "experiments.tff_program", f"--root_output_dir={root}",
       f"--experiment_name={name}", f"--rounds={_ROUNDS}"], cwd=_REPO_ROOT,
      env=dict(_ENV, **(env or {})), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(program: subprocess.Popen, seen: str = "") -> tuple[int, str, str]:
  out, err = program.communicate(timeout=300)
  return program.returncode, seen + out, err


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
    cls.straight = _finish(straight)
    cls.during_save = [_finish(during_save)]
    cls.during_save.append(_finish(_program(cls.root, "killed_saving")))
    after_round = _program(cls.root, "killed_after")
    seen = []
    for line in after_round.stdout:
      seen.append(line)
      if line.startswith("round    2  loss"):  # Its metrics are released after version 2 is saved.
        after_round.kill()
        break
    cls.after_round = [_finish(after_round, "".join(seen))]
    cls.after_round.append(_finish(_program(cls.root, "killed_after")))
    # A finished program whose newest version's state was then damaged: it resumes from version
    # _ROUNDS - 1 and redoes the last round, whose points and row are already there.
    shutil.copytree(os.path.join(cls.root, "straight"), os.path.join(cls.root, "corrupted"))
    with open(os.path.join(cls.root, "corrupted", "checkpoints", f"version_{_ROUNDS}",
                           "state.npz"), "r+b") as state:
      state.seek(100)
      byte = state.read(1)
      state.seek(100)
      state.write(bytes([byte[0] ^ 0xFF]))
    # (Its first start is the straight program's, which "ended" with the damage.)
    cls.corrupted = [(-signal.SIGKILL, cls.straight[1], ""), _finish(_program(cls.root, "corrupted"))]
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
    written = collections.Counter(
        (value.tag, event.step) for path in metrics_release.event_files(os.path.join(self.root, name))
        for event in tf.compat.v1.train.summary_iterator(path) for value in event.summary.value)
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


if __name__ == "__main__":
  absltest.main()
