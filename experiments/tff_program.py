"""A TFF program (`tff.learning.programs.train_model`) made durable by this toolkit's managers.

    python -m experiments.tff_program --root_output_dir=DIR --experiment_name=NAME --rounds=N

FedAvg on the 2nn model and the smoke preset's synthetic EMNIST (`configs/demo.py:smoke`), trained by
TFF's own program logic on a local TFF worker, with:
  - `DurableProgramStateManager` as `program_state_manager` (DIR/NAME/checkpoints: atomic,
    checksummed versions; it keeps `train_model`'s whole program state: the algorithm state, the
    round number and the data iterator);
  - `SeededClientsDataSource` as `train_data_source`: round r's clients are those a `tff_resume` run
    with the same seed samples, and its iterator's saved position makes a resumed program draw them
    again;
  - `TensorBoardReleaseManager` and `CsvReleaseManager` (grouped) as `train_metrics_manager`: the
    event files in DIR/NAME and DIR/NAME/metrics.csv, one point and one row a round, cut at the
    first round a resumed program redoes.
Each round prints its clients and metrics; the last line names the final model weights' SHA-256.
Killed at any instant (SIGKILL included) and run again, it resumes from the newest intact version
and ends with the same weights, bit for bit, as a program never stopped.

    python -m experiments.tff_program --root_output_dir=DIR --experiment_name=NAME --managers=tff

runs the same program (the same data source, process and printed lines) with TFF 0.87's own
managers instead, for comparison: `tff.program.FileProgramStateManager` (SavedModel versions
`program_state_<N>` in DIR/NAME/checkpoints), `tff.program.TensorBoardReleaseManager` (event files
in DIR/NAME) and `tff.program.CSVFileReleaseManager` (DIR/NAME/metrics.csv, key column `round`).
TFF writes a version into a temporary folder and renames it (a kill leaves that folder behind,
ignored and never removed), but `load_latest` tries only the newest version: a damaged one fails
the restart. It saves in the background while the next rounds run, and its TensorBoard manager
never cuts: the rounds a restart redoes (released, not yet saved) get their points twice.
(`tests/tff_program_test.py` measures both.)
"""

import asyncio
import os
import sys

from tff_resume.runtime import local_worker

local_worker.quiet_tensorflow_logging()
# pylint: disable=g-import-not-at-top,g-bad-import-order
import tensorflow  # noqa: F401  pylint: disable=unused-import
from absl import app
from absl import flags
import tensorflow_federated as tff

from tff_resume.analysis import global_model
from tff_resume.program import config_files
from tff_resume.program import experiment
from tff_resume.program import federated_data
from tff_resume.releases import release_managers
from tff_resume.runtime import fault_hooks
from tff_resume.storage import checkpointing
# pylint: enable=g-import-not-at-top,g-bad-import-order

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ROOT_OUTPUT_DIR = flags.DEFINE_string("root_output_dir", None, "Where the program's folder goes.")
_EXPERIMENT_NAME = flags.DEFINE_string("experiment_name", None, "The program's folder name.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Rounds of training in all (resumed ones included).")
_MANAGERS = flags.DEFINE_enum(
    "managers", "tff_resume", ["tff_resume", "tff"],
    "Whose program state and metrics managers: this toolkit's, or TFF's own (for comparison).")


def _weights_sha256(state) -> str:
  weights = state.global_model_weights
  return global_model.weights_sha256(list(weights.trainable) + list(weights.non_trainable))


class _MetricsPrinter(tff.program.ReleaseManager):
  """`train_model`'s `train_metrics_manager`: releases a round's metrics through `managers`, then
  prints one line (once it is out, the round's TensorBoard points and CSV row are written)."""

  def __init__(self, managers: list[tff.program.ReleaseManager]):
    self._managers = tff.program.GroupingReleaseManager(managers)

  async def release(self, value, key) -> None:
    await self._managers.release(value, key)
    metrics = value["model_metrics"]
    print(f"round {key:4d}  loss {float(metrics['loss']):.6f}  accuracy "
          f"{float(metrics['sparse_categorical_accuracy']):.6f}", flush=True)


