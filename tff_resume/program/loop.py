"""`ResumableLoop`: any TFF learning process, trained round by round so that it survives interruption.

    source = tff_resume.SeededClientsDataSource("train", client_data, seed=0)
    loop = tff_resume.ResumableLoop(process, source, run_dir="runs/mine", clients_per_round=10)
    metrics = loop.train(total_rounds=100)   # kill it anywhere; train() again continues

The loop is composed from the objects TFF's program API names: a `tff.program.FederatedDataSource`
(`federated_data.SeededClientsDataSource`: each round's clients from the seeded sampler, a pure
function of the seed, the round and the client ids), a `tff.program.ProgramStateManager`
(`checkpointing.DurableProgramStateManager`: atomic, checksummed versions in `run_dir/checkpoints`)
and `tff.program.ReleaseManager`s (`release_managers.TensorBoardReleaseManager` and
`CsvReleaseManager` by default, any other ReleaseManager besides). Each round runs `process.next` on
the source's clients, records the clients and metrics (history, every release manager,
participation), and saves the server state with the run record as one version. A later `train()` in
any process resumes from the newest good version and gives bit-identical weights, clients and
metrics to a run never interrupted. It takes the run folder's lock, refuses a run whose fingerprint
differs, and owns the TFF worker it starts. The EMNIST runner (`run.Run`,
`experiments/run_emnist.py`) builds these objects from its config.
"""

import contextlib
import dataclasses
import hashlib
import os
import sys
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_resume.analysis import global_model
from tff_resume.learning import accounting
from tff_resume.learning import privacy_accounting
from tff_resume.program import federated_data
from tff_resume.program import fingerprint as fingerprint_lib
from tff_resume.program import training
from tff_resume.releases import bookkeeping
from tff_resume.releases import release_managers as release_managers_lib
from tff_resume.releases import units
from tff_resume.runtime import fault_hooks
from tff_resume.runtime import network_isolation
from tff_resume.runtime import signals
from tff_resume.runtime import workers as workers_lib
from tff_resume.storage import atomic_files
from tff_resume.storage import checkpointing
from tff_resume.storage import paths as paths_lib
from tff_resume.storage import run_lock
from tff_resume.storage import run_record


class RunFolderError(ValueError):
  """The run folder cannot be created or written."""


class VersionVanishedError(Exception):
  """A checkpoint version was removed by something else between listing and loading it."""


@dataclasses.dataclass(frozen=True)
class Runtime:
  """Where a loop's rounds compute (the config's `runtime` section).

  Attributes:
    workers: `host:port` of `tff-resume worker`s to compute on; empty: a local worker.
    num_subrounds: split each round's clients, in sampled order, into this many groups whose partial
      aggregates are merged in order (0: not split); results depend on it, not on the workers, and
      it is in the default fingerprint.
    connect_timeout_seconds: how long a start waits for each of `workers` to answer.
    tls_dir: connect to `workers` over mutual TLS with this folder's CA and runner pair
      (`tff-resume certs`); None connects without TLS.
    start_worker: start a TFF worker (or connect to `workers`) for each `train`, and stop it after;
      False uses the execution context already installed.
    verbose: let the worker print.
  """
  workers: Sequence[str] = ()
  num_subrounds: int = 0
  connect_timeout_seconds: float = workers_lib.CONNECT_TIMEOUT_SECONDS
  tls_dir: str | None = None
  start_worker: bool = True
  verbose: bool = False


def default_fingerprint(process, client_ids, clients_per_round: int, seed: int,
                        num_subrounds: int = 0) -> dict[str, Any]:
  """What changes the math of a loop not described by a config: the process's types, the sampling
  settings, the client population (a SHA-256 of the sorted ids) and the subrounds, when split."""
  population = hashlib.sha256("\n".join(sorted(client_ids)).encode()).hexdigest()
  fields = {"process.next.type_signature": str(process.next.type_signature),
            "training.clients_per_round": clients_per_round, "training.seed": seed,
            "client_data.num_clients": len(client_ids), "client_data.client_ids_sha256": population}
  if num_subrounds:
    fields["runtime.num_subrounds"] = num_subrounds
  return fields


def counted_examples(client_data, limit: int | None = None) -> Callable[[str], int]:
  """Returns examples(client_id): the elements of the client's dataset (at most `limit`), counted
  once per client and remembered."""
  counts = {}

  def examples(client_id: str) -> int:
    if client_id not in counts:
      dataset = client_data.create_tf_dataset_for_client(client_id)
      total = int(dataset.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))
      counts[client_id] = min(total, limit) if limit else total
    return counts[client_id]

  return examples


