"""Tests for tff_resume.learning.accounting and aggregators: exact bits, checked against independent counts.

Aggregated bits are checked against the model's own variables (uncompressed) and against the size of
what tensorflow-model-optimization's encoders really produce for a real client update (compressed).
"""

import math

from absl.testing import absltest
import numpy as np
import tensorflow as tf
from tensorflow_model_optimization.python.core.internal import tensor_encoding as te

from tff_resume.data import preprocessing
from tff_resume.learning import accounting
from tff_resume.learning import aggregators
from tff_resume.learning import algorithms
from tff_resume.learning import models
from tff_resume.runtime import local_worker

_WEIGHT_BITS = 32  # The client weight (its example count), a float32 sent with the update.
# Adaptive zeroing and adaptive clipping each estimate a norm quantile: every client sends a float32
# below-estimate indicator and a float32 count, and reports an int32 zeroed/clipped count.
_ZEROING_AND_CLIPPING_BITS = 2 * (32 + 32) + 2 * 32


def _cost(model_name, spec):
  preprocess_spec = preprocessing.PreprocessSpec(flatten=models.needs_flat_input(model_name))
  aggregator = aggregators.build_aggregator(spec)
  process = algorithms.build_algorithm(
      models.build_model_fn(model_name, 10, 0, preprocessing.element_spec(preprocess_spec)),
      client_learning_rate=0.1, server=algorithms.ServerOptimizerSpec(learning_rate=1.0), model_aggregator=aggregator)
  return accounting.communication_cost(process, aggregator)


def _real_client_update(model_name):
  """The change one SGD step on a batch makes to the model's trainable weights."""
  model = models.create_keras_model(model_name, 10, 0)
  rng = np.random.default_rng(0)
  shape = (20, 28, 28, 1) if model_name == "cnn" else (20, 784)
  images, labels = rng.uniform(size=shape).astype(np.float32), rng.integers(0, 10, size=20)
  before = [variable.numpy() for variable in model.trainable_variables]
  with tf.GradientTape() as tape:
    loss = tf.keras.losses.sparse_categorical_crossentropy(labels, model(images), from_logits=True)
  gradients = tape.gradient(loss, model.trainable_variables)
  return [b - 0.1 * g.numpy() for b, g in zip(before, gradients)]


def _encoded_bits(encoder, tensor) -> int:
  """Runs a tensorflow-model-optimization encoder on `tensor`; returns the bits it produced."""
  simple = te.core.SimpleEncoder(encoder, tf.TensorSpec(tensor.shape, tf.float32))
  encoded, _ = simple.encode(tf.constant(tensor))
  return sum(math.prod(value.shape) * value.dtype.size * 8 for value in tf.nest.flatten(encoded))


def _pad_to_power_of_two(tensor):
  flat = tensor.reshape(-1)
  return np.concatenate([flat, np.zeros(2 ** math.ceil(math.log2(flat.size)) - flat.size,
                                        np.float32)])


class CommunicationCostTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    local_worker.quiet_tensorflow_logging()
    local_worker.install_guard_context()
    cls.cnn_variables = models.create_keras_model("cnn", 10, 0).trainable_variables
    cls.cnn_update = _real_client_update("cnn")

  def test_mean_on_the_cnn_is_the_model_plus_the_weight(self):
    model_bits = sum(v.shape.num_elements() * 32 for v in self.cnn_variables)
    self.assertEqual(model_bits, 1_663_370 * 32)
    cost = _cost("cnn", aggregators.AggregatorSpec("mean"))
    self.assertEqual(cost, accounting.CommunicationCost(
        broadcasted_bits_per_client=model_bits,
        aggregated_bits_per_client=model_bits + _WEIGHT_BITS))

  def test_compression_equals_what_the_encoders_produce(self):
    expected = _WEIGHT_BITS + _ZEROING_AND_CLIPPING_BITS
    for tensor in self.cnn_update:
      if tensor.size > 20000:
        expected += _encoded_bits(te.encoders.uniform_quantization(8), tensor)
      else:
        expected += tensor.size * 32
    compressed = _cost("cnn", aggregators.AggregatorSpec("compression"))
    self.assertEqual(compressed.aggregated_bits_per_client, expected)
    self.assertEqual(compressed.aggregated_bits_per_client, 15_357_760)
    uncompressed = _cost("cnn", aggregators.AggregatorSpec("mean"))
    self.assertEqual(compressed.broadcasted_bits_per_client,
                     uncompressed.broadcasted_bits_per_client)
    self.assertGreater(
        uncompressed.aggregated_bits_per_client / compressed.aggregated_bits_per_client, 3.0)

  def test_quantize_every_tensor_equals_what_the_encoders_produce(self):
    update = _real_client_update("linear")
    for bits, stochastic in ((1, True), (4, False), (16, True)):
      spec = aggregators.AggregatorSpec("quantize", bits=bits, threshold=0, stochastic=stochastic)
      expected = _WEIGHT_BITS + sum(
          _encoded_bits(te.encoders.uniform_quantization(bits), tensor) for tensor in update)
      self.assertEqual(_cost("linear", spec).aggregated_bits_per_client, expected, bits)

  def test_quantize_above_threshold_leaves_small_tensors_unencoded(self):
    spec = aggregators.AggregatorSpec("quantize", bits=2, threshold=5000)
    kernel, bias = _real_client_update("linear")
    expected = (_WEIGHT_BITS + _encoded_bits(te.encoders.uniform_quantization(2), kernel)
                + bias.size * 32)
    self.assertEqual(_cost("linear", spec).aggregated_bits_per_client, expected)

  def test_hadamard_quantizes_the_rotated_padded_tensors(self):
    spec = aggregators.AggregatorSpec("quantize", bits=8, threshold=0, hadamard=True)
    expected = _WEIGHT_BITS + sum(
        _encoded_bits(te.encoders.uniform_quantization(8), _pad_to_power_of_two(tensor))
        for tensor in _real_client_update("linear"))
    self.assertEqual(_cost("linear", spec).aggregated_bits_per_client, expected)


class AggregatorSpecTest(absltest.TestCase):

  def test_invalid_settings_name_the_field(self):
    for spec, message in (
        (aggregators.AggregatorSpec("quantize", bits=0), "aggregator.quantize.bits must be between"),
        (aggregators.AggregatorSpec("quantize", bits=17), "aggregator.quantize.bits"),
        (aggregators.AggregatorSpec("quantize", threshold=-1), "aggregator.quantize.threshold"),
        (aggregators.AggregatorSpec("gzip"), "aggregator.name must be one of mean, compression"),
        (aggregators.AggregatorSpec("dp", noise_multiplier=-1.0), "aggregator.dp.noise_multiplier"),
    ):
      with self.assertRaisesRegex(ValueError, message):
        aggregators.build_aggregator(spec)


if __name__ == "__main__":
  absltest.main()
