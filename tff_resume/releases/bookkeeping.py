"""A run's bookkeeping: everything it writes each round besides training, at a cost that does not grow.

Each round appends one row to the history (`history.RunHistory`), releases its metrics to every
release manager (by default `release_managers.TensorBoardReleaseManager`, one TensorBoard event, and
`CsvReleaseManager`, one CSV row), and writes the round's participation rows and `progress.json`; a
checkpoint version then holds the server state and the fixed-size run record
(`run_record.RunRecord`), which points into the history by its hash. At a start, `open_history`
restores the history of the version resumed from (verifying its hash chain, dropping rounds redone;
a run of the older layout has its history moved to the file), then `Bookkeeping(...)` brings every
other log to that version: it starts each of our release managers at the first round to train (they
cut their files there, or rewrite them from the history) and rebuilds participation rows that are
missing.
"""

import asyncio
import concurrent.futures
import os
from typing import Any, Callable, Sequence

from absl import logging
import tensorflow_federated as tff

from tff_resume.releases import release_managers as release_managers_lib
from tff_resume.storage import atomic_files
from tff_resume.storage import checkpointing
from tff_resume.storage import history as history_lib
from tff_resume.storage import participation
from tff_resume.storage import paths as paths_lib
from tff_resume.storage import run_record as run_record_lib


def _last_completed_round(progress_path: str) -> int:
  """The last round completed by any start (progress.json; 0 when it is missing, or damaged: then it
  is set aside with a warning)."""
  if not os.path.exists(progress_path):
    return 0
  try:
    return int(atomic_files.read_json(progress_path)["last_completed_round"])
  except (OSError, ValueError, KeyError, TypeError) as error:
    atomic_files.set_aside(progress_path, f"{error}; rewritten from the checkpoint")
    return 0


def open_history(manager: checkpointing.DurableProgramStateManager, version: int | None,
                 record: run_record_lib.RunRecord | None, metadata: dict[str, Any] | None,
                 progress_path: str) -> tuple[history_lib.RunHistory, int]:
  """Opens the run's history holding exactly the rounds of `version` (None: a fresh run, no rows).

  A record of the older layout (whole history in each version) has its rounds and start log written
  to the history file. Returns (history, rounds of later starts that were dropped to be redone).

  Raises:
    history_lib.HistoryMismatchError: the history does not match the version; nothing was changed.
  """
  path = history_lib.path_in(manager.root_dir)
  rounds_done = 0 if record is None else record.rounds_done
  legacy = None if metadata is None else run_record_lib.legacy_history(metadata)
  try:
    history = history_lib.RunHistory(path)
  except history_lib.DatabaseError as error:
    if rounds_done and legacy is None:
      raise history_lib.HistoryMismatchError(
          f"{path} is damaged ({error}): it holds the clients and metrics of the {rounds_done} "
          f"rounds of checkpoint version {version}, which cannot be resumed without them; nothing "
          "was changed. Restore the file from a backup, or move the run folder away to start "
          "afresh.") from None
    atomic_files.set_aside(path, f"{error}; nothing it held is needed")
    history = history_lib.RunHistory(path)
  try:
    if legacy is not None:
      logging.info("Moving the history of %s (older layout) into %s.", manager.root_dir, path)
      history.replace_all(legacy)
      if not history.starts():
        history.add_starts(run_record_lib.legacy_starts(metadata))
      return history, max(0, _last_completed_round(progress_path) - len(legacy))
    return history, history.restore(rounds_done, record.history_sha256 if record
                                    else history_lib.GENESIS)
  except history_lib.HistoryMismatchError as error:
    history.close()
    raise history_lib.HistoryMismatchError(
        f"{error} Checkpoint version {version} cannot be resumed without its history; nothing was "
        f"changed. Restore {path} from a backup, or move the run folder away to start afresh."
    ) from None
  except BaseException:
    history.close()
    raise


def _open_participation(path: str, history: history_lib.RunHistory, rounds_done: int,
                        client_examples: Callable[[str], int]) -> participation.ParticipationLog:
  """Opens the participation table holding exactly rounds 1..`rounds_done`, rebuilding it from the
  history when it is damaged or lacks rounds."""
  try:
    log = participation.ParticipationLog(path)
  except participation.DatabaseError as error:
    atomic_files.set_aside(path, f"{error}; rebuilt from the history")
    log = participation.ParticipationLog(path)
  log.keep_rounds_up_to(rounds_done)
  if log.rounds_recorded() == rounds_done:
    return log
  logging.warning("%s lacks some of the %d rounds of the checkpoint: rebuilding it from the "
                  "history.", path, rounds_done)
  log.replace_all((round_num, [(client_id, client_examples(client_id)) for client_id in clients])
                  for round_num, clients, _ in history.rounds(rounds_done))
  return log


