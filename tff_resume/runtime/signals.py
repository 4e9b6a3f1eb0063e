"""SIGINT and SIGTERM as a request to stop at a safe point, and the exception that reports the stop.

A run is stopped only between steps that leave its files whole: a signal during start-up stops before
anything changes, one during training after the current round is saved.
"""

import os
import signal
import sys


EXIT_CODE_INTERRUPTED = 75  # EX_TEMPFAIL: stopped by SIGINT/SIGTERM at a safe point; run it again.


class Interrupted(KeyboardInterrupt):
  """A SIGINT/SIGTERM (Ctrl-C, Colab's stop button, a cluster's preemption) stopped a run at a safe
  point: during start-up, before anything changed, or after the current round was saved. The run
  resumes where it stopped when it is started again. A `KeyboardInterrupt`, so code that handles
  Ctrl-C handles it.

  Attributes:
    signal_name: "SIGINT" or "SIGTERM".
    rounds_done: the rounds saved when training stopped; None when it stopped during start-up.
  """

  def __init__(self, signal_name: str, rounds_done: int | None = None):
    where = ("during start-up" if rounds_done is None
             else f"after round {rounds_done} (saved)")
    super().__init__(f"stopped by {signal_name} {where}")
    self.signal_name = signal_name
    self.rounds_done = rounds_done


def _say(text: str) -> None:
  """Writes to stderr from a signal handler; never raises (a notebook's stderr has no file
  descriptor, and an exception here would surface in whatever the program was doing)."""
  try:
    # os.write, not print: a print here can interrupt a print of the main thread on the same
    # stream and fail with "reentrant call".
    os.write(sys.stderr.fileno(), text.encode())
  except (OSError, ValueError, AttributeError):
    try:
      sys.stderr.write(text)
    except Exception:  # pylint: disable=broad-except
      pass


class StopRequest:
  """Turns SIGINT and SIGTERM into a request to stop at the next safe point.

  `install()` it as early as the program can (before importing TensorFlow), so a signal at any
  instant gets the documented exit status: the first signal sets `requested`; start-up code calls
  `raise_if_requested()` between its steps and a training loop polls `requested` after each round.
  A second signal stops at once. In a program (`in_process=False`) the registered cleanups run
  (removing the files being written) and the process exits with `EXIT_CODE_INTERRUPTED`, without a
  traceback; the worker process dies with it. In a notebook or any host process (`in_process=True`)
  the second signal raises `KeyboardInterrupt` where the program is, so the host lives on; the last
  saved version is intact either way.
  """

  def __init__(self, in_process: bool = False):
    self.requested = False
    self.signal_name = None
    self._cleanups = []
    self._in_process = in_process
    self._previous = {}

  def _handle(self, signal_number, frame):
    del frame
    name = signal.Signals(signal_number).name
    if self.requested:
      status = "" if self._in_process else f" Exit status {EXIT_CODE_INTERRUPTED}."
      message = f"\n{name} received again: stopping now (the last saved version is intact).{status}\n"
      if self._in_process:
        _say(message)
        raise KeyboardInterrupt(f"{name} received twice")
      for cleanup in self._cleanups:
        try:
          cleanup()
        except Exception:  # pylint: disable=broad-except
          pass  # Leftovers of an unfinished write are removed by the next start anyway.
      _say(message)
      os._exit(EXIT_CODE_INTERRUPTED)  # pylint: disable=protected-access
    self.requested = True
    self.signal_name = name
    _say(f"\n{name} received: stopping at the next safe point (after the current round is saved; "
         "send it again to stop at once).\n")

  def add_cleanup(self, cleanup) -> None:
    """Registers a callable to run before an immediate stop (a second signal)."""
    self._cleanups.append(cleanup)

  def raise_if_requested(self, rounds_done: int | None = None) -> None:
    """Raises `Interrupted` if a signal asked to stop."""
    if self.requested:
      raise Interrupted(self.signal_name, rounds_done)

  def install(self) -> "StopRequest":
    """Makes SIGINT and SIGTERM request a stop instead of interrupting; returns self."""
    for signal_number in (signal.SIGINT, signal.SIGTERM):
      self._previous[signal_number] = signal.signal(signal_number, self._handle)
    return self

  def uninstall(self) -> None:
    """Puts back the handlers `install` replaced."""
    for signal_number, previous in self._previous.items():
      signal.signal(signal_number, previous)
    self._previous.clear()

  def ignore_from_now(self) -> None:
    """Ignores SIGINT and SIGTERM for the rest of the process: for its last steps, once its exit
    status is decided. (Python's own shutdown would put back the default action, which kills.)"""
    for signal_number in (signal.SIGINT, signal.SIGTERM):
      signal.signal(signal_number, signal.SIG_IGN)
