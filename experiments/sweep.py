"""Runs a study: every run of a grid of config values, each an ordinary resumable run, then one
comparison. Run the same command again to continue it.

    python -m experiments.sweep --config=configs/demo.py --root_output_dir=runs/study \\
        --grid=aggregator.name=mean,compression,quantize --grid=aggregator.quantize.bits=4,8 \\
        --grid=training.seed=0,1 --jobs=2

Writes ROOT/study.json (every run's name and overrides), runs each as
`python -m experiments.run_emnist --experiment_name=NAME` under ROOT, up to --jobs at a time (each
with its own TFF worker), printing each run's round lines prefixed with its name and one line per
finished run, skips runs already complete, and ends with ROOT/study_summary/ (`study.md`: the runs
grouped over `training.seed`, mean and spread, then one row per run; and the comparison plots).
`--config.FIELD=VALUE` applies to every run. `--run=K` trains only the K-th run (0-based, in
study.json's order) and writes no summary: a task of a SLURM job array
(`deploy/slurm/study_array.sbatch`), with `--summarize_only` once every task is done. SIGINT/SIGTERM stop every run at its next safe point
(exit status 75; run the command again to resume). Exit status: 0 done, 2 bad input (or a run refused
its config, e.g. a run folder holding another config), 74 a run's write failed, 75 stopped.
"""

import collections
import os
import signal
import subprocess
import sys
import threading
import time

from tff_resume.runtime import local_worker

local_worker.quiet_tensorflow_logging()  # Before TensorFlow's import, which the config checks do.
# pylint: disable=g-import-not-at-top,g-bad-import-order
from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import command_line
from tff_resume.analysis import status as status_lib
from tff_resume.analysis import study
from tff_resume.runtime import signals
# pylint: enable=g-import-not-at-top,g-bad-import-order

local_worker.install_guard_context()  # The sweep computes nothing; its runs have their own workers.

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The study's config file (configs/*.py[:PRESET]); --config.FIELD=VALUE applies "
    "to every run.", lock_config=True)
_ROOT_OUTPUT_DIR = flags.DEFINE_string("root_output_dir", None,
                                       "The study's folder: its runs, study.json and summary.")
_GRID = flags.DEFINE_multi_string("grid", [], "FIELD=VALUE1,VALUE2,...: a swept config field; the "
                                  "runs are the product of every --grid.")
_JOBS = flags.DEFINE_integer("jobs", 1, "Runs trained at once, each a process with its own worker.")
_RUN = flags.DEFINE_integer(
    "run", None, "Only the run of this index (0-based, in study.json's order) and no summary: one "
    "task of a SLURM job array (--run=$SLURM_ARRAY_TASK_ID); --summarize_only after the array.")
_SUMMARIZE_ONLY = flags.DEFINE_bool("summarize_only", False,
                                    "Only write the summary of the runs already done.")


def _child_setup() -> None:
  """In each run's process before exec: its own process group (a Ctrl-C reaches it once, through
  the sweep), and SIGTERM when the sweep dies however it dies (it then stops at a safe point)."""
  os.setpgid(0, 0)
  local_worker.signal_when_parent_dies(signal.SIGTERM)


class _Sweep:
  """The runs of one study, started up to `jobs` at a time; signals forwarded once as SIGTERM."""

  def __init__(self, root: str, config_spec: str, base_overrides: list[str], jobs: int):
    self.root, self.config_spec = root, config_spec
    self.base_overrides, self.jobs = base_overrides, jobs
    self.running: dict[str, subprocess.Popen] = {}
    self.statuses: dict[str, int] = {}
    self.stop_signal = None
    self._print_lock = threading.Lock()

  def say(self, line: str) -> None:
    with self._print_lock:
      print(line, flush=True)

  def request_stop(self, signal_number, frame) -> None:
    del frame
    if self.stop_signal is None:
      self.stop_signal = signal.Signals(signal_number).name
      self.say(f"{self.stop_signal}: stopping every run at its next safe point.")
    for process in list(self.running.values()):
      process.send_signal(signal.SIGTERM)

  def _command(self, run: study.PlannedRun) -> list[str]:
    overrides = [f"--config.{field}={study.value_text(value)}"
                 for field, value in run.overrides.items()]
    return [sys.executable, "-m", "experiments.run_emnist", f"--config={self.config_spec}",
            f"--root_output_dir={self.root}", f"--experiment_name={run.name}",
            *self.base_overrides, *overrides]

  def _relay(self, name: str, process: subprocess.Popen, others: list[str]) -> None:
    """Prints the run's round lines; keeps its error message (from its `run_emnist:` line on)."""
    for line in process.stdout:
      if line.startswith("round "):
        self.say(f"[{name}] {line.rstrip()}")
      elif line.startswith("run_emnist:") or others:
        others.append(line.strip())

  def _finish(self, name: str, process: subprocess.Popen, relay: threading.Thread,
              others: list[str]) -> None:
    relay.join()
    status = process.wait()
    self.statuses[name] = status
    del self.running[name]
    if status == 0:
      self.say(f"{name}: {_describe(os.path.join(self.root, name))}")
    elif status == signals.EXIT_CODE_INTERRUPTED:
      self.say(f"{name}: stopped, resumable (exit status 75).")
    else:
      self.say(f"{name}: failed with exit status {status}: {' '.join(filter(None, others))}")

  def run(self, runs: list[study.PlannedRun]) -> None:
    queue = collections.deque(runs)
    active = {}  # name -> (relay thread, the run's last line other than a round's)
    while queue or self.running:
      while queue and len(self.running) < self.jobs and self.stop_signal is None:
        run = queue.popleft()
        process = subprocess.Popen(self._command(run), cwd=_REPO_ROOT, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=dict(os.environ, PYTHONPATH=_REPO_ROOT),
                                   preexec_fn=_child_setup)
        others = []
        relay = threading.Thread(target=self._relay, args=(run.name, process, others), daemon=True)
        relay.start()
        self.running[run.name], active[run.name] = process, (relay, others)
      if self.stop_signal is not None:
        queue.clear()
      for name, process in list(self.running.items()):
        if process.poll() is not None:
          self._finish(name, process, *active.pop(name))
      time.sleep(0.1)


