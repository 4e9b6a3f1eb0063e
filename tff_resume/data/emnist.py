"""Real federated EMNIST through TFF's own loader, offline.

`tff.simulation.datasets.emnist.load_data` reads `<cache_dir>/emnist_all.sqlite` when that file exists
and otherwise starts a download, which cannot succeed without internet and may hang. `load_emnist`
checks for the file first and fails at once with what to do instead.
"""

import os
import sqlite3
from typing import Callable

import tensorflow_federated as tff

from tff_resume.data import client_index

EMNIST_FILENAME = "emnist_all.sqlite"
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".tff")


class DataNotFoundError(FileNotFoundError):
  """The federated EMNIST SQLite file is not where it was expected."""


class NotEmnistError(ValueError):
  """The file named as federated EMNIST is not TFF's EMNIST SQLite database."""


_SQLITE_HEADER = b"SQLite format 3\x00"
_TABLES = ("client_metadata", "examples")  # What TFF's loader reads.


def _check_emnist_database(path: str) -> None:
  """Raises NotEmnistError unless `path` is an SQLite file with the tables TFF's loader reads."""
  with open(path, "rb") as database:
    header = database.read(len(_SQLITE_HEADER))
  problem = None if header == _SQLITE_HEADER else "it is not an SQLite database"
  if problem is None:
    try:
      connection = client_index.connect(path)  # Read-write where it can: rolls a hot journal back.
      try:
        tables = {row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
      finally:
        connection.close()
      missing = [table for table in _TABLES if table not in tables]
      problem = f"it lacks the table(s) {', '.join(missing)}" if missing else None
    except sqlite3.DatabaseError as error:
      problem = f"SQLite cannot read it ({error})"
  if problem is not None:
    raise NotEmnistError(
        f"{path} is not federated EMNIST: {problem}. Replace it with TFF's {EMNIST_FILENAME}, or "
        "a LEAF import (`tff-resume data import-leaf`).")


def emnist_database_path(cache_dir: str | None = None) -> str:
  """Returns where TFF's loader looks for federated EMNIST under `cache_dir` (default `~/.tff`)."""
  return os.path.join(cache_dir or DEFAULT_CACHE_DIR, EMNIST_FILENAME)


def require_emnist_database(cache_dir: str | None = None) -> str:
  """Returns the path of the EMNIST SQLite file.

  Raises:
    DataNotFoundError: it is missing (the message says how to get one).
    NotEmnistError: it is not TFF's EMNIST SQLite database.
  """
  path = emnist_database_path(cache_dir)
  if not os.path.isfile(path):
    raise DataNotFoundError(
        f"Federated EMNIST not found: expected {path}. To get data: copy TFF's downloaded "
        f"{EMNIST_FILENAME} (decompressed from emnist_all.sqlite.lzma) there; or import LEAF FEMNIST "
        f"with `tff-resume data import-leaf --src LEAF_DIR --out {os.path.dirname(path)}`; or use "
        "the synthetic dataset (data.source=synthetic).")
  _check_emnist_database(path)
  return path


def load_emnist(only_digits: bool, cache_dir: str | None = None):
  """Loads federated EMNIST with TFF's own loader, never attempting a download; adds the index TFF's
  per-client query needs where the file lacks one and can be written (`client_index`).

  Args:
    only_digits: load the 10-class digits-only splits instead of all 62 classes.
    cache_dir: the folder holding `emnist_all.sqlite` (default `~/.tff`, as TFF's).

  Returns:
    `(train, test)` `tff.simulation.datasets.ClientData` with elements
    `{'label': int32 [], 'pixels': float32 [28, 28]}`.

  Raises:
    DataNotFoundError: the file is missing.
    NotEmnistError: the file is not TFF's EMNIST SQLite database.
  """
  path = require_emnist_database(cache_dir)
  client_index.ensure_client_index(path, say=lambda line: print(line, flush=True))
  return tff.simulation.datasets.emnist.load_data(
      only_digits=only_digits, cache_dir=os.path.dirname(path))


def split_name(only_digits: bool, split: str) -> str:
  """TFF's name of the EMNIST split: `all_train`, `digits_only_test`, ..."""
  return f"{'digits_only' if only_digits else 'all'}_{split}"


def example_counts(only_digits: bool, cache_dir: str | None = None,
                   limit: int | None = None) -> Callable[[str], int]:
  """Returns examples(client_id): a training client's examples (at most `limit`), as the file's
  `client_metadata` table records them (TFF's writer and the LEAF import count them as they write),
  so that a round's clients are not read a second time to be counted."""
  path = emnist_database_path(cache_dir)
  split = split_name(only_digits, "train")
  counts: dict[str, int] = {}

  def examples(client_id: str) -> int:
    if not counts:  # The split's rows at once, on first use (a few ms for EMNIST's 3,400 writers).
      connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
      try:
        counts.update(connection.execute(
            "SELECT client_id, num_examples FROM client_metadata WHERE split_name = ?", (split,)))
      finally:
        connection.close()
    if client_id not in counts:
      raise NotEmnistError(f"{path}: client {client_id!r} has no row in client_metadata.")
    return min(counts[client_id], limit) if limit else counts[client_id]

  return examples
