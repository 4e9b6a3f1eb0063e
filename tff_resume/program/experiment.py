"""Builds a FedAvg-on-EMNIST experiment from a configuration (an `ml_collections.ConfigDict`).

`run.Run` calls these in a fixed order: validate, data, aggregator, process (when a start trains),
evaluation. Nothing here reads flags. Configuration sections and fields are documented in
docs/configuration.md.
"""

import math
from typing import Any

import tensorflow as tf
import tensorflow_federated as tff

from tff_resume.analysis import global_model
from tff_resume.data import emnist
from tff_resume.data import preprocessing
from tff_resume.data import synthetic
from tff_resume.learning import aggregators
from tff_resume.learning import algorithms
from tff_resume.learning import models
from tff_resume.learning import privacy_accounting
from tff_resume.program import centralized_evaluation
from tff_resume.program import config_files
from tff_resume.program import fingerprint
from tff_resume.program import loop
from tff_resume.program import training
from tff_resume.runtime import workers
from tff_resume.storage import checkpointing

DATA_SOURCES = ("emnist", "synthetic")
EVALUATION_MODES = ("federated", "centralized")


ConfigError = config_files.ConfigError


def _require(condition: bool, field: str, message: str) -> None:
  if not condition:
    raise ConfigError(f"config.{field} {message}")


def num_classes(config) -> int:
  """10 classes for digits-only data (`data.only_digits`), else 62."""
  return 10 if config.data.only_digits else 62


def synthetic_spec(config) -> synthetic.SyntheticSpec:
  """The synthetic data's settings from the config's `data` section."""
  fields = config.data.synthetic
  return synthetic.SyntheticSpec(
      num_clients=fields.num_clients, min_examples_per_client=fields.min_examples_per_client,
      max_examples_per_client=fields.max_examples_per_client,
      test_examples_per_client=fields.test_examples_per_client,
      only_digits=config.data.only_digits, label_skew=fields.label_skew, seed=fields.seed)


def evaluation_mode(config) -> str:
  """`evaluation.mode`, or `federated` for configs written before the field."""
  return config.evaluation.get("mode", "federated")  # Configs written before the field: federated.


def preprocess_spec(config) -> preprocessing.PreprocessSpec:
  """The client pipeline's settings from the config's `client` section and model."""
  return preprocessing.PreprocessSpec(
      epochs=config.client.epochs, batch_size=config.client.batch_size,
      shuffle_buffer=config.client.shuffle_buffer,
      max_examples_per_client=config.client.max_examples_per_client or None,
      flatten=models.needs_flat_input(config.model.name))


def aggregator_spec(config) -> aggregators.AggregatorSpec:
  """The aggregator's settings from the config, with its seed derived from the run's seeds."""
  quantize = config.aggregator.quantize
  return aggregators.AggregatorSpec(
      name=config.aggregator.name, bits=quantize.bits, threshold=quantize.threshold,
      stochastic=quantize.stochastic, hadamard=quantize.hadamard,
      noise_multiplier=config.aggregator.dp.noise_multiplier,
      clients_per_round=config.training.clients_per_round,
      seed=aggregators.run_seed(config.training.seed, config.aggregator.get("seed", 0)))


def _check_numbers(config) -> None:
  """Every number of the config is finite and not negative (none has a meaning below 0)."""
  for field, value in fingerprint.flatten_config(config).items():
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      continue
    _require(math.isfinite(value), field, f"must be a finite number, got {value}.")
    _require(value >= 0, field, f"must be 0 or more, got {value}.")


