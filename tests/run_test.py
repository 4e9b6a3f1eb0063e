"""`tff_resume.Run` in a Python process (as in a notebook): a real SIGINT after round 2 stops it after
saving, `train()` again resumes, and the result equals the command-line runner's uninterrupted run."""

import csv
import json
import os
import re
import signal
import subprocess
import sys

from absl.testing import absltest

from tff_resume.releases import bookkeeping
from tff_resume.storage import checkpointing
import tff_resume

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OVERRIDES = {"training.total_rounds": 4, "model.name": "linear"}
_IN_PROCESS = """
import json, os, sys
import tff_resume
config = tff_resume.load_config("configs/demo.py:smoke", json.loads(sys.argv[2]))
run = tff_resume.Run(config, root_output_dir=sys.argv[1], experiment_name="api")
try:
  run.train()
except tff_resume.Interrupted as stopped:
  print("INTERRUPTED", stopped.signal_name, stopped.rounds_done, flush=True)
metrics = run.train()
children = [pid for pid in os.listdir("/proc") if pid.isdigit()
            and open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1] == str(os.getpid())]
print("RESULT", json.dumps({"metrics": metrics, "status": run.status(), "children": children}))
"""


def _env():
  return dict(os.environ, PYTHONPATH=_REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="3")


def _record(run_dir):
  return bookkeeping.full_record(
      checkpointing.DurableProgramStateManager(os.path.join(run_dir, "checkpoints")))


def _csv_without_times(run_dir):
  with open(os.path.join(run_dir, "results", "metrics.csv"), newline="") as csv_file:
    return [{k: v for k, v in row.items() if not k.startswith("time/")}
            for row in csv.DictReader(csv_file)]


def _without_times(metrics):
  return [{k: v for k, v in m.items() if not k.startswith("time/")} for m in metrics]


class RunTest(absltest.TestCase):

  def test_sigint_in_process_then_train_again_equals_the_cli_run(self):
    root = self.create_tempdir().full_path
    cli = subprocess.run(
        [sys.executable, "-m", "experiments.run_emnist", "--config=configs/demo.py:smoke",
         f"--root_output_dir={root}", "--experiment_name=cli",
         *[f"--config.{field}={value}" for field, value in _OVERRIDES.items()]],
        cwd=_REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    self.assertEqual(cli.returncode, 0, cli.stderr)

    api = subprocess.Popen([sys.executable, "-u", "-c", _IN_PROCESS, root, json.dumps(_OVERRIDES)],
                           cwd=_REPO_ROOT, env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    lines = []
    for line in api.stdout:
      lines.append(line)
      if line.startswith("round    2/4"):
        api.send_signal(signal.SIGINT)
    stderr = api.stderr.read()
    self.assertEqual(api.wait(timeout=300), 0, stderr)
    interrupted = [line.split() for line in lines if line.startswith("INTERRUPTED")]
    self.assertLen(interrupted, 1, "".join(lines))
    self.assertEqual(interrupted[0][1], "SIGINT")
    self.assertIn(int(interrupted[0][2]), (2, 3))  # The round running when the signal came.
    self.assertIn("SIGINT received: stopping at the next safe point", stderr)
    result = json.loads(lines[-1].split(" ", 1)[1])
    self.assertEqual(result["children"], [])  # Each train() ended its TFF worker.

    api_dir, cli_dir = os.path.join(root, "api"), os.path.join(root, "cli")
    expected, got = _record(cli_dir), _record(api_dir)
    self.assertLen(got["sampled_clients"], 4)
    self.assertEqual(got["sampled_clients"], expected["sampled_clients"])
    self.assertEqual(_without_times(got["metrics"]), _without_times(expected["metrics"]))
    self.assertEqual(got["model_weights_sha256"], expected["model_weights_sha256"])
    self.assertEqual(_csv_without_times(api_dir), _csv_without_times(cli_dir))
    self.assertEqual({k: v for k, v in result["metrics"].items() if not k.startswith("time/")},
                     _without_times(expected["metrics"])[-1])
    # Run.status() is `tff-resume status --json`.
    status_json = subprocess.run(
        [sys.executable, "-m", "tff_resume.cli", "status", api_dir, "--json"], cwd=_REPO_ROOT,
        env=_env(), capture_output=True, text=True, timeout=120)
    self.assertEqual(json.loads(status_json.stdout), {**result["status"], "run_dir": api_dir})
    self.assertEqual([start["resumed_from_version"] for start in result["status"]["resume_log"]],
                     [None, int(interrupted[0][2])])

  def test_load_config_errors_name_the_problem(self):
    with self.assertRaisesRegex(tff_resume.ConfigError, "config file configs/none.py not found"):
      tff_resume.load_config("configs/none.py")
    with self.assertRaisesRegex(tff_resume.ConfigError, "unknown config preset 'fast'"):
      tff_resume.load_config(os.path.join(_REPO_ROOT, "configs/demo.py:fast"))
    with self.assertRaisesRegex(tff_resume.ConfigError, 'Key "epoch" does not exist'):
      tff_resume.load_config(os.path.join(_REPO_ROOT, "configs/demo.py"), {"client.epoch": 2})
    with self.assertRaisesRegex(tff_resume.ConfigError, "should be of type <class 'int'>"):
      tff_resume.load_config(os.path.join(_REPO_ROOT, "configs/demo.py"),
                             {"client.epochs": "two"})
    folder = self.create_tempdir()
    for name, text, message in (
        ("raises.py", "def get_config():\n  raise RuntimeError('boom')\n", "RuntimeError: boom"),
        ("syntax.py", "def get_config(:\n", "SyntaxError: invalid syntax"),
        ("dict.py", "def get_config():\n  return {}\n",
         "get_config() returned dict, not an ml_collections.ConfigDict")):
      path = folder.create_file(name, text).full_path
      with self.assertRaisesRegex(tff_resume.ConfigError, re.escape(message)):
        tff_resume.load_config(path)
    config = tff_resume.load_config(os.path.join(_REPO_ROOT, "configs/demo.py:smoke"),
                                    {"client.epochs": 3})
    self.assertEqual((config.client.epochs, config.data.source), (3, "synthetic"))


if __name__ == "__main__":
  absltest.main()
