"""One writer per run folder: an exclusive `flock` on `RUN_DIR/run.lock`, held for the writer's life.

The kernel releases a `flock` lock when its holder ends, however it ends (SIGKILL included), so a dead
runner never blocks the next start; the file itself stays and is never deleted (deleting a lock file
lets two processes lock two different files). After locking, the holder writes its PID, host and start
time into the file, so a second start can say who holds the run. Readers (`tff-resume status`) do not
lock.

On NFS, Linux implements `flock` with the file system's byte-range locks (NLM for NFSv3, built into
NFSv4): it works across machines when the mount supports locking; on a mount without locking
(`nolock`, some FUSE file systems) the lock only excludes processes on the same machine.
"""

import datetime
import fcntl
import json
import os
import socket

LOCK_FILE = "run.lock"


class RunLockedError(Exception):
  """Another process holds the run folder's lock; the message names it."""


class RunLock:
  """The exclusive lock of one run folder. `acquire` creates the folder when needed."""

  def __init__(self, run_dir: str):
    self.run_dir = run_dir
    self.path = os.path.join(run_dir, LOCK_FILE)
    self._descriptor = None

  def holder(self) -> str:
    """Describes the process that wrote the lock file last (the holder, while it is locked)."""
    try:
      with open(self.path) as lock_file:
        info = json.load(lock_file)
      return f"PID {info['pid']} on {info['host']}, started {info['started_at']}"
    except (OSError, ValueError, KeyError, TypeError):
      return "a process that has not written its name yet"

  def acquire(self) -> None:
    """Takes the lock without waiting.

    Raises:
      RunLockedError: another process holds it; nothing was changed.
      OSError: the run folder or its lock file cannot be created.
    """
    os.makedirs(self.run_dir, exist_ok=True)
    descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(descriptor)
      raise RunLockedError(
          f"{self.run_dir} is in use by another process ({self.holder()}); nothing was changed. "
          "Wait for it to end, or stop it, then run the same command again.") from None
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    self._descriptor = descriptor
    try:
      os.ftruncate(descriptor, 0)
      os.pwrite(descriptor, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                        "started_at": started_at}).encode() + b"\n", 0)
    except OSError:
      pass  # A full disk: the lock holds all the same; others just cannot name the holder.

  def release(self) -> None:
    """Releases the lock (the kernel does it anyway when the process ends). Idempotent."""
    if self._descriptor is not None:
      os.close(self._descriptor)
      self._descriptor = None

  def __enter__(self) -> "RunLock":
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()
