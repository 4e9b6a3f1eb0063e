"""The learning algorithms: weighted FedAvg or FedProx, with an SGD, Adam, Adagrad or Yogi server.

`build_algorithm` wraps TFF's own `tff.learning.algorithms.build_weighted_fed_avg` (or
`build_weighted_fed_prox`) with TFF 0.87's optimizers (`tff.learning.optimizers`): client SGD, and
the server optimizer of Adaptive Federated Optimization (Reddi et al., 2021). `initialize` puts the
seeded initial weights into the server state so every process starts from the same bits.

Clients train with TFF's `DATASET_ITERATOR` loop (a `tf.while_loop` over the dataset's iterator)
rather than its default `DATASET_REDUCE` (the `DatasetReduce` op). Both run the same kernels in the
same order, so the weights are bit-identical (tested), but the step inside `DatasetReduce` runs as a
tf.data function and took 1.2-1.4x as long per round here (see docs/benchmarks.md).
"""

import dataclasses

import tensorflow_federated as tff

from tff_resume.learning import models

ALGORITHMS = ("fedavg", "fedprox")
SERVER_OPTIMIZERS = ("sgd", "adam", "adagrad", "yogi")
LOOP_IMPLEMENTATION = tff.learning.LoopImplementation.DATASET_ITERATOR


@dataclasses.dataclass(frozen=True)
class ServerOptimizerSpec:
  """The server optimizer and its hyperparameters (those of the others are ignored).

  Attributes:
    name: one of SERVER_OPTIMIZERS.
    learning_rate: the server learning rate, applied to the averaged update.
    momentum: `sgd`: momentum (0 for plain SGD).
    beta_1, beta_2: `adam`, `yogi`: decay of the first and second moment estimates.
    epsilon: `adam`, `adagrad`, `yogi`: added to the denominator (adaptivity).
    initial_preconditioner_value: `adagrad`, `yogi`: the second-moment accumulator's start value.
  """
  name: str = "sgd"
  learning_rate: float = 1.0
  momentum: float = 0.0
  beta_1: float = 0.9
  beta_2: float = 0.999
  epsilon: float = 1e-7
  initial_preconditioner_value: float = 0.1

  def validate(self) -> None:
    """Raises ValueError naming the field when a setting is invalid."""
    if self.name not in SERVER_OPTIMIZERS:
      raise ValueError(f"server.optimizer must be one of {', '.join(SERVER_OPTIMIZERS)}, "
                       f"got {self.name!r}.")
    if not self.learning_rate > 0:
      raise ValueError(f"server.learning_rate must be above 0, got {self.learning_rate}.")
    if self.name == "sgd" and not 0 <= self.momentum < 1:
      raise ValueError(f"server.momentum must be in [0, 1), got {self.momentum}.")
    if self.name in ("adam", "yogi"):
      for field in ("beta_1", "beta_2"):
        if not 0 <= getattr(self, field) < 1:
          raise ValueError(f"server.{self.name}.{field} must be in [0, 1), got "
                           f"{getattr(self, field)}.")
    if self.name != "sgd" and not self.epsilon > 0:
      raise ValueError(f"server.{self.name}.epsilon must be above 0, got {self.epsilon}.")
    if self.name in ("adagrad", "yogi") and not self.initial_preconditioner_value >= 0:
      raise ValueError(f"server.{self.name}.initial_preconditioner_value must be 0 or more, got "
                       f"{self.initial_preconditioner_value}.")

  def build(self) -> tff.learning.optimizers.Optimizer:
    """The TFF server optimizer these settings name (validated first)."""
    self.validate()
    rate = self.learning_rate
    if self.name == "adam":
      return tff.learning.optimizers.build_adam(rate, beta_1=self.beta_1, beta_2=self.beta_2,
                                                epsilon=self.epsilon)
    if self.name == "adagrad":
      return tff.learning.optimizers.build_adagrad(
          rate, initial_preconditioner_value=self.initial_preconditioner_value,
          epsilon=self.epsilon)
    if self.name == "yogi":
      return tff.learning.optimizers.build_yogi(
          rate, beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon,
          initial_preconditioner_value=self.initial_preconditioner_value)
    return tff.learning.optimizers.build_sgdm(learning_rate=rate, momentum=self.momentum or None)


def build_algorithm(model_fn, *, client_learning_rate: float, server: ServerOptimizerSpec,
                    algorithm: str = "fedavg", proximal_strength: float = 0.0,
                    model_aggregator=None):
  """Returns the weighted FedAvg or FedProx `tff.learning.templates.LearningProcess`.

  Args:
    model_fn: builds a `tff.learning.models.VariableModel` (see `models.build_model_fn`).
    client_learning_rate: client SGD learning rate.
    server: the server optimizer.
    algorithm: "fedavg" or "fedprox".
    proximal_strength: `fedprox`: the weight of the proximal term (mu), 0 or more.
    model_aggregator: a `tff.aggregators` factory for the model updates; None for TFF's default
      weighted mean.
  """
  if not client_learning_rate > 0:
    raise ValueError(f"client_learning_rate must be above 0, got {client_learning_rate}.")
  options = dict(client_optimizer_fn=tff.learning.optimizers.build_sgdm(
      learning_rate=client_learning_rate), server_optimizer_fn=server.build(),
                 model_aggregator=model_aggregator, loop_implementation=LOOP_IMPLEMENTATION)
  if algorithm == "fedprox":
    if not proximal_strength >= 0:
      raise ValueError(f"algorithm.proximal_strength must be 0 or more, got {proximal_strength}.")
    return tff.learning.algorithms.build_weighted_fed_prox(
        model_fn, proximal_strength=proximal_strength, **options)
  if algorithm != "fedavg":
    raise ValueError(f"algorithm.name must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}.")
  return tff.learning.algorithms.build_weighted_fed_avg(model_fn, **options)


def initialize(process, model_name: str, num_classes: int, seed: int):
  """Returns the process's initial state holding the model's seeded initial weights."""
  state = process.initialize()
  return process.set_model_weights(
      state, models.initial_model_weights(model_name, num_classes, seed))
