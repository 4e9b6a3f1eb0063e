"""Runs weighted FedAvg on federated EMNIST, resumably: run the same command again to continue.

    python -m experiments.run_emnist --config=configs/demo.py --root_output_dir=runs \\
        --experiment_name=demo

Any config field can be overridden, e.g. `--config.training.total_rounds=20`. Writes
`ROOT/NAME/config.json` and checkpoints under `ROOT/NAME/checkpoints/` after every round (see the
README). Exit status: 0 done (or already complete), 2 bad input (one line on stderr, nothing changed),
75 stopped by SIGINT/SIGTERM after saving the last completed round (run the command again to resume).
"""

import contextlib
import os
import sys
import time

from tff_resume import network_isolation
from tff_resume import runtime

# SIGINT/SIGTERM from the first instant: a signal during the imports below stops at the first safe
# point with the documented status, not Python's default (a traceback, or status 143).
_STOP = runtime.StopRequest()
if __name__ == "__main__":
  _STOP.install()
  # Before TensorFlow starts threads: the worker started later must share a private loopback only.
  try:
    network_isolation.isolate()
  except network_isolation.IsolationError as isolation_error:
    print(f"run_emnist: error: {isolation_error.strerror}", file=sys.stderr)
    sys.exit(2)

# TensorFlow reads its log level once, at import, so --verbose is looked at before flags are parsed.
# TensorFlow must also be imported before absl.app.run: Keras 2.14 first imported inside app.run
# builds broken Sequential models ("Output tensors of a Sequential model must be the output of a
# TensorFlow `Layer`").
runtime.quiet_tensorflow_logging(verbose="--verbose" in sys.argv[1:])
# pylint: disable=g-import-not-at-top,g-bad-import-order
import tensorflow  # noqa: F401  pylint: disable=unused-import
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from tff_resume import atomic_files
from tff_resume import bookkeeping
from tff_resume import checkpointing
from tff_resume import experiment
from tff_resume import fingerprint as fingerprint_lib
from tff_resume import global_model
from tff_resume import history as history_lib
from tff_resume import metrics_release
from tff_resume import participation
from tff_resume import paths as paths_lib
from tff_resume import run_lock
from tff_resume import run_record
from tff_resume import training
from tff_resume import units
from tff_resume.data import emnist
# pylint: enable=g-import-not-at-top,g-bad-import-order

runtime.install_guard_context()

_CONFIG = config_flags.DEFINE_config_file(
    "config", None,
    "Path of a configs/*.py file, optionally with a preset (configs/demo.py:smoke); override fields "
    "with --config.section.field=value.",
    lock_config=True)
_ROOT_OUTPUT_DIR = flags.DEFINE_string("root_output_dir", "runs",
                                       "Folder holding the runs of a study.")
_EXPERIMENT_NAME = flags.DEFINE_string("experiment_name", None,
                                       "The run's folder name under --root_output_dir.")
_VERBOSE = flags.DEFINE_bool("verbose", False,
                             "Show TensorFlow's start-up messages, TFF's info logs and worker output.")

EXIT_CODE_BAD_INPUT = 2
EXIT_CODE_WRITE_FAILED = 74  # EX_IOERR: a disk full or failing; the last saved version is intact.
_USER_ERRORS = (experiment.ConfigError, emnist.DataNotFoundError, global_model.ModelSourceError,
                fingerprint_lib.FingerprintMismatchError, checkpointing.NoGoodVersionError,
                paths_lib.InvalidExperimentNameError, history_lib.HistoryMismatchError)


class VersionVanishedError(Exception):
  """A checkpoint version was removed by something else between listing and loading it."""