def validate(config) -> None:
  """Checks every value that does not need the data; raises ConfigError naming the field."""
  _check_numbers(config)
  _require(config.data.source in DATA_SOURCES, "data.source",
           f"must be one of {', '.join(DATA_SOURCES)}, got {config.data.source!r}.")
  _require(config.model.compute_dtype in models.COMPUTE_DTYPES, "model.compute_dtype",
           f"must be one of {', '.join(models.COMPUTE_DTYPES)}, got {config.model.compute_dtype!r}.")
  _require(evaluation_mode(config) in EVALUATION_MODES, "evaluation.mode",
           f"must be one of {', '.join(EVALUATION_MODES)}, got {evaluation_mode(config)!r}.")
  try:
    models.check_model_name(config.model.name)
    if models.is_custom(config.model.name):  # Built once now: it must return a Keras model.
      models.create_keras_model(config.model.name, num_classes(config), config.training.seed,
                                config.model.compute_dtype)
  except models.UnknownModelError as error:
    raise ConfigError(f"config.model.name: {error}") from None
  except Exception as error:  # pylint: disable=broad-except
    raise ConfigError(f"config.model.name: {config.model.name} failed: "
                      f"{type(error).__name__}: {error}") from None
  if config.model.initial_weights:
    initial_model_weights(config)  # Checks the source and every shape now, before any work.
  for field in ("training.total_rounds", "training.clients_per_round",
                "checkpoint.rounds_per_checkpoint", "checkpoint.keep_every_k"):
    section, name = field.split(".")
    value = config[section][name]
    _require(value >= 1, field, f"must be at least 1, got {value}.")
  _require(config.client.learning_rate > 0, "client.learning_rate",
           f"must be above 0, got {config.client.learning_rate}.")
  _require(config.algorithm.name in algorithms.ALGORITHMS, "algorithm.name",
           f"must be one of {', '.join(algorithms.ALGORITHMS)}, got {config.algorithm.name!r}.")
  runtime_settings(config)
  target_delta = _target_delta(config)
  _require(config.aggregator.name != "dp" or 0 < target_delta < 1, "aggregator.dp.target_delta",
           f"must be above 0 and below 1, got {target_delta}.")
  try:
    aggregators.build_aggregator(aggregator_spec(config))
    server_optimizer_spec(config).validate()
    preprocess_spec(config).validate()
    if config.data.source == "synthetic":
      synthetic_spec(config).validate()
  except ValueError as error:
    raise ConfigError(f"config: {error}") from None


def runtime_settings(config, verbose: bool = False) -> loop.Runtime:
  """`ResumableLoop`'s `runtime` from `config.runtime` (a local worker, not split, where a config
  has no runtime section; `verbose` lets the worker print); raises
  ConfigError for a malformed address, or a TLS folder without workers (its files are checked
  when the run connects, before anything is written)."""
  runtime = config.get("runtime") or {}
  try:
    addresses = workers.parse_workers(runtime.get("workers", ""))
  except ValueError as error:
    raise ConfigError(f"config.{error}") from None
  tls_dir = runtime.get("tls_dir", "") or None
  if tls_dir:
    _require(bool(addresses), "runtime.tls_dir",
             "applies to runtime.workers, which is empty (the local worker needs no TLS).")
  return loop.Runtime(workers=tuple(addresses), num_subrounds=runtime.get("num_subrounds", 0),
                      connect_timeout_seconds=runtime.get("connect_timeout_seconds",
                                                          workers.CONNECT_TIMEOUT_SECONDS),
                      tls_dir=tls_dir, verbose=verbose)


def load_data(config):
  """Returns (train, test) ClientData; raises DataNotFoundError for a missing EMNIST file."""
  if config.data.source == "emnist":
    return emnist.load_emnist(config.data.only_digits, config.data.cache_dir or None)
  return synthetic.load_synthetic(synthetic_spec(config))


def client_examples(config, train_data):
  """client id -> its training examples, for the participation record: read from the EMNIST file's
  metadata, or counted (once per client) for data without it."""
  limit = config.client.max_examples_per_client or None
  if config.data.source == "emnist":
    return emnist.example_counts(config.data.only_digits, config.data.cache_dir or None, limit)
  return loop.counted_examples(train_data, limit)


def check_population(config, train) -> None:
  """Raises ConfigError when `training.clients_per_round` exceeds the training clients."""
  population = len(train.client_ids)
  _require(config.training.clients_per_round <= population, "training.clients_per_round",
           f"is {config.training.clients_per_round}, above the {population} training clients.")


def _model_fn(config):
  return models.build_model_fn(config.model.name, num_classes(config), config.training.seed,
                               preprocessing.element_spec(preprocess_spec(config)),
                               config.model.compute_dtype)


def _target_delta(config) -> float:
  return config.aggregator.dp.get("target_delta", 1e-5)  # Configs written before the field: 1e-5.


