"""Tests for tff_resume.learning.sampling: the clients of a round depend on (seed, round, population) only."""

import random

from absl.testing import absltest
import numpy as np

from tff_resume.learning import sampling

_POPULATION = [f"client_{index:03d}" for index in range(50)]


class SampleClientsTest(absltest.TestCase):

  def test_sample_is_a_pure_function_of_seed_round_and_population(self):
    first = sampling.sample_clients(_POPULATION, 10, seed=7, round_num=3)
    np.random.seed(123)
    random.seed(123)
    np.random.rand(1000)
    shuffled = list(reversed(_POPULATION))
    self.assertEqual(sampling.sample_clients(shuffled, 10, seed=7, round_num=3), first)
    self.assertEqual(first, sampling.sample_clients(_POPULATION, 10, seed=7, round_num=3))

  def test_exact_clients_of_the_first_rounds(self):
    # Pinned: a change here would make old runs resume with different clients.
    self.assertEqual(
        [sampling.sample_clients(_POPULATION, 3, seed=0, round_num=r) for r in (1, 2)],
        [["client_049", "client_025", "client_043"], ["client_014", "client_047", "client_003"]])

  def test_rounds_and_seeds_differ_and_samples_have_no_repeats(self):
    samples = {tuple(sampling.sample_clients(_POPULATION, 10, seed, r))
               for seed in (0, 1) for r in range(1, 6)}
    self.assertLen(samples, 10)
    for sample in samples:
      self.assertLen(set(sample), 10)

  def test_every_client_is_sampled_about_equally_often(self):
    counts = dict.fromkeys(_POPULATION, 0)
    for round_num in range(1, 1001):
      for client in sampling.sample_clients(_POPULATION, 5, seed=0, round_num=round_num):
        counts[client] += 1
    self.assertEqual(sum(counts.values()), 5000)
    self.assertBetween(min(counts.values()), 70, 100)
    self.assertBetween(max(counts.values()), 100, 130)

  def test_clients_per_round_outside_population_is_refused(self):
    for clients_per_round in (0, 51):
      with self.assertRaisesRegex(ValueError, "between 1 and the population size 50"):
        sampling.sample_clients(_POPULATION, clients_per_round, seed=0, round_num=1)


if __name__ == "__main__":
  absltest.main()
