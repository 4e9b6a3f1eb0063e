"""The aggregators' random draws: seeded, reproducible, and statistically what they claim to be.

Stochastic rounding is unbiased and differs between clients; the DP noise has the configured standard
deviation and is fresh every round, and without noise the seed changes no result; the Hadamard
rotation changes every round; all of it is the same for the same seed and state. Privacy accounting
equals `dp_accounting`'s own and reproduces a published value.
"""

from absl.testing import absltest
import dp_accounting
from dp_accounting import rdp
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.aggregators import differential_privacy

from tff_resume.learning import aggregators
from tff_resume.learning import privacy_accounting
from tff_resume.learning import seeded_privacy
from tff_resume.learning import seeded_quantization
from tff_resume.program import fingerprint
from tff_resume.runtime import local_worker

_VALUES = 30000  # Above the 20,000-value threshold, so quantized.


def _rounded(stage, x):
  encode_params, _ = stage.get_params()
  return stage.encode(x, encode_params)[stage.ENCODED_VALUES_KEY].numpy()


def _scaled(x):
  """x scaled to [0, 255] as the 8-bit stage scales it before rounding."""
  return (x - x.min()) / (x.max() - x.min()) * 255


class StochasticRoundingTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.x = tf.constant(np.random.default_rng(0).normal(size=2000), tf.float32)

  def test_rounding_is_unbiased(self):
    draws = np.stack([_rounded(seeded_quantization.SeededUniformQuantizationEncodingStage(8, seed),
                               self.x) for seed in range(400)])
    target = _scaled(self.x.numpy().astype(np.float64))
    fraction = target - np.floor(target)
    self.assertTrue(np.all((draws == np.floor(target)) | (draws == np.floor(target) + 1)))
    standard_error = np.sqrt(fraction * (1 - fraction) / len(draws)) + 1e-12
    z_scores = (draws.mean(axis=0) - target) / standard_error
    # 2,000 values: |z| > 4.5 has probability ~1.4e-2 in all; the overall mean error is ~0.
    self.assertLess(np.max(np.abs(z_scores)), 4.5)
    self.assertLess(abs(np.mean(draws - target)), 4 * np.sqrt(0.25 / draws.size))
    self.assertGreater(np.mean(draws != np.round(target)), 0.1)  # Not rounding to nearest.

  def test_same_input_same_rounding_other_client_other_rounding(self):
    stage = seeded_quantization.SeededUniformQuantizationEncodingStage(8, 7)
    first = _rounded(stage, self.x)
    np.testing.assert_array_equal(
        _rounded(seeded_quantization.SeededUniformQuantizationEncodingStage(8, 7), self.x), first)
    # A second client whose update differs in one value: its other values are rounded afresh.
    other_client = _rounded(stage, tf.tensor_scatter_nd_update(self.x, [[5]], [0.0]))
    changed = np.mean(first[6:] != other_client[6:])
    self.assertGreater(changed, 0.2)
    other_seed = _rounded(seeded_quantization.SeededUniformQuantizationEncodingStage(8, 8), self.x)
    self.assertGreater(np.mean(first != other_seed), 0.2)


class GaussianNoiseTest(absltest.TestCase):

  def test_noise_has_the_stddev_and_is_fresh_every_round(self):
    query = seeded_privacy.SeededGaussianSumQuery(l2_norm_clip=1.0, stddev=0.5, seed=(3, 0))
    state = query.initial_global_state()
    zeros = tf.zeros([40000])
    first, state_2, event = query.get_noised_result(zeros, state)
    second, _, _ = query.get_noised_result(zeros, state_2)
    again, _, _ = query.get_noised_result(zeros, query.initial_global_state())
    for noise in (first.numpy(), second.numpy()):
      self.assertAlmostEqual(noise.std(), 0.5, delta=0.5 * 0.02)  # 40,000 draws: sd error ~0.35%.
      self.assertAlmostEqual(noise.mean(), 0.0, delta=4 * 0.5 / 200)
    self.assertLess(abs(np.corrcoef(first.numpy(), second.numpy())[0, 1]), 0.02)
    np.testing.assert_array_equal(again.numpy(), first.numpy())
    self.assertAlmostEqual(float(event.noise_multiplier), 0.5)

  def test_adaptive_clipping_carries_both_seeds_forward(self):
    query = seeded_privacy.SeededQuantileAdaptiveClipSumQuery(
        0.1, 1.0, 0.5, 0.2, 0.5, 10.0, sum_seed=(1, 0), count_seed=(1, 1))
    state = query.initial_global_state()
    sample = query.initial_sample_state(tf.zeros([3]))
    _, new_state, _ = query.get_noised_result(sample, state)
    count_seed = lambda s: s.quantile_estimator_state.below_estimate_state.numerator_state.seed
    for seed_of in (lambda s: s.sum_state.seed, count_seed):
      self.assertFalse(np.array_equal(seed_of(new_state).numpy(), seed_of(state).numpy()))
    _, newer_state, _ = query.get_noised_result(sample, new_state)
    self.assertFalse(np.array_equal(newer_state.sum_state.seed.numpy(),
                                    new_state.sum_state.seed.numpy()))


