"""Small files written atomically: a reader sees the old content or the new, never a mix.

A file is written as `<path>.tmp-<pid>`, flushed, then renamed over `<path>`. A failed write (a full
disk, say) removes its temporary file; one left by a killed process is removed by
`remove_temporaries`, which a run calls at start.
"""

import contextlib
import json
import os
import re
import time
from typing import Any, Iterator, TextIO

from absl import logging

_TEMPORARY_PATTERN = re.compile(r"\.tmp-\d+$")


@contextlib.contextmanager
def open_atomically(path: str, newline: str | None = None) -> Iterator[TextIO]:
  """Yields a text file that replaces `path` when the block ends (flushed and synced first); if the
  block raises, `path` is untouched and the temporary file removed."""
  temporary_path = f"{path}.tmp-{os.getpid()}"
  try:
    with open(temporary_path, "w", newline=newline) as temporary:
      yield temporary
      temporary.flush()
      os.fsync(temporary.fileno())
    os.replace(temporary_path, path)
  except BaseException:
    if os.path.exists(temporary_path):
      os.remove(temporary_path)
    raise


def write_text_atomically(path: str, text: str) -> None:
  """Writes `text` to `path` through a flushed temporary file and an atomic rename."""
  with open_atomically(path) as text_file:
    text_file.write(text)


def write_json_atomically(path: str, value: Any) -> None:
  """Writes `value` as indented JSON with sorted keys to `path`, atomically."""
  write_text_atomically(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def read_json(path: str) -> Any:
  """The JSON value in the file at `path`."""
  with open(path) as json_file:
    return json.load(json_file)


def remove_temporaries(folder: str) -> list[str]:
  """Removes the temporary files of unfinished atomic writes in `folder`; returns their paths."""
  if not os.path.isdir(folder):
    return []
  stale = sorted(os.path.join(folder, name) for name in os.listdir(folder)
                 if _TEMPORARY_PATTERN.search(name))
  for path in stale:
    os.remove(path)
  return stale


def set_aside(path: str, reason: str) -> str:
  """Renames a damaged file to `<path>.damaged-<time>` (kept for inspection) with a warning naming it
  and `reason`; returns the new path."""
  new_path = f"{path}.damaged-{time.strftime('%Y%m%dT%H%M%S')}"
  os.replace(path, new_path)
  logging.warning("%s is damaged (%s); set aside as %s.", path, reason, new_path)
  return new_path
