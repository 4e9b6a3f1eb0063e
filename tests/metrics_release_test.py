"""Tests for tff_resume.metrics_release: one TensorBoard point per round across restarts."""

import os

from absl.testing import absltest

from tff_resume import metrics_release


class TensorBoardRoundWriterTest(absltest.TestCase):

  def test_restart_replaces_redone_rounds(self):
    logdir = self.create_tempdir().full_path
    first = metrics_release.TensorBoardRoundWriter(logdir)
    first.start(1)
    for round_num in (1, 2, 3):
      first.write_round(round_num, {"loss": round_num * 1.5, "clients": 10, "name": "skipped"})
    first.close()
    second = metrics_release.TensorBoardRoundWriter(logdir)
    second.start(2)
    for round_num in (2, 3, 4):
      second.write_round(round_num, {"loss": round_num * 0.5, "clients": 10})
    second.write_round(5, {"bits": 2 ** 40 + 1})
    second.close()
    self.assertEqual(metrics_release.read_scalars(logdir), {
        "loss": [(1, 1.5), (2, 1.0), (3, 1.5), (4, 2.0)],
        "clients": [(1, 10.0), (2, 10.0), (3, 10.0), (4, 10.0)],
        "bits": [(5, 2 ** 40 + 1)],
    })


class WriteMetricsCsvTest(absltest.TestCase):

  def test_one_row_per_round_and_a_rewrite_drops_redone_rounds(self):
    path = self.create_tempdir().full_path + "/results/metrics.csv"
    metrics_release.write_metrics_csv(path, [{"loss": 2.5, "bits": 10}, {"loss": 1.25, "bits": 20},
                                             {"loss": 9.0, "bits": 30}])
    metrics_release.write_metrics_csv(path, [{"loss": 2.5, "bits": 10}, {"loss": 1.25, "bits": 20,
                                                                         "accuracy": 0.5}])
    with open(path) as csv_file:
      self.assertEqual(csv_file.read(), "round,loss,bits,accuracy\n1,2.5,10,\n2,1.25,20,0.5\n")
    self.assertEqual(os.listdir(os.path.dirname(path)), ["metrics.csv"])


if __name__ == "__main__":
  absltest.main()
