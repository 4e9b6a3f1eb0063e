"""Our TensorBoard and CSV writers as `tff.program.ReleaseManager`s: what a `tff_resume` run releases
its metrics through (`loop.ResumableLoop`, through `bookkeeping`), and what a TFF program can take
(`tff.learning.programs.train_model`'s `train_metrics_manager`, a `tff.program.GroupingReleaseManager`).

    releases = tff.program.GroupingReleaseManager([
        release_managers.TensorBoardReleaseManager("runs/prog"),
        release_managers.CsvReleaseManager("runs/prog/metrics.csv")])

`release(value, key)` takes a round's metrics, any nesting of mappings and sequences TFF releases
(`OrderedDict`s of `OrderedDict`s of numpy scalars), and the round number as `key`. Every numeric
leaf becomes a metric named by its path (`model_metrics/loss`), with the `..._mibit` twin of every
`communication/..._bits...` count (`metrics_release`). Each start of a process is a (re)start at a
round: `start(first_round, history)` (our loop calls it with the run's history; a TFF program's first
`release` calls it with its `key`) cuts the TensorBoard event files and the CSV so that no point of
`first_round` or later remains: the rounds redone after a kill appear once, from the start that redid
them. Then each round adds one point per metric (TensorBoard: float32 scalars) and one CSV row.

`history`, where given, is the run's own record of every round: `history(n)` yields the metrics of
rounds 1..n in order. With it, the CSV is rewritten from it at a start and when a round brings a
metric no earlier round had, and the event files, when one is damaged, are set aside and written
anew from it. Without it (a TFF program, which keeps no history) the files themselves are the record:
the CSV keeps its rows below the first round, and every appended row is flushed to disk.
"""

import csv
import os
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import tensorflow_federated as tff
import tree

from tff_resume.releases import metrics_release
from tff_resume.storage import atomic_files

History = Callable[[int], Iterable[Mapping[str, Any]]]


def flat_metrics(value: Any) -> dict[str, float | int]:
  """The numeric leaves of `value` by '/'-joined path (booleans and non-numbers left out)."""
  metrics = {}
  for path, leaf in tree.flatten_with_path(value):
    if isinstance(leaf, np.ndarray) and leaf.shape == ():
      leaf = leaf[()]
    if isinstance(leaf, (bool, np.bool_)) or not isinstance(leaf, (int, float, np.number)):
      continue
    metrics["/".join(str(part) for part in path)] = leaf.item() if isinstance(
        leaf, np.generic) else leaf
  return metrics


def _round(key: Any) -> int:
  if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or key < 1:
    raise ValueError(f"release(value, key): key must be the round number (1, 2, ...), got {key!r}")
  return int(key)


class RoundReleaseManager(tff.program.ReleaseManager):
  """A release manager whose releases are rounds: `start(first_round, history)` at each (re)start,
  then `release_round(round, metrics)` each round. A TFF program's `release(value, key)` starts it
  at its first `key`."""

  @property
  def started(self) -> bool:
    """Whether `start` was called."""
    raise NotImplementedError

  def start(self, first_round: int, history: History | None = None) -> None:
    """Brings the files to rounds 1..`first_round` - 1 (see the module docstring)."""
    raise NotImplementedError

  def release_round(self, round_num: int, metrics: Mapping[str, Any]) -> None:
    """Writes round `round_num`'s flat metrics (name -> number)."""
    raise NotImplementedError

  async def release(self, value: Any, key: Any) -> None:
    """Releases round `key`'s metrics (any nesting TFF releases, value references materialized
    first, as TFF's own release managers do); the first release of this object starts it at `key`.

    Raises:
      ValueError: `key` is not a round number (an integer, at least 1).
    """
    round_num = _round(key)
    materialized = await tff.program.materialize_value(value)
    if not self.started:
      self.start(round_num)
    self.release_round(round_num, flat_metrics(materialized))


