"""What a command-line program built on `run.Run` does around it: flags to a run, exceptions to one
line on stderr and an exit status.

Exit statuses: 0 done (or already complete), 2 bad input (one line, nothing changed), 74 a write
failed (disk full, I/O error; the last saved version is intact), 75 stopped by SIGINT/SIGTERM at a
safe point, the run folder is held by another process, or a TFF worker (runtime.workers) is down or
failed mid-round (run the same command again).
"""

import os
import sys
from typing import Callable

from absl import flags

from tff_resume.analysis import global_model
from tff_resume.data import emnist
from tff_resume.program import experiment
from tff_resume.program import fingerprint as fingerprint_lib
from tff_resume.program import loop as loop_lib
from tff_resume.program import run as run_lib
from tff_resume.runtime import certificates
from tff_resume.runtime import signals
from tff_resume.runtime import workers
from tff_resume.storage import checkpointing
from tff_resume.storage import history as history_lib
from tff_resume.storage import participation
from tff_resume.storage import paths as paths_lib
from tff_resume.storage import run_lock

EXIT_CODE_BAD_INPUT = 2
EXIT_CODE_WRITE_FAILED = 74  # EX_IOERR: a disk full or failing; the last saved version is intact.
USER_ERRORS = (experiment.ConfigError, emnist.DataNotFoundError, emnist.NotEmnistError,
               global_model.ModelSourceError, fingerprint_lib.FingerprintMismatchError,
               checkpointing.NoGoodVersionError, paths_lib.InvalidExperimentNameError,
               paths_lib.NotOwnFileError, history_lib.HistoryMismatchError,
               loop_lib.RunFolderError, loop_lib.VersionVanishedError,
               workers.NotSplittableError, certificates.CertificateError)


def exit_status(program: str, train: Callable[[], object]) -> int:
  """Calls `train()`; returns the exit status, after one line on stderr for what went wrong."""
  try:
    try:
      train()
      return 0
    finally:
      # What the run printed comes before the line that says how it ended, also where stdout is
      # a buffered pipe or file (a batch job's log holding both streams).
      _flush_stdout()
  except signals.Interrupted as interrupted:
    where = ("during start-up, before training; nothing was lost" if interrupted.rounds_done is None
             else f"after round {interrupted.rounds_done} (saved)")
    print(f"Stopped by {interrupted.signal_name} {where}. Run the same command again to resume. "
          f"Exit status {signals.EXIT_CODE_INTERRUPTED}.",
          file=sys.stderr if interrupted.rounds_done is None else sys.stdout)
    return signals.EXIT_CODE_INTERRUPTED
  except run_lock.RunLockedError as error:
    print(f"{program}: {error} Exit status {signals.EXIT_CODE_INTERRUPTED}.", file=sys.stderr)
    return signals.EXIT_CODE_INTERRUPTED
  except workers.WorkerError as error:
    # A round is saved only once computed: a lost worker leaves the last completed round newest.
    lost = (" Nothing of the round in progress was saved; when the worker is back, run the same "
            "command again to resume." if isinstance(error, workers.WorkerLostError) else "")
    print(f"{program}: {error}{lost} Exit status {signals.EXIT_CODE_INTERRUPTED}.",
          file=sys.stderr)
    return signals.EXIT_CODE_INTERRUPTED
  except USER_ERRORS as error:
    print(f"{program}: error: {error}", file=sys.stderr)
    return EXIT_CODE_BAD_INPUT
  except (OSError, participation.DatabaseError) as error:  # Also the history's SQLite errors.
    # A full disk, an I/O error or a read-only folder while writing: checkpoints are written
    # atomically, so the last saved version is intact and a later start resumes from it.
    print(f"{program}: error: {_describe_write_error(error)}; the last saved checkpoint is "
          "intact. Free space (or fix the folder), then run the same command again. Exit status "
          f"{EXIT_CODE_WRITE_FAILED}.", file=sys.stderr)
    return EXIT_CODE_WRITE_FAILED


def _flush_stdout() -> None:
  try:
    sys.stdout.flush()
  except (OSError, ValueError):
    pass  # A closed pipe or stream: the exit status still says how the run ended.


def _describe_write_error(error: Exception) -> str:
  if isinstance(error, checkpointing.CheckpointWriteError):
    return error.strerror
  if isinstance(error, participation.DatabaseError):
    return f"writing the run's history or participation records (SQLite) failed: {error}"
  where = f" ({error.filename})" if getattr(error, "filename", None) else ""
  return f"a write failed{where}: {getattr(error, 'strerror', None) or error}"


def _from_callers_folder(argv, default_root_output_dir: str):
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
    resolved.append(f"--root_output_dir={os.path.join(callers_folder, default_root_output_dir)}")
  return resolved


def parse_flags(argv, program: str = "run_emnist", default_root_output_dir: str = "runs"):
  """Parses absl flags; a bad flag or config override is one line on stderr and exit status 2.

  Under `bazel run`, relative --root_output_dir and --config mean the caller's folder.
  """
  argv = _from_callers_folder(argv, default_root_output_dir)
  for arg in argv[1:]:
    config_file = arg.split("=", 1)[1].split(":", 1)[0] if arg.startswith("--config=") else None
    if config_file is not None and not os.path.isfile(config_file):
      print(f"{program}: error: config file {config_file} not found; the configs are the files in "
            "configs/ (e.g. --config=configs/demo.py).", file=sys.stderr)
      sys.exit(EXIT_CODE_BAD_INPUT)
    if config_file is not None:
      try:  # Loaded once here so that a config that is not Python, or fails, is one line.
        run_lib.load_config(arg.split("=", 1)[1])
      except experiment.ConfigError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        sys.exit(EXIT_CODE_BAD_INPUT)
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as error:
    # ml_collections raises these for an override of a field the config does not have.
    field = str(error).strip("\"'")
    problem = f"unknown config field '{field}'"
  except (flags.Error, TypeError, ValueError) as error:  # The config file loaded above.
    problem = str(error)
  print(f"{program}: error: {problem}; config fields are listed in docs/configuration.md, flags "
        "in --helpfull.", file=sys.stderr)
  sys.exit(EXIT_CODE_BAD_INPUT)


