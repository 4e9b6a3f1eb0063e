"""The EMNIST experiment as a Python object: `load_config` and `Run`, for notebooks and scripts.

    config = tff_resume.load_config("configs/demo.py:smoke", {"training.total_rounds": 4})
    run = tff_resume.Run(config, root_output_dir="runs/nb", experiment_name="demo")
    metrics = run.train()   # trains or resumes in this process; the last round's metrics
    run.status()            # the dict `tff-resume status --json` prints

`Run.train` builds what the config describes (data, FedAvg process, aggregator, evaluation) and
trains it with `loop.ResumableLoop`: the same steps, files and results, bit for bit, as
`python -m experiments.run_emnist` with the same config, which is built on it.
"""

import importlib.util
import os
import sys
from typing import Any, Mapping

import ml_collections

from tff_resume.program import experiment
from tff_resume.program import fingerprint as fingerprint_lib
from tff_resume.program import loop as loop_lib
from tff_resume.program import paths as paths_lib
from tff_resume.program import status as status_lib
from tff_resume.runtime import signals

ConfigError = experiment.ConfigError


def _load_config_module(path: str):
  """Imports a config file as a module; its folder's package (configs/) is importable meanwhile."""
  folder = os.path.dirname(os.path.abspath(path))
  root = os.path.dirname(folder) if os.path.isfile(os.path.join(folder, "__init__.py")) else folder
  spec = importlib.util.spec_from_file_location("tff_resume_config", path)
  module = importlib.util.module_from_spec(spec)
  added = root not in sys.path
  if added:
    sys.path.insert(0, root)
  try:
    spec.loader.exec_module(module)
  finally:
    if added:
      sys.path.remove(root)
  return module


def load_config(spec: str, overrides: Mapping[str, Any] | None = None
                ) -> ml_collections.ConfigDict:
  """Returns the config a `--config=FILE.py[:PRESET]` names, with `overrides` applied.

  Args:
    spec: a config file (`configs/demo.py`), optionally with a preset (`configs/demo.py:smoke`).
    overrides: {dotted field: value}, as `--config.training.total_rounds=4` would set them.

  Raises:
    ConfigError: the file is missing, is not a Python config, fails to load, names an unknown
      preset, or an override names an unknown field or has the wrong type.
  """
  path, _, preset = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path} not found; the configs are the files in configs/ "
                      "(e.g. configs/demo.py).")
  if not path.endswith(".py"):
    raise ConfigError(f"config file {path} is not a Python file: a config is a .py file whose "
                      "get_config() returns an ml_collections.ConfigDict (see configs/demo.py).")
  try:
    module = _load_config_module(path)
    config = module.get_config(preset) if preset else module.get_config()
  except Exception as error:  # pylint: disable=broad-except
    detail = f"{type(error).__name__}: {error}"
    if type(error) is ValueError:  # pylint: disable=unidiomatic-typecheck
      detail = str(error)  # The presets' own message names the presets.
    raise ConfigError(f"cannot load the config {spec}: {detail}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"the config {spec}: get_config() returned {type(config).__name__}, not an "
                      "ml_collections.ConfigDict.")
  config.lock()
  try:
    config.update_from_flattened_dict(dict(overrides or {}))
  except KeyError as error:
    raise ConfigError(f"unknown config field in the overrides: {error}") from None
  except (TypeError, ValueError) as error:
    raise ConfigError(f"config override: {error}") from None
  return config


class Run:
  """One EMNIST run, `{root_output_dir}/{experiment_name}`, trained or resumed in this process."""

  def __init__(self, config: ml_collections.ConfigDict | str, root_output_dir: str = "runs",
               experiment_name: str | None = None, *, verbose: bool = False):
    """
    Args:
      config: a config (`load_config`), or a `FILE.py[:PRESET]` to load.
      root_output_dir: the folder holding the runs of a study.
      experiment_name: the run's folder name under `root_output_dir`.
      verbose: let TFF's worker print.

    Raises:
      ConfigError: the config cannot be loaded.
      paths.InvalidExperimentNameError: the name is not one plain folder name.
    """
    self.config = load_config(config) if isinstance(config, str) else config
    paths_lib.check_experiment_name(experiment_name or "")
    self.paths = paths_lib.RunPaths(root_output_dir, experiment_name)
    self.verbose = verbose

  @property
  def run_dir(self) -> str:
    return self.paths.run_dir

  def loop(self, stop: signals.StopRequest | None = None) -> loop_lib.ResumableLoop:
    """Checks the config and opens the data; returns the run's loop (which builds the process and
    the evaluation only when a start trains and evaluates).

    Raises:
      ConfigError, emnist.DataNotFoundError, global_model.ModelSourceError: bad input.
      signals.Interrupted: `stop` was requested meanwhile.
    """
    config = self.config
    experiment.validate(config)
    fingerprint = fingerprint_lib.compute_fingerprint(config)
    train_data, test_data = experiment.load_data(config)
    experiment.check_population(config, train_data)
    if stop is not None:
      stop.raise_if_requested()
    aggregator = experiment.build_aggregator(config)
    return loop_lib.ResumableLoop(
        lambda: experiment.build_process(config, aggregator), train_data, run_dir=self.run_dir,
        clients_per_round=config.training.clients_per_round, seed=config.training.seed,
        preprocess=experiment.preprocess_fn(config),
        initial_state=lambda process: experiment.initial_state(config, process),
        aggregator=aggregator, evaluate=experiment.build_evaluation(config, test_data),
        rounds_per_eval=config.evaluation.rounds_per_eval,
        rounds_per_checkpoint=config.checkpoint.rounds_per_checkpoint,
        keep_total=config.checkpoint.keep_total, keep_first=config.checkpoint.keep_first,
        keep_every_k=config.checkpoint.keep_every_k, fingerprint=fingerprint,
        hyperparameters=fingerprint_lib.flatten_config(config), config=config.to_dict(),
        client_examples=loop_lib.counted_examples(
            train_data, config.client.max_examples_per_client or None),
        seeds=experiment.seeds(config), verbose=self.verbose)

  def train(self, *, stop: signals.StopRequest | None = None) -> dict[str, Any]:
    """Trains or resumes up to `training.total_rounds`; returns the last round's metrics.

    A SIGINT (Ctrl-C, Colab's stop button) or SIGTERM lets the current round finish and be saved,
    then raises `tff_resume.Interrupted` (a `KeyboardInterrupt`); call `train()` again to resume.

    Args:
      stop: a command-line program's early-installed `signals.StopRequest`; default one of
        `train`'s own, for the duration of the call.

    Raises:
      signals.Interrupted: stopped by a signal at a safe point; the run is resumable.
      ConfigError and the other errors of `loop` and `ResumableLoop.train`.
    """
    metrics = self.loop(stop).train(self.config.training.total_rounds, stop=stop)
    print(f"Status: tff-resume status {self.run_dir}")
    print(f"TensorBoard: .venv/bin/tensorboard --logdir {self.paths.root_output_dir}", flush=True)
    return metrics

  def status(self, **details) -> dict[str, Any]:
    """The run's status (`tff-resume status --json`); `round_num=`, `client_id=`, `coverage=True`
    add what those options add."""
    return status_lib.run_status(self.run_dir, **details)
