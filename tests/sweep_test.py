"""A 2x2 study through `python -m experiments.sweep` with 2 jobs: SIGKILLed (its process group)
mid-way, run again, it ends with every run equal to the same config run alone by the runner, a summary
of the four runs whose means and spreads are those of the runs' metrics.csv, and no process left; the
grid a field left unused collapses, as docs/studies.md's example says."""

import concurrent.futures
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time

from absl.testing import absltest

from configs import demo
from experiments import chaos
from tff_resume.analysis import study
from tff_resume.releases import units

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MARKER = ("TFF_RESUME_SWEEP_TEST", f"{os.getpid()}-{time.time_ns()}")
_ENV = dict(os.environ, PYTHONPATH=_REPO_ROOT, **{_MARKER[0]: _MARKER[1]})
# Evaluated at rounds 2, 4 and 6 (their accuracies differ): the summary must take round 6's.
_COMMON = ["--config=configs/demo.py:smoke", "--config.model.name=linear",
           "--config.training.total_rounds=6", "--config.evaluation.rounds_per_eval=2",
           "--config.aggregator.quantize.threshold=0",
           "--config.aggregator.quantize.stochastic=false"]
_GRID = ["--grid=aggregator.name=mean,quantize", "--grid=training.seed=0,1"]
_RUNS = {"aggregator-mean_seed-0": ["--config.aggregator.name=mean", "--config.training.seed=0"],
         "aggregator-mean_seed-1": ["--config.aggregator.name=mean", "--config.training.seed=1"],
         "aggregator-quantize_seed-0": ["--config.aggregator.name=quantize",
                                        "--config.training.seed=0"],
         "aggregator-quantize_seed-1": ["--config.aggregator.name=quantize",
                                        "--config.training.seed=1"]}


def _final_round(run_dir: str) -> dict[str, str]:
  """The last row of the run's metrics.csv, read here, not through the summary's own reader."""
  with open(os.path.join(run_dir, "results", "metrics.csv"), newline="") as csv_file:
    return list(csv.DictReader(csv_file))[-1]


def _marked() -> set[int]:
  return chaos.processes_with(f"{_MARKER[0]}={_MARKER[1]}".encode())


def _wait_until_none_left(timeout_seconds: float = 60.0) -> set[int]:
  deadline = time.monotonic() + timeout_seconds
  while _marked() and time.monotonic() < deadline:
    time.sleep(0.2)
  return _marked()


