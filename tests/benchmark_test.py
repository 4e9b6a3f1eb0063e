"""The benchmark's report: `experiments.benchmark --quick` writes a JSON file and a Markdown report
whose ratios are the ratios of the medians it measured, with a verdict against each target."""

import json
import os
import statistics
import subprocess
import sys

from absl.testing import absltest

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BenchmarkReportTest(absltest.TestCase):

  def test_quick_benchmark_writes_consistent_reports(self):
    out = self.create_tempdir().full_path
    result = subprocess.run(
        [sys.executable, "-m", "experiments.benchmark", "--quick", f"--out={out}"],
        cwd=_REPO_ROOT, env=dict(os.environ, PYTHONPATH=_REPO_ROOT), capture_output=True,
        text=True, timeout=600)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertEqual(sorted(os.listdir(out)), ["benchmark.json", "benchmark.md"])
    with open(os.path.join(out, "benchmark.json")) as report_file:
      report = json.load(report_file)

    rounds = report["rounds"]["contenders"]
    self.assertEqual(sorted(rounds), [
        "bare_one_batch_per_client", "bare_process_next", "bare_worker_concurrency_2",
        "bare_worker_concurrency_4", "bare_worker_concurrency_unlimited",
        "floor_one_batch_per_client", "plain_tf_floor", "runner"])
    self.assertEqual({stats["n"] for stats in rounds.values()}, {2})
    median = {name: stats["median_s"] for name, stats in rounds.items()}
    seconds = report["rounds"]["seconds"]
    self.assertEqual({name: statistics.median(values) for name, values in seconds.items()}, median)
    self.assertEqual(report["rounds"]["floor_ratio"], statistics.median(
        [bare / floor for bare, floor in zip(seconds["bare_process_next"],
                                             seconds["plain_tf_floor"])]))
    self.assertEqual(report["rounds"]["wrapper_overhead_side_by_side"], statistics.median(
        [runner / bare for runner, bare in zip(seconds["runner"], seconds["bare_process_next"])]))
    # The runner's round includes the bare round's work, so its own share is at least 1.
    self.assertGreaterEqual(report["rounds"]["wrapper_overhead_in_round"], 1.0)
    self.assertEqual(report["targets"]["wrapper_overhead"]["value"],
                     report["rounds"]["wrapper_overhead_in_round"])
    self.assertEqual(report["rounds"]["fixed_seconds_per_round"],
                     median["bare_one_batch_per_client"] - median["floor_one_batch_per_client"])
    checkpoints = report["checkpoints"]["contenders"]
    self.assertEqual(sorted(checkpoints), [
        "load_file_program_state_manager", "load_ours", "save_file_program_state_manager",
        "save_ours"])
    self.assertEqual(report["checkpoints"]["checkpoint_save_vs_file_manager"],
                     checkpoints["save_ours"]["median_s"]
                     / checkpoints["save_file_program_state_manager"]["median_s"])
    self.assertEqual(report["checkpoints"]["checkpoint_share_of_round"],
                     checkpoints["save_ours"]["median_s"] / median["bare_process_next"])
    # The FedAvg CNN server state: weights (1,663,370 float32) plus optimizer and aggregator state.
    self.assertGreater(report["checkpoints"]["state_bytes"], 1_663_370 * 4)
    resume = report["resume"]["contenders"]
    self.assertEqual(report["resume"]["resume_extra_seconds"],
                     resume["resume_to_round_3"]["median_s"]
                     - resume["cold_start_to_round_1"]["median_s"])
    self.assertEqual([(row["model"], row["clients_per_round"], row["examples_processed"])
                      for row in report["scaling"]],
                     [("linear", 2, 40), ("2nn", 2, 40), ("cnn", 2, 40), ("cnn", 4, 80)])
    for row in report["scaling"]:
      self.assertGreater(row["worker_peak_rss_bytes"], 0)
      self.assertGreater(row["python_peak_rss_bytes"], 0)

    markdown = open(os.path.join(out, "benchmark.md")).read().splitlines()
    for name, target in report["targets"].items():
      met = target["value"] <= target["target"]
      self.assertEqual(target["verdict"] == "met", met, name)
      row = [line for line in markdown if line.startswith(f"| {name} |")]
      self.assertLen(row, 1)
      self.assertTrue(row[0].endswith(f"| {target['verdict']} |"), row[0])
    self.assertLen([line for line in markdown if line.startswith("| cnn |")], 2)


if __name__ == "__main__":
  absltest.main()
