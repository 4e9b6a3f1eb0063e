"""Weighted Federated Averaging on EMNIST, built with TFF's own algorithm.

`build_fedavg` wraps `tff.learning.algorithms.build_weighted_fed_avg` with TFF 0.87's optimizers
(`tff.learning.optimizers.build_sgdm`), and `initialize` puts the seeded initial weights into the
server state so every process starts from the same bits.
"""

import tensorflow_federated as tff

from tff_resume import models


def build_fedavg(model_fn, *, client_learning_rate: float, server_learning_rate: float,
                 server_momentum: float = 0.0, model_aggregator=None):
  """Returns the weighted FedAvg `tff.learning.templates.LearningProcess`.

  Args:
    model_fn: builds a `tff.learning.models.VariableModel` (see `models.build_model_fn`).
    client_learning_rate: client SGD learning rate.
    server_learning_rate: server SGD learning rate applied to the averaged update.
    server_momentum: server SGD momentum (0 for plain SGD).
    model_aggregator: a `tff.aggregators` factory for the model updates; None for TFF's default
      weighted mean.
  """
  for name, value in (("client_learning_rate", client_learning_rate),
                      ("server_learning_rate", server_learning_rate)):
    if value <= 0:
      raise ValueError(f"{name} must be above 0, got {value}.")
  return tff.learning.algorithms.build_weighted_fed_avg(
      model_fn,
      client_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=client_learning_rate),
      server_optimizer_fn=tff.learning.optimizers.build_sgdm(
          learning_rate=server_learning_rate, momentum=server_momentum or None),
      model_aggregator=model_aggregator)


def initialize(process, model_name: str, num_classes: int, seed: int):
  """Returns the process's initial state holding the model's seeded initial weights."""
  state = process.initialize()
  return process.set_model_weights(
      state, models.initial_model_weights(model_name, num_classes, seed))
