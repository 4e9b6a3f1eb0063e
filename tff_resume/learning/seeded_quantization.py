"""Quantizing aggregators whose every random draw is a function of the run's seed and state.

tensorflow-model-optimization's uniform quantization rounds stochastically with an unseeded
`tf.random.uniform`, and TFF's `HadamardTransformFactory` seeds its rotation from `tf.timestamp()`,
so two runs of one config end with different weights. Here:

* `SeededUniformQuantizationEncodingStage` is tfmot's stage with its rounding drawn by
  `tf.random.stateless_uniform`, keyed by the aggregator's seed and a fingerprint (farmhash64) of the
  tensor being encoded. A client does not know its index in the round, but its update tells it
  apart from every other client's and from its own in other rounds; nothing extra is broadcast, so
  the bits per round are those of TFF's own aggregator, and no split into subrounds changes a draw.
* `quantize_above_threshold` is TFF's `EncodedSumFactory.quantize_above_threshold` with that stage.
* `SeededHadamardTransformFactory` is TFF's factory with its state's seed set from the run's seed
  instead of the clock; TFF advances it every round and broadcasts it, as before.
"""

import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_model_optimization.python.core.internal import tensor_encoding as te
from tensorflow_model_optimization.python.core.internal.tensor_encoding.stages import stages_impl

# tfmot exports its stages wrapped by `tf_style_encoding_stage`; the class it wraps comes next in
# the method resolution order, and the new stage is wrapped the same way below.
_UniformQuantization = stages_impl.UniformQuantizationEncodingStage.__mro__[1]
assert _UniformQuantization.__name__ == "UniformQuantizationEncodingStage", _UniformQuantization


def tensor_fingerprint(x: tf.Tensor) -> tf.Tensor:
  """A deterministic int64 of every byte of `x` (farmhash64, TensorFlow's `tf.fingerprint`)."""
  fingerprint = tf.fingerprint(tf.reshape(x, [1, -1]))  # uint8 [1, 8]
  return tf.bitcast(tf.reshape(fingerprint, [8]), tf.int64)


@te.core.tf_style_encoding_stage
class SeededUniformQuantizationEncodingStage(_UniformQuantization):
  """tfmot's `UniformQuantizationEncodingStage` with stochastic rounding drawn by a stateless op keyed
  by (`seed`, fingerprint of the input): the same input always gets the same rounding, and two
  different inputs independent ones. Decoding and parameters are tfmot's."""

  def __init__(self, bits: int, seed: int):
    super().__init__(bits=bits, stochastic=True)
    self._seed = seed

  def encode(self, x, encode_params):
    """tfmot's encoding (scale to [0, 2**bits - 1] between the input's min and max, then round each
    value up with probability equal to its fractional part), with the seeded draw."""
    min_x, max_x = tf.reduce_min(x), tf.reduce_max(x)
    max_value = tf.cast(encode_params[self.MAX_INT_VALUE_PARAMS_KEY], x.dtype)
    scaled = tf.compat.v1.div_no_nan(x - min_x, max_x - min_x) * max_value
    seed = tf.stack([tf.constant(self._seed, tf.int64), tensor_fingerprint(x)])
    uniform = tf.random.stateless_uniform(tf.shape(scaled), seed=seed, dtype=scaled.dtype)
    floored = tf.floor(scaled)
    rounded = floored + tf.cast(uniform < scaled - floored, scaled.dtype)
    return {self.ENCODED_VALUES_KEY: rounded, self.MIN_MAX_VALUES_KEY: tf.stack([min_x, max_x])}


def seeded_uniform_quantization(bits: int, seed: int) -> te.core.Encoder:
  """tfmot's `uniform_quantization` encoder (flatten, quantize, bit-pack) with the seeded stage."""
  return te.core.EncoderComposer(stages_impl.BitpackingEncodingStage(bits)).add_parent(
      SeededUniformQuantizationEncodingStage(bits, seed),
      stages_impl.UniformQuantizationEncodingStage.ENCODED_VALUES_KEY).add_parent(
          stages_impl.FlattenEncodingStage(),
          stages_impl.FlattenEncodingStage.ENCODED_VALUES_KEY).make()


def quantize_above_threshold(bits: int, threshold: int, seed: int | None
                             ) -> tff.aggregators.EncodedSumFactory:
  """TFF's `EncodedSumFactory.quantize_above_threshold`: tensors of more than `threshold` values are
  quantized to `bits`, the others summed as they are. `seed` None rounds to nearest (tfmot's
  deterministic stage: TFF's own factory); an int rounds stochastically with draws keyed by it."""
  if seed is None:
    return tff.aggregators.EncodedSumFactory.quantize_above_threshold(
        quantization_bits=bits, threshold=threshold, stochastic=False)

  def encoder_fn(value_spec: tf.TensorSpec) -> te.core.GatherEncoder:
    if value_spec.shape.num_elements() <= threshold:
      return te.encoders.as_gather_encoder(te.encoders.identity(), value_spec)
    return te.encoders.as_gather_encoder(seeded_uniform_quantization(bits, seed), value_spec)

  return tff.aggregators.EncodedSumFactory(encoder_fn)


class SeededHadamardTransformFactory(tff.aggregators.HadamardTransformFactory):
  """TFF's randomized Hadamard rotation with its initial seed `[seed, 0]` rather than
  `[microseconds of the clock, 0]`; TFF adds to the second half every round."""

  def __init__(self, inner_agg_factory: tff.aggregators.UnweightedAggregationFactory, seed: int):
    super().__init__(inner_agg_factory)
    self._seed = seed

  def create(self, value_type) -> tff.templates.AggregationProcess:
    """TFF's Hadamard transform process for `value_type`, its rotation seed started from ours."""
    process = super().create(value_type)
    state_type = process.initialize.type_signature.result.member
    seed = self._seed

    @tff.tensorflow.computation(state_type)
    def seeded(state):
      inner_state, _ = state
      return inner_state, tf.constant([seed, 0], tf.int64)

    @tff.federated_computation()
    def initialize():
      return tff.federated_map(seeded, process.initialize())

    return tff.templates.AggregationProcess(initialize, process.next)
