"""`evaluation.mode=centralized`: the global model on the pooled test examples, in plain TensorFlow.

One real run of the smoke preset with the `2nn` model and centralized evaluation every round, on six
test clients of 250 examples each, limited to 200 by `client.max_examples_per_client` (1,200
examples: a full batch of 1,000 and one of 200). Its final evaluation is Keras's `model.evaluate` of
its export on those examples, gathered independently through TFF's ClientData API; a run SIGKILLed
while saving version 2 and resumed evaluates exactly as it did; a bad mode is refused before
anything is written. The CNN, on images, is evaluated in process over several small batches.
"""

import concurrent.futures
import csv
import os
import shutil
import signal
import tempfile

from absl.testing import absltest
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorboard.plugins.hparams import plugin_data_pb2

from configs import demo
from tests import smoke_runs
from tff_resume.analysis import global_model
from tff_resume.analysis import status as status_lib
from tff_resume.data import preprocessing
from tff_resume.data import synthetic
from tff_resume.learning import models
from tff_resume.program import centralized_evaluation
from tff_resume.program import experiment
from tff_resume.program import fingerprint

_ROUNDS = 2
_TEST_CLIENTS = 6
_TEST_EXAMPLES_PER_CLIENT = 250
_MAX_EXAMPLES_PER_CLIENT = 200
_CENTRALIZED = [
    "--config.model.name=2nn", "--config.evaluation.mode=centralized",
    "--config.evaluation.rounds_per_eval=1",
    f"--config.evaluation.max_clients={_TEST_CLIENTS}",
    f"--config.data.synthetic.test_examples_per_client={_TEST_EXAMPLES_PER_CLIENT}",
    f"--config.client.max_examples_per_client={_MAX_EXAMPLES_PER_CLIENT}",
]


def _run(root, name, *overrides, env=None):
  return smoke_runs.run_smoke(root, name, *overrides, rounds=_ROUNDS, env=env)


def _csv_rows(run_dir):
  with open(os.path.join(run_dir, "results", "metrics.csv"), newline="") as csv_file:
    return list(csv.DictReader(csv_file))


def _evaluation_columns(rows):
  return [{k: v for k, v in row.items() if k.startswith("evaluation/")} for row in rows]


def _smoke_test_data():
  """The smoke preset's synthetic test ClientData, with this file's examples per client."""
  config = demo.get_config("smoke")
  config.data.synthetic.test_examples_per_client = _TEST_EXAMPLES_PER_CLIENT
  return synthetic.load_synthetic(experiment.synthetic_spec(config))[1]


def _pooled_arrays(client_data, client_ids, limit=None):
  """(pixels, labels) of `client_ids` in order, each client's first `limit`, through TFF's API."""
  pixels, labels = [], []
  for client_id in client_ids:
    for example in client_data.create_tf_dataset_for_client(client_id).take(limit or -1):
      pixels.append(example["pixels"].numpy())
      labels.append(example["label"].numpy())
  return np.stack(pixels), np.array(labels)


def _hparams(run_dir):
  """The hyperparameters of every start's HParams session in the run's event files."""
  sessions = []
  for name in sorted(os.listdir(run_dir)):
    if "tfevents" not in name:
      continue
    for event in tf.compat.v1.train.summary_iterator(os.path.join(run_dir, name)):
      for value in event.summary.value:
        if value.tag == "_hparams_/session_start_info":
          data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
          sessions.append({key: hparam.string_value
                           for key, hparam in data.session_start_info.hparams.items()})
  return sessions


