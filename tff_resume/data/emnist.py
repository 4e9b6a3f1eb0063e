"""Real federated EMNIST through TFF's own loader, offline.

`tff.simulation.datasets.emnist.load_data` reads `<cache_dir>/emnist_all.sqlite` when that file exists
and otherwise starts a download, which cannot succeed without internet and may hang. `load_emnist`
checks for the file first and fails at once with what to do instead.
"""

import os

import tensorflow_federated as tff

EMNIST_FILENAME = "emnist_all.sqlite"
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".tff")


class DataNotFoundError(FileNotFoundError):
  """The federated EMNIST SQLite file is not where it was expected."""


def emnist_database_path(cache_dir: str | None = None) -> str:
  """Returns where TFF's loader looks for federated EMNIST under `cache_dir` (default `~/.tff`)."""
  return os.path.join(cache_dir or DEFAULT_CACHE_DIR, EMNIST_FILENAME)


def require_emnist_database(cache_dir: str | None = None) -> str:
  """Returns the path of the EMNIST SQLite file, or raises `DataNotFoundError` saying how to get one."""
  path = emnist_database_path(cache_dir)
  if not os.path.isfile(path):
    raise DataNotFoundError(
        f"Federated EMNIST not found: expected {path}. To get data: copy TFF's downloaded "
        f"{EMNIST_FILENAME} (decompressed from emnist_all.sqlite.lzma) there; or import LEAF FEMNIST "
        f"with `tff-resume data import-leaf --src LEAF_DIR --out {os.path.dirname(path)}`; or use "
        "the synthetic dataset (data.source=synthetic).")
  return path


def load_emnist(only_digits: bool, cache_dir: str | None = None):
  """Loads federated EMNIST with TFF's own loader, never attempting a download.

  Args:
    only_digits: load the 10-class digits-only splits instead of all 62 classes.
    cache_dir: the folder holding `emnist_all.sqlite` (default `~/.tff`, as TFF's).

  Returns:
    `(train, test)` `tff.simulation.datasets.ClientData` with elements
    `{'label': int32 [], 'pixels': float32 [28, 28]}`.

  Raises:
    DataNotFoundError: the file is missing.
  """
  path = require_emnist_database(cache_dir)
  return tff.simulation.datasets.emnist.load_data(
      only_digits=only_digits, cache_dir=os.path.dirname(path))
