"""Tests for tff_resume.data.synthetic: deterministic, EMNIST-shaped, non-IID and learnable."""

import hashlib
import tracemalloc

from absl.testing import absltest
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_resume.data import preprocessing
from tff_resume.data import synthetic
from tff_resume.learning import algorithms
from tff_resume.learning import models
from tff_resume.learning import sampling
from tff_resume.program import training
from tff_resume.runtime import local_worker


def _digest(arrays) -> str:
  digest = hashlib.sha256()
  for client_id, examples in arrays.items():
    digest.update(client_id.encode())
    digest.update(examples["label"].tobytes())
    digest.update(examples["pixels"].tobytes())
  return digest.hexdigest()


class SyntheticShapeTest(absltest.TestCase):

  def test_same_seed_same_bits_other_seed_other_bits(self):
    spec = synthetic.SyntheticSpec(num_clients=5)
    first = _digest(synthetic.synthetic_arrays(spec, "train"))
    self.assertEqual(_digest(synthetic.synthetic_arrays(spec, "train")), first)
    self.assertNotEqual(
        _digest(synthetic.synthetic_arrays(synthetic.SyntheticSpec(num_clients=5, seed=1), "train")),
        first)

  def test_writers_drawn_lazily_are_the_bytes_of_the_eager_layout(self):
    # Digests of writers 0, 42 and 99 (100 writers, seed 0) and of writer 42's dataset, computed with
    # the layout that drew every writer up front (tff_resume before writers were drawn lazily).
    spec = synthetic.SyntheticSpec(num_clients=100)
    train, test = synthetic.load_synthetic(spec)
    picked = ("synthetic_0099", "synthetic_0000", "synthetic_0042")  # Drawn out of order.
    for data, expected in (
        (train, "a8a873d80e2b7090c3f1a1947eb95327e153e4e4879e033ee8381f34a7431724"),
        (test, "813b08cd3da2680e164b18f294b80e1e32b4e31f5e17d5dba17adce20d2de1bf")):
      arrays = {client_id: data.client_arrays(client_id) for client_id in picked}
      self.assertEqual(_digest({client_id: arrays[client_id] for client_id in sorted(picked)}),
                       expected)
    digest = hashlib.sha256()
    examples = list(train.create_tf_dataset_for_client("synthetic_0042").as_numpy_iterator())
    for example in examples:
      digest.update(example["label"].tobytes())
      digest.update(example["pixels"].tobytes())
    self.assertEqual((digest.hexdigest(), len(examples)),
                     ("d4af90a6ee5027da0e52ed36cf7219600bff5c8b9216125289531848c1719f5f", 112))

  def test_a_population_of_emnist_size_costs_nothing_until_a_writer_is_asked_for(self):
    tracemalloc.start()
    try:
      train, test = synthetic.load_synthetic(synthetic.SyntheticSpec(num_clients=3400,
                                                                     only_digits=False))
      _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
      tracemalloc.stop()
    # Drawn up front, the 3,400 writers' pixels alone would take about 1.1 GB.
    self.assertLess(peak_bytes, 2 * 2**20)
    self.assertLen(train.client_ids, 3400)
    self.assertEqual(train.client_ids[-1], "synthetic_3399")
    self.assertLen(list(test.create_tf_dataset_for_client("synthetic_3399")), 20)
    with self.assertRaisesRegex(ValueError, "'synthetic_3400' is not a client"):
      train.create_tf_dataset_for_client("synthetic_3400")

  def test_a_client_does_not_depend_on_the_population_size(self):
    small = synthetic.synthetic_arrays(synthetic.SyntheticSpec(num_clients=3), "test")
    large = synthetic.synthetic_arrays(synthetic.SyntheticSpec(num_clients=40), "test")
    self.assertEqual(list(small), ["synthetic_0000", "synthetic_0001", "synthetic_0002"])
    np.testing.assert_array_equal(small["synthetic_0002"]["pixels"],
                                  large["synthetic_0002"]["pixels"])

  def test_elements_are_emnist_shaped(self):
    spec = synthetic.SyntheticSpec(num_clients=4, min_examples_per_client=30,
                                   max_examples_per_client=40, test_examples_per_client=7)
    train, test = synthetic.load_synthetic(spec)
    self.assertEqual(train.element_type_structure["pixels"],
                     tf.TensorSpec([28, 28], tf.float32))
    self.assertEqual(train.element_type_structure["label"], tf.TensorSpec([], tf.int32))
    arrays = synthetic.synthetic_arrays(spec, "train")
    for examples in arrays.values():
      self.assertBetween(len(examples["label"]), 30, 40)
      pixels = examples["pixels"]
      self.assertGreaterEqual(pixels.min(), 0.0)
      self.assertEqual(pixels.max(), 1.0)
      # The page is white: most pixels are exactly 1.0, as in EMNIST.
      self.assertGreater(np.mean(pixels == 1.0), 0.5)
    self.assertEqual([len(list(test.create_tf_dataset_for_client(c))) for c in test.client_ids],
                     [7, 7, 7, 7])

  def test_clients_are_non_iid(self):
    arrays = synthetic.synthetic_arrays(synthetic.SyntheticSpec(num_clients=20), "train")
    distributions = np.stack([np.bincount(e["label"], minlength=10) / len(e["label"])
                              for e in arrays.values()])
    pooled = distributions.mean(axis=0)
    total_variation = 0.5 * np.abs(distributions - pooled).sum(axis=1)
    self.assertGreater(np.median(total_variation), 0.3)
    ink = [1.0 - e["pixels"].mean() for e in arrays.values()]
    self.assertGreater(max(ink) / min(ink), 1.3)

  def test_sizes_out_of_range_name_the_field(self):
    for spec, field in ((synthetic.SyntheticSpec(num_clients=0), "num_clients"),
                        (synthetic.SyntheticSpec(min_examples_per_client=9,
                                                 max_examples_per_client=5),
                         "min_examples_per_client"),
                        (synthetic.SyntheticSpec(label_skew=0.0), "label_skew")):
      with self.assertRaisesRegex(ValueError, field):
        synthetic.load_synthetic(spec)


