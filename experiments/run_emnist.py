"""Runs weighted FedAvg on federated EMNIST, resumably: run the same command again to continue.

    python -m experiments.run_emnist --config=configs/demo.py --root_output_dir=runs \\
        --experiment_name=demo

Any config field can be overridden, e.g. `--config.training.total_rounds=20`. Writes
`ROOT/NAME/config.json` and checkpoints under `ROOT/NAME/checkpoints/` after every round (see
docs/getting-started.md). It is a thin shell over the Python API (`tff_resume.Run`). Exit status: 0
done (or already complete), 2 bad input (one line on stderr, nothing changed), 74 a write failed (the
last saved version is intact), 75 stopped by SIGINT/SIGTERM after saving the last completed round,
the run folder is in use, or a TFF worker of `runtime.workers` is down or failed mid-round (run the
same command again to resume; docs/troubleshooting.md lists each error).
"""

import sys

from tff_resume.program import config_files
from tff_resume.runtime import local_worker
from tff_resume.runtime import network_isolation
from tff_resume.runtime import signals

# SIGINT/SIGTERM from the first instant: a signal during the imports below stops at the first safe
# point with the documented status, not Python's default (a traceback, or status 143).
_STOP = signals.StopRequest()
if __name__ == "__main__":
  _STOP.install()
  # Before TensorFlow starts threads: the worker started later must share a private loopback only.
  # A run on remote workers (runtime.workers) starts no local worker and needs the network.
  if not config_files.command_line_field(sys.argv[1:], "runtime.workers"):
    try:
      network_isolation.isolate()
    except network_isolation.IsolationError as isolation_error:
      print(f"run_emnist: error: {isolation_error.strerror}", file=sys.stderr)
      sys.exit(2)

# TensorFlow reads its log level once, at import, so --verbose is looked at before flags are parsed.
# TensorFlow must also be imported before absl.app.run: Keras 2.14 first imported inside app.run
# builds broken Sequential models ("Output tensors of a Sequential model must be the output of a
# TensorFlow `Layer`").
local_worker.quiet_tensorflow_logging(verbose="--verbose" in sys.argv[1:])
# pylint: disable=g-import-not-at-top,g-bad-import-order
import tensorflow  # noqa: F401  pylint: disable=unused-import
from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import command_line
from tff_resume.program import run as run_lib
# pylint: enable=g-import-not-at-top,g-bad-import-order

local_worker.install_guard_context()

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

def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  local_worker.quiet_tensorflow_logging(_VERBOSE.value)
  if _CONFIG.value is None or not _EXPERIMENT_NAME.value:
    print("run_emnist: error: --config and --experiment_name are required, e.g. "
          "--config=configs/demo.py --experiment_name=demo", file=sys.stderr)
    return command_line.EXIT_CODE_BAD_INPUT
  status = command_line.exit_status("run_emnist", lambda: run_lib.Run(
      _CONFIG.value, _ROOT_OUTPUT_DIR.value, _EXPERIMENT_NAME.value,
      verbose=_VERBOSE.value).train(stop=_STOP))
  _STOP.ignore_from_now()  # The status is decided: a late signal must not turn it into a kill.
  return status


if __name__ == "__main__":
  app.run(main, flags_parser=command_line.parse_flags)
