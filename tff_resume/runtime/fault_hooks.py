"""Test hooks that let tests and the chaos soak time real faults from a run's own progress.

`TFF_RESUME_FAULT` holds hooks separated by commas; unset, every function here does nothing:

- `phases`: a line `tff_resume fault hook: PHASE` on stderr as each phase begins (`loading data`,
  `tracing`, `wrote config.json`, `saving version N`), so a test can send a signal while it runs.
- `pause-during-save:N`: the save of version N stops for `PAUSE_SECONDS` once its files are written,
  before its manifest and rename (so a signal lands inside the save).
- `kill-during-save:N`: SIGKILLs the process there.
- `disk-full-during-save:N`: fails the write there with ENOSPC, for machines where a test cannot
  mount a small file system.
- `kill-during-index`: SIGKILLs the process halfway through adding the EMNIST file's client index
  (`tff_resume.data.client_index`), inside its transaction.
"""

import errno
import os
import signal
import sys
import time

PAUSE_SECONDS = 2.0
_MARKER = "tff_resume fault hook: "


def _hooks() -> list[str]:
  return [hook for hook in os.environ.get("TFF_RESUME_FAULT", "").split(",") if hook]


def announce(phase: str) -> None:
  """Writes the phase marker line to stderr when the `phases` hook is on."""
  if "phases" in _hooks():
    sys.stderr.flush()
    os.write(sys.stderr.fileno(), f"{_MARKER}{phase}\n".encode())


def marker(phase: str) -> str:
  """The line `announce(phase)` writes (without its newline)."""
  return f"{_MARKER}{phase}"


def during_save(version: int) -> None:
  """Called by a save once version `version`'s files are written, before its manifest and rename."""
  announce(f"saving version {version}")
  hooks = _hooks()
  if f"pause-during-save:{version}" in hooks:
    time.sleep(PAUSE_SECONDS)  # A signal's handler runs meanwhile; the sleep then goes on.
  if f"kill-during-save:{version}" in hooks:
    os.kill(os.getpid(), signal.SIGKILL)
  if f"disk-full-during-save:{version}" in hooks:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# SQLite virtual-machine steps between the kill hook's looks at the file being indexed.
_INDEX_CHECK_STEPS = 100


def during_index(connection, path: str) -> None:
  """Called inside the transaction that adds the client index to `path`, before `CREATE INDEX`.

  With `kill-during-index`, the transaction's page cache is made tiny, so that index pages spill
  into the file before the commit, and the process is SIGKILLed once the file itself has changed:
  what is left is a file holding part of an index and the journal that undoes it.
  """
  if "kill-during-index" not in _hooks():
    return
  announce("adding index")
  connection.execute("PRAGMA cache_size = 1")
  size = os.path.getsize(path)

  def kill_once_the_file_changed() -> int:
    if os.path.getsize(path) != size:
      os.kill(os.getpid(), signal.SIGKILL)
    return 0

  connection.set_progress_handler(kill_once_the_file_changed, _INDEX_CHECK_STEPS)
