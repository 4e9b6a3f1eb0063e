"""The EMNIST experiment as a Python object: `load_config` and `Run`, for notebooks and scripts.

    config = tff_resume.load_config("configs/demo.py:smoke", {"training.total_rounds": 4})
    run = tff_resume.Run(config, root_output_dir="runs/nb", experiment_name="demo")
    metrics = run.train()   # trains or resumes in this process; the last round's metrics
    run.status()            # the dict `tff-resume status --json` prints

`Run.train` builds what the config describes (the data source, FedAvg process, aggregator,
evaluation, the state manager with the config's retention, the TensorBoard and CSV release managers)
and trains it with `loop.ResumableLoop`: the same steps, files and results, bit for bit, as
`python -m experiments.run_emnist` with the same config, which is built on it.
"""

from typing import Any, Mapping

import ml_collections

from tff_resume.analysis import status as status_lib
from tff_resume.program import config_files
from tff_resume.program import experiment
from tff_resume.program import federated_data
from tff_resume.program import fingerprint as fingerprint_lib
from tff_resume.program import loop as loop_lib
from tff_resume.releases import release_managers
from tff_resume.runtime import fault_hooks
from tff_resume.runtime import signals
from tff_resume.storage import checkpointing
from tff_resume.storage import paths as paths_lib

ConfigError = config_files.ConfigError
load_config = config_files.load_config


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
    fault_hooks.announce("loading data")
    train_data, test_data = experiment.load_data(config)
    experiment.check_population(config, train_data)
    if stop is not None:
      stop.raise_if_requested()
    aggregator = experiment.build_aggregator(config)
    paths = self.paths
    checkpoint = config.checkpoint
    return loop_lib.ResumableLoop(
        lambda: experiment.build_process(config, aggregator),
        federated_data.SeededClientsDataSource("train", train_data, config.training.seed,
                                               experiment.preprocess_fn(config)),
        run_dir=self.run_dir, clients_per_round=config.training.clients_per_round,
        state_manager=checkpointing.DurableProgramStateManager(
            paths.checkpoints, keep_total=checkpoint.keep_total, keep_first=checkpoint.keep_first,
            keep_every_k=checkpoint.keep_every_k),
        release_managers=release_managers.for_run(paths, fingerprint_lib.flatten_config(config)),
        initial_state=lambda process: experiment.initial_state(config, process),
        aggregator=aggregator, privacy=experiment.privacy_accountant(config, train_data),
        evaluate=experiment.build_evaluation(config, test_data),
        rounds_per_eval=config.evaluation.rounds_per_eval,
        rounds_per_checkpoint=checkpoint.rounds_per_checkpoint, fingerprint=fingerprint,
        config=config.to_dict(), client_examples=experiment.client_examples(config, train_data),
        seeds=experiment.seeds(config), runtime=experiment.runtime_settings(config, self.verbose))

  def train(self, *, stop: signals.StopRequest | None = None) -> dict[str, Any]:
    """Trains or resumes up to `training.total_rounds`; returns the last round's metrics.

    A SIGINT (Ctrl-C, Colab's stop button) or SIGTERM lets the current round finish and be saved,
    then raises `tff_resume.Interrupted` (a `KeyboardInterrupt`); call `train()` again to resume.

    Args:
      stop: a command-line program's early-installed `signals.StopRequest`; default one of
        `train`'s own, for the duration of the call.

    Raises:
      signals.Interrupted: stopped by a signal at a safe point; the run is resumable.
      ConfigError: bad input (and the other errors of `loop` and `ResumableLoop.train`).
    """
    metrics = self.loop(stop).train(self.config.training.total_rounds, stop=stop)
    print(f"Status: tff-resume status {self.run_dir}")
    print(f"TensorBoard: .venv/bin/tensorboard --logdir {self.paths.root_output_dir}", flush=True)
    return metrics

  def status(self, **details) -> dict[str, Any]:
    """The run's status (`tff-resume status --json`); `round_num=`, `client_id=`, `coverage=True`
    add what those options add."""
    return status_lib.run_status(self.run_dir, **details)
