"""The runner's config presets, and bad input: one clear line on stderr, exit status 2, nothing
created or changed."""

import csv
import json
import os
import subprocess
import sys

from absl.testing import absltest

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(root, *overrides, config="configs/demo.py", name="bad", env=None):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.run_emnist", f"--config={config}",
       f"--root_output_dir={root}", f"--experiment_name={name}", "--config.model.name=linear",
       *overrides],
      cwd=_REPO_ROOT, env=dict(os.environ, PYTHONPATH=_REPO_ROOT, **(env or {})), capture_output=True,
      text=True,
      timeout=300)
  return result.returncode, result.stdout, result.stderr


class SmokePresetTest(absltest.TestCase):

  def test_smoke_preset_shrinks_a_full_config_and_overrides_still_win(self):
    root = self.create_tempdir().full_path
    status, stdout, stderr = _run(root, "--config.training.total_rounds=3",
                                  config="configs/emnist_compression.py:smoke", name="smoke")
    self.assertEqual(status, 0, stderr)
    self.assertEqual([line.split()[1] for line in stdout.splitlines()
                      if line.startswith("round ")], ["1/3", "2/3", "3/3"])
    with open(os.path.join(root, "smoke", "config.json")) as config_file:
      config = json.load(config_file)
    self.assertEqual(config["data"]["source"], "synthetic")
    self.assertEqual(config["data"]["synthetic"]["num_clients"], 10)
    self.assertEqual(config["training"]["clients_per_round"], 2)
    self.assertEqual(config["training"]["total_rounds"], 3)  # The override, after the preset.
    self.assertEqual(config["client"]["epochs"], 1)
    self.assertEqual(config["evaluation"]["max_clients"], 2)
    self.assertEqual(config["aggregator"]["name"], "compression")  # Kept from the full config.
    with open(os.path.join(root, "smoke", "results", "metrics.csv"), newline="") as csv_file:
      rows = list(csv.DictReader(csv_file))
    self.assertEqual([row["round"] for row in rows], ["1", "2", "3"])
    self.assertEqual([row["evaluation/sparse_categorical_accuracy"] != "" for row in rows],
                     [False, False, True])


class BazelRunPathsTest(absltest.TestCase):
  """`bazel run` starts the runner in its runfiles tree and names the caller's folder in
  BUILD_WORKING_DIRECTORY; relative paths given by the caller must mean the caller's folder."""

  def test_relative_paths_resolve_against_the_callers_folder(self):
    callers_folder = self.create_tempdir().full_path
    with open(os.path.join(callers_folder, "my_config.py"), "w") as config_file:
      config_file.write("from configs import demo\n\n\ndef get_config(preset=''):\n"
                        "  config = demo.get_config(preset)\n"
                        "  config.training.total_rounds = 1\n  return config\n")
    status, _, stderr = _run("study", config="my_config.py:smoke", name="mine",
                             env={"BUILD_WORKING_DIRECTORY": callers_folder})
    self.assertEqual(status, 0, stderr)
    with open(os.path.join(callers_folder, "study", "mine", "config.json")) as config_file:
      self.assertEqual(json.load(config_file)["training"]["total_rounds"], 1)
    self.assertFalse(os.path.exists(os.path.join(_REPO_ROOT, "study")))


class BadInputTest(absltest.TestCase):

  def _assert_refused(self, expected_line, *overrides, root=None, config="configs/demo.py"):
    root = root or self.create_tempdir().full_path
    before = sorted(os.listdir(root)) if os.path.isdir(root) else None
    status, stdout, stderr = _run(root, *overrides, config=config)
    self.assertEqual(status, 2, stderr)
    self.assertEqual(stdout, "")
    self.assertEqual(stderr.splitlines(), [expected_line])
    self.assertEqual(sorted(os.listdir(root)) if os.path.isdir(root) else None, before)

  def test_unknown_config_field(self):
    self._assert_refused(
        "run_emnist: error: unknown config field 'rounds'; config fields are listed in "
        "docs/configuration.md, flags in --helpfull.", "--config.training.rounds=3")

  def test_unknown_preset(self):
    self._assert_refused(
        "run_emnist: error: cannot load the config configs/demo.py:tiny: unknown config preset "
        "'tiny'; presets: smoke (e.g. --config=configs/demo.py:smoke)", config="configs/demo.py:tiny")

  def test_a_config_that_is_not_python(self):
    folder = self.create_tempdir()
    folder.create_file("config.json", '{"training": {"total_rounds": 3}}')
    path = os.path.join(folder.full_path, "config.json")
    self._assert_refused(
        f"run_emnist: error: config file {path} is not a Python file: a config is a .py file whose "
        "get_config() returns an ml_collections.ConfigDict (see configs/demo.py).", config=path)

  def test_missing_config_file(self):
    self._assert_refused(
        "run_emnist: error: config file configs/nothere.py not found; the configs are the files "
        "in configs/ (e.g. --config=configs/demo.py).", config="configs/nothere.py")

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