def _report_round(result: training.RoundResult, first_round: int, started: float,
                  tensorboard: metrics_release.TensorBoardRoundWriter) -> None:
  """Prints the round's line and sends its checkpoint time to TensorBoard."""
  if result.checkpoint_seconds is not None:
    tensorboard.write_round(result.round_num, {"time/checkpoint_seconds": result.checkpoint_seconds})
  metrics = result.metrics
  rounds_run = result.round_num - first_round + 1
  eta_seconds = (time.monotonic() - started) / rounds_run * (result.total_rounds - result.round_num)
  checkpoint = ("" if result.checkpoint_seconds is None
                else f"  checkpoint {result.checkpoint_seconds:.2f} s")
  evaluation = ("" if "evaluation/sparse_categorical_accuracy" not in metrics
                else f"  eval accuracy {metrics['evaluation/sparse_categorical_accuracy']:.4f}")
  print(f"round {result.round_num:4d}/{result.total_rounds}"
        f"  loss {metrics['client_work/train/loss']:.4f}"
        f"  accuracy {metrics['client_work/train/sparse_categorical_accuracy']:.4f}"
        f"  bits down {units.format_bits(metrics['communication/broadcasted_bits'])}"
        f" up {units.format_bits(metrics['communication/aggregated_bits'])}"
        f"{evaluation}  round {result.round_seconds:.2f} s{checkpoint}"
        f"  ETA {time.strftime('%H:%M:%S', time.gmtime(eta_seconds))}", flush=True)


def run(config, paths: paths_lib.RunPaths, verbose: bool, stop: runtime.StopRequest) -> int:
  """Checks, then trains or resumes the run holding its folder's lock; returns the exit status.

  Raises:
    run_lock.RunLockedError: another process holds the run folder; nothing was changed.
  """
  experiment.validate(config)
  fingerprint = fingerprint_lib.compute_fingerprint(config)
  stop.raise_if_requested()
  lock = run_lock.RunLock(paths.run_dir)
  created = not os.path.isdir(paths.run_dir)
  try:
    lock.acquire()
  except OSError as error:
    raise experiment.ConfigError(
        f"cannot write the run folder {paths.run_dir}: {error.strerror}; choose a writable "
        "--root_output_dir.") from None
  try:
    return _run_locked(config, paths, verbose, stop, fingerprint)
  finally:
    if created and os.listdir(paths.run_dir) == [run_lock.LOCK_FILE]:
      # This start wrote nothing (bad input, or stopped early): leave no empty run folder behind.
      os.remove(lock.path)
      os.rmdir(paths.run_dir)
    lock.release()


def _run_locked(config, paths: paths_lib.RunPaths, verbose: bool, stop: runtime.StopRequest,
                fingerprint) -> int:
  manager = checkpointing.DurableProgramStateManager(
      paths.checkpoints, keep_total=config.checkpoint.keep_total,
      keep_first=config.checkpoint.keep_first, keep_every_k=config.checkpoint.keep_every_k)
  version = manager.latest_good_version()
  record = metadata = None
  if version is not None:
    metadata = manager.load_metadata(version)
    record = run_record.RunRecord.from_json(metadata)
    fingerprint_lib.check_resumable(record.fingerprint, fingerprint, paths.run_dir)
    if record.rounds_done >= config.training.total_rounds:
      print(f"Run {paths.run_dir} is complete: {record.rounds_done} rounds done, "
            f"{config.training.total_rounds} asked for. Nothing to do "
            "(raise --config.training.total_rounds to extend it).")
      return 0
  stop.raise_if_requested()
  train_data, test_data = experiment.load_data(config)
  experiment.check_population(config, train_data)
  stop.raise_if_requested()
  with contextlib.ExitStack() as stack:
    # First, as it may refuse the run: nothing is changed before it accepts the history.
    history, redone = bookkeeping.open_history(manager, version, record, metadata,
                                               paths.progress_json)
    stack.callback(history.close)
    for cleanup in (manager.remove_temporaries,
                    lambda: atomic_files.remove_temporaries(paths.run_dir),
                    lambda: atomic_files.remove_temporaries(paths.results_dir)):
      cleanup()
      stop.add_cleanup(cleanup)
    atomic_files.write_json_atomically(paths.config_json, config.to_dict())
    newer = [v for v in manager.versions() if version is not None and v > version]
    for corrupt in newer + manager.unfinished_versions():
      manager.set_aside(corrupt)
    return _train(config, paths, verbose, stop, fingerprint, manager, version, record, history,
                  redone, train_data, test_data, stack)


