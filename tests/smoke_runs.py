"""The runner on the smoke preset (`configs/demo.py:smoke`, synthetic data) as the tests start it."""

import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_smoke(root, name, *overrides, rounds=2, env=None):
  """Runs `python -m experiments.run_emnist` on the smoke preset for `rounds` rounds with the
  `--config.FIELD=VALUE` `overrides`, in `root/name`; returns (exit status, stdout, stderr)."""
  result = subprocess.run(
      [sys.executable, "-m", "experiments.run_emnist", "--config=configs/demo.py:smoke",
       f"--root_output_dir={root}", f"--experiment_name={name}",
       f"--config.training.total_rounds={rounds}", *overrides],
      cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=REPO_ROOT, **(env or {})),
      capture_output=True, text=True, timeout=300)
  return result.returncode, result.stdout, result.stderr
