"""Bad input to the runner: one clear line on stderr, exit status 2, nothing created or changed."""

import os
import subprocess
import sys

from absl.testing import absltest

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(root, *overrides):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.run_emnist", "--config=configs/demo.py",
       f"--root_output_dir={root}", "--experiment_name=bad", "--config.model.name=linear",
       *overrides],
      cwd=_REPO_ROOT, env=dict(os.environ, PYTHONPATH=_REPO_ROOT), capture_output=True, text=True,
      timeout=300)
  return result.returncode, result.stdout, result.stderr


class BadInputTest(absltest.TestCase):

  def _assert_refused(self, expected_line, *overrides, root=None):
    root = root or self.create_tempdir().full_path
    before = sorted(os.listdir(root)) if os.path.isdir(root) else None
    status, stdout, stderr = _run(root, *overrides)
    self.assertEqual(status, 2, stderr)
    self.assertEqual(stdout, "")
    self.assertEqual(stderr.splitlines(), [expected_line])
    self.assertEqual(sorted(os.listdir(root)) if os.path.isdir(root) else None, before)

  def test_unknown_config_field(self):
    self._assert_refused(
        "run_emnist: error: unknown config field 'rounds'; config fields are listed in the "
        "README, flags in --helpfull.", "--config.training.rounds=3")

  def test_rounds_below_one(self):
    self._assert_refused(
        "run_emnist: error: config.training.total_rounds must be at least 1, got 0.",
        "--config.training.total_rounds=0")

  def test_clients_per_round_above_the_population(self):
    self._assert_refused(
        "run_emnist: error: config.training.clients_per_round is 6, above the 5 training "
        "clients.", "--config.data.synthetic.num_clients=5", "--config.training.clients_per_round=6")

  def test_quantization_bits_out_of_range(self):
    self._assert_refused(
        "run_emnist: error: config: aggregator.quantize.bits must be between 1 and 16, got 0.",
        "--config.aggregator.name=quantize", "--config.aggregator.quantize.bits=0")

  def test_missing_data_file(self):
    cache_dir = self.create_tempdir().full_path
    status, _, stderr = _run(self.create_tempdir().full_path, "--config.data.source=emnist",
                             f"--config.data.cache_dir={cache_dir}")
    self.assertEqual(status, 2)
    self.assertLen(stderr.splitlines(), 1)
    self.assertStartsWith(stderr, "run_emnist: error: Federated EMNIST not found: expected "
                          f"{cache_dir}/emnist_all.sqlite.")

  def test_unwritable_output_dir(self):
    parent = self.create_tempdir().full_path
    not_a_folder = os.path.join(parent, "a_file")
    with open(not_a_folder, "w") as blocker:
      blocker.write("not a folder")
    self._assert_refused(
        f"run_emnist: error: cannot write the run folder {not_a_folder}/bad: Not a "
        "directory; choose a writable --root_output_dir.", root=not_a_folder)


if __name__ == "__main__":
  absltest.main()