class Bookkeeping:
  """The logs of one start of a run (see the module docstring); `close` when done."""

  def __init__(self, paths: paths_lib.RunPaths, manager: checkpointing.DurableProgramStateManager,
               record: run_record_lib.RunRecord, history: history_lib.RunHistory,
               client_examples: Callable[[str], int], releases: Sequence[Any]):
    """Brings every log to round `record.rounds_done` (the history must already be there).

    Args:
      releases: `tff.program.ReleaseManager`s that get each round's metrics (see
        `loop.ResumableLoop`).
    """
    self.paths, self.manager, self.record, self.history = paths, manager, record, history
    self._client_examples = client_examples
    self._releases = list(releases)
    for release in self._releases:
      if not isinstance(release, tff.program.ReleaseManager):
        raise TypeError(f"release managers must be tff.program.ReleaseManagers, got {release!r}")
    self._foreign = None  # Runs other release managers' coroutines (an event loop may run here).
    rounds_done = record.rounds_done
    self._participation = _open_participation(paths.participation_db, history, rounds_done,
                                              client_examples)
    try:
      for release in self._releases:
        if _ours(release):
          release.start(rounds_done + 1, history.metrics)
      _last_completed_round(paths.progress_json)  # Sets a damaged file aside.
      atomic_files.write_json_atomically(paths.progress_json, {"last_completed_round": rounds_done})
    except BaseException:
      self.close()
      raise

  @property
  def tensorboard(self) -> release_managers_lib.TensorBoardReleaseManager | None:
    """The first TensorBoard release manager (None when there is none)."""
    return next((release for release in self._releases
                 if isinstance(release, release_managers_lib.TensorBoardReleaseManager)), None)

  def _release(self, release, round_num: int, metrics: dict[str, Any]) -> None:
    if _ours(release):
      release.release_round(round_num, metrics)
      return
    if self._foreign is None:
      self._foreign = concurrent.futures.ThreadPoolExecutor(1, "release")
    self._foreign.submit(asyncio.run, release.release(dict(metrics), round_num)).result()

  def record_round(self, round_num: int, client_ids: list[str], metrics: dict[str, Any]) -> None:
    """Appends round `round_num` to the history and every log (not yet to a checkpoint)."""
    chain = self.history.append(round_num, client_ids, metrics)
    self.record.add_round(chain, metrics)
    for release in self._releases:
      self._release(release, round_num, metrics)
    self._participation.add_round(round_num, [(client_id, self._client_examples(client_id))
                                              for client_id in client_ids])
    atomic_files.write_json_atomically(self.paths.progress_json,
                                       {"last_completed_round": round_num})

  def close(self) -> None:
    """Closes our TensorBoard writers, the participation table and the history."""
    for release in self._releases:
      if isinstance(release, release_managers_lib.TensorBoardReleaseManager):
        release.close()
    if self._foreign is not None:
      self._foreign.shutdown()
    self._participation.close()
    self.history.close()


def _ours(release) -> bool:
  return isinstance(release, release_managers_lib.RoundReleaseManager)


def save_checkpoint(manager: checkpointing.DurableProgramStateManager, state: Any,
                    record: run_record_lib.RunRecord, model_weights_sha256: str) -> None:
  """Saves `state` with `record` as version `record.rounds_done` (see `checkpointing`)."""
  record.model_weights_sha256 = model_weights_sha256
  manager.save_version(state, record.rounds_done, metadata=record.to_json())


class VersionHistory:
  """The history a checkpoint version points to, read-only, for either layout (status, export).

  Layout 2 reads the history file after verifying that its rounds 1..N hash to the version's
  record; layout 1 reads the copy in the record itself.

  Raises (on construction):
    history_lib.HistoryMismatchError: the history file is missing or does not match the version.
  """

  def __init__(self, checkpoints_dir: str, metadata: dict[str, Any]):
    self.record = run_record_lib.RunRecord.from_json(metadata)
    self._metadata = metadata
    self._legacy = run_record_lib.legacy_history(metadata)
    self._history = None
    if self._legacy is None:
      self._history = history_lib.RunHistory(history_lib.path_in(checkpoints_dir), read_only=True)
      try:
        self._history.verify(self.record.rounds_done, self.record.history_sha256)
      except BaseException:
        self._history.close()
        raise

  def __enter__(self) -> "VersionHistory":
    return self

  def __exit__(self, *unused_exception) -> None:
    if self._history is not None:
      self._history.close()

  def clients(self, round_num: int) -> list[str]:
    """The client ids of round `round_num` (1..rounds_done), in sampled order."""
    if self._legacy is not None:
      return list(self._legacy[round_num - 1][0])
    return self._history.clients(round_num)

  def last_with(self, prefix: str) -> dict[str, Any]:
    """The metrics named `prefix`... of the last round that has any ({} when none has)."""
    if self._legacy is None:
      found = self._history.last_with(prefix, self.record.rounds_done)
      return {} if found is None else found[1]
    for _, metrics in reversed(self._legacy):
      named = {name: value for name, value in metrics.items() if name.startswith(prefix)}
      if named:
        return named
    return {}

  def starts(self) -> list[dict[str, Any]]:
    """The start log, oldest first (see `history.RunHistory.starts`)."""
    if self._legacy is not None:
      return run_record_lib.legacy_starts(self._metadata)
    return self._history.starts()

  def rounds(self) -> list[tuple[list[str], dict[str, Any]]]:
    """[(client ids, metrics)] of rounds 1..rounds_done, in order."""
    if self._legacy is not None:
      return list(self._legacy)
    return [(clients, metrics)
            for _, clients, metrics in self._history.rounds(self.record.rounds_done)]


def full_record(manager: checkpointing.DurableProgramStateManager,
                version: int | None = None) -> dict[str, Any]:
  """The record of `version` (default: the newest good one) with its whole history, in one dict:
  the record's fields plus `sampled_clients` and `metrics` (entry r-1 is round r) and `resume_log`
  (the start log). For analysis and tests; it reads every round, so the runner never calls it."""
  version = manager.latest_good_version() if version is None else version
  with VersionHistory(manager.root_dir, manager.load_metadata(version)) as recorded:
    rounds = recorded.rounds()
    return {**recorded.record.to_json(), "sampled_clients": [clients for clients, _ in rounds],
            "metrics": [metrics for _, metrics in rounds], "resume_log": recorded.starts()}
