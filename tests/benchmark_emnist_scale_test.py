"""The emnist_scale benchmark's data and evaluation contenders: the file it builds from the LEAF
sample is TFF's format without an index, every writer copied example for example; the indexed copy
differs only by the index; the build is reused; its federated and centralized evaluations evaluate
the same examples to the same accuracy."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile

from absl.testing import absltest
import numpy as np

from experiments import benchmark_emnist_scale
from tff_resume.data import client_index
from tff_resume.data import emnist
from tff_resume.learning import models
from tff_resume.program import experiment

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The real source folder (Bazel runs a symlinked copy): shared/ lies beside the repository.
_LEAF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "..",
                         "shared", "data", "femnist-leaf")


def _rows(path, query, *parameters):
  connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
  try:
    return connection.execute(query, parameters).fetchall()
  finally:
    connection.close()


@absltest.skipUnless(os.path.isdir(os.path.join(_LEAF_DIR, "train")),
                     f"real LEAF FEMNIST data not found at {_LEAF_DIR}")
class EmnistScaleDataTest(absltest.TestCase):
  """One build of 2 copies of the LEAF sample's writers, read by each test."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.folder = os.path.join(tempfile.mkdtemp(prefix="emnist_scale"), "data")
    cls.built = benchmark_emnist_scale.build_data(_LEAF_DIR, cls.folder, writers=210)
    cls.paths = {name: emnist.emnist_database_path(folder)
                 for name, folder in cls.built["dirs"].items()}

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(os.path.dirname(cls.folder))
    super().tearDownClass()

  def test_writers_are_copied_example_for_example_in_tffs_format_without_index(self):
    paths = self.paths
    sample_writers = {split: [row[0] for row in _rows(
        paths["sample"], "SELECT client_id FROM client_metadata WHERE split_name = ? "
        "ORDER BY client_id", split)] for split in ("all_train", "all_test")}
    self.assertEqual(self.built["copies"], 2)
    self.assertEqual(self.built["writers_by_split"],
                     {split: 2 * len(writers) for split, writers in sample_writers.items()})
    self.assertEqual(
        _rows(paths["unindexed"], "SELECT type, name FROM sqlite_master ORDER BY name"),
        [("table", "client_metadata"), ("table", "examples")])
    self.assertFalse(client_index.has_client_index(paths["unindexed"]))
    self.assertTrue(client_index.has_client_index(paths["indexed"]))
    writer = sample_writers["all_train"][7]
    query = ("SELECT serialized_example_proto FROM examples WHERE client_id = ? AND split_name = ? "
             "ORDER BY rowid")
    original = _rows(paths["sample"], query, writer, "all_train")
    self.assertNotEmpty(original)
    for copy in ("~00", "~01"):
      self.assertEqual(_rows(paths["unindexed"], query, writer + copy, "all_train"), original)
      self.assertEqual(_rows(paths["unindexed"], "SELECT num_examples FROM client_metadata WHERE "
                             "client_id = ? AND split_name = 'all_train'", writer + copy),
                       [(len(original),)])
    everything = "SELECT * FROM {} ORDER BY rowid"
    for table in ("examples", "client_metadata"):
      self.assertEqual(_rows(paths["indexed"], everything.format(table)),
                       _rows(paths["unindexed"], everything.format(table)))
    self.assertEqual(self.built["index_bytes"], client_index.added_index_bytes(paths["indexed"]))
    self.assertEqual(self.built["examples_by_split"]["all_train"],
                     _rows(paths["unindexed"], "SELECT count(*) FROM examples WHERE "
                           "split_name = 'all_train'")[0][0])

  def test_a_second_build_with_the_same_arguments_reuses_the_files(self):
    before = {name: os.stat(path).st_mtime_ns for name, path in self.paths.items()}
    again = benchmark_emnist_scale.build_data(_LEAF_DIR, self.folder, writers=210)
    self.assertEqual(again, self.built)
    self.assertEqual({name: os.stat(path).st_mtime_ns for name, path in self.paths.items()},
                     before)

  def test_federated_and_centralized_evaluation_evaluate_the_same_examples(self):
    indexed = self.built["dirs"]["indexed"]
    child = subprocess.run(
        [sys.executable, "-m", "experiments.benchmark_emnist_scale", indexed, "--quick"],
        cwd=_REPO_ROOT, env=dict(os.environ, PYTHONPATH=_REPO_ROOT), capture_output=True,
        text=True, timeout=300, check=False)
    self.assertEqual(child.returncode, 0, child.stderr[-3000:])
    federated = json.loads(child.stdout.splitlines()[-1])
    config = benchmark_emnist_scale._evaluation_config(indexed, True, "centralized")
    _, test_data = experiment.load_data(config)
    centralized = experiment.build_evaluation(config, test_data)(models.initial_model_weights(
        config.model.name, experiment.num_classes(config), config.training.seed))
    metrics = federated["metrics"]
    expected_examples = sum(len(list(test_data.create_tf_dataset_for_client(client_id)))
                            for client_id in sorted(test_data.client_ids)[:20])
    self.assertEqual(metrics["evaluation/num_examples"], expected_examples)
    self.assertEqual(centralized["evaluation/num_examples"], expected_examples)
    self.assertEqual(round(metrics["evaluation/sparse_categorical_accuracy"] * expected_examples),
                     round(centralized["evaluation/sparse_categorical_accuracy"]
                           * expected_examples))
    np.testing.assert_allclose(metrics["evaluation/loss"], centralized["evaluation/loss"],
                               rtol=1e-5)
    self.assertGreater(federated["peak_mib"], 100)  # TensorFlow alone takes more than that.


if __name__ == "__main__":
  absltest.main()
