"""Tests for tff_resume.releases.metrics_release: one TensorBoard point per round across restarts."""

import os

from absl.testing import absltest

from tensorboard.summary.writer import event_file_writer

from tff_resume.releases import metrics_release
from tff_resume.releases import release_managers


class TensorBoardScalarsTest(absltest.TestCase):

  def test_numbers_only_and_a_mibit_twin_for_every_bit_count(self):
    self.assertEqual(metrics_release.tensorboard_scalars({
        "client_work/train/loss": 0.5, "flag": True, "name": "x",
        "communication/aggregated_bits": 3 * 2 ** 20,
        "communication/broadcasted_bits_per_round": 2 ** 19}), {
            "client_work/train/loss": 0.5,
            "communication/aggregated_bits": 3 * 2.0 ** 20,
            "communication/aggregated_mibit": 3.0,
            "communication/broadcasted_bits_per_round": 2.0 ** 19,
            "communication/broadcasted_mibit_per_round": 0.5})


class PrepareLogdirTest(absltest.TestCase):
  """What each start leaves on disk; tests/tensorboard_test.py reads the result through TensorBoard."""

  def _write(self, run_dir, first_round, rounds):
    """Writes a start's event file; returns its path."""
    before = set(metrics_release.event_files(run_dir))
    writer = metrics_release.TensorBoardRoundWriter(run_dir)
    writer.start(first_round)
    for round_num in rounds:
      writer.write_round(round_num, {"loss": float(round_num)})
    writer.close()
    (path,) = set(metrics_release.event_files(run_dir)) - before
    return path

  def test_a_new_file_sorts_after_the_one_before_it_within_a_second(self):
    run_dir = self.create_tempdir().full_path
    scratch = self.create_tempdir().full_path
    # Bring this process's writer counter to where its next two files are ".9." and ".10." (or
    # ".99." and ".100."), which sort the other way round as text when begun in one second.
    while True:
      writer = event_file_writer.EventFileWriter(scratch)
      writer.close()
      counter = int(os.path.basename(writer._file_name).split(".")[6])  # pylint: disable=protected-access
      if str(counter + 2).strip("0") == "1":
        break
    first = self._write(run_dir, 1, [1, 2])
    second = self._write(run_dir, 3, [3])
    self.assertEqual([os.path.basename(path).split(".")[6] for path in (first, second)],
                     [str(counter + 1), str(counter + 2)])
    self.assertEqual(metrics_release.event_files(run_dir), [first, second])

  def test_cuts_only_files_with_redone_rounds_and_keeps_a_files_earlier_rounds(self):
    run_dir = self.create_tempdir().full_path
    first = self._write(run_dir, 1, [1, 2])
    second = self._write(run_dir, 3, [3, 4, 5])
    sizes = {path: os.path.getsize(path) for path in (first, second)}
    self.assertTrue(metrics_release.prepare_logdir(run_dir, 6))
    self.assertEqual([os.path.getsize(first), os.path.getsize(second)],
                     [sizes[first], sizes[second]])
    self.assertTrue(metrics_release.prepare_logdir(run_dir, 4))
    self.assertEqual(os.path.getsize(first), sizes[first])
    self.assertLess(os.path.getsize(second), sizes[second])
    # A start at round 2 cuts both; the second file then keeps only its header.
    self.assertTrue(metrics_release.prepare_logdir(run_dir, 2))
    cut_sizes = [os.path.getsize(first), os.path.getsize(second)]
    self.assertLess(cut_sizes[0], sizes[first])
    self.assertTrue(metrics_release.prepare_logdir(run_dir, 2))  # Already cut: unchanged.
    self.assertEqual([os.path.getsize(first), os.path.getsize(second)], cut_sizes)

  def test_a_damaged_newest_file_sets_every_event_file_aside(self):
    run_dir = self.create_tempdir().full_path
    first = self._write(run_dir, 1, [1, 2])
    second = self._write(run_dir, 3, [3])
    with open(second, "r+b") as event_file:
      event_file.seek(60)
      event_file.write(b"garbage")
    self.assertFalse(metrics_release.prepare_logdir(run_dir, 4))
    self.assertEqual(metrics_release.event_files(run_dir), [])
    self.assertEqual(sorted(os.listdir(run_dir)), sorted(
        os.path.basename(path).replace("tfevents", "damaged-events") for path in (first, second)))

  def test_adopts_a_legacy_logdir_folder(self):
    run_dir = self.create_tempdir().full_path
    legacy = os.path.join(run_dir, metrics_release.LEGACY_LOGDIR)
    event_file = os.path.basename(self._write(legacy, 1, [1, 2]))
    metrics_release.prepare_logdir(run_dir, 3)
    self.assertEqual(os.listdir(run_dir), [event_file])


class CsvReleaseManagerTest(absltest.TestCase):
  """The CSV as a run releases it: rewritten from the history at a start, then a row a round."""

  def test_one_row_per_round_and_a_restart_drops_redone_rounds(self):
    path = self.create_tempdir().full_path + "/results/metrics.csv"
    rounds = [{"loss": 2.5, "bits": 10}, {"loss": 1.25, "bits": 20}, {"loss": 9.0, "bits": 30}]
    history = lambda last: iter(rounds[:last])
    table = release_managers.CsvReleaseManager(path)
    table.start(4, history)
    rounds[1:] = [{"loss": 1.25, "bits": 20, "accuracy": 0.5}]
    table.start(3, history)
    with open(path) as csv_file:
      self.assertEqual(csv_file.read(), "round,loss,bits,accuracy\n1,2.5,10,\n2,1.25,20,0.5\n")
    self.assertEqual(os.listdir(os.path.dirname(path)), ["metrics.csv"])

  def test_rounds_append_rows_and_a_new_metric_rewrites_the_header(self):
    path = self.create_tempdir().full_path + "/results/metrics.csv"
    rounds = [{"loss": 2.5, "bits": 10}]
    history = lambda last: iter(rounds[:last])
    table = release_managers.CsvReleaseManager(path)
    table.start(2, history)
    rounds.append({"loss": 1.5, "bits": 20})
    table.release_round(2, rounds[-1])
    with open(path) as csv_file:
      self.assertEqual(csv_file.read(), "round,loss,bits\n1,2.5,10\n2,1.5,20\n")
    rounds.append({"loss": 1.25, "bits": 30, "accuracy": 0.75})
    table.release_round(3, rounds[-1])
    rounds.append({"loss": 1.0, "bits": 40})
    table.release_round(4, rounds[-1])
    with open(path) as csv_file:
      self.assertEqual(csv_file.read(), "round,loss,bits,accuracy\n1,2.5,10,\n2,1.5,20,\n"
                                        "3,1.25,30,0.75\n4,1.0,40,\n")


if __name__ == "__main__":
  absltest.main()
