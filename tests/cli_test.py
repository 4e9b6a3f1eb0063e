"""Tests for the `tff-resume data` commands."""

import contextlib
import io
import os
import subprocess
import sys

from absl.testing import absltest

from tff_resume import cli

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*argv):
  stdout, stderr = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
    status = cli.main(list(argv))
  return status, stdout.getvalue(), stderr.getvalue()


class DataInspectTest(absltest.TestCase):

  def test_synthetic_summary(self):
    status, stdout, _ = _run("data", "inspect", "--source", "synthetic", "--num_clients", "3",
                             "--only_digits", "--split", "test")
    self.assertEqual(status, 0)
    self.assertEqual(stdout.splitlines()[:2], [
        "synthetic (seed 0) [test]: 3 clients, 60 examples",
        "  examples per client: min 20, median 20, max 20"])

  def test_a_reader_that_stops_reading_ends_it_quietly(self):
    """`tff-resume ... | head -1`: the closed pipe ends the command with 141 (SIGPIPE), no error."""
    command = subprocess.Popen(
        [sys.executable, "-m", "tff_resume.cli", "data", "inspect", "--source", "synthetic",
         "--num_clients", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=_REPO_ROOT), cwd=_REPO_ROOT)
    command.stdout.close()  # Before it writes anything.
    stderr = command.stderr.read()
    self.assertEqual(command.wait(timeout=120), 141)
    self.assertEqual(stderr, "")

  def test_missing_emnist_is_one_line_and_status_2(self):
    cache_dir = self.create_tempdir().full_path
    status, stdout, stderr = _run("data", "inspect", "--source", "emnist", "--cache_dir", cache_dir)
    self.assertEqual(status, 2)
    self.assertEqual(stdout, "")
    self.assertLen(stderr.splitlines(), 1)
    self.assertStartsWith(stderr, f"tff-resume: error: Federated EMNIST not found: expected "
                          f"{cache_dir}/emnist_all.sqlite.")

  def test_leaf_source_needs_leaf_dir(self):
    status, _, stderr = _run("data", "inspect", "--source", "leaf")
    self.assertEqual(status, 2)
    self.assertIn("--source=leaf needs --leaf_dir", stderr)


if __name__ == "__main__":
  absltest.main()


class UnwritableOutTest(absltest.TestCase):

  def test_an_out_folder_that_cannot_be_written_is_one_line_and_status_2(self):
    """/proc refuses new files even to root, as a read-only mount would."""
    for argv in (["export", self.create_tempdir().full_path, "--out", "/proc/tff_resume_out"],
                 ["data", "import-leaf", "--src", self.create_tempdir().full_path, "--out",
                  "/proc/tff_resume_out"]):
      with self.subTest(argv[0]):
        if argv[0] == "data":  # A LEAF folder with its two (empty-shard) splits.
          for split in ("train", "test"):
            os.makedirs(os.path.join(argv[3], split))
            with open(os.path.join(argv[3], split, "all_data_0.json"), "w") as shard:
              shard.write('{"users": [], "num_samples": [], "user_data": {}}')
        else:
          os.makedirs(os.path.join(argv[1], "checkpoints"))
          with open(os.path.join(argv[1], "config.json"), "w") as config:
            config.write("{}")
        status, stdout, stderr = _run(*argv)
        self.assertEqual(status, 2, stderr)
        self.assertEqual(stdout, "")
        self.assertLen(stderr.splitlines(), 1)
        self.assertRegex(stderr, r"^tff-resume: error: cannot write /proc/\S*tff_resume_out\S*: .*"
                         "choose another folder. Nothing was written.$")