class SyntheticLearnableTest(absltest.TestCase):
  """FedAvg beats chance (10%) clearly within a few rounds on held-out test examples.

  Five local epochs per round, batch 20, as in TFF's EMNIST tutorial.
  """

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.worker = local_worker.start_local_execution_context()
    cls.spec = synthetic.SyntheticSpec(num_clients=30)
    cls.train, _ = synthetic.load_synthetic(cls.spec)
    cls.test_arrays = synthetic.synthetic_arrays(cls.spec, "test")

  @classmethod
  def tearDownClass(cls):
    cls.worker.stop()
    super().tearDownClass()

  def _train(self, model_name, rounds, client_learning_rate, epochs=5):
    """Returns (process, state, preprocess spec) after `rounds` FedAvg rounds of 10 clients."""
    preprocess_spec = preprocessing.PreprocessSpec(
        epochs=epochs, batch_size=20, flatten=models.needs_flat_input(model_name))
    model_fn = models.build_model_fn(model_name, 10, 0,
                                     preprocessing.element_spec(preprocess_spec))
    process = algorithms.build_algorithm(model_fn, client_learning_rate=client_learning_rate,
                                  server=algorithms.ServerOptimizerSpec(learning_rate=1.0))
    state = algorithms.initialize(process, model_name, 10, 0)
    for round_num in range(1, rounds + 1):
      clients = sampling.sample_clients(self.train.client_ids, 10, 0, round_num)
      state = process.next(state, [
          preprocessing.preprocess_for_training(self.train.create_tf_dataset_for_client(c),
                                                preprocess_spec, seed=0, round_num=round_num,
                                                client_id=c)
          for c in clients]).state
    return process, state, preprocess_spec

  def test_worker_concurrency_limit_does_not_change_the_weights(self):
    """The worker runs as many clients at once as there are cores (the benchmark compares other
    settings); no setting may change results."""
    process, state, _ = self._train("2nn", 2, 0.1, epochs=1)
    default = training.model_weights_sha256(process, state)
    unlimited_worker = local_worker.start_local_execution_context(max_concurrent_computation_calls=-1)
    try:
      process, state, _ = self._train("2nn", 2, 0.1, epochs=1)
      self.assertEqual(training.model_weights_sha256(process, state), default)
    finally:
      unlimited_worker.stop()
      tff.framework.set_default_context(self.worker.context)

  def _test_accuracy_after(self, model_name, rounds, client_learning_rate, epochs=5):
    process, state, preprocess_spec = self._train(model_name, rounds, client_learning_rate, epochs)
    from_computation = process.get_model_weights(state)
    from_state = training.global_model_weights(process, state)  # The runner's shortcut.
    for computed, read in zip(from_computation.trainable + from_computation.non_trainable,
                              from_state.trainable + from_state.non_trainable):
      self.assertEqual(computed.dtype, read.dtype)
      self.assertEqual(computed.tobytes(), read.tobytes())
    keras_model = models.create_keras_model(model_name, 10, 0)
    from_computation.assign_weights_to(keras_model)
    pixels = np.concatenate([e["pixels"] for e in self.test_arrays.values()])
    labels = np.concatenate([e["label"] for e in self.test_arrays.values()])
    inputs = pixels.reshape(len(pixels), -1) if preprocess_spec.flatten else pixels[..., None]
    predictions = np.argmax(keras_model.predict(inputs, verbose=0), axis=1)
    return float(np.mean(predictions == labels))

  def test_linear_model_beats_chance_in_five_rounds(self):
    self.assertGreater(self._test_accuracy_after("linear", 5, 0.1), 0.8)

  def test_fedavg_cnn_beats_chance_in_three_rounds(self):
    self.assertGreater(self._test_accuracy_after("cnn", 3, 0.1), 0.8)


if __name__ == "__main__":
  absltest.main()
