"""The real `tensorboard` of the virtual environment, started on loopback and read over HTTP.

Tests, the chaos soak and the screenshot script see what a user's browser gets: the same binary, its
default data loader (unless `--load_fast=false` is asked for), the same HTTP data API the dashboards
call. The server runs in its own process group; `stop()` ends it and its data server.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import portpicker

_START_TIMEOUT_SECONDS = 90.0
_POLL_SECONDS = 0.5


class TensorBoardNotReadyError(Exception):
  """TensorBoard exited, or did not serve what was waited for in time."""


class TensorBoardServer:
  """One `tensorboard --logdir LOGDIR` process in its own process group, on 127.0.0.1."""

  def __init__(self, logdir: str, *extra_flags: str):
    binary = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    self.port = portpicker.pick_unused_port()
    self.process = subprocess.Popen(
        [binary, f"--logdir={logdir}", "--host=127.0.0.1", f"--port={self.port}", *extra_flags],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)

  def get(self, path: str, **query: str):
    """GETs a data API path (e.g. "data/runs") and returns its JSON."""
    url = f"http://127.0.0.1:{self.port}/{path}"
    if query:
      url += "?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, timeout=30) as response:
      return json.load(response)

  def post(self, path: str, body: dict):
    """POSTs a JSON body (the HParams plugin's API) and returns the JSON answer."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{self.port}/{path}", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
      return json.load(response)

  def wait_for(self, condition, what: str):
    """Polls `condition(self)` until it returns a true value (returned), or fails after a while."""
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    last_error = None
    while time.monotonic() < deadline:
      if self.process.poll() is not None:
        raise TensorBoardNotReadyError(f"tensorboard exited with {self.process.returncode} before {what}")
      try:
        value = condition(self)
        if value:
          return value
      except (urllib.error.URLError, ConnectionError, ValueError) as error:
        last_error = error
      time.sleep(_POLL_SECONDS)
    raise TensorBoardNotReadyError(f"tensorboard did not show {what} within {_START_TIMEOUT_SECONDS:.0f} s "
                         f"(last error: {last_error})")

  def stop(self) -> None:
    """Ends tensorboard and its data server (its whole process group) and reaps it."""
    try:
      os.killpg(self.process.pid, signal.SIGTERM)
    except ProcessLookupError:
      pass
    try:
      self.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
      os.killpg(self.process.pid, signal.SIGKILL)
      self.process.wait()
    try:
      os.killpg(self.process.pid, signal.SIGKILL)  # The data server, if it outlived its parent.
    except ProcessLookupError:
      pass


def processes_in_group(process_group: int) -> list[int]:
  """Returns the PIDs of live processes in a process group (from /proc)."""
  found = []
  for name in os.listdir("/proc"):
    if not name.isdigit():
      continue
    try:
      with open(f"/proc/{name}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
      continue
    # After the command: state, ppid, pgrp; a zombie (Z) has ended.
    if int(fields[2]) == process_group and fields[0] != "Z":
      found.append(int(name))
  return found
