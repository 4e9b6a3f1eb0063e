"""Tests for tff_resume.data.leaf: LEAF FEMNIST JSON into TFF's EMNIST SQLite file, read by TFF."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile

from absl.testing import absltest
import numpy as np
import tensorflow_federated as tff

from tff_resume.data import inspection
from tff_resume.data import leaf

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The real source folder (Bazel runs a symlinked copy): shared/ lies beside the repository.
_LEAF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "..",
                         "shared", "data", "femnist-leaf")
_HAVE_LEAF = os.path.isdir(os.path.join(_LEAF_DIR, "train"))
_SKIP_REASON = f"real LEAF FEMNIST data not found at {_LEAF_DIR}"


def _write_shard(directory, split, name, writers):
  """Writes a LEAF shard holding `writers`: {writer: (pixel rows, labels)}."""
  os.makedirs(os.path.join(directory, split), exist_ok=True)
  shard = {"users": list(writers), "num_samples": [len(y) for _, y in writers.values()],
           "user_data": {w: {"x": x, "y": y} for w, (x, y) in writers.items()}}
  with open(os.path.join(directory, split, name), "w") as shard_file:
    json.dump(shard, shard_file)


def _image(value=1.0):
  return [value] * 784


def _small_leaf(directory, train_writers=None):
  _write_shard(directory, "train", "all_data_0.json", train_writers or {
      "f0001_01": ([_image(0.5), _image()], [3, 40]), "f0002_02": ([_image()], [11])})
  _write_shard(directory, "test", "all_data_0.json", {"f0001_01": ([_image()], [7])})


@absltest.skipUnless(_HAVE_LEAF, _SKIP_REASON)
class RealLeafImportTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.out_dir = tempfile.mkdtemp(prefix="real_leaf_import")
    cls.summary = leaf.import_leaf(_LEAF_DIR, cls.out_dir)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.out_dir)
    super().tearDownClass()

  def test_import_counts_every_split_exactly(self):
    self.assertEqual(self.summary.clients, {"all_train": 105, "digits_only_train": 102,
                                            "all_test": 190, "digits_only_test": 181})
    self.assertEqual(self.summary.examples, {"all_train": 14640, "digits_only_train": 10363,
                                             "all_test": 4170, "digits_only_test": 2079})
    self.assertEqual(sorted(os.listdir(self.out_dir)), ["emnist_all.sqlite"])

  def test_client_metadata_matches_examples(self):
    connection = sqlite3.connect(os.path.join(self.out_dir, "emnist_all.sqlite"))
    metadata = connection.execute(
        "SELECT split_name, COUNT(*), SUM(num_examples) FROM client_metadata "
        "GROUP BY split_name ORDER BY split_name").fetchall()
    examples = connection.execute(
        "SELECT split_name, COUNT(DISTINCT client_id), COUNT(*) FROM examples "
        "GROUP BY split_name ORDER BY split_name").fetchall()
    connection.close()
    self.assertEqual(metadata, examples)
    self.assertEqual(metadata, [("all_test", 190, 4170), ("all_train", 105, 14640),
                                ("digits_only_test", 181, 2079), ("digits_only_train", 102, 10363)])

  def test_tff_loader_reads_an_example_exactly(self):
    shard = os.path.join(_LEAF_DIR, "train", "all_data_10_niid_05_keep_0_train_9.json")
    with open(shard) as shard_file:
      records = json.load(shard_file)["user_data"]["f3152_47"]
    train, test = tff.simulation.datasets.emnist.load_data(only_digits=False,
                                                           cache_dir=self.out_dir)
    self.assertLen(train.client_ids, 105)
    self.assertLen(test.client_ids, 190)
    examples = list(train.create_tf_dataset_for_client("f3152_47").as_numpy_iterator())
    self.assertLen(examples, len(records["y"]))
    for index in (0, 57, len(examples) - 1):
      np.testing.assert_array_equal(
          examples[index]["pixels"],
          np.asarray(records["x"][index], dtype=np.float32).reshape(28, 28))
      self.assertEqual(examples[index]["label"], records["y"][index])
    self.assertEqual(examples[0]["pixels"].dtype, np.float32)
    self.assertEqual(examples[0]["label"].dtype, np.int32)

  def test_digits_only_holds_only_digit_labels(self):
    train, test = tff.simulation.datasets.emnist.load_data(only_digits=True,
                                                           cache_dir=self.out_dir)
    self.assertLen(train.client_ids, 102)
    self.assertLen(test.client_ids, 181)
    path = os.path.join(self.out_dir, "emnist_all.sqlite")
    for split_name, examples in (("digits_only_train", 10363), ("digits_only_test", 2079)):
      summary = inspection.summarize(inspection.labels_from_sqlite(path, split_name))
      self.assertEqual(sorted(summary.label_counts), list(range(10)))
      self.assertEqual(summary.num_examples, examples)
    labels = [e["label"] for e in train.create_tf_dataset_for_client("f3152_47").as_numpy_iterator()]
    self.assertTrue(labels and max(labels) <= 9)

  def test_sqlite_and_leaf_summaries_agree(self):
    from_leaf = inspection.summarize(inspection.labels_from_leaf(_LEAF_DIR, "train"))
    from_sqlite = inspection.summarize(inspection.labels_from_sqlite(
        os.path.join(self.out_dir, "emnist_all.sqlite"), "all_train"))
    self.assertEqual(from_leaf, from_sqlite)
    self.assertEqual(len(from_leaf.label_counts), 62)


@absltest.skipUnless(_HAVE_LEAF, _SKIP_REASON)
class InterruptedImportTest(absltest.TestCase):

  def test_killed_import_leaves_no_file_and_next_import_cleans_up(self):
    out_dir = self.create_tempdir().full_path
    env = dict(os.environ, PYTHONPATH=_REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    importer = subprocess.Popen(
        [sys.executable, "-m", "tff_resume.cli", "data", "import-leaf", "--src", _LEAF_DIR,
         "--out", out_dir], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
      first_progress = importer.stdout.readline()
      self.assertStartsWith(first_progress, "[train 1/20]")
      importer.send_signal(signal.SIGKILL)
      importer.wait(timeout=30)
    finally:
      importer.kill()
      importer.communicate()
    leftovers = os.listdir(out_dir)
    self.assertNotIn("emnist_all.sqlite", leftovers)
    self.assertLen(leftovers, 1)
    self.assertStartsWith(leftovers[0], ".importing-")
    self.assertEqual(leaf.remove_stale_temporary_files(out_dir),
                     [os.path.join(out_dir, leftovers[0])])
    self.assertEqual(os.listdir(out_dir), [])


class MalformedLeafTest(absltest.TestCase):

  def _assert_import_fails(self, train_writers, *message_parts):
    leaf_dir = self.create_tempdir().full_path
    out_dir = os.path.join(self.create_tempdir().full_path, "out")
    _small_leaf(leaf_dir, train_writers)
    with self.assertRaises(leaf.LeafFormatError) as raised:
      leaf.import_leaf(leaf_dir, out_dir)
    for part in message_parts:
      self.assertIn(part, str(raised.exception))
    self.assertFalse(os.path.exists(out_dir))  # A failed import leaves no empty --out behind.

  def test_wrong_json_types_and_non_utf8_name_the_file(self):
    shard = {"users": ["f1"], "num_samples": [1], "user_data": {"f1": {"x": [_image()], "y": [1]}}}
    for change, message in (
        ({"users": 5}, "'users' must be a list of writer ids"),
        ({"num_samples": None}, "'num_samples' must be a list of counts"),
        ({"num_samples": [True]}, "'num_samples' must be a list of counts"),
        ({"user_data": []}, "'user_data' must be an object"),
        ({"user_data": {"f1": {"x": None, "y": [1]}}}, "'x' and 'y' must be lists, got NoneType"),
        ({"user_data": {"f1": {"x": [["0.5"] * 784], "y": [1]}}},
         "pixel values are not all numbers (they read as <U3)"),
        (None, "not UTF-8 text")):
      with self.subTest(message):
        leaf_dir = self.create_tempdir().full_path
        out_dir = os.path.join(self.create_tempdir().full_path, "out")
        _small_leaf(leaf_dir)
        shard_path = os.path.join(leaf_dir, "train", "all_data_0.json")
        with open(shard_path, "wb") as shard_file:
          if change is None:
            shard_file.write(b'{"users": ["f\xe9"]}')  # Latin-1, not UTF-8.
          else:
            shard_file.write(json.dumps({**shard, **change}).encode())
        with self.assertRaises(leaf.LeafFormatError) as raised:
          leaf.import_leaf(leaf_dir, out_dir)
        self.assertStartsWith(str(raised.exception), shard_path)
        self.assertIn(message, str(raised.exception))
        self.assertFalse(os.path.exists(out_dir))

  def test_short_image_names_file_writer_and_index(self):
    self._assert_import_fails({"f0001_01": ([_image(), [1.0] * 783], [1, 2])},
                              "all_data_0.json", "writer f0001_01", "index 1", "783 pixel values")

  def test_label_out_of_range_is_refused(self):
    self._assert_import_fails({"f0001_01": ([_image(), _image()], [1, 62])},
                              "writer f0001_01", "index 1", "label 62")

  def test_pixel_outside_unit_interval_is_refused(self):
    self._assert_import_fails({"f0009_09": ([_image(), _image(), _image(1.5)], [1, 2, 3])},
                              "writer f0009_09", "index 2", "outside [0, 1]")

  def test_num_samples_mismatch_is_refused(self):
    leaf_dir = self.create_tempdir().full_path
    _small_leaf(leaf_dir)
    shard_path = os.path.join(leaf_dir, "train", "all_data_0.json")
    with open(shard_path) as shard_file:
      shard = json.load(shard_file)
    shard["num_samples"][0] = 5
    with open(shard_path, "w") as shard_file:
      json.dump(shard, shard_file)
    out_dir = os.path.join(leaf_dir, "out")
    with self.assertRaisesRegex(leaf.LeafFormatError,
                                "writer f0001_01: num_samples says 5 but there are 2 images"):
      leaf.import_leaf(leaf_dir, out_dir)
    self.assertFalse(os.path.exists(out_dir))

  def test_writer_split_across_shards_is_refused(self):
    leaf_dir = self.create_tempdir().full_path
    _small_leaf(leaf_dir)
    _write_shard(leaf_dir, "train", "all_data_1.json", {"f0002_02": ([_image()], [4])})
    with self.assertRaisesRegex(leaf.LeafFormatError,
                                "all_data_1.json, writer f0002_02: .* split across shards"):
      leaf.import_leaf(leaf_dir, os.path.join(leaf_dir, "out"))

  def test_existing_output_is_never_overwritten(self):
    leaf_dir = self.create_tempdir().full_path
    _small_leaf(leaf_dir)
    out_dir = os.path.join(leaf_dir, "out")
    summary = leaf.import_leaf(leaf_dir, out_dir)
    self.assertEqual(summary.examples, {"all_train": 3, "digits_only_train": 1, "all_test": 1,
                                        "digits_only_test": 1})
    size = os.path.getsize(summary.path)
    with self.assertRaises(FileExistsError):
      leaf.import_leaf(leaf_dir, out_dir)
    self.assertEqual(os.path.getsize(summary.path), size)

  def test_missing_split_folder_says_what_src_must_be(self):
    leaf_dir = self.create_tempdir().full_path
    with self.assertRaisesRegex(leaf.LeafFormatError, "holding train/ and test/"):
      leaf.import_leaf(leaf_dir, os.path.join(leaf_dir, "out"))
    self.assertEqual(os.listdir(leaf_dir), [])


if __name__ == "__main__":
  absltest.main()
