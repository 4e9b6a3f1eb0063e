"""End-to-end resume: real runner subprocesses killed with real signals, then run again.

A run killed anywhere and resumed must end bit-identical to a run never interrupted: the same server
state bytes, the same sampled clients in every round, the same metrics (wall times aside).
"""

import csv
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile

from absl.testing import absltest
import numpy as np

from tff_resume.releases import bookkeeping
from tff_resume.storage import checkpointing
from tff_resume.storage import run_lock

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TOTAL_ROUNDS = 4
# A small, fast variant of the demo config: the linear model on 20 small synthetic clients.
_SMALL = [
    "--config.model.name=linear", "--config.data.synthetic.num_clients=20",
    "--config.data.synthetic.min_examples_per_client=20",
    "--config.data.synthetic.max_examples_per_client=40",
    "--config.training.clients_per_round=4", "--config.client.epochs=1",
    "--config.client.batch_size=10", "--config.checkpoint.keep_total=0",
]


def _start(root, name, *extra, env=None, total_rounds=_TOTAL_ROUNDS):
  command = [sys.executable, "-m", "experiments.run_emnist", "--config=configs/demo.py",
             f"--root_output_dir={root}", f"--experiment_name={name}",
             f"--config.training.total_rounds={total_rounds}", *_SMALL, *extra]
  full_env = dict(os.environ, PYTHONPATH=_REPO_ROOT, **(env or {}))
  return subprocess.Popen(command, cwd=_REPO_ROOT, env=full_env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _run(root, name, *extra, env=None, total_rounds=_TOTAL_ROUNDS):
  runner = _start(root, name, *extra, env=env, total_rounds=total_rounds)
  stdout, stderr = runner.communicate(timeout=300)
  return runner.returncode, stdout, stderr


def _final(root, name, version=None):
  """Returns (record, server-state leaves) of a version of a run (None: the newest)."""
  manager = checkpointing.DurableProgramStateManager(os.path.join(root, name, "checkpoints"))
  if version is None:
    version = manager.latest_good_version()
  with np.load(os.path.join(manager.version_path(version), "state.npz")) as arrays:
    leaves = {key: arrays[key] for key in arrays.files}
  return bookkeeping.full_record(manager, version), leaves


def _csv_rows(root, name):
  with open(os.path.join(root, name, "results", "metrics.csv"), newline="") as csv_file:
    return list(csv.DictReader(csv_file))


def _without_wall_times(metrics):
  return [{k: v for k, v in m.items() if not k.startswith("time/")} for m in metrics]


def _without_evaluation(metrics):
  return [{k: v for k, v in m.items() if not k.startswith("evaluation/")} for m in metrics]


def _snapshot(path):
  """Every file under `path` with its bytes: a change anywhere shows. The lock file is left out: each
  start that takes the lock writes its own PID there, which is not run state."""
  files = {}
  for folder, _, names in os.walk(path):
    for file_name in names:
      if file_name == run_lock.LOCK_FILE:
        continue
      with open(os.path.join(folder, file_name), "rb") as data:
        files[os.path.relpath(os.path.join(folder, file_name), path)] = data.read()
  return files


_STRAIGHT = {}  # The straight run, made once for the module: root, record, leaves.


def tearDownModule():
  if "root" in _STRAIGHT:
    shutil.rmtree(_STRAIGHT["root"])


class _WithStraightRun(absltest.TestCase):
  """Runs the small config uninterrupted once for the module, as `straight` under `cls.root`."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    if "root" not in _STRAIGHT:
      _STRAIGHT["root"] = tempfile.mkdtemp()
      status, _, stderr = _run(_STRAIGHT["root"], "straight")
      assert status == 0, stderr
      _STRAIGHT["record"], _STRAIGHT["leaves"] = _final(_STRAIGHT["root"], "straight")
    cls.root = _STRAIGHT["root"]
    cls.straight_record, cls.straight_leaves = _STRAIGHT["record"], _STRAIGHT["leaves"]


class ResumeEquivalenceTest(_WithStraightRun):

  def _assert_identical_to_straight(self, name):
    record, leaves = _final(self.root, name)
    self.assertLen(record["sampled_clients"], _TOTAL_ROUNDS)
    self.assertEqual(record["sampled_clients"], self.straight_record["sampled_clients"])
    self.assertEqual(_without_wall_times(record["metrics"]),
                     _without_wall_times(self.straight_record["metrics"]))
    self._assert_straight_leaves(record, leaves)
    return record

  def _assert_straight_leaves(self, record, leaves):
    """The straight run's final server state (version 4), to the byte in every leaf."""
    self.assertEqual(record["model_weights_sha256"], self.straight_record["model_weights_sha256"])
    self.assertEqual(sorted(leaves), sorted(self.straight_leaves))
    for key, array in leaves.items():
      self.assertEqual(array.tobytes(), self.straight_leaves[key].tobytes(), key)

  def test_sigkill_while_version_3_is_written_then_resume_is_identical(self):
    status, _, _ = _run(self.root, "midsave", env={"TFF_RESUME_FAULT": "kill-during-save:3"})
    self.assertEqual(status, -signal.SIGKILL)
    checkpoints = os.path.join(self.root, "midsave", "checkpoints")
    listing = sorted(os.listdir(checkpoints))
    self.assertEqual(listing[1:], ["history.sqlite", "version_0", "version_1", "version_2"])
    self.assertStartsWith(listing[0], ".tmp-version_3-")
    self.assertEqual(sorted(os.listdir(os.path.join(checkpoints, listing[0]))),
                     ["metadata.json", "state.npz"])
    status, stdout, stderr = _run(self.root, "midsave")
    self.assertEqual(status, 0, stderr)
    self.assertIn("Resuming", stdout)
    self.assertIn("from version 2 (1 round to redo)", stdout)
    self.assertEqual(sorted(os.listdir(checkpoints)),
                     ["history.sqlite"] + [f"version_{v}" for v in range(_TOTAL_ROUNDS + 1)])
    record = self._assert_identical_to_straight("midsave")
    self.assertEqual([(s["resumed_from_version"], s["rounds_redone"]) for s in record["resume_log"]],
                     [(None, 0), (2, 1)])
    status = subprocess.run(
        [sys.executable, "-m", "tff_resume.cli", "status", os.path.join(self.root, "midsave")],
        capture_output=True, text=True, check=True, cwd=_REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=_REPO_ROOT)).stdout
    self.assertIn("4 of 4 rounds done (complete)", status)
    self.assertIn("fresh start  (total_rounds 4)", status)
    self.assertIn("resumed from version 2, 1 rounds redone  (total_rounds 4)", status)
    self.assertIn(f"model weights SHA-256: {record['model_weights_sha256']}", status)

  def test_corrupt_newest_version_falls_back_redoes_the_round_and_extends(self):
    shutil.copytree(os.path.join(self.root, "straight"), os.path.join(self.root, "corrupt"))
    checkpoints = os.path.join(self.root, "corrupt", "checkpoints")
    with open(os.path.join(checkpoints, "version_4", "state.npz"), "r+b") as state_file:
      state_file.truncate(1000)
    os.makedirs(os.path.join(checkpoints, "version_5"))  # Emptied by hand: no manifest, not a version.
    status, stdout, stderr = _run(self.root, "corrupt", total_rounds=5)
    self.assertEqual(status, 0, stderr)
    self.assertIn("Skipping corrupt checkpoint version 4", stderr)
    self.assertIn("version_4/state.npz does not match its SHA-256", stderr)
    self.assertIn("Resuming", stdout)
    self.assertIn("from version 3 (1 round to redo), up to round 5", stdout)
    listing = sorted(os.listdir(checkpoints))
    self.assertStartsWith(listing[0], "corrupt_version_4-")
    self.assertStartsWith(listing[1], "corrupt_version_5-")
    self.assertEqual(os.listdir(os.path.join(checkpoints, listing[1])), [])
    self.assertEqual(listing[2:], ["history.sqlite"] + [f"version_{v}" for v in range(6)])
    record, _ = _final(self.root, "corrupt")
    self.assertLen(record["sampled_clients"], 5)
    self.assertEqual(record["sampled_clients"][:4], self.straight_record["sampled_clients"])
    # Round 4 is no longer the last round, so it is not evaluated; training metrics are identical.
    self.assertEqual(_without_evaluation(_without_wall_times(record["metrics"][:4])),
                     _without_evaluation(_without_wall_times(self.straight_record["metrics"])))
    # The redone version 4 is the straight run's version 4 in every leaf (its round 4 metrics show
    # only what the clients did from version 3, not the update the server saved).
    self._assert_straight_leaves(*_final(self.root, "corrupt", 4))

  def test_a_run_of_the_older_layout_moves_its_history_and_resumes_identically(self):
    run_dir = os.path.join(self.root, "legacy")
    shutil.copytree(os.path.join(self.root, "straight"), run_dir)
    manager = checkpointing.DurableProgramStateManager(os.path.join(run_dir, "checkpoints"))
    full, leaves = bookkeeping.full_record(manager, 2), manager.load_leaves(2)
    # As tff_resume wrote versions before the history file: the whole history in every record.
    legacy = {name: full[name] for name in (
        "fingerprint", "seeds", "library_versions", "total_rounds", "sampled_clients", "metrics",
        "resume_log", "model_weights_sha256")}
    for version in (2, 3, 4):
      shutil.rmtree(manager.version_path(version))
    os.remove(os.path.join(run_dir, "checkpoints", "history.sqlite"))
    manager.save_version(leaves, 2, metadata=legacy)
    with open(os.path.join(run_dir, "progress.json"), "w") as progress:
      json.dump({"last_completed_round": 3}, progress)  # Killed after round 3, before its version.
    shown = json.loads(subprocess.run(
        [sys.executable, "-m", "tff_resume.cli", "status", run_dir, "--json", "--round", "2"],
        capture_output=True, text=True, check=True, cwd=_REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=_REPO_ROOT)).stdout)
    self.assertEqual((shown["rounds_done"], shown["sampled_clients"], shown["resume_log"]),
                     (2, full["sampled_clients"][1], full["resume_log"]))
    status, stdout, stderr = _run(self.root, "legacy")
    self.assertEqual(status, 0, stderr)
    self.assertIn("from version 2 (1 round to redo)", stdout)
    record = self._assert_identical_to_straight("legacy")
    self.assertEqual([(s["resumed_from_version"], s["rounds_redone"]) for s in record["resume_log"]],
                     [(None, 0), (2, 1)])
    self.assertEqual(record["resume_log"][0], full["resume_log"][0])
    self.assertEqual(_csv_rows(self.root, "legacy")[-1]["communication/aggregated_bits"],
                     _csv_rows(self.root, "straight")[-1]["communication/aggregated_bits"])

  def test_quantized_run_reports_exact_bits_per_round(self):
    status, _, stderr = _run(self.root, "quantized", "--config.aggregator.name=quantize",
                             "--config.aggregator.quantize.bits=4",
                             "--config.aggregator.quantize.threshold=0")
    self.assertEqual(status, 0, stderr)
    rows, straight_rows = _csv_rows(self.root, "quantized"), _csv_rows(self.root, "straight")
    # Per client: the 7,840-value kernel in ceil(7840 * 4 / 28) packed int32s and the 10-value bias
    # in 2, each with a float32 min and max, and the float32 weight.
    per_client = (math.ceil(7840 * 4 / 28) + 2 + 2 * 2 + 1) * 32
    self.assertEqual([row["communication/aggregated_bits_per_round"] for row in rows],
                     [str(4 * per_client)] * 4)
    self.assertEqual([row["communication/aggregated_bits"] for row in rows],
                     [str(r * 4 * per_client) for r in range(1, 5)])
    self.assertEqual([row["communication/broadcasted_bits"] for row in rows],
                     [row["communication/broadcasted_bits"] for row in straight_rows])

