"""The privacy spent by a `dp` run: epsilon at a delta after each round, with `dp_accounting`.

Each round samples a fixed number of clients (`training.clients_per_round`) without replacement from
the training population (`sampling.sample_clients`), and TFF's adaptive-clip Gaussian aggregator
releases the noised mean of their clipped updates; TFF splits the noise between the sum and the
clip-count estimate so that both together are a Gaussian mechanism of `noise_multiplier`
(`DifferentiallyPrivateFactory.gaussian_adaptive`). One round is therefore
`SampledWithoutReplacementDpEvent(population, clients_per_round, GaussianDpEvent(noise_multiplier))`,
composed over the rounds done with the Rényi accountant. The guarantee is user-level (a client is the
unit of privacy, under the replace-one neighbouring relation that this event requires), assumes the
sampling really is uniform and secret, and says nothing about the evaluation, which is not private.
"""

import dp_accounting
from dp_accounting import rdp


def round_event(noise_multiplier: float, clients_per_round: int,
                population: int) -> dp_accounting.DpEvent:
  """One round's event: a fixed-size sample without replacement, then the Gaussian mechanism."""
  return dp_accounting.SampledWithoutReplacementDpEvent(
      population, clients_per_round, dp_accounting.GaussianDpEvent(noise_multiplier))


def _neighboring_relation(event: dp_accounting.DpEvent) -> dp_accounting.NeighboringRelation:
  if isinstance(event, dp_accounting.SampledWithoutReplacementDpEvent):
    return dp_accounting.NeighboringRelation.REPLACE_ONE
  return dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE


class PrivacyAccountant:
  """epsilon(rounds) of an event repeated every round, at a fixed delta, in constant time per call.

  The Rényi divergence of one round is computed once, at the first call (about 0.2 s here, so a start
  that trains no round pays nothing); after `rounds` rounds it is `rounds` times that, order by order,
  so round 10,000 costs what round 1 did.
  """

  def __init__(self, event: dp_accounting.DpEvent, target_delta: float):
    self._event, self.target_delta = event, target_delta
    self._orders = self._one_round = None

  def epsilon(self, rounds: int) -> float:
    """epsilon after `rounds` rounds (0 before the first)."""
    if rounds == 0:
      return 0.0
    if self._one_round is None:
      accountant = rdp.RdpAccountant(neighboring_relation=_neighboring_relation(self._event))
      accountant.compose(self._event)
      # The accountant's per-order divergence after one event (it keeps no public accessor).
      self._orders = accountant._orders  # pylint: disable=protected-access
      self._one_round = accountant._rdp  # pylint: disable=protected-access
    return float(rdp.compute_epsilon(self._orders, self._one_round * rounds, self.target_delta)[0])


def privacy_metrics(accountant: PrivacyAccountant, rounds: int) -> dict[str, float]:
  """The privacy spent after `rounds` rounds: `privacy/epsilon` at `privacy/target_delta`."""
  return {"privacy/epsilon": accountant.epsilon(rounds),
          "privacy/target_delta": accountant.target_delta}
