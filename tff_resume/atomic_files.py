"""Small files written atomically: a reader sees the old content or the new, never a mix."""

import json
import os
from typing import Any


def write_text_atomically(path: str, text: str) -> None:
  """Writes `text` to `path` through a flushed temporary file and an atomic rename."""
  temporary_path = f"{path}.tmp-{os.getpid()}"
  with open(temporary_path, "w") as temporary:
    temporary.write(text)
    temporary.flush()
    os.fsync(temporary.fileno())
  os.replace(temporary_path, path)


def write_json_atomically(path: str, value: Any) -> None:
  """Writes `value` as indented JSON with sorted keys to `path`, atomically."""
  write_text_atomically(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def read_json(path: str) -> Any:
  with open(path) as json_file:
    return json.load(json_file)
