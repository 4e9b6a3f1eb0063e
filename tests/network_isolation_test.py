"""Tests for tff_resume.runtime.network_isolation: the runner's TFF worker cannot be reached from the network.

A real runner is started, its real worker found among its children, and a TCP connection is tried to
the worker's port through this machine's non-loopback address: refused when isolated, accepted with
isolation off (which shows the probe would see an exposed worker)."""

import fcntl
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile

from absl.testing import absltest

from tff_resume.runtime import network_isolation

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SIOCGIFADDR = 0x8915


def _non_loopback_address() -> str | None:
  """An IPv4 address of this machine other than loopback, or None."""
  with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
    for _, name in socket.if_nameindex():
      if name == "lo":
        continue
      try:
        answer = fcntl.ioctl(probe, _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
      except OSError:
        continue
      return socket.inet_ntoa(answer[20:24])
  return None


def _start_runner(root: str, isolation: str) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, "-m", "experiments.run_emnist", "--config=configs/demo.py:smoke",
       "--config.model.name=linear", "--config.training.total_rounds=1000",
       f"--root_output_dir={root}", f"--experiment_name=run_{isolation}"],
      cwd=_REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=dict(os.environ, PYTHONPATH=_REPO_ROOT,
               **{network_isolation.ENVIRONMENT_VARIABLE: isolation}))


def _worker(runner_pid: int) -> tuple[int, int]:
  """(pid, port) of the runner's TFF worker."""
  for task in os.listdir(f"/proc/{runner_pid}/task"):
    with open(f"/proc/{runner_pid}/task/{task}/children") as children:
      for child in children.read().split():
        with open(f"/proc/{child}/cmdline", "rb") as cmdline:
          arguments = cmdline.read().decode().split("\0")
        if arguments[0].endswith("worker_binary"):
          port = next(arg for arg in arguments if arg.startswith("--port="))
          return int(child), int(port.split("=", 1)[1])
  raise AssertionError(f"runner {runner_pid} has no worker_binary child")


def _connects(address: str, port: int) -> bool:
  try:
    with socket.create_connection((address, port), timeout=5):
      return True
  except OSError:
    return False


class WorkerReachabilityTest(absltest.TestCase):

  def test_isolated_worker_refuses_the_network_and_an_unisolated_one_does_not(self):
    address = _non_loopback_address()
    if address is None:
      self.skipTest("this machine has no non-loopback IPv4 address to connect through")
    possible = subprocess.run(
        [sys.executable, "-c",
         "from tff_resume.runtime import network_isolation; network_isolation.isolate()"],
        cwd=_REPO_ROOT, capture_output=True, text=True, check=False,
        env=dict(os.environ, PYTHONPATH=_REPO_ROOT,
                 **{network_isolation.ENVIRONMENT_VARIABLE: "require"}))
    if possible.returncode != 0:
      self.skipTest(f"the kernel refuses private network namespaces here: {possible.stderr[-300:]}")
    root = tempfile.mkdtemp()
    runners = {isolation: _start_runner(root, isolation) for isolation in ("auto", "off")}
    try:
      for isolation, runner in runners.items():
        line = runner.stdout.readline()
        while line and not line.startswith("round    1/1000 "):
          line = runner.stdout.readline()
        if not line:
          self.fail(f"{isolation}: the runner ended before round 1: {runner.stderr.read()[-2000:]}")
        worker_pid, port = _worker(runner.pid)
        own_namespace = os.readlink("/proc/self/ns/net")
        if isolation == "auto":
          self.assertNotEqual(os.readlink(f"/proc/{worker_pid}/ns/net"), own_namespace)
          self.assertFalse(_connects(address, port), f"isolated worker reachable at {address}")
          self.assertFalse(_connects("127.0.0.1", port), "isolated worker on the host's loopback")
        else:
          self.assertEqual(os.readlink(f"/proc/{worker_pid}/ns/net"), own_namespace)
          self.assertTrue(_connects(address, port), "the probe cannot see an exposed worker")
      for runner in runners.values():
        runner.send_signal(signal.SIGTERM)
      for isolation, runner in runners.items():
        _, stderr = runner.communicate(timeout=120)
        self.assertEqual(runner.returncode, 75, f"{isolation}: {stderr[-2000:]}")
        self.assertNotIn("could not be isolated", stderr)
    finally:
      for runner in runners.values():
        runner.kill()
        runner.wait()

  def test_an_unprivileged_user_gets_a_private_loopback(self):
    address = _non_loopback_address()
    if os.getuid() != 0 or address is None or not shutil.which("setpriv"):
      self.skipTest("needs root (to become another user with setpriv) and a non-loopback address")
    if subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "true"],
                      capture_output=True, check=False).returncode != 0:
      self.skipTest("user 65534 does not exist here (e.g. in Bazel's sandbox, which maps only root)")
    # As user `nobody`: isolate, listen on every interface, reach the listener through the private
    # loopback; from here the same port is closed on every address.
    script = (
        "import os, socket, sys\n"
        "from tff_resume.runtime import network_isolation\n"
        "isolated = network_isolation.isolate()\n"
        "listener = socket.create_server(('0.0.0.0', 0))\n"
        "socket.create_connection(('127.0.0.1', listener.getsockname()[1]), timeout=5).close()\n"
        "print(isolated, os.getuid(), listener.getsockname()[1], flush=True)\n"
        "sys.stdin.read()\n")
    child = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
         script], cwd=_REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=_REPO_ROOT))
    try:
      fields = child.stdout.readline().split()
      if not fields:
        self.fail(child.stderr.read()[-2000:])
      isolated, uid, port = fields
      self.assertEqual((isolated, uid), ("True", "65534"))
      self.assertFalse(_connects(address, int(port)))
      self.assertFalse(_connects("127.0.0.1", int(port)))
    finally:
      child.communicate(timeout=30)
    self.assertEqual(child.returncode, 0)

  def test_an_unknown_mode_is_one_line_and_status_2(self):
    root = tempfile.mkdtemp()
    runner = _start_runner(root, "sometimes")
    stdout, stderr = runner.communicate(timeout=60)
    self.assertEqual((runner.returncode, stdout), (2, ""))
    self.assertEqual(stderr, "run_emnist: error: TFF_RESUME_NETWORK_ISOLATION='sometimes': use one "
                             "of auto, require, off.\n")
    self.assertEqual(os.listdir(root), [])


if __name__ == "__main__":
  absltest.main()