def _describe(run_dir: str) -> str:
  status = status_lib.run_status(run_dir)
  metrics = status["last_metrics"]
  accuracy = metrics.get("evaluation/sparse_categorical_accuracy",
                         metrics.get("client_work/train/sparse_categorical_accuracy"))
  return (f"{status['rounds_done']} of {status['total_rounds']} rounds, final accuracy "
          f"{accuracy:.4f}, aggregated {metrics.get('communication/aggregated_bits')} bits, weights "
          f"SHA-256 {status['model_weights_sha256'][:16]}...")


def _complete(run_dir: str, total_rounds: int) -> bool:
  if not os.path.isdir(os.path.join(run_dir, "checkpoints")):
    return False
  try:
    return status_lib.run_status(run_dir)["rounds_done"] >= total_rounds
  except Exception:  # pylint: disable=broad-except
    return False  # Damaged or partial: the runner decides (it resumes or says why not).


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if _CONFIG.value is None or not _ROOT_OUTPUT_DIR.value:
    print("sweep: error: --config and --root_output_dir are required, e.g. "
          "--config=configs/demo.py --root_output_dir=runs/study", file=sys.stderr)
    return 2
  if _JOBS.value < 1:
    print(f"sweep: error: --jobs must be at least 1, got {_JOBS.value}.", file=sys.stderr)
    return 2
  root = _ROOT_OUTPUT_DIR.value
  config_spec = next(arg.split("=", 1)[1] for arg in sys.argv if arg.startswith("--config="))
  base_overrides = [arg for arg in sys.argv[1:] if arg.startswith("--config.")]
  if _SUMMARIZE_ONLY.value:
    return _summarize(root)
  try:
    grid = study.parse_grid(_GRID.value, _CONFIG.value)
  except study.GridError as error:
    print(f"sweep: error: {error}", file=sys.stderr)
    return 2
  runs = study.expand(_CONFIG.value, grid)
  if _RUN.value is not None and not 0 <= _RUN.value < len(runs):
    print(f"sweep: error: --run={_RUN.value}, but the study has {len(runs)} runs: give 0 to "
          f"{len(runs) - 1} (sbatch --array=0-{len(runs) - 1}).", file=sys.stderr)
    return 2
  os.makedirs(root, exist_ok=True)
  print(f"Study {root}: {len(runs)} runs ({', '.join(run.name for run in runs)}); plan in "
        f"{study.write_plan(root, config_spec, base_overrides, grid, runs)}.", flush=True)
  total_rounds = _CONFIG.value.training.total_rounds
  if _RUN.value is not None:
    runs = [runs[_RUN.value]]
  pending = []
  for run in runs:
    if _complete(os.path.join(root, run.name), run.overrides.get("training.total_rounds",
                                                                 total_rounds)):
      print(f"{run.name}: complete, skipped.", flush=True)
    else:
      pending.append(run)
  sweep = _Sweep(root, config_spec, base_overrides, _JOBS.value)
  for number in (signal.SIGINT, signal.SIGTERM):
    signal.signal(number, sweep.request_stop)
  sweep.run(pending)
  if sweep.stop_signal is not None or signals.EXIT_CODE_INTERRUPTED in sweep.statuses.values():
    print(f"Study stopped{f' by {sweep.stop_signal}' if sweep.stop_signal else ''}: run the same "
          f"command again to resume it. Exit status {signals.EXIT_CODE_INTERRUPTED}.", flush=True)
    return signals.EXIT_CODE_INTERRUPTED
  failed = {name: status for name, status in sweep.statuses.items() if status != 0}
  if failed:
    print(f"sweep: {len(failed)} runs failed: {', '.join(failed)}.", file=sys.stderr)
    return max(failed.values())
  if _RUN.value is not None:
    print(f"Study {root}: run {_RUN.value} ({runs[0].name}) done; once every run is, "
          f"--summarize_only writes the summary.", flush=True)
    return 0
  return _summarize(root)


def _summarize(root: str) -> int:
  try:
    written = study.write_summary(root)
  except (OSError, ValueError) as error:
    print(f"sweep: error: cannot summarize {root}: {error}", file=sys.stderr)
    return 2
  with open(written[0]) as summary:
    print(summary.read(), end="")
  print("Wrote " + ", ".join(written))
  print(f"TensorBoard (every run, HParams included): .venv/bin/tensorboard --logdir {root}")
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=lambda argv: command_line.parse_flags(argv, "sweep"))
