"""Tests for tff_resume.runtime.local_worker: the TFF worker ends with the program however the program ends."""

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

from absl.testing import absltest
import portpicker

from tff_resume.runtime import local_worker

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Starts the execution context, runs a federated computation, prints the worker's pid, then ends as
# argv[1] says: "exit" normally, "raise" with an uncaught exception, "wait" until a signal arrives.
_PROGRAM = textwrap.dedent("""
    import signal, sys, time
    # Python's own SIGINT handling even when started with SIGINT ignored (a background job of a
    # non-interactive shell inherits SIG_IGN, and Python then keeps it).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from tff_resume.runtime import local_worker
    local_worker.quiet_tensorflow_logging()
    import tensorflow_federated as tff
    worker = local_worker.start_local_execution_context()

    @tff.federated_computation
    def three_at_server():
      return tff.federated_value(3, tff.SERVER)

    print("worker", worker.pid, "result", three_at_server(), flush=True)
    if sys.argv[1] == "raise":
      raise ValueError("an uncaught error")
    if sys.argv[1] == "wait":
      time.sleep(600)
    """)


def _is_running(pid: int) -> bool:
  """True when `pid` exists and is not a zombie (a killed child not yet reaped is not running)."""
  try:
    with open(f"/proc/{pid}/stat") as stat:
      state = stat.read().rsplit(")", 1)[1].split()[0]
  except FileNotFoundError:
    return False
  return state != "Z"


def _parent_of(pid: int) -> int:
  with open(f"/proc/{pid}/stat") as stat:
    return int(stat.read().rsplit(")", 1)[1].split()[1])


def _wait_until_stopped(pid: int, timeout_seconds: float = 10.0) -> bool:
  deadline = time.monotonic() + timeout_seconds
  while time.monotonic() < deadline:
    if not _is_running(pid):
      return True
    time.sleep(0.05)
  return False


def _start(ending: str) -> subprocess.Popen:
  env = dict(os.environ, PYTHONPATH=_REPO_ROOT)
  return subprocess.Popen([sys.executable, "-c", _PROGRAM, ending], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env, cwd=_REPO_ROOT)


def _worker_pid(program: subprocess.Popen) -> int:
  words = program.stdout.readline().split()
  if not words:
    raise AssertionError(f"the program printed nothing; stderr:\n{program.stderr.read()}")
  assert words[0] == "worker" and words[3] == "3", words
  return int(words[1])


def _taken(port: int) -> socket.socket:
  """A socket bound to `port` on every interface, not listening: TFF's worker cannot bind the port
  (it exits at once) and a connection to it is refused."""
  taken = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
  taken.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
  taken.bind(("::", port))
  return taken


class WorkerRestartTest(absltest.TestCase):

  def test_a_worker_that_exits_before_listening_is_started_again(self):
    port = portpicker.pick_unused_port()
    taken, said = _taken(port), io.StringIO()
    worker = local_worker.LocalWorker(port=port)
    first = worker.process

    def free_the_port_once_the_first_start_exits():
      first.wait()
      taken.close()

    freeing = threading.Thread(target=free_the_port_once_the_first_start_exits)
    freeing.start()
    try:
      with contextlib.redirect_stderr(said):
        worker.wait_until_listening()
      self.assertIsNot(worker.process, first)
      self.assertIsNone(worker.process.poll())
      socket.create_connection(("localhost", port), timeout=5).close()
    finally:
      freeing.join()
      worker.stop()
    self.assertEqual(first.returncode, 0)  # TFF's worker exits with 0 when its bind fails.
    self.assertEqual(said.getvalue(), "tff_resume: TFF's worker binary exited with code 0 before "
                     f"serving on port {port}; starting it again (2 of 3).\n")

  def test_a_worker_that_never_listens_is_an_error_after_three_starts(self):
    port = portpicker.pick_unused_port()
    said = io.StringIO()
    with _taken(port), contextlib.redirect_stderr(said):
      worker = local_worker.LocalWorker(port=port)
      with self.assertRaisesRegex(local_worker.WorkerStartError,
                                  f"^TFF's worker binary exited with code 0 before serving on port "
                                  f"{port}; rerun with --verbose to see its output.$"):
        worker.wait_until_listening()
    self.assertEqual(said.getvalue().splitlines(), [
        f"tff_resume: TFF's worker binary exited with code 0 before serving on port {port}; "
        f"starting it again ({start} of 3)." for start in (2, 3)])


class LocalWorkerTest(absltest.TestCase):

  def _assert_worker_ends_with_program(self, ending, signal_number, expected_returncode):
    program = _start(ending)
    try:
      worker_pid = _worker_pid(program)
      if signal_number is not None:
        # The program is waiting: its worker is alive and is its child.
        self.assertTrue(_is_running(worker_pid))
        self.assertEqual(_parent_of(worker_pid), program.pid)
        program.send_signal(signal_number)
      self.assertEqual(program.wait(timeout=60), expected_returncode)
      self.assertTrue(_wait_until_stopped(worker_pid),
                      f"worker {worker_pid} survived a program that ended by {ending}")
    finally:
      program.kill()
      program.communicate()

  def test_worker_stops_on_normal_exit(self):
    self._assert_worker_ends_with_program("exit", None, 0)

  def test_worker_stops_on_uncaught_exception(self):
    self._assert_worker_ends_with_program("raise", None, 1)

  def test_worker_stops_on_sigint(self):
    # Python ends an uncaught KeyboardInterrupt by re-raising SIGINT on itself.
    self._assert_worker_ends_with_program("wait", signal.SIGINT, -signal.SIGINT)

  def test_worker_stops_on_sigterm(self):
    self._assert_worker_ends_with_program("wait", signal.SIGTERM, -signal.SIGTERM)

  def test_worker_stops_on_sigkill(self):
    self._assert_worker_ends_with_program("wait", signal.SIGKILL, -signal.SIGKILL)

  def test_piped_run_returns_promptly(self):
    env = dict(os.environ, PYTHONPATH=_REPO_ROOT)
    started = time.monotonic()
    piped = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$0" -c "$1" exit | cat', sys.executable, _PROGRAM],
        capture_output=True, text=True, env=env, cwd=_REPO_ROOT, timeout=120)
    elapsed_seconds = time.monotonic() - started
    self.assertEqual(piped.returncode, 0, piped.stderr)
    self.assertRegex(piped.stdout, r"^worker \d+ result 3\n$")
    # The program alone takes about 5 s here; a pipe held open by a worker would block until timeout.
    self.assertLess(elapsed_seconds, 60)

  def test_quiet_logging_sets_the_level_tensorflow_reads(self):
    saved = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    try:
      local_worker.quiet_tensorflow_logging(verbose=True)
      self.assertEqual(os.environ["TF_CPP_MIN_LOG_LEVEL"], "0")
      local_worker.quiet_tensorflow_logging()
      self.assertEqual(os.environ["TF_CPP_MIN_LOG_LEVEL"], "3")
    finally:
      os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
      if saved is not None:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = saved


if __name__ == "__main__":
  absltest.main()