def _train(config, paths, verbose, stop, fingerprint, manager, version, record, history, redone,
           train_data, test_data, stack: contextlib.ExitStack) -> int:
  """Builds the process, restores or creates the state, then trains; returns the exit status."""
  runtime.start_local_execution_context(show_worker_output=verbose)
  process, communication = experiment.build_process(config)
  state = experiment.initial_state(config, process)
  stop.raise_if_requested()
  if record is None:
    record = experiment.new_record(config, fingerprint)
    history.log_start(None, 0, record.total_rounds)
    bookkeeping.save_checkpoint(manager, state, record,
                                training.model_weights_sha256(process, state))
    print(f"Starting {paths.run_dir}: {config.training.total_rounds} rounds.")
  else:
    try:
      state = manager.load_version(version, state)
    except checkpointing.VersionNotFoundError:
      raise VersionVanishedError(
          f"checkpoint version {version} of {paths.run_dir} vanished while it was being loaded "
          "(removed by something else); run the same command again.") from None
    record.total_rounds = config.training.total_rounds
    history.log_start(version, redone, record.total_rounds)
    print(f"Resuming {paths.run_dir} from version {version} "
          f"({redone} round{'s' * (redone != 1)} to redo), up to round "
          f"{config.training.total_rounds}.")

  select_clients, client_datasets = experiment.client_functions(config, train_data)
  client_examples = experiment.client_example_counter(config, train_data)
  book = bookkeeping.Bookkeeping(paths, manager, record, history, client_examples,
                                 fingerprint_lib.flatten_config(config))
  stack.callback(book.close)
  evaluate = experiment.build_evaluation(config, test_data)
  first_round, started = record.rounds_done + 1, time.monotonic()
  stop.raise_if_requested()
  _, stopped = training.train(
      process=process, state=state, book=book, total_rounds=config.training.total_rounds,
      rounds_per_checkpoint=config.checkpoint.rounds_per_checkpoint, communication=communication,
      evaluate=evaluate, rounds_per_eval=config.evaluation.rounds_per_eval,
      select_clients=select_clients, client_datasets=client_datasets,
      should_stop=lambda: stop.requested,
      on_round=lambda result: _report_round(result, first_round, started, book.tensorboard))
  if stopped:
    print(f"Stopped by {stop.signal_name} after round {record.rounds_done} (saved). "
          f"Run the same command again to resume. Exit status {runtime.EXIT_CODE_INTERRUPTED}.")
    return runtime.EXIT_CODE_INTERRUPTED
  last = record.last_metrics
  print(f"Done: {record.rounds_done} rounds in {time.monotonic() - started:.1f} s this start; "
        f"final loss {last['client_work/train/loss']:.4f}, accuracy "
        f"{last['client_work/train/sparse_categorical_accuracy']:.4f}; broadcast "
        f"{units.format_bits(last['communication/broadcasted_bits'])}, aggregated "
        f"{units.format_bits(last['communication/aggregated_bits'])} in all; "
        f"model weights SHA-256 {record.model_weights_sha256[:16]}...")
  print(f"Status: tff-resume status {paths.run_dir}")
  print(f"TensorBoard: .venv/bin/tensorboard --logdir {paths.root_output_dir}")
  return 0