class CentralizedRunTest(absltest.TestCase):
  """A straight run, and one SIGKILLed while saving version 2 then resumed, side by side."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp(prefix="centralized_evaluation")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # Beside the resumed run's two starts.
      straight = pool.submit(_run, cls.root, "straight", *_CENTRALIZED)
      cls.killed = _run(cls.root, "resumed", *_CENTRALIZED,
                        env={"TFF_RESUME_FAULT": "kill-during-save:2"})
      cls.resumed = _run(cls.root, "resumed", *_CENTRALIZED)
      cls.straight = straight.result()

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root)
    super().tearDownClass()

  def test_final_evaluation_is_keras_evaluate_of_the_export_on_the_pooled_examples(self):
    status, _, stderr = self.straight
    self.assertEqual(status, 0, stderr)
    run_dir = os.path.join(self.root, "straight")
    final = _csv_rows(run_dir)[-1]
    self.assertEqual(final["round"], str(_ROUNDS))
    export = os.path.join(self.create_tempdir().full_path, "export")
    global_model.export_model(run_dir, export)
    model = tf.keras.models.load_model(os.path.join(export, global_model.MODEL_FILE))
    model.compile(loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[tf.keras.metrics.SparseCategoricalAccuracy()])
    test_data = _smoke_test_data()
    pixels, labels = _pooled_arrays(test_data, sorted(test_data.client_ids)[:_TEST_CLIENTS],
                                    _MAX_EXAMPLES_PER_CLIENT)
    self.assertLen(labels, _TEST_CLIENTS * _MAX_EXAMPLES_PER_CLIENT)
    pixels = pixels.reshape([len(labels), -1])  # The 2nn's input: 784 values.
    keras_loss, keras_accuracy = model.evaluate(pixels, labels, batch_size=100, verbose=0)
    self.assertEqual(int(final["evaluation/num_examples"]), len(labels))
    self.assertEqual(int(final["evaluation/num_batches"]), 2)  # 1,000 and 200.
    np.testing.assert_allclose(float(final["evaluation/loss"]), keras_loss, rtol=1e-6)
    correct = int(np.sum(np.argmax(model.predict(pixels, verbose=0), axis=1) == labels))
    self.assertEqual(float(final["evaluation/sparse_categorical_accuracy"]), correct / len(labels))
    self.assertEqual(np.float32(correct / len(labels)), np.float32(keras_accuracy))
    self.assertGreater(keras_loss, 0.0)

  def test_resumed_run_evaluates_exactly_as_the_straight_run(self):
    self.assertEqual(self.killed[0], -signal.SIGKILL, self.killed[2])
    status, stdout, stderr = self.resumed
    self.assertEqual(status, 0, stderr)
    self.assertIn("from version 1 (1 round to redo)", stdout)
    self.assertEqual(self.straight[0], 0, self.straight[2])
    resumed = _evaluation_columns(_csv_rows(os.path.join(self.root, "resumed")))
    straight = _evaluation_columns(_csv_rows(os.path.join(self.root, "straight")))
    self.assertLen(straight, _ROUNDS)
    self.assertEqual(sorted(straight[0]), [
        "evaluation/loss", "evaluation/num_batches", "evaluation/num_examples",
        "evaluation/sparse_categorical_accuracy"])
    self.assertEqual(resumed, straight)
    self.assertLen({row["evaluation/loss"] for row in straight}, _ROUNDS)  # Each round's model.

  def test_each_start_records_the_mode_in_its_hyperparameters_not_the_fingerprint(self):
    self.assertEqual(self.resumed[0], 0, self.resumed[2])
    run_dir = os.path.join(self.root, "resumed")
    self.assertEqual([session["evaluation.mode"] for session in _hparams(run_dir)],
                     ["centralized", "centralized"])
    status = status_lib.run_status(run_dir)  # What `tff-resume status --json` prints.
    self.assertEqual(status["last_metrics"]["evaluation/num_examples"],
                     _TEST_CLIENTS * _MAX_EXAMPLES_PER_CLIENT)
    self.assertEmpty([field for field in status["fingerprint"] if field.startswith("evaluation.")])


class PooledExamplesTest(absltest.TestCase):

  def test_pooled_examples_are_the_clients_examples_in_order_each_limited(self):
    spec = preprocessing.PreprocessSpec(max_examples_per_client=3)
    rng = np.random.default_rng(0)
    arrays = {client_id: {"label": rng.integers(0, 10, size=count).astype(np.int32),
                          "pixels": rng.random((count, 28, 28), dtype=np.float32)}
              for client_id, count in (("c", 5), ("a", 2), ("b", 4))}
    serializable = tff.simulation.datasets.TestClientData(arrays)  # A serializable_dataset_fn.
    drawn = _smoke_test_data()  # None: read client by client in Python.
    for client_data, client_ids in ((serializable, ["c", "a", "b"]),
                                    (drawn, sorted(drawn.client_ids)[:3])):
      with self.subTest(type(client_data).__name__):
        pooled = list(centralized_evaluation.pooled_examples(client_data, client_ids, spec))
        pixels, labels = _pooled_arrays(client_data, client_ids, 3)
        self.assertEqual([example["label"].numpy() for example in pooled], list(labels))
        np.testing.assert_array_equal(np.stack([e["pixels"].numpy() for e in pooled]), pixels)

  def test_cnn_metrics_over_several_batches_equal_keras_on_one(self):
    config = demo.get_config("smoke")  # The CNN, on images.
    client_data = _smoke_test_data()
    client_ids = sorted(client_data.client_ids)[:2]
    spec = experiment.preprocess_spec(config)
    model = models.create_keras_model("cnn", 10, seed=3)
    weights = tff.learning.models.ModelWeights(
        trainable=[variable.numpy() for variable in model.trainable_variables],
        non_trainable=[variable.numpy() for variable in model.non_trainable_variables])
    evaluate = centralized_evaluation.build_evaluation(
        lambda: models.create_keras_model("cnn", 10, seed=0), client_data,
        client_ids, spec, batch_size=7)
    metrics = evaluate(weights)
    pixels, labels = _pooled_arrays(client_data, client_ids)
    logits = model(pixels[..., None])
    expected_loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    self.assertEqual(metrics["evaluation/num_examples"], 2 * _TEST_EXAMPLES_PER_CLIENT)
    self.assertEqual(metrics["evaluation/num_batches"], -(-2 * _TEST_EXAMPLES_PER_CLIENT // 7))
    np.testing.assert_allclose(metrics["evaluation/loss"], expected_loss.numpy(), rtol=1e-6)
    self.assertEqual(metrics["evaluation/sparse_categorical_accuracy"],
                     np.mean(np.argmax(logits, axis=1) == labels))
    self.assertEqual(evaluate(weights), metrics)  # Read again, the same.


class ModeConfigTest(absltest.TestCase):

  def test_missing_mode_is_federated_and_the_mode_is_not_in_the_fingerprint(self):
    config = demo.get_config("smoke")
    self.assertEqual(config.evaluation.mode, "federated")
    del config.evaluation["mode"]  # A config written before the field.
    experiment.validate(config)
    self.assertEqual(experiment.evaluation_mode(config), "federated")
    without = fingerprint.compute_fingerprint(config)
    config.evaluation.mode = "centralized"
    experiment.validate(config)
    self.assertEqual(fingerprint.compute_fingerprint(config), without)

  def test_bad_mode_is_one_line_exit_status_2_and_nothing_written(self):
    root = self.create_tempdir().full_path
    status, stdout, stderr = _run(root, "bad", "--config.evaluation.mode=bogus")
    self.assertEqual(status, 2, stderr)
    self.assertEqual(stdout, "")
    self.assertEqual(stderr.splitlines(), [
        "run_emnist: error: config.evaluation.mode must be one of federated, centralized, got "
        "'bogus'."])
    self.assertEqual(os.listdir(root), [])


if __name__ == "__main__":
  absltest.main()
