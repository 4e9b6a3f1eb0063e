"""EMNIST files as TFF's own writer leaves them (no index): a start adds the index TFF's per-client
query needs and trains exactly as on an indexed copy; a read-only file gets one line and still trains;
a kill halfway through adding the index leaves the file as it was; a reader meanwhile is never
disturbed."""

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading

from absl.testing import absltest
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.simulation.datasets import sql_client_data_utils

from experiments import chaos
from tff_resume.data import client_index
from tff_resume.data import synthetic
from tff_resume.runtime import fault_hooks

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ENV = dict(os.environ, PYTHONPATH=_REPO_ROOT)
_FILE = "emnist_all.sqlite"
_INDEXED_PLAN = ("SEARCH examples USING INDEX tff_resume_examples_by_client "
                 "(client_id=? AND split_name=?)")


def _write_as_tff_does(path: str) -> None:
  """12 training writers (200-300 examples each) and 12 test writers in TFF's format, written by
  TFF's own writer, which adds no index."""
  spec = synthetic.SyntheticSpec(num_clients=12, min_examples_per_client=200,
                                 max_examples_per_client=300, test_examples_per_client=20,
                                 only_digits=False)
  arrays = {split: synthetic.synthetic_arrays(spec, split) for split in ("train", "test")}
  writers = {f"{split}_{writer}": (split, writer) for split in arrays for writer in arrays[split]}

  def dataset_fn(client_id):
    split, writer = writers[client_id]
    examples = arrays[split][writer]
    return tf.data.Dataset.from_tensor_slices(
        {"label": examples["label"], "pixels": examples["pixels"]})

  sql_client_data_utils.save_to_sql_client_data(
      list(writers), dataset_fn, path,
      split_names_by_client_id={client_id: f"all_{split}"
                                for client_id, (split, _) in writers.items()})


def _sha256(path: str) -> str:
  with open(path, "rb") as data:
    return hashlib.sha256(data.read()).hexdigest()


def _rows_sha256(path: str) -> str:
  """A digest of every row of both tables, in stored order."""
  digest = hashlib.sha256()
  connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
  try:
    for table in ("examples", "client_metadata"):
      for row in connection.execute(f"SELECT * FROM {table} ORDER BY rowid"):
        digest.update(repr(row).encode())
  finally:
    connection.close()
  return digest.hexdigest()


def _plan(path: str) -> str:
  connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
  try:
    return client_index.query_plan(connection)
  finally:
    connection.close()


def _run(command, env=None):
  result = subprocess.run(command, cwd=_REPO_ROOT, env=env or _ENV, capture_output=True,
                          text=True, timeout=300, check=False)
  return result.returncode, result.stdout, result.stderr


def _train(cache_dir: str, root: str, name: str, rounds: int = 2):
  return _run([sys.executable, "-m", "experiments.run_emnist", "--config=configs/demo.py:smoke",
               "--config.data.source=emnist", f"--config.data.cache_dir={cache_dir}",
               "--config.data.only_digits=false", "--config.model.name=linear",
               "--config.training.clients_per_round=3", f"--config.training.total_rounds={rounds}",
               f"--root_output_dir={root}", f"--experiment_name={name}"])


def _index_command(cache_dir: str, env=None):
  return _run([sys.executable, "-m", "tff_resume.cli", "data", "index", "--cache_dir", cache_dir],
              env=env)


class ClientIndexTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.pristine_dir = tempfile.mkdtemp()
    cls.pristine = os.path.join(cls.pristine_dir, _FILE)
    _write_as_tff_does(cls.pristine)
    cls.pristine_sha256 = _sha256(cls.pristine)
    cls.rows_sha256 = _rows_sha256(cls.pristine)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.pristine_dir)
    super().tearDownClass()

  def _copy(self, folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, _FILE)
    shutil.copyfile(self.pristine, path)
    return path

  def test_tffs_writer_leaves_no_index_so_the_query_scans_the_table(self):
    self.assertEqual(_plan(self.pristine), "SCAN examples")
    self.assertFalse(client_index.has_client_index(self.pristine))

  def test_a_start_adds_the_index_and_trains_exactly_as_on_an_indexed_copy(self):
    work = self.create_tempdir().full_path
    unindexed = self._copy(os.path.join(work, "unindexed"))
    indexed = self._copy(os.path.join(work, "indexed"))
    status, stdout, stderr = _index_command(os.path.dirname(indexed))
    self.assertEqual(status, 0, stderr)
    self.assertRegex(stdout, (
        rf"^Added tff_resume_examples_by_client to {re.escape(indexed)} in \d+\.\d s "
        rf"\(\d+\.\d MiB\); its rows are unchanged\.\nTFF's per-client query: "
        rf"{re.escape(_INDEXED_PLAN)}\n$"))

    root = os.path.join(work, "runs")
    status, stdout, stderr = _train(os.path.dirname(unindexed), root, "unindexed")
    self.assertEqual(status, 0, stderr)
    data_lines = [line for line in stdout.splitlines() if line.startswith("data: ")]
    self.assertLen(data_lines, 2)
    self.assertEqual(data_lines[0], (
        f"data: {_FILE} has no index for TFF's per-client query (TFF's writer adds none), so each "
        "client read scans the whole file; adding tff_resume_examples_by_client once (its rows "
        "are not changed)..."))
    self.assertRegex(data_lines[1], r"^data: index added in \d+\.\d s \(\d+\.\d MiB\)\.$")
    self.assertEqual(_plan(unindexed), _INDEXED_PLAN)
    self.assertEqual(_rows_sha256(unindexed), self.rows_sha256)
    self.assertEqual(_sha256(unindexed), _sha256(indexed))  # The same bytes as the command's.

    status, stdout, stderr = _train(os.path.dirname(indexed), root, "indexed")
    self.assertEqual(status, 0, stderr)
    self.assertNotIn("data: ", stdout)
    outcome = chaos.run_outcome(os.path.join(root, "unindexed"))
    self.assertEqual(outcome, chaos.run_outcome(os.path.join(root, "indexed")))
    # The participation record's examples (the file's client_metadata) are the clients' examples.
    train, _ = tff.simulation.datasets.emnist.load_data(only_digits=False,
                                                         cache_dir=os.path.dirname(indexed))
    self.assertLen(outcome["participation"], 6)
    self.assertEqual(
        [examples for _, _, examples in outcome["participation"]],
        [len(list(train.create_tf_dataset_for_client(client_id)))
         for _, client_id, _ in outcome["participation"]])
    # The fingerprint keeps the file's size as TFF wrote it, so the run resumes on the indexed file.
    with open(os.path.join(root, "unindexed", "checkpoints", "version_2",
                           "metadata.json")) as metadata:
      fingerprint = json.load(metadata)["fingerprint"]
    self.assertEqual(fingerprint["data.file_bytes"], os.path.getsize(self.pristine))
    status, stdout, stderr = _train(os.path.dirname(unindexed), root, "unindexed", rounds=3)
    self.assertEqual(status, 0, stderr)
    self.assertIn("from version 2 (0 rounds to redo), up to round 3.", stdout)
    self.assertNotIn("data: ", stdout)

  def test_a_read_only_file_gets_one_line_and_still_trains(self):
    mount_point = tempfile.mkdtemp()
    self.addCleanup(os.rmdir, mount_point)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", mount_point],
                      capture_output=True, check=False).returncode != 0:
      self.skipTest("mounting a read-only file system needs root")
    self.addCleanup(subprocess.run, ["umount", mount_point], check=True)
    path = self._copy(mount_point)
    subprocess.run(["mount", "-o", "remount,ro", mount_point], check=True)
    root = self.create_tempdir().full_path
    status, stdout, stderr = _train(mount_point, root, "read_only")
    self.assertEqual(status, 0, stderr)
    self.assertEqual([line for line in stdout.splitlines() if line.startswith("data: ")], [
        f"data: {path} has no index for TFF's per-client query, so each client read scans the "
        "whole file, and it cannot be written here. Where it can, run: tff-resume data index "
        f"--cache_dir {mount_point}"])
    self.assertIn("Done: 2 rounds", stdout)
    self.assertEqual(_sha256(path), self.pristine_sha256)
    status, stdout, stderr = _index_command(mount_point)
    self.assertEqual((status, stdout), (2, ""))
    self.assertEqual(stderr.splitlines(), [
        f"tff-resume: error: cannot add the index to {path}: attempt to write a readonly "
        "database. Run this where the file and its folder can be written; the file is unchanged."])
    self.assertEqual(sorted(os.listdir(mount_point)), [_FILE])

  def test_a_kill_while_the_index_is_written_leaves_the_file_as_it_was(self):
    folder = self.create_tempdir().full_path
    path = self._copy(folder)
    status, _, stderr = _index_command(
        folder, env=dict(_ENV, TFF_RESUME_FAULT="phases,kill-during-index"))
    self.assertEqual(status, -9, stderr)
    self.assertIn(fault_hooks.marker("adding index"), stderr)
    # The kill landed with part of the index in the file and the journal that undoes it beside.
    self.assertNotEqual(os.path.getsize(path), os.path.getsize(self.pristine))
    self.assertEqual(sorted(os.listdir(folder)), [_FILE, f"{_FILE}-journal"])
    # The next connection that can write rolls it back: the file is byte for byte what it was.
    self.assertFalse(client_index.has_client_index(path))
    self.assertEqual(sorted(os.listdir(folder)), [_FILE])
    self.assertEqual(_sha256(path), self.pristine_sha256)
    connection = sqlite3.connect(path)
    try:
      self.assertEqual(connection.execute("PRAGMA integrity_check").fetchall(), [("ok",)])
    finally:
      connection.close()
    status, stdout, stderr = _index_command(folder)
    self.assertEqual(status, 0, stderr)
    self.assertTrue(stdout.startswith("Added tff_resume_examples_by_client"), stdout)
    self.assertEqual(_rows_sha256(path), self.rows_sha256)

  def test_a_reader_meanwhile_sees_the_file_unchanged_until_the_whole_index_is_in(self):
    path = self._copy(self.create_tempdir().full_path)
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    self.addCleanup(reader.close)
    reader.execute("BEGIN")
    examples = reader.execute("SELECT count(*) FROM examples").fetchone()
    added = []
    adder = threading.Thread(target=lambda: added.append(client_index.add_client_index(path)))
    adder.start()
    adder.join(timeout=2.0)
    # The adder waits for the reader's transaction to end before it commits.
    self.assertTrue(adder.is_alive())
    self.assertEqual(client_index.query_plan(reader), "SCAN examples")
    self.assertEqual(reader.execute("SELECT count(*) FROM examples").fetchone(), examples)
    reader.execute("COMMIT")
    adder.join(timeout=60.0)
    self.assertEqual(added, [True])
    self.assertEqual(_plan(path), _INDEXED_PLAN)
    self.assertEqual(_rows_sha256(path), self.rows_sha256)


if __name__ == "__main__":
  absltest.main()
