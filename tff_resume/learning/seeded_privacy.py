"""TFF's differentially private aggregator with its Gaussian noise drawn from seeds in its state.

`tff.learning.dp_aggregator` adds noise with tensorflow_privacy's `GaussianSumQuery`, which draws
from an unseeded stateful initializer, both on the sum of the clipped updates and on the count of
unclipped clients that adapts the clip norm. Here each `GaussianSumQuery` is a
`SeededGaussianSumQuery`: its global state (part of the server state, so checkpointed and restored)
holds a stateless seed, the noise is `tf.random.stateless_normal` keyed by it, and each round
splits it into the round's draws and the next round's seed. The noise is added on the server after
the clients' sums are merged, so neither the clients nor a split into subrounds change a draw. The
pipeline is TFF's: adaptive zeroing around `DifferentiallyPrivateFactory` over a normalized
`QuantileAdaptiveClipSumQuery`, with TFF's defaults and TFF's split of the noise between the sum
and the clip-count estimate (`adaptive_clip_noise_params`).
"""

import collections

import dp_accounting
import tensorflow as tf
import tensorflow_federated as tff
import tensorflow_privacy as tfp
from tensorflow_federated.python.aggregators import differential_privacy
from tensorflow_federated.python.learning import model_update_aggregator

# TFF's defaults for `DifferentiallyPrivateFactory.gaussian_adaptive`, as `dp_aggregator` uses them.
INITIAL_L2_NORM_CLIP = 0.1
TARGET_UNCLIPPED_QUANTILE = 0.5
CLIP_LEARNING_RATE = 0.2


def split_seed(seed: tf.Tensor, count: int) -> list[tf.Tensor]:
  """`count` independent stateless seeds from one (TensorFlow's `stateless_split`)."""
  return tf.unstack(tf.random.experimental.stateless_split(seed, num=count))


class SeededGaussianSumQuery(tfp.GaussianSumQuery):
  """tensorflow_privacy's `GaussianSumQuery` whose noise is a function of a seed in its global state.

  Each `get_noised_result` splits the state's seed into one seed per tensor and the seed of the
  next call, which it returns in the new global state.
  """

  _GlobalState = collections.namedtuple("_GlobalState", ["l2_norm_clip", "stddev", "seed"])

  def __init__(self, l2_norm_clip: float, stddev: float, seed: tuple[int, int]):
    super().__init__(l2_norm_clip, stddev)
    self._seed = seed

  def make_global_state(self, l2_norm_clip, stddev, seed=None):
    """The global state; `seed` default the query's initial one (the adaptive query replaces it)."""
    return self._GlobalState(tf.cast(l2_norm_clip, tf.float32), tf.cast(stddev, tf.float32),
                             tf.constant(self._seed, tf.int64) if seed is None else seed)

  def next_seed(self, global_state) -> tf.Tensor:
    """The seed the next round's noise is drawn from."""
    return split_seed(global_state.seed, 2)[-1]

  def get_noised_result(self, sample_state, global_state):
    """The sum plus Gaussian noise drawn from the state's seed; the state carries the next seed."""
    tensors = tf.nest.flatten(sample_state)
    seeds = split_seed(global_state.seed, len(tensors) + 1)
    noised = [tensor + tf.cast(tf.random.stateless_normal(tf.shape(tensor), seed=seed,
                                                          stddev=global_state.stddev),
                               tensor.dtype)
              for tensor, seed in zip(tensors, seeds)]
    new_state = global_state._replace(seed=seeds[-1])
    return (tf.nest.pack_sequence_as(sample_state, noised), new_state,
            dp_accounting.GaussianDpEvent(global_state.stddev / global_state.l2_norm_clip))


class _SeededQuantileEstimatorQuery(tfp.QuantileEstimatorQuery):
  """tensorflow_privacy's quantile estimate with its noisy count drawn by a `SeededGaussianSumQuery`."""

  def __init__(self, *args, seed: tuple[int, int]):
    self._noise_seed = seed  # Read by the base class's constructor, below.
    super().__init__(*args)

  def _construct_below_estimate_query(self, below_estimate_stddev, expected_num_records):
    return tfp.NormalizedQuery(
        SeededGaussianSumQuery(0.5, below_estimate_stddev, self._noise_seed),
        denominator=expected_num_records)


class SeededQuantileAdaptiveClipSumQuery(tfp.QuantileAdaptiveClipSumQuery):
  """tensorflow_privacy's adaptive-clip Gaussian sum with both of its noises seeded from its state."""

  def __init__(self, initial_l2_norm_clip, noise_multiplier, target_unclipped_quantile,
               learning_rate, clipped_count_stddev, expected_num_records, *,
               sum_seed: tuple[int, int], count_seed: tuple[int, int]):
    super().__init__(initial_l2_norm_clip, noise_multiplier, target_unclipped_quantile,
                     learning_rate, clipped_count_stddev, expected_num_records,
                     geometric_update=True)
    self._sum_query = SeededGaussianSumQuery(
        initial_l2_norm_clip, noise_multiplier * initial_l2_norm_clip, sum_seed)
    self._quantile_estimator_query = _SeededQuantileEstimatorQuery(
        initial_l2_norm_clip, target_unclipped_quantile, learning_rate, clipped_count_stddev,
        expected_num_records, True, seed=count_seed)

  def get_noised_result(self, sample_state, global_state):
    """The base query's result, with the sum query's seed advanced in the new state."""
    # The base class rebuilds the sum's state for the new clip norm; carry its advanced seed over.
    result, new_state, event = super().get_noised_result(sample_state, global_state)
    seed = self._sum_query.next_seed(global_state.sum_state)
    return result, new_state._replace(sum_state=new_state.sum_state._replace(seed=seed)), event


def dp_aggregator(noise_multiplier: float, clients_per_round: int, seed: int
                  ) -> tff.aggregators.UnweightedAggregationFactory:
  """`tff.learning.dp_aggregator(noise_multiplier, clients_per_round)` with seeded noise.

  Raises:
    ValueError: TFF's, when the noise cannot be split (noise_multiplier too large for the
      clients per round).
  """
  value_noise_multiplier, clipped_count_stddev = differential_privacy.adaptive_clip_noise_params(
      noise_multiplier, float(clients_per_round))
  query = SeededQuantileAdaptiveClipSumQuery(
      INITIAL_L2_NORM_CLIP, value_noise_multiplier, TARGET_UNCLIPPED_QUANTILE, CLIP_LEARNING_RATE,
      clipped_count_stddev, float(clients_per_round), sum_seed=(seed, 0), count_seed=(seed, 1))
  factory = tff.aggregators.DifferentiallyPrivateFactory(
      tfp.NormalizedQuery(query, denominator=float(clients_per_round)))
  return model_update_aggregator._default_zeroing(factory)  # pylint: disable=protected-access