class ResumeRefusalTest(_WithStraightRun):

  def test_config_mismatch_is_refused_field_by_field_and_changes_nothing(self):
    before = _snapshot(os.path.join(self.root, "straight"))
    status, stdout, stderr = _run(self.root, "straight", "--config.client.learning_rate=0.5",
                                  "--config.training.seed=7", total_rounds=9)
    self.assertEqual(status, 2)
    self.assertEqual(stdout, "")
    self.assertStartsWith(stderr, "run_emnist: error: The configuration does not match the run in")
    self.assertIn("  client.learning_rate: saved 0.02, now 0.5\n", stderr)
    self.assertIn("  training.seed: saved 0, now 7\n", stderr)
    self.assertNotIn("total_rounds", stderr)
    self.assertIn("choose another --experiment_name", stderr)
    self.assertEqual(_snapshot(os.path.join(self.root, "straight")), before)

  def test_an_edited_history_is_refused_and_changes_nothing(self):
    run_dir = os.path.join(self.root, "edited")
    shutil.copytree(os.path.join(self.root, "straight"), run_dir)
    with sqlite3.connect(os.path.join(run_dir, "checkpoints", "history.sqlite")) as connection:
      connection.execute("UPDATE rounds SET clients = '[\"synthetic_0000\"]' WHERE round = 2")
    before = _snapshot(run_dir)
    status, stdout, stderr = _run(self.root, "edited", total_rounds=6)
    self.assertEqual((status, stdout), (2, ""))
    self.assertRegex(stderr, r"^run_emnist: error: \S+/edited/checkpoints/history.sqlite: round 2's "
                     r"row was changed after it was written \(its hash chain breaks there\)\. "
                     r"Checkpoint version 4 cannot be resumed without its history; nothing was "
                     r"changed\. Restore .* from a backup, or move the run folder away to start "
                     r"afresh\.\n$")
    self.assertEqual(_snapshot(run_dir), before)

  def test_finished_run_reports_complete_and_changes_nothing(self):
    before = _snapshot(os.path.join(self.root, "straight"))
    status, stdout, _ = _run(self.root, "straight")
    self.assertEqual(status, 0)
    self.assertIn(f"is complete: {_TOTAL_ROUNDS} rounds done", stdout)
    self.assertEqual(_snapshot(os.path.join(self.root, "straight")), before)

  def test_status_json_shows_the_run(self):
    result = subprocess.run(
        [sys.executable, "-m", "tff_resume.cli", "status", os.path.join(self.root, "straight"),
         "--json", "--round", "2"], capture_output=True, text=True, check=True, cwd=_REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=_REPO_ROOT))
    status = json.loads(result.stdout)
    record, _ = _final(self.root, "straight")
    self.assertEqual((status["rounds_done"], status["complete"], status["newest_good_version"]),
                     (_TOTAL_ROUNDS, True, _TOTAL_ROUNDS))
    self.assertEqual(status["versions"], list(range(_TOTAL_ROUNDS + 1)))
    self.assertEqual(status["sampled_clients"], record["sampled_clients"][1])
    self.assertLen(status["sampled_clients"], 4)
    self.assertEqual(status["model_weights_sha256"], record["model_weights_sha256"])
    self.assertEqual(status["last_metrics"], record["metrics"][-1])


if __name__ == "__main__":
  absltest.main()
