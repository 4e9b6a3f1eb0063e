"""Our TensorBoard and CSV writers as `tff.program.ReleaseManager`s, for TFF programs
(`tff.learning.programs.train_model`'s `train_metrics_manager`, a `tff.program.GroupingReleaseManager`).

    releases = tff.program.GroupingReleaseManager([
        release_managers.TensorBoardReleaseManager("runs/prog"),
        release_managers.CsvReleaseManager("runs/prog/metrics.csv")])

`release(value, key)` takes a round's metrics, any nesting of mappings and sequences TFF releases
(`OrderedDict`s of `OrderedDict`s of numpy scalars), and the round number as `key`. Every numeric
leaf becomes a metric named by its path (`model_metrics/loss`), with the `..._mibit` twin of every
`communication/..._bits...` count, through the same writer a `tff_resume` run uses
(`metrics_release`). The first release of a process is a (re)start at round `key`: the TensorBoard
event files and the CSV are cut so that no point of round `key` or later remains (the rounds a
program redoes after a kill appear once, from the start that redid them), then each release adds one
point per metric (TensorBoard: float32 scalars) and one CSV row.
"""

import csv
import os
from typing import Any

import numpy as np
import tensorflow_federated as tff
import tree

from tff_resume.storage import atomic_files
from tff_resume.releases import metrics_release


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


class TensorBoardReleaseManager(tff.program.ReleaseManager):
  """One point per metric per round in `logdir`'s event files, cut at the first redone round."""

  def __init__(self, logdir: str):
    self._logdir = logdir
    self._writer = None

  async def release(self, value: Any, key: Any) -> None:
    round_num = _round(key)
    if self._writer is None:
      os.makedirs(self._logdir, exist_ok=True)
      metrics_release.prepare_logdir(self._logdir, round_num)
      self._writer = metrics_release.TensorBoardRoundWriter(self._logdir)
      self._writer.start(round_num)
    self._writer.write_round(round_num, flat_metrics(value))

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


class CsvReleaseManager(tff.program.ReleaseManager):
  """One row per round in the CSV file at `path` (a `round` column, then every metric)."""

  def __init__(self, path: str):
    self._path = path
    self._columns: list[str] | None = None

  def _rows(self) -> list[dict[str, str]]:
    try:
      with open(self._path, newline="") as csv_file:
        return list(csv.DictReader(csv_file))
    except FileNotFoundError:
      return []

  def _rewrite(self, rows: list[dict[str, Any]]) -> None:
    columns = {"round": None}
    for row in rows:
      columns.update(dict.fromkeys(row))
    self._columns = list(columns)
    os.makedirs(os.path.dirname(self._path) or ".", exist_ok=True)
    with atomic_files.open_atomically(self._path, newline="") as csv_file:
      writer = csv.DictWriter(csv_file, fieldnames=self._columns)
      writer.writeheader()
      writer.writerows(rows)

  async def release(self, value: Any, key: Any) -> None:
    round_num = _round(key)
    row = {"round": round_num, **flat_metrics(value)}
    if self._columns is None:  # A (re)start: the rows of earlier rounds stay, once each.
      self._rewrite([old for old in self._rows() if int(old["round"]) < round_num] + [row])
    elif any(name not in self._columns for name in row):
      self._rewrite(self._rows() + [row])
    else:
      with open(self._path, "a", newline="") as csv_file:
        csv.DictWriter(csv_file, fieldnames=self._columns).writerow(row)
        csv_file.flush()
        os.fsync(csv_file.fileno())