class SweepTest(absltest.TestCase):

  def test_killed_study_resumes_to_the_runs_alone_with_one_summary(self):
    root = self.create_tempdir().full_path
    command = [sys.executable, "-m", "experiments.sweep", f"--root_output_dir={root}",
               "--jobs=2", *_GRID, *_COMMON]
    sweep = subprocess.Popen(command, cwd=_REPO_ROOT, env=_ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = []
    for line in sweep.stdout:
      seen.append(line)
      if line.startswith("[") and " round    2/" in line:
        os.killpg(sweep.pid, signal.SIGKILL)
        break
    sweep.wait()
    self.assertEqual(sweep.returncode, -signal.SIGKILL, "".join(seen))
    # Its runs, in their own process groups, were told to stop (SIGTERM) when the sweep died.
    self.assertEqual(_wait_until_none_left(), set())
    with open(os.path.join(root, study.PLAN_FILE)) as plan:
      self.assertEqual([(run["name"], run["overrides"]) for run in json.load(plan)["runs"]], [
          ("aggregator-mean_seed-0", {"aggregator.name": "mean", "training.seed": 0}),
          ("aggregator-mean_seed-1", {"aggregator.name": "mean", "training.seed": 1}),
          ("aggregator-quantize_seed-0", {"aggregator.name": "quantize", "training.seed": 0}),
          ("aggregator-quantize_seed-1", {"aggregator.name": "quantize", "training.seed": 1})])

    again = subprocess.run(command, cwd=_REPO_ROOT, env=_ENV, capture_output=True, text=True,
                           timeout=600, check=False)
    self.assertEqual(again.returncode, 0, again.stderr)
    self.assertEqual(sorted(os.listdir(root)), sorted([*_RUNS, study.PLAN_FILE,
                                                       study.SUMMARY_FOLDER]))
    for name in _RUNS:
      self.assertIn(f"\n{name}: 6 of 6 rounds, final accuracy ", again.stdout)

    alone = os.path.join(self.create_tempdir().full_path)
    # The runner alone on one run per aggregator, the seeds crossed (two runner starts, not four).
    compared = ["aggregator-mean_seed-1", "aggregator-quantize_seed-0"]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      results = list(pool.map(lambda name: subprocess.run(
          [sys.executable, "-m", "experiments.run_emnist", f"--root_output_dir={alone}",
           f"--experiment_name={name}", *_COMMON, *_RUNS[name]], cwd=_REPO_ROOT, env=_ENV,
          capture_output=True, text=True, timeout=300, check=False), compared))
    for result in results:
      self.assertEqual(result.returncode, 0, result.stderr)
    for name in compared:
      self.assertEqual(chaos.run_outcome(os.path.join(root, name)),
                       chaos.run_outcome(os.path.join(alone, name)), name)

    with open(os.path.join(root, study.SUMMARY_FOLDER, "study.md")) as summary:
      table = summary.read()
    self.assertEqual(sorted(os.listdir(os.path.join(root, study.SUMMARY_FOLDER))), [
        "accuracy_vs_aggregated_bits.png", "accuracy_vs_round.png", "comparison.md", "study.md"])
    grouped = [line for line in table.splitlines() if line.startswith("| aggregator.name=")]
    expected = []
    for aggregator in ("mean", "quantize"):
      finals = [_final_round(os.path.join(root, f"aggregator-{aggregator}_seed-{seed}"))
                for seed in (0, 1)]
      self.assertEqual([final["round"] for final in finals], ["6", "6"])
      accuracies = [float(final["evaluation/sparse_categorical_accuracy"]) for final in finals]
      # Two seeds that differ: a population spread would then read differently from a sample one.
      self.assertNotEqual(accuracies[0], accuracies[1], aggregator)
      aggregated, broadcast = ([int(final[f"communication/{kind}_bits"]) for final in finals]
                               for kind in ("aggregated", "broadcasted"))
      expected.append(
          f"| aggregator.name={aggregator} | 2 | {statistics.mean(accuracies):.4f} ± "
          f"{statistics.stdev(accuracies):.4f} | "
          f"{units.format_bits(round(statistics.mean(aggregated)))} | "
          f"{units.format_bits(round(statistics.mean(broadcast)))} |")
    self.assertEqual(grouped, expected)
    self.assertEqual(sorted(line.split(" | ")[0][2:] for line in table.splitlines()
                            if line.startswith("| aggregator-")), sorted(_RUNS))
    self.assertEqual(_wait_until_none_left(), set())

  def test_bad_grid_is_one_line_and_writes_nothing(self):
    root = os.path.join(self.create_tempdir().full_path, "study")
    result = subprocess.run(
        [sys.executable, "-m", "experiments.sweep", f"--root_output_dir={root}",
         "--grid=aggregator.bits=4,8", *_COMMON], cwd=_REPO_ROOT, env=_ENV, capture_output=True,
        text=True, timeout=300, check=False)
    self.assertEqual(result.returncode, 2)
    self.assertEqual(result.stderr, "sweep: error: --grid 'aggregator.bits=4,8': unknown config "
                     "field 'aggregator.bits'.\n")
    self.assertFalse(os.path.exists(root))

  def test_run_index_beyond_the_study_is_one_line_and_writes_nothing(self):
    root = os.path.join(self.create_tempdir().full_path, "study")
    result = subprocess.run(
        [sys.executable, "-m", "experiments.sweep", f"--root_output_dir={root}", "--run=4",
         *_GRID, *_COMMON], cwd=_REPO_ROOT, env=_ENV, capture_output=True, text=True,
        timeout=300, check=False)
    self.assertEqual((result.returncode, result.stderr), (
        2, "sweep: error: --run=4, but the study has 4 runs: give 0 to 3 (sbatch --array=0-3).\n"))
    self.assertFalse(os.path.exists(root))


class ExpandTest(absltest.TestCase):

  def test_readme_grid_collapses_the_unused_bits_to_four_runs(self):
    grid = study.parse_grid(["aggregator.name=mean,compression,quantize",
                             "aggregator.quantize.bits=4,8"], demo.get_config())
    self.assertEqual(study.expand(demo.get_config(), grid), [
        study.PlannedRun("aggregator-mean", {"aggregator.name": "mean"}),
        study.PlannedRun("aggregator-compression", {"aggregator.name": "compression"}),
        study.PlannedRun("aggregator-quantize_bits-4",
                         {"aggregator.name": "quantize", "aggregator.quantize.bits": 4}),
        study.PlannedRun("aggregator-quantize_bits-8",
                         {"aggregator.name": "quantize", "aggregator.quantize.bits": 8})])


if __name__ == "__main__":
  absltest.main()
