"""Tests for tff_resume.storage.paths: experiment names are one folder; a run folder's own files and
folders must not be symbolic links (the runner refuses them, changing nothing)."""

import os
import subprocess
import sys

from absl.testing import absltest

from tff_resume.storage import paths

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree(path):
  return sorted(os.path.relpath(os.path.join(folder, name), path)
                for folder, folders, names in os.walk(path) for name in folders + names)


class PathsTest(absltest.TestCase):

  def test_experiment_names_are_one_plain_folder(self):
    for name in ("", ".", "..", "a/b", "/abs", "nul\0"):
      with self.assertRaises(paths.InvalidExperimentNameError):
        paths.check_experiment_name(name)
    paths.check_experiment_name("demo_compressed-2")

  def test_links_among_a_run_folders_own_files_are_refused(self):
    outside = self.create_tempdir().full_path
    for name in ("results", "checkpoints", "config.json", "progress.json", "run.lock",
                 "events.out.tfevents.1.host", "results/metrics.csv",
                 "checkpoints/history.sqlite"):
      with self.subTest(name):
        run_paths = paths.RunPaths(self.create_tempdir().full_path, "run")
        os.makedirs(os.path.join(run_paths.run_dir, "results"))
        os.makedirs(os.path.join(run_paths.run_dir, "checkpoints"))
        link = os.path.join(run_paths.run_dir, name)
        if os.path.isdir(link):
          os.rmdir(link)
        os.symlink(outside, link)
        with self.assertRaisesRegex(paths.NotOwnFileError, f"{link} is a symbolic link"):
          paths.check_own_files(run_paths)
    run_paths = paths.RunPaths(self.create_tempdir().full_path, "run")
    os.makedirs(run_paths.run_dir)
    with open(run_paths.results_dir, "w"):
      pass
    with self.assertRaisesRegex(paths.NotOwnFileError, "results is not a folder"):
      paths.check_own_files(run_paths)

  def test_the_runner_refuses_a_linked_results_folder_and_writes_nothing_anywhere(self):
    root, outside = self.create_tempdir().full_path, self.create_tempdir().full_path
    os.makedirs(os.path.join(root, "linked"))
    os.symlink(outside, os.path.join(root, "linked", "results"))
    result = subprocess.run(
        [sys.executable, "-m", "experiments.run_emnist", "--config=configs/demo.py:smoke",
         f"--root_output_dir={root}", "--experiment_name=linked", "--config.model.name=linear"],
        cwd=_REPO_ROOT, env=dict(os.environ, PYTHONPATH=_REPO_ROOT), capture_output=True,
        text=True, timeout=300)
    self.assertEqual(result.returncode, 2, result.stderr)
    self.assertEqual(result.stderr.strip().splitlines(),
                     [f"run_emnist: error: {root}/linked/results is a symbolic link: a run writes only "
                      "its own files, never through a link (which may lead out of the run folder). "
                      "Replace it with the file itself, or move the run folder away; nothing was "
                      "changed."])
    self.assertEqual(_tree(root), ["linked", "linked/results"])
    self.assertEqual(os.listdir(outside), [])


if __name__ == "__main__":
  absltest.main()