def report_round(result: training.RoundResult, first_round: int, started: float) -> None:
  """Prints the round's line: loss, accuracy, bits, evaluation, time and ETA (what is known)."""
  metrics = result.metrics
  rounds_run = result.round_num - first_round + 1
  eta_seconds = (time.monotonic() - started) / rounds_run * (result.total_rounds - result.round_num)
  parts = [f"round {result.round_num:4d}/{result.total_rounds}"]
  for label, name in (("loss", "client_work/train/loss"),
                      ("accuracy", "client_work/train/sparse_categorical_accuracy")):
    if name in metrics:
      parts.append(f"{label} {metrics[name]:.4f}")
  if "communication/broadcasted_bits" in metrics:
    parts.append(f"bits down {units.format_bits(metrics['communication/broadcasted_bits'])}"
                 f" up {units.format_bits(metrics['communication/aggregated_bits'])}")
  if "privacy/epsilon" in metrics:
    parts.append(f"epsilon {metrics['privacy/epsilon']:.3g}")
  if "evaluation/sparse_categorical_accuracy" in metrics:
    parts.append(f"eval accuracy {metrics['evaluation/sparse_categorical_accuracy']:.4f}")
  parts.append(f"round {result.round_seconds:.2f} s")
  if result.checkpoint_seconds is not None:
    parts.append(f"checkpoint {result.checkpoint_seconds:.2f} s")
  parts.append(f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta_seconds))}")
  print("  ".join(parts), flush=True)


@contextlib.contextmanager
def _own_worker(verbose: bool, addresses: Sequence[str], num_subrounds: int,
                timeout_seconds: float, tls_dir: str | None = None):
  """Runs the body with the loop's workers as the default context (a local worker of its own when
  no remote one is named); puts back the context that was there before, and stops the local worker,
  however the body ends."""
  stack = tff.framework.get_context_stack()
  previous = stack.current
  if not addresses and not network_isolation.isolated():
    network_isolation.warn_unisolated(
        "this process was not isolated before its threads started: a notebook, or your own program",
        advice="Train through the command line (python -m experiments.run_emnist), which isolates "
        "it, or on a firewalled machine")
  worker = workers_lib.start_execution_context(addresses, num_subrounds, verbose, timeout_seconds,
                                               tls_dir)
  try:
    yield worker
  finally:
    worker.stop()
    tff.framework.set_default_context(previous)