def main(argv):
  status = _main(argv)
  _STOP.ignore_from_now()  # The status is decided: a late signal must not turn it into a kill.
  return status


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  runtime.quiet_tensorflow_logging(_VERBOSE.value)
  if _CONFIG.value is None or not _EXPERIMENT_NAME.value:
    print("run_emnist: error: --config and --experiment_name are required, e.g. "
          "--config=configs/demo.py --experiment_name=demo", file=sys.stderr)
    return EXIT_CODE_BAD_INPUT
  try:
    paths_lib.check_experiment_name(_EXPERIMENT_NAME.value)
    paths = paths_lib.RunPaths(_ROOT_OUTPUT_DIR.value, _EXPERIMENT_NAME.value)
    return run(_CONFIG.value, paths, _VERBOSE.value, _STOP)
  except runtime.Interrupted as interrupted:
    print(f"Stopped by {interrupted.signal_name} during start-up, before training; nothing was "
          "lost. Run the same command again to resume. Exit status "
          f"{runtime.EXIT_CODE_INTERRUPTED}.", file=sys.stderr)
    return runtime.EXIT_CODE_INTERRUPTED
  except run_lock.RunLockedError as error:
    print(f"run_emnist: {error} Exit status {runtime.EXIT_CODE_INTERRUPTED}.", file=sys.stderr)
    return runtime.EXIT_CODE_INTERRUPTED
  except (*_USER_ERRORS, VersionVanishedError) as error:
    print(f"run_emnist: error: {error}", file=sys.stderr)
    return EXIT_CODE_BAD_INPUT
  except (OSError, participation.DatabaseError) as error:  # Also the history's SQLite errors.
    # A full disk, an I/O error or a read-only folder while writing: checkpoints are written
    # atomically, so the last saved version is intact and a later start resumes from it.
    print(f"run_emnist: error: {_describe_write_error(error)}; the last saved checkpoint is "
          "intact. Free space (or fix the folder), then run the same command again. Exit status "
          f"{EXIT_CODE_WRITE_FAILED}.", file=sys.stderr)
    return EXIT_CODE_WRITE_FAILED


def _describe_write_error(error: Exception) -> str:
  if isinstance(error, checkpointing.CheckpointWriteError):
    return error.strerror
  if isinstance(error, participation.DatabaseError):
    return f"writing the run's history or participation records (SQLite) failed: {error}"
  where = f" ({error.filename})" if getattr(error, "filename", None) else ""
  return f"a write failed{where}: {getattr(error, 'strerror', None) or error}"


def _from_callers_folder(argv):
  """Under `bazel run` (cwd is the runfiles tree), resolves relative paths against the caller's folder.

  --root_output_dir always; --config when the caller's folder has the file (else the packaged copy).
  """
  callers_folder = os.environ.get("BUILD_WORKING_DIRECTORY")
  if not callers_folder:
    return argv
  resolved = [argv[0]]
  for arg in argv[1:]:
    name, _, value = arg.partition("=")
    if name == "--root_output_dir" and value and not os.path.isabs(value):
      arg = f"{name}={os.path.join(callers_folder, value)}"
    elif name == "--config" and value and not os.path.isabs(value):
      if os.path.isfile(os.path.join(callers_folder, value.split(":", 1)[0])):
        arg = f"{name}={os.path.join(callers_folder, value)}"
    resolved.append(arg)
  if not any(arg.startswith("--root_output_dir=") for arg in resolved):
    resolved.append(f"--root_output_dir={os.path.join(callers_folder, _ROOT_OUTPUT_DIR.default)}")
  return resolved


def _parse_flags(argv):
  """Parses flags; a bad flag or config override is one line on stderr and exit status 2."""
  argv = _from_callers_folder(argv)
  for arg in argv[1:]:
    config_file = arg.split("=", 1)[1].split(":", 1)[0] if arg.startswith("--config=") else None
    if config_file is not None and not os.path.isfile(config_file):
      print(f"run_emnist: error: config file {config_file} not found; the configs are the files in "
            "configs/ (e.g. --config=configs/demo.py).", file=sys.stderr)
      sys.exit(EXIT_CODE_BAD_INPUT)
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as error:
    # ml_collections raises these for an override of a field the config does not have.
    field = str(error).strip("\"'")
    problem = f"unknown config field '{field}'"
  except (flags.Error, TypeError, ValueError) as error:
    problem = str(error)
    if "Error whilst parsing config file" in problem:
      # ml_collections folds the config file's own error into a traceback text: keep its last line.
      last_line = problem.strip().splitlines()[-1]
      print(f"run_emnist: error: cannot load the config: {last_line.split(': ', 1)[-1]}",
            file=sys.stderr)
      sys.exit(EXIT_CODE_BAD_INPUT)
  print(f"run_emnist: error: {problem}; config fields are listed in the README, flags in "
        "--helpfull.", file=sys.stderr)
  sys.exit(EXIT_CODE_BAD_INPUT)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