class _HookedFileProgramStateManager(tff.program.FileProgramStateManager):
  """TFF's own manager, with the test hook ours calls in a save (`TFF_RESUME_FAULT`, see
  `tff_resume.runtime.fault_hooks`; unset, it does nothing): it runs as TFF starts writing version
  N, in a worker thread as TFF's writes are, so a pause there delays the save, not the rounds."""

  async def save(self, program_state, version: int) -> None:
    await asyncio.get_running_loop().run_in_executor(None, fault_hooks.during_save, version)
    await super().save(program_state, version)


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not _ROOT_OUTPUT_DIR.value or not _EXPERIMENT_NAME.value or _ROUNDS.value < 1:
    print("tff_program: error: give --root_output_dir, --experiment_name and --rounds (at least 1).",
          file=sys.stderr)
    return 2
  program_dir = os.path.join(_ROOT_OUTPUT_DIR.value, _EXPERIMENT_NAME.value)
  config = config_files.load_config(os.path.join(_REPO_ROOT, "configs", "demo.py:smoke"),
                                    {"model.name": "2nn", "training.total_rounds": _ROUNDS.value})
  train_data, _ = experiment.load_data(config)
  process = experiment.build_process(config)
  # The seeded initial weights, computed on a synchronous context, as a tff_resume run starts.
  initializer = local_worker.start_local_execution_context()
  initial_state = experiment.initial_state(config, process)
  initializer.stop()

  checkpoints_dir = os.path.join(program_dir, "checkpoints")
  csv_path = os.path.join(program_dir, "metrics.csv")
  if _MANAGERS.value == "tff":
    manager = _HookedFileProgramStateManager(checkpoints_dir)
    versions = asyncio.run(manager.get_versions())  # Sorted; `load_latest` tries the newest only.
    newest = versions[-1] if versions else None
  else:
    manager = checkpointing.DurableProgramStateManager(checkpoints_dir)
    manager.remove_temporaries()  # What a killed write left.
    newest = manager.latest_good_version()
  print(f"{'Resuming' if newest is not None else 'Starting'} {program_dir}"
        f"{f' from version {newest}' if newest is not None else ''}: {_ROUNDS.value} rounds.",
        flush=True)
  source = federated_data.SeededClientsDataSource(
      "train", train_data, config.training.seed, experiment.preprocess_fn(config),
      on_select=lambda round_num, clients: print(
          f"round {round_num:4d}  clients {','.join(clients)}", flush=True))
  worker = local_worker.start_local_program_context()
  if _MANAGERS.value == "tff":
    tensorboard = tff.program.TensorBoardReleaseManager(program_dir)
    releases = [tensorboard, tff.program.CSVFileReleaseManager(csv_path, key_fieldname="round")]
  else:
    tensorboard = release_managers.TensorBoardReleaseManager(program_dir)
    releases = [tensorboard, release_managers.CsvReleaseManager(csv_path)]
  try:
    asyncio.run(tff.learning.programs.train_model(
        train_process=process, initial_train_state=initial_state, train_data_source=source,
        train_per_round_clients=config.training.clients_per_round,
        train_total_rounds=_ROUNDS.value, program_state_manager=manager,
        model_output_manager=tff.program.MemoryReleaseManager(),
        train_metrics_manager=_MetricsPrinter(releases),
        evaluation_manager=None, evaluation_periodicity=_ROUNDS.value))
  finally:
    if isinstance(tensorboard, release_managers.TensorBoardReleaseManager):
      tensorboard.close()  # (TFF's has no close: it flushes after each release.)
    worker.stop()
  # The newest version, as `train_model` would resume from it.
  final_state, final = asyncio.run(manager.load_latest(
      tff.learning.programs.ProgramState(initial_state, 0, 0, source.iterator())))
  print(f"Done: {final} rounds; model weights SHA-256 {_weights_sha256(final_state.state)}",
        flush=True)
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