class ResumableLoop:
  """Trains a TFF learning process durably in `run_dir` (see the module docstring)."""

  def __init__(self, process, data_source: federated_data.SeededClientsDataSource, *,
               run_dir: str, clients_per_round: int,
               state_manager: checkpointing.DurableProgramStateManager | None = None,
               release_managers: Sequence[tff.program.ReleaseManager] | None = None,
               initial_state: Any = None, model_weights_fn: Callable[[Any], Any] | None = None,
               aggregator: Any = None,
               privacy: privacy_accounting.PrivacyAccountant | None = None,
               evaluate: Callable[[Any], Mapping[str, Any]] | None = None,
               rounds_per_eval: int = 0, rounds_per_checkpoint: int = 1,
               fingerprint: Mapping[str, Any] | None = None,
               config: Mapping[str, Any] | None = None,
               client_examples: Callable[[str], int] | None = None,
               seeds: Mapping[str, int] | None = None, runtime: Runtime = Runtime()):
    """Describes the run; nothing is read or written before `train`.

    Args:
      process: a `tff.learning.templates.LearningProcess`, or a `tff.templates.IterativeProcess`
        whose `next(state, client_datasets)` returns its new state and metrics as a pair (then give
        `model_weights_fn`, or the whole state is hashed); or a function returning one, called
        only when a start trains (a refused or complete run then builds nothing; give
        `fingerprint`).
      data_source: a `federated_data.SeededClientsDataSource`: round r trains on
        `data_source.sample(r, clients_per_round)`, each client's `data_source.dataset(r, id)`. Its
        preprocessing must depend on nothing but (dataset, round, client) for resume to be
        bit-identical.
      run_dir: the run's folder (created; checkpoints, history, TensorBoard and results go there).
      clients_per_round: clients sampled each round, without replacement.
      state_manager: a `checkpointing.DurableProgramStateManager` on `run_dir/checkpoints` (to set
        its retention: `keep_total`, `keep_first`, `keep_every_k`); default one with TFF's default
        retention.
      release_managers: `tff.program.ReleaseManager`s that get each round's metrics (name ->
        number), keyed by the round. Ours (`release_managers.TensorBoardReleaseManager`,
        `CsvReleaseManager`) are cut back to the version resumed at every start and rewritten from
        the history when damaged; any other gets each round once per start that trains it (so a
        redone round again). Default: TensorBoard events in `run_dir` (with the fingerprint as
        hyperparameters) and `run_dir/results/metrics.csv`.
      initial_state: the state before round 1, or a function of the process returning it; default
        `process.initialize()`.
      model_weights_fn: state -> `tff.learning.models.ModelWeights` (or a list of arrays): what
        evaluation gets and what `model_weights_sha256` hashes; default the learning process's.
      aggregator: the `tff.aggregators` factory the process was built with: adds the broadcast and
        aggregated bits of every round (`communication/*`). None: no bits are recorded.
      privacy: a `privacy_accounting.PrivacyAccountant` for a differentially private aggregator:
        adds the privacy spent after every round (`privacy/epsilon`, `privacy/target_delta`).
      evaluate: model weights -> {metric name: number}, run every `rounds_per_eval` rounds (0:
        only after the last) and after the last round.
      rounds_per_eval: see `evaluate`.
      rounds_per_checkpoint: save every this many rounds (always after the last, and on a stop).
      fingerprint: the fields that change the math; a resume with other values is refused. Default
        `default_fingerprint(...)`.
      config: saved as `config.json` at every start (for the user; never read back to train).
      client_examples: client id -> its examples, for `results/participation.sqlite`; default the
        size of its dataset in the data source.
      seeds: recorded in the run record, by purpose; default {"training": data_source.seed}.
      runtime: where the rounds compute (`Runtime`); default a local worker of the loop's own.

    Raises:
      TypeError: `data_source` is not a `SeededClientsDataSource`.
      ValueError: `state_manager` keeps its versions elsewhere than `run_dir/checkpoints`.
    """
    if not isinstance(data_source, federated_data.SeededClientsDataSource):
      raise TypeError(
          f"ResumableLoop(process, data_source, ...): data_source must be a "
          f"tff_resume.SeededClientsDataSource, got {type(data_source).__name__}; wrap client data "
          "as tff_resume.SeededClientsDataSource('train', client_data, seed=0).")
    self._process, self.data_source = process, data_source
    self._aggregator, self._communication = aggregator, None
    self._privacy = privacy
    self.paths = paths_lib.RunPaths.from_run_dir(run_dir)
    self.clients_per_round = clients_per_round
    if state_manager is None:
      state_manager = checkpointing.DurableProgramStateManager(self.paths.checkpoints)
    elif os.path.realpath(state_manager.root_dir) != os.path.realpath(self.paths.checkpoints):
      raise ValueError(f"state_manager keeps its versions in {state_manager.root_dir}; a loop's "
                       f"go in {self.paths.checkpoints} (where resume and tff-resume status look): "
                       "make it on that folder.")
    self.state_manager = state_manager
    self._initial_state, self._model_weights_fn = initial_state, model_weights_fn
    self._evaluate, self.rounds_per_eval = evaluate, rounds_per_eval
    self.rounds_per_checkpoint = rounds_per_checkpoint
    self.runtime = runtime
    self.fingerprint = dict(fingerprint if fingerprint is not None else default_fingerprint(
        self.process, data_source.client_ids, clients_per_round, data_source.seed,
        runtime.num_subrounds))
    self.release_managers = list(release_managers if release_managers is not None else
                                 release_managers_lib.for_run(self.paths, {
                                     k: str(v) for k, v in self.fingerprint.items()}))
    self._config = config
    self._client_examples = client_examples or counted_examples(data_source.client_data)
    self._seeds = dict(seeds if seeds is not None else {"training": data_source.seed})

  @property
  def seed(self) -> int:
    """The sampling seed (the data source's)."""
    return self.data_source.seed

  @property
  def num_subrounds(self) -> int:
    """The subrounds each round is split into (`runtime.num_subrounds`; 0: not split)."""
    return self.runtime.num_subrounds

  @property
  def run_dir(self) -> str:
    return self.paths.run_dir

  @property
  def process(self):
    """The process (built on first use when a function was given)."""
    if not (hasattr(self._process, "next") and hasattr(self._process, "initialize")):
      fault_hooks.announce("tracing")
      self._process = self._process()
    return self._process

  def _communication_cost(self) -> accounting.CommunicationCost | None:
    if self._aggregator is not None and self._communication is None:
      self._communication = accounting.communication_cost(self.process, self._aggregator)
    return self._communication

  def model_weights(self, state) -> Any:
    """The model weights of `state` (`model_weights_fn`, or the learning process's)."""
    if self._model_weights_fn is not None:
      return self._model_weights_fn(state)
    return training.global_model_weights(self.process, state)

  def _weights_sha256(self, state) -> str:
    """SHA-256 of the model weights (trainable, then non-trainable); of every array of the state,
    in `tf.nest` order, when the process has no model weights to read."""
    if self._model_weights_fn is None and not hasattr(self.process, "get_model_weights"):
      arrays = tf.nest.flatten(state)
    else:
      arrays = self.model_weights(state)
      if hasattr(arrays, "trainable"):
        arrays = list(arrays.trainable) + list(arrays.non_trainable)
    return global_model.weights_sha256([np.asarray(array) for array in arrays])

  def select_clients(self, round_num: int) -> list[str]:
    """The clients of round `round_num`: a pure function of (seed, round, client ids)."""
    return self.data_source.sample(round_num, self.clients_per_round)

  def client_datasets(self, round_num: int, client_ids: list[str]) -> list[tf.data.Dataset]:
    """The training datasets of `client_ids` in round `round_num`, in their order."""
    return [self.data_source.dataset(round_num, client_id) for client_id in client_ids]

  def train(self, total_rounds: int, *, stop: signals.StopRequest | None = None
            ) -> dict[str, Any]:
    """Trains or resumes up to round `total_rounds`; returns the last round's metrics.

    SIGINT/SIGTERM (Ctrl-C, a notebook's stop button) let the current round finish and be saved,
    then `signals.Interrupted` is raised; `train` again resumes. A second signal stops at once
    (`KeyboardInterrupt`; the last saved version is intact). Every process it started has ended
    when it returns or raises.

    Args:
      total_rounds: the last round; a complete run returns at once with its last metrics.
      stop: the program's own `signals.StopRequest` (installed early by a command-line program);
        default one installed for the duration of the call (main thread only).

    Raises:
      signals.Interrupted: a signal stopped the run at a safe point.
      run_lock.RunLockedError: another process is running in `run_dir`; nothing was changed.
      fingerprint.FingerprintMismatchError: the run folder holds a run with other math.
      RunFolderError: the run folder cannot be written.
      paths.NotOwnFileError: a file or folder the run writes is a symbolic link.
    """
    if total_rounds < 1:
      raise ValueError(f"total_rounds must be at least 1, got {total_rounds}.")
    own_stop = stop is None
    if own_stop:
      stop = signals.StopRequest(in_process=True)
      if threading.current_thread() is threading.main_thread():
        stop.install()
    try:
      return self._train_holding_lock(total_rounds, stop)
    finally:
      if own_stop:
        stop.uninstall()

  def _train_holding_lock(self, total_rounds: int, stop: signals.StopRequest) -> dict[str, Any]:
    stop.raise_if_requested()
    run_dir = self.paths.run_dir
    paths_lib.check_own_files(self.paths)
    lock = run_lock.RunLock(run_dir)
    created = not os.path.isdir(run_dir)
    try:
      lock.acquire()
    except OSError as error:
      raise RunFolderError(f"cannot write the run folder {run_dir}: {error.strerror}; choose a "
                           "writable --root_output_dir.") from None
    try:
      return self._train_locked(total_rounds, stop)
    finally:
      if created and os.listdir(run_dir) == [run_lock.LOCK_FILE]:
        # This start wrote nothing (bad input, or stopped early): leave no empty run folder behind.
        os.remove(lock.path)
        os.rmdir(run_dir)
      lock.release()

  def _train_locked(self, total_rounds: int, stop: signals.StopRequest) -> dict[str, Any]:
    paths = self.paths
    manager = self.state_manager
    version = manager.latest_good_version()
    record = metadata = None
    if version is not None:
      metadata = manager.load_metadata(version)
      record = run_record.RunRecord.from_json(metadata)
      fingerprint_lib.check_resumable(record.fingerprint, self.fingerprint, paths.run_dir)
      if record.rounds_done >= total_rounds:
        print(f"Run {paths.run_dir} is complete: {record.rounds_done} rounds done, "
              f"{total_rounds} asked for. Nothing to do "
              "(ask for more rounds to extend it: --config.training.total_rounds).")
        return dict(record.last_metrics)
    stop.raise_if_requested()
    with contextlib.ExitStack() as stack:
      runtime = self.runtime
      if runtime.start_worker:  # Before any write: a worker that is down or a process TFF cannot
        # split into subrounds stops the start with nothing changed.
        worker = stack.enter_context(_own_worker(
            runtime.verbose, tuple(runtime.workers), runtime.num_subrounds,
            runtime.connect_timeout_seconds, runtime.tls_dir))
        if self.num_subrounds:
          worker.context.form(self.process.next, "the process's round (next)")
        stop.raise_if_requested()
      # First, as it may refuse the run: nothing is changed before it accepts the history.
      history, redone = bookkeeping.open_history(manager, version, record, metadata,
                                                 paths.progress_json)
      stack.callback(history.close)
      for cleanup in (manager.remove_temporaries,
                      lambda: atomic_files.remove_temporaries(paths.run_dir),
                      lambda: atomic_files.remove_temporaries(paths.results_dir)):
        cleanup()
        stop.add_cleanup(cleanup)
      if self._config is not None:
        atomic_files.write_json_atomically(paths.config_json, dict(self._config))
        fault_hooks.announce("wrote config.json")
      newer = [v for v in manager.versions() if version is not None and v > version]
      for corrupt in newer + manager.unfinished_versions():
        manager.set_aside(corrupt)
      state, record = self._start_state(manager, version, record, history, redone, total_rounds)
      return self._run_rounds(state, manager, record, history, total_rounds, stop, stack)

  def _start_state(self, manager, version, record, history, redone, total_rounds):
    """(state, record) to train from: the initial state saved as version 0, or the version
    resumed."""
    initial = self._initial_state
    state = (self.process.initialize() if initial is None
             else initial(self.process) if callable(initial) else initial)
    if record is None:
      record = run_record.new_record(self.fingerprint, self._seeds, total_rounds)
      history.log_start(None, 0, total_rounds)
      bookkeeping.save_checkpoint(manager, state, record, self._weights_sha256(state))
      print(f"Starting {self.paths.run_dir}: {total_rounds} rounds.", flush=True)
      return state, record
    try:
      state = manager.load_version(version, state)
    except checkpointing.VersionNotFoundError:
      raise VersionVanishedError(
          f"checkpoint version {version} of {self.paths.run_dir} vanished while it was being "
          "loaded (removed by something else); run the same command again.") from None
    record.total_rounds = total_rounds
    history.log_start(version, redone, total_rounds)
    print(f"Resuming {self.paths.run_dir} from version {version} "
          f"({redone} round{'s' * (redone != 1)} to redo), up to round {total_rounds}.", flush=True)
    return state, record

  def _run_rounds(self, state, manager, record, history, total_rounds: int,
                  stop: signals.StopRequest, stack: contextlib.ExitStack) -> dict[str, Any]:
    book = bookkeeping.Bookkeeping(self.paths, manager, record, history, self._client_examples,
                                   self.release_managers)
    stack.callback(book.close)
    first_round, started = record.rounds_done + 1, time.monotonic()
    stop.raise_if_requested()

    def on_round(result: training.RoundResult) -> None:
      if result.checkpoint_seconds is not None and book.tensorboard is not None:
        book.tensorboard.release_round(result.round_num,
                                       {"time/checkpoint_seconds": result.checkpoint_seconds})
      report_round(result, first_round, started)

    _, stopped = training.train(
        process=self.process, state=state, book=book, total_rounds=total_rounds,
        rounds_per_checkpoint=self.rounds_per_checkpoint, communication=self._communication_cost(),
        evaluate=(None if self._evaluate is None
                  else lambda state: self._evaluate(self.model_weights(state))),
        rounds_per_eval=self.rounds_per_eval, select_clients=self.select_clients,
        client_datasets=self.client_datasets, should_stop=lambda: stop.requested,
        on_round=on_round, weights_sha256=self._weights_sha256, privacy=self._privacy)
    if stopped:
      raise signals.Interrupted(stop.signal_name, record.rounds_done)
    self._print_done(record, time.monotonic() - started)
    return dict(record.last_metrics)

  def _print_done(self, record: run_record.RunRecord, seconds: float) -> None:
    last = record.last_metrics
    parts = [f"Done: {record.rounds_done} rounds in {seconds:.1f} s this start"]
    if "client_work/train/loss" in last:
      parts.append(f"final loss {last['client_work/train/loss']:.4f}, accuracy "
                   f"{last.get('client_work/train/sparse_categorical_accuracy', float('nan')):.4f}")
    if "communication/broadcasted_bits" in last:
      parts.append(f"broadcast {units.format_bits(last['communication/broadcasted_bits'])}, "
                   f"aggregated {units.format_bits(last['communication/aggregated_bits'])} in all")
    parts.append(f"model weights SHA-256 {record.model_weights_sha256[:16]}...")
    print("; ".join(parts))
    sys.stdout.flush()
