"""Tests for experiments.compare: the table's numbers come from the runs' CSVs; the plots are PNGs."""

import concurrent.futures
import csv
import os
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
import matplotlib.image

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ENV = dict(os.environ, PYTHONPATH=_REPO_ROOT)


def _python(*args):
  return subprocess.run([sys.executable, "-m", *args], cwd=_REPO_ROOT, env=_ENV,
                        capture_output=True, text=True, timeout=300)


def _rows(run_dir):
  with open(os.path.join(run_dir, "results", "metrics.csv"), newline="") as csv_file:
    return list(csv.DictReader(csv_file))


class CompareTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    small = ["--config=configs/demo.py:smoke", f"--root_output_dir={cls.root}",
             "--config.model.name=linear", "--config.training.total_rounds=3",
             "--config.evaluation.rounds_per_eval=2"]
    runs = {"uncompressed": [], "quantized": ["--config.aggregator.name=quantize",
                                              "--config.aggregator.quantize.threshold=0",
                                              "--config.aggregator.quantize.bits=4"]}
    with concurrent.futures.ThreadPoolExecutor(len(runs)) as pool:  # Two runners, two cores.
      results = pool.map(lambda name: _python("experiments.run_emnist", f"--experiment_name={name}",
                                              *small, *runs[name]), runs)
    for result in results:
      assert result.returncode == 0, result.stderr

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root)
    super().tearDownClass()

  def test_table_matches_the_csvs_and_plots_are_pngs(self):
    out = self.create_tempdir().full_path
    runs = [os.path.join(self.root, "uncompressed"), os.path.join(self.root, "quantized")]
    result = _python("experiments.compare", *runs, f"--out={out}")
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertEqual(sorted(os.listdir(out)), ["accuracy_vs_aggregated_bits.png",
                                               "accuracy_vs_round.png", "comparison.md"])
    with open(os.path.join(out, "comparison.md")) as table_file:
      table_rows = [line.split(" | ") for line in table_file.read().splitlines()[2:]]
    first_aggregated = int(_rows(runs[0])[-1]["communication/aggregated_bits"])
    for run_dir, cells in zip(runs, table_rows):
      rows = _rows(run_dir)
      evaluated = [float(r["evaluation/sparse_categorical_accuracy"]) for r in rows
                   if r["evaluation/sparse_categorical_accuracy"]]
      self.assertLen(evaluated, 2)  # Rounds 2 and 3 (the last).
      aggregated = int(rows[-1]["communication/aggregated_bits"])
      self.assertEqual(cells[0], f"| {os.path.basename(run_dir)}")
      self.assertEqual(cells[1:4], ["3", "evaluation", f"{evaluated[-1]:.4f}"])
      self.assertEqual(cells[4], f"{max(evaluated):.4f}")
      self.assertStartsWith(cells[5], rows[-1]["communication/broadcasted_bits"] + " (")
      self.assertStartsWith(cells[6], f"{aggregated} (")
      self.assertEqual(cells[7], f"{aggregated / first_aggregated:.4f}")
    self.assertEqual(table_rows[0][7], "1.0000")
    self.assertLess(float(table_rows[1][7]), 0.2)
    for name in ("accuracy_vs_round.png", "accuracy_vs_aggregated_bits.png"):
      path = os.path.join(out, name)
      with open(path, "rb") as image_file:
        self.assertEqual(image_file.read(8), b"\x89PNG\r\n\x1a\n")
      self.assertEqual(matplotlib.image.imread(path).shape, (450, 700, 4))

  def test_missing_run_is_one_line_and_status_2(self):
    result = _python("experiments.compare", os.path.join(self.root, "nope"),
                     f"--out={self.create_tempdir().full_path}")
    self.assertEqual(result.returncode, 2)
    self.assertLen(result.stderr.splitlines(), 1)
    self.assertIn("is nope a run folder", result.stderr.replace(self.root + "/", ""))


if __name__ == "__main__":
  absltest.main()
