"""Client sampling: the clients of a round are a pure function of (seed, round, population).

No global random state is read or changed, so a resumed run samples exactly the clients the original
run would have sampled, in any process, whatever happened before.
"""

from typing import Sequence

import numpy as np


def sample_clients(population: Sequence[str], clients_per_round: int, seed: int,
                   round_num: int) -> list[str]:
  """Returns `clients_per_round` distinct client ids for round `round_num`, uniformly at random.

  Args:
    population: all client ids; their order does not matter (they are sorted first).
    clients_per_round: how many to sample, without replacement.
    seed: the run's sampling seed.
    round_num: the round, counted from 1.

  Raises:
    ValueError: `clients_per_round` is below 1 or above the population size.
  """
  if not 1 <= clients_per_round <= len(population):
    raise ValueError(f"clients_per_round must be between 1 and the population size "
                     f"{len(population)}, got {clients_per_round}.")
  ordered = sorted(population)
  rng = np.random.default_rng([seed, round_num])
  chosen = rng.choice(len(ordered), size=clients_per_round, replace=False)
  return [ordered[index] for index in chosen]