class TensorBoardReleaseManager(RoundReleaseManager):
  """One point per metric per round in `logdir`'s event files, cut at the first redone round.

  Args:
    logdir: the folder of the event files (a run's folder: `tensorboard --logdir` on its parent
      names the run by its folder).
    hyperparameters: recorded at each start for the HParams dashboard (name -> value); None: none.
  """

  def __init__(self, logdir: str, hyperparameters: Mapping[str, Any] | None = None):
    self._logdir = logdir
    self._hyperparameters = hyperparameters
    self._writer = None

  @property
  def started(self) -> bool:
    return self._writer is not None

  def start(self, first_round: int, history: History | None = None) -> None:
    """Cuts the event files below `first_round` and marks a (re)start there; with `history`, a
    damaged file sets every event file aside and rounds 1..`first_round` - 1 are written anew."""
    os.makedirs(self._logdir, exist_ok=True)
    intact = metrics_release.prepare_logdir(self._logdir, first_round)
    self._writer = metrics_release.TensorBoardRoundWriter(self._logdir)
    self._writer.start(first_round if intact or history is None else 1)
    if self._hyperparameters is not None:
      self._writer.write_hparams(self._hyperparameters)
    if not intact and history is not None:
      for round_num, metrics in enumerate(history(first_round - 1), start=1):
        self._writer.write_round(round_num, metrics)

  def release_round(self, round_num: int, metrics: Mapping[str, Any]) -> None:
    """Writes round `round_num`'s flat metrics (name -> number) and flushes them."""
    self._writer.write_round(round_num, metrics)

  def close(self) -> None:
    """Closes the event file (a later `start` opens a new one)."""
    if self._writer is not None:
      self._writer.close()


class CsvReleaseManager(RoundReleaseManager):
  """One row per round in the CSV file at `path`: a `round` column, then every metric in order of
  first appearance, exact values (integer bit counts stay integers)."""

  def __init__(self, path: str):
    self._path = path
    self._columns: list[str] | None = None
    self._history: History | None = None

  @property
  def started(self) -> bool:
    return self._columns is not None

  def _rows(self) -> list[dict[str, str]]:
    try:
      with open(self._path, newline="") as csv_file:
        return list(csv.DictReader(csv_file))
    except FileNotFoundError:
      return []

  def _rewrite(self, rows: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
    """Writes the file anew, atomically; `rows` is called twice (columns, then rows), so a long
    history is streamed, never held in memory."""
    columns = {"round": None}
    for row in rows():
      columns.update(dict.fromkeys(row))
    self._columns = list(columns)
    os.makedirs(os.path.dirname(self._path) or ".", exist_ok=True)
    with atomic_files.open_atomically(self._path, newline="") as csv_file:
      writer = csv.DictWriter(csv_file, fieldnames=self._columns)
      writer.writeheader()
      writer.writerows(rows())

  def _rewrite_from_history(self, last_round: int) -> None:
    self._rewrite(lambda: ({"round": round_num, **metrics} for round_num, metrics in
                           enumerate(self._history(last_round), start=1)))

  def start(self, first_round: int, history: History | None = None) -> None:
    """Rewrites the file with rounds 1..`first_round` - 1 only: from `history` where given, else
    the file's own rows below `first_round`."""
    self._history = history
    if history is not None:
      self._rewrite_from_history(first_round - 1)
    else:
      kept = [row for row in self._rows() if int(row["round"]) < first_round]
      self._rewrite(lambda: kept)

  def release_round(self, round_num: int, metrics: Mapping[str, Any]) -> None:
    """Appends round `round_num`'s row; a metric the header lacks rewrites the file instead (from
    the history, which must then hold round `round_num`)."""
    row = {"round": round_num, **metrics}
    if any(name not in self._columns for name in row):
      if self._history is not None:
        self._rewrite_from_history(round_num)
      else:
        rows = self._rows() + [row]
        self._rewrite(lambda: rows)
      return
    with open(self._path, "a", newline="") as csv_file:
      csv.DictWriter(csv_file, fieldnames=self._columns).writerow(row)
      if self._history is None:  # The file is the only record of the round.
        csv_file.flush()
        os.fsync(csv_file.fileno())


def for_run(paths, hyperparameters: Mapping[str, Any] | None = None) -> list[Any]:
  """A run folder's release managers: TensorBoard events in the run folder (with `hyperparameters`
  for the HParams dashboard) and `results/metrics.csv` (`paths`: a `paths.RunPaths`)."""
  return [TensorBoardReleaseManager(paths.tensorboard_dir, hyperparameters),
          CsvReleaseManager(paths.metrics_csv)]