def privacy_accountant(config, train_data) -> privacy_accounting.PrivacyAccountant | None:
  """The `dp` aggregator's accountant (`privacy/epsilon` at `aggregator.dp.target_delta`): the
  clients of a round sampled without replacement from the training population; None otherwise."""
  if config.aggregator.name != "dp":
    return None
  event = privacy_accounting.round_event(config.aggregator.dp.noise_multiplier,
                                         config.training.clients_per_round,
                                         len(train_data.client_ids))
  return privacy_accounting.PrivacyAccountant(event, _target_delta(config))


def server_optimizer_spec(config) -> algorithms.ServerOptimizerSpec:
  """The server optimizer `server.optimizer` names, with its section's hyperparameters."""
  server = config.server
  name = server.optimizer
  settings = server[name].to_dict() if name in server and name != "sgd" else {}
  return algorithms.ServerOptimizerSpec(name=name, learning_rate=server.learning_rate,
                                        momentum=server.momentum, **settings)


def build_aggregator(config):
  """The model-update aggregator `aggregator.*` describes (a `tff.aggregators` factory)."""
  return aggregators.build_aggregator(aggregator_spec(config))


def build_process(config, aggregator=None):
  """Returns the FedAvg or FedProx process, built with `aggregator` (default `build_aggregator`)."""
  return algorithms.build_algorithm(
      _model_fn(config), client_learning_rate=config.client.learning_rate,
      server=server_optimizer_spec(config), algorithm=config.algorithm.name,
      proximal_strength=config.algorithm.proximal_strength,
      model_aggregator=aggregator if aggregator is not None else build_aggregator(config))


def initial_model_weights(config):
  """The warm start's weights (`model.initial_weights`) as ModelWeights; raises ConfigError."""
  try:
    return global_model.load_initial_weights(config.model.initial_weights, config.model.name,
                                             num_classes(config), config.training.seed)
  except (global_model.ModelSourceError, checkpointing.CorruptVersionError) as error:
    raise ConfigError(f"config.model.initial_weights: {error}") from None


def initial_state(config, process):
  """The state before round 1: the warm start's weights, or the model's seeded initial weights."""
  if config.model.initial_weights:
    return process.set_model_weights(process.initialize(), initial_model_weights(config))
  return algorithms.initialize(process, config.model.name, num_classes(config),
                               config.training.seed)


def preprocess_fn(config):
  """Returns preprocess(dataset, round, client id): a client's training dataset for a round, its
  order a pure function of (`training.seed`, round, client id)."""
  spec = preprocess_spec(config)
  seed = config.training.seed

  def preprocess(dataset, round_num, client_id):
    return preprocessing.preprocess_for_training(dataset, spec, seed=seed, round_num=round_num,
                                                 client_id=client_id)

  return preprocess


def build_evaluation(config, test_data):
  """Returns evaluate(model_weights) -> {'evaluation/<metric>': value} over the first
  `evaluation.max_clients` test clients in sorted order (all for 0): `evaluation.mode` federated, TFF's
  federated evaluation (`tff.learning.algorithms.build_fed_eval`) of each client's batches, or
  centralized, the Keras model on their pooled examples (`centralized_evaluation`). What evaluates is
  built at the first call (a start that never evaluates never builds it)."""
  spec = preprocess_spec(config)
  client_ids = sorted(test_data.client_ids)[:config.evaluation.max_clients or None]
  if evaluation_mode(config) == "centralized":
    return centralized_evaluation.build_evaluation(
        lambda: models.create_keras_model(config.model.name, num_classes(config),
                                          config.training.seed, config.model.compute_dtype),
        test_data, client_ids, spec)
  built, datasets = [], []  # At the first evaluation, not at start (start-up must not grow).

  def evaluate(model_weights):
    if not built:
      evaluation = tff.learning.algorithms.build_fed_eval(
          _model_fn(config), loop_implementation=algorithms.LOOP_IMPLEMENTATION)
      built.extend((evaluation, evaluation.initialize()))
      datasets.extend(preprocessing.preprocess_for_evaluation(
          test_data.create_tf_dataset_for_client(client_id), spec) for client_id in client_ids)
    evaluation, initial = built
    output = evaluation.next(evaluation.set_model_weights(initial, model_weights), datasets)
    return training.flatten_metrics(
        output.metrics["client_work"]["eval"]["current_round_metrics"], "evaluation/")

  return evaluate


def seeds(config) -> dict[str, int]:
  """The run's seeds by purpose, as its record keeps them."""
  return {"training": config.training.seed, "synthetic_data": config.data.synthetic.seed}