def _leaves(structure):
  return [np.asarray(leaf) for leaf in tf.nest.flatten(structure)]


def _is_seed(leaf):
  """Whether a state leaf is a stateless seed (the DP noises' state)."""
  return leaf.dtype == np.int64 and leaf.shape == (2,)


class AggregationProcessTest(absltest.TestCase):
  """The aggregators as TFF processes, on the local worker."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    local_worker.quiet_tensorflow_logging()
    cls.worker = local_worker.start_local_execution_context()
    cls.value_type = tff.TensorType(np.float32, (_VALUES,))
    rng = np.random.default_rng(1)
    cls.clients = [rng.normal(size=_VALUES).astype(np.float32) for _ in range(2)]

  @classmethod
  def tearDownClass(cls):
    cls.worker.stop()
    super().tearDownClass()

  def _process(self, **spec):
    return aggregators.build_aggregator(aggregators.AggregatorSpec(**spec)).create(
        self.value_type, tff.TensorType(np.float32))

  def _two_rounds(self, **spec):
    process = self._process(**spec)
    state, results = process.initialize(), []
    for _ in range(2):
      output = process.next(state, self.clients, [1.0, 1.0])
      state = output.state
      results.append(np.asarray(output.result))
    return results, state

  def test_hadamard_rotation_is_seeded_and_changes_every_round(self):
    spec = {"name": "quantize", "stochastic": False, "hadamard": True, "bits": 2}
    (first, second), state = self._two_rounds(**spec, seed=4)
    self.assertFalse(np.array_equal(first, second))  # Same clients: only the rotation differs.
    again, again_state = self._two_rounds(**spec, seed=4)
    np.testing.assert_array_equal(again[0], first)
    np.testing.assert_array_equal(again[1], second)
    for leaf, again_leaf in zip(_leaves(state), _leaves(again_state)):
      np.testing.assert_array_equal(leaf, again_leaf)
    other_seed, _ = self._two_rounds(**spec, seed=5)
    self.assertFalse(np.array_equal(other_seed[0], first))

  def test_compression_and_dp_repeat_for_a_seed_and_change_with_it(self):
    for spec in ({"name": "compression"}, {"name": "quantize", "bits": 2},
                 {"name": "dp", "noise_multiplier": 0.1, "clients_per_round": 2}):
      results, state = self._two_rounds(**spec, seed=4)
      again, again_state = self._two_rounds(**spec, seed=4)
      for result, again_result in zip(results, again):
        np.testing.assert_array_equal(result, again_result, err_msg=str(spec))
      for leaf, again_leaf in zip(_leaves(state), _leaves(again_state)):
        np.testing.assert_array_equal(leaf, again_leaf, err_msg=str(spec))
      other, _ = self._two_rounds(**spec, seed=5)
      self.assertFalse(np.array_equal(other[0], results[0]), spec)

  def test_dp_noise_is_all_that_the_seed_changes(self):
    spec = {"name": "dp", "clients_per_round": 2}
    # Noise multiplier 0: TFF's split gives no noise to the sum nor to the clip count, so another
    # seed changes only the seeds carried in the state, and results equal to the bit.
    quiet, quiet_state = self._two_rounds(**spec, noise_multiplier=0.0, seed=4)
    other, other_state = self._two_rounds(**spec, noise_multiplier=0.0, seed=5)
    for result, other_result in zip(quiet, other):
      np.testing.assert_array_equal(result, other_result)
    seeds = lambda state: [leaf.tolist() for leaf in _leaves(state) if _is_seed(leaf)]
    self.assertNotEqual(seeds(quiet_state), seeds(other_state))
    np.testing.assert_equal([leaf for leaf in _leaves(quiet_state) if not _is_seed(leaf)],
                            [leaf for leaf in _leaves(other_state) if not _is_seed(leaf)])
    # Noise multiplier 0.1: round 1 clips to the same initial norm, so it differs from the quiet
    # round by the sum's noise alone: TFF's share of it times the clip norm, over the 2 clients.
    noisy, _ = self._two_rounds(**spec, noise_multiplier=0.1, seed=4)
    sum_noise_multiplier, _ = differential_privacy.adaptive_clip_noise_params(0.1, 2.0)
    # 30,000 draws: the standard deviation's error is ~0.4%.
    self.assertAlmostEqual(np.std(noisy[0] - quiet[0]) / (
        sum_noise_multiplier * seeded_privacy.INITIAL_L2_NORM_CLIP / 2), 1.0, delta=0.02)

  def test_compression_is_tffs_pipeline(self):
    ours = self._process(name="compression", seed=1)
    tffs = tff.learning.compression_aggregator().create(self.value_type,
                                                        tff.TensorType(np.float32))
    self.assertEqual(str(ours.next.type_signature), str(tffs.next.type_signature))
    np.testing.assert_equal(_leaves(ours.initialize()), _leaves(tffs.initialize()))

  def test_dp_is_tffs_pipeline_with_seeds_in_its_state(self):
    ours = self._process(name="dp", noise_multiplier=0.1, clients_per_round=2, seed=1)
    tffs = tff.aggregators.as_weighted_aggregator(tff.learning.dp_aggregator(0.1, 2)).create(
        self.value_type, tff.TensorType(np.float32))
    ours_leaves, tffs_leaves = _leaves(ours.initialize()), _leaves(tffs.initialize())
    # The same values (the noise split, clip norm, estimators) plus the two noises' seeds.
    self.assertEqual([leaf.tolist() for leaf in ours_leaves if _is_seed(leaf)],
                     [[aggregators.purpose_seed(1, "noise"), 0],
                      [aggregators.purpose_seed(1, "noise"), 1]])
    np.testing.assert_equal([leaf for leaf in ours_leaves if not _is_seed(leaf)], tffs_leaves)


class PrivacyAccountingTest(absltest.TestCase):

  def test_epsilon_equals_dp_accountings_own(self):
    event = privacy_accounting.round_event(noise_multiplier=1.0, clients_per_round=10,
                                           population=3400)
    accountant = privacy_accounting.PrivacyAccountant(event, target_delta=1e-5)
    self.assertEqual(accountant.epsilon(0), 0.0)
    for rounds in (1, 7, 250):
      reference = rdp.RdpAccountant(
          neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
      reference.compose(event, rounds)
      self.assertAlmostEqual(accountant.epsilon(rounds), reference.get_epsilon(1e-5), places=9)

  def test_reproduces_tensorflow_privacys_published_value(self):
    # TensorFlow Privacy's compute_dp_sgd_privacy test: 60,000 examples, batches of 150 (Poisson),
    # noise multiplier 1.3, 15 epochs (6,000 steps), delta 1e-5 -> epsilon 0.7242.
    event = dp_accounting.PoissonSampledDpEvent(150 / 60000, dp_accounting.GaussianDpEvent(1.3))
    self.assertAlmostEqual(privacy_accounting.PrivacyAccountant(event, 1e-5).epsilon(6000), 0.72,
                           places=2)


class UnseededRunTest(absltest.TestCase):

  def test_a_run_from_before_the_seed_is_refused_with_how_to_continue(self):
    current = {"aggregator.name": "compression", "aggregator.seed": 0, "training.seed": 0}
    saved = {k: v for k, v in current.items() if k != "aggregator.seed"}
    with self.assertRaises(fingerprint.UnseededRunError) as raised:
      fingerprint.check_resumable(saved, current, "runs/old")
    self.assertEqual(str(raised.exception), (
        "runs/old was started before the aggregator's random draws were seeded (aggregator.seed): "
        "its 'compression' rounds cannot be continued bit for bit, so it is not resumed; nothing "
        "was changed. To continue from its weights, start a new run from them: "
        "--experiment_name=NEW --config.model.initial_weights=runs/old"))
    fingerprint.check_resumable(saved, saved, "runs/old")  # A mean run has no seed: resumes.


if __name__ == "__main__":
  absltest.main()
