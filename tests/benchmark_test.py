"""The benchmark's report: `experiments.benchmark --quick` writes a JSON file and a Markdown report
whose ratios are the ratios of the medians it measured, with a verdict against each target."""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from absl.testing import absltest

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BenchmarkReportTest(absltest.TestCase):
  """One `--quick` run of every section, read by each test."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.out = tempfile.mkdtemp()
    result = subprocess.run(
        [sys.executable, "-m", "experiments.benchmark", "--quick", f"--out={cls.out}"],
        cwd=_REPO_ROOT, env=dict(os.environ, PYTHONPATH=_REPO_ROOT), capture_output=True,
        text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(cls.out, "benchmark.json")) as report_file:
      cls.report = json.load(report_file)
    with open(os.path.join(cls.out, "benchmark.md")) as markdown_file:
      cls.markdown = markdown_file.read().splitlines()

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.out)
    super().tearDownClass()

  def test_core_sections_report_consistent_ratios(self):
    out, report = self.out, self.report
    self.assertEqual(sorted(os.listdir(out)), ["benchmark.json", "benchmark.md"])

    rounds = report["rounds"]["contenders"]
    self.assertEqual(sorted(rounds), [
        "bare_bfloat16", "bare_bfloat16_worker_concurrency_cores",
        "bare_bfloat16_worker_concurrency_unlimited", "bare_loop", "bare_one_batch_per_client",
        "bare_process_next", "bare_worker_concurrency_cores",
        "bare_worker_concurrency_unlimited",
        "floor_one_batch_per_client", "in_memory_floor", "in_memory_floor_bfloat16",
        "plain_tf_floor", "runner"])
    self.assertEqual({stats["n"] for stats in rounds.values()}, {2})
    median = {name: stats["median_s"] for name, stats in rounds.items()}
    seconds = report["rounds"]["seconds"]
    self.assertEqual({name: statistics.median(values) for name, values in seconds.items()}, median)
    self.assertEqual(report["rounds"]["floor_ratio"], statistics.median(
        [bare / floor for bare, floor in zip(seconds["bare_process_next"],
                                             seconds["plain_tf_floor"])]))
    for contender, ratio in (("bare_process_next", "in_memory_floor_ratio"),
                             ("bare_bfloat16", "bfloat16_in_memory_floor_ratio")):
      self.assertEqual(report["rounds"][ratio], statistics.median(
          [bare / floor for bare, floor in zip(seconds[contender], seconds["in_memory_floor"])]))
      self.assertEqual(report["targets"][ratio]["value"], report["rounds"][ratio])
    self.assertEqual({name: report["targets"][name]["target"] for name in (
        "in_memory_floor_ratio", "bfloat16_in_memory_floor_ratio")},
                     {"in_memory_floor_ratio": 1.15, "bfloat16_in_memory_floor_ratio": 0.75})
    self.assertEqual(report["rounds"]["unlimited_concurrency_vs_cores"]["bfloat16"], statistics.median(
        [unlimited / cores for unlimited, cores in zip(
            seconds["bare_bfloat16_worker_concurrency_unlimited"],
            seconds["bare_bfloat16_worker_concurrency_cores"])]))
    self.assertEqual(report["rounds"]["wrapper_overhead_side_by_side"], statistics.median(
        [runner / bare for runner, bare in zip(seconds["runner"], seconds["bare_loop"])]))
    # Each round's sampling to the next's, over its time/round_seconds: 3 periods in each timed
    # call of 4 rounds.
    for rounds in (report["rounds"], report["rounds"]["linear"]):
      self.assertEqual(rounds["wrapper_overhead_in_round"], statistics.median(
          [period / own for period, own in rounds["period_and_round_seconds"]]))
      self.assertLen(rounds["period_and_round_seconds"], report["repetitions"] * 3)
    self.assertEqual(report["rounds"]["bfloat16_own_floor_ratio"], statistics.median(
        [bare / floor for bare, floor in zip(seconds["bare_bfloat16"],
                                             seconds["in_memory_floor_bfloat16"])]))
    self.assertEqual(report["targets"]["bfloat16_own_floor_ratio"]["target"], 1.15)
    self.assertEqual(report["targets"]["wrapper_overhead"]["target"], 1.01)
    linear = report["rounds"]["linear"]
    self.assertEqual(sorted(linear["contenders"]), ["bare_loop", "runner"])
    self.assertEqual(linear["wrapper_overhead_side_by_side"], statistics.median(
        [runner / bare for runner, bare in zip(linear["seconds"]["runner"],
                                               linear["seconds"]["bare_loop"])]))
    self.assertEqual(report["targets"]["wrapper_overhead"]["value"],
                     report["rounds"]["wrapper_overhead_side_by_side"])
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

    markdown = self.markdown
    for name, target in report["targets"].items():
      met = target["value"] <= target["target"]
      self.assertEqual(target["verdict"] == "met", met, name)
      row = [line for line in markdown if line.startswith(f"| {name} |")]
      self.assertLen(row, 1)
      self.assertTrue(row[0].endswith(f"| {target['verdict']} |"), row[0])
    self.assertLen([line for line in markdown if line.startswith("| cnn |")], 2)


  def test_scale_sections_report_costs_against_rounds_done_and_population(self):
    report, markdown = self.report, self.markdown
    scale = report["scale"]
    books = scale["bookkeeping"]
    self.assertEqual(sorted(books["contenders"]),
                     ["round_at_10", "round_at_100", "round_at_300"])
    self.assertEqual({stats["n"] for stats in books["contenders"].values()}, {3})
    self.assertEqual(report["targets"]["bookkeeping_10000_vs_10"]["value"], statistics.median(
        [a / b for a, b in zip(books["seconds"]["round_at_300"], books["seconds"]["round_at_10"])]))
    # A version after 300 rounds holds what one after 10 does: only digits of counts differ.
    sizes = books["version_bytes"]
    self.assertLessEqual(abs(sizes["300"] - sizes["10"]), 16)

    resume = scale["long_resume"]
    self.assertEqual(resume["rounds_done"], 300)
    self.assertEqual(report["targets"]["resume_10000_extra_seconds"]["value"],
                     resume["contenders"]["resume_to_round_301"]["median_s"]
                     - resume["contenders"]["cold_start_to_round_1"]["median_s"])

    population = scale["population"]
    seconds = population["seconds"]
    self.assertEqual(report["targets"]["startup_3400_vs_100_writers"]["value"], statistics.median(
        [a / b for a, b in zip(seconds["writers_400"], seconds["writers_100"])]))
    peak = population["peak_mib_runner_and_worker"]
    self.assertEqual(report["targets"]["startup_3400_extra_mib"]["value"],
                     peak["400"] - peak["100"])
    self.assertGreater(peak["100"], 100)  # TensorFlow alone takes more than that.

    long_run = scale["long_run"]
    self.assertEqual(long_run["rounds"], [5, 15, 20])
    growth = {process: long_run["rss_mib"]["15"][process] - long_run["rss_mib"]["5"][process]
              for process in ("runner", "worker")}
    self.assertEqual(long_run["rss_growth_mib"], growth)
    self.assertEqual(report["targets"]["rss_growth_50_to_500_mib"]["value"], max(growth.values()))
    versions = long_run["version_bytes"]
    self.assertEqual(sorted(versions["5"]), ["MANIFEST.json", "metadata.json", "state.npz"])
    self.assertEqual(versions["5"]["state.npz"], versions["20"]["state.npz"])
    # Version 20 also holds the final evaluation's metrics; still within 10% of version 5.
    self.assertLess(sum(versions["20"].values()), 1.1 * sum(versions["5"].values()))

    for name, target in report["targets"].items():
      self.assertEqual(target["verdict"] == "met", target["value"] <= target["target"], name)
      self.assertLen([line for line in markdown if line.startswith(f"| {name} |")], 1)
    self.assertIn("## scale: bookkeeping per round against rounds done", markdown)


if __name__ == "__main__":
  absltest.main()
