"""`tff_resume.ResumableLoop` around a process built outside our configs (tests/loop_script.py): a
LearningProcess and the same process as a plain IterativeProcess, killed with SIGKILL and resumed,
give the weights, clients and metrics of a straight run; another process in the same folder is refused."""

import json
import os
import signal
import subprocess
import sys

from absl.testing import absltest

from tff_resume.releases import bookkeeping
from tff_resume.storage import checkpointing

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SCRIPT = os.path.join(_REPO_ROOT, "tests", "loop_script.py")
_ROUNDS = 4


def _run(run_dir, kind, fault=""):
  result = subprocess.run(
      [sys.executable, _SCRIPT, run_dir, str(_ROUNDS), kind], cwd=_REPO_ROOT,
      env=dict(os.environ, PYTHONPATH=_REPO_ROOT, TFF_RESUME_FAULT=fault,
               TF_CPP_MIN_LOG_LEVEL="3"),
      capture_output=True, text=True, timeout=300)
  return result.returncode, result.stdout, result.stderr


def _record(run_dir):
  return bookkeeping.full_record(
      checkpointing.DurableProgramStateManager(os.path.join(run_dir, "checkpoints")))


def _math(metrics, drop=("time/",)):
  return [{k: v for k, v in m.items() if not k.startswith(drop)} for m in metrics]


class ResumableLoopTest(absltest.TestCase):

  def test_killed_iterative_process_resumes_to_the_straight_learning_process(self):
    root = self.create_tempdir().full_path
    straight, resumed = os.path.join(root, "straight"), os.path.join(root, "resumed")
    status, stdout, stderr = _run(straight, "learning")
    self.assertEqual(status, 0, stderr)
    result = json.loads(stdout.splitlines()[-1])
    self.assertEqual(result["children"], [])  # The loop's TFF worker ended with train().
    self.assertEqual(result["metrics"]["communication/broadcasted_bits"], _ROUNDS * 3 * 15 * 32)

    status, _, _ = _run(resumed, "iterative", fault="kill-during-save:3")
    self.assertEqual(status, -signal.SIGKILL)
    status, stdout, stderr = _run(resumed, "iterative")
    self.assertEqual(status, 0, stderr)
    self.assertIn(f"Resuming {resumed} from version 2 (1 round to redo), up to round 4.", stdout)
    result = json.loads(stdout.splitlines()[-1])
    self.assertEqual(result["children"], [])
    # A release manager of the user's own gets every round this start trained, each metric.
    metric_names = len(_math([result["metrics"]], ())[0])
    self.assertEqual(result["released"], [[3, metric_names], [4, metric_names]])
    with open(os.path.join(resumed, "results", "metrics.csv")) as csv_file:
      self.assertEqual([line.split(",")[0] for line in csv_file], ["round", "1", "2", "3", "4"])

    expected, got = _record(straight), _record(resumed)
    self.assertLen(got["sampled_clients"], _ROUNDS)
    self.assertEqual(got["sampled_clients"], expected["sampled_clients"])
    self.assertEqual(got["model_weights_sha256"], expected["model_weights_sha256"])
    # The same math; only the learning process was given its aggregator, so only it counts bits.
    self.assertEqual(_math(got["metrics"]), _math(expected["metrics"], ("time/", "communication/")))
    self.assertEqual([start["resumed_from_version"] for start in got["resume_log"]], [None, 2])

    # A different process (its `next` has another type) is refused in the straight run's folder.
    status, _, stderr = _run(straight, "iterative")
    self.assertNotEqual(status, 0)
    self.assertIn("process.next.type_signature: saved", stderr)


if __name__ == "__main__":
  absltest.main()
