"""TLS workers on simulated hosts: network namespaces this test creates (a worker host, a runner, an
attacker, joined by veth pairs on 198.18.0.0/15) and removes.

Two `tff-resume worker --tls_dir` processes serve on the worker host. From the attacker: plaintext
gRPC, TLS without a certificate, with another CA's and with an expired one of the study's CA are
all refused, while the study's runner certificate is answered; nothing but the two TLS ports listens
on the worker host, so TFF's own worker port is unreachable. From the runner: a smoke run over
mutual TLS on both workers equals the local worker's run with the same `num_subrounds`; a worker
killed mid-run stops it with status 75 and the same command resumes it identically; another CA's
certificates, an expired runner certificate and a missing folder are one line and status 2 with
nothing written. Every process and namespace ends with the test."""

import ctypes
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

from absl.testing import absltest

from experiments import chaos
from tff_resume.runtime import certificates
import tff_resume

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TAG = f"tls{os.getpid() % 100000}"
_MARKER = f"TFF_RESUME_TLS_TEST={_TAG}-{time.time_ns()}"
_ENV = dict(os.environ, PYTHONPATH=_REPO_ROOT, TFF_RESUME_TLS_TEST=_MARKER.split("=")[1])
_NAMESPACES = {role: f"{_TAG}-{role}" for role in ("worker", "runner", "attacker")}
# (namespace, its address) at each end of a veth pair; the worker host is on both links.
_LINKS = {"r": (("runner", "198.18.0.1"), ("worker", "198.18.0.2")),
          "a": (("attacker", "198.18.0.5"), ("worker", "198.18.0.6"))}
_WORKER_HOST = "198.18.0.2"  # As the runner reaches it; its certificate's name.
_ATTACKED_HOST = "198.18.0.6"
_PORTS = (8101, 8102)
_INNER_PORT = 8000  # tls_worker's port for TFF's worker, inside its own namespace.
_OVERRIDES = ["--config.model.name=linear", "--config.training.clients_per_round=5",
              "--config.training.total_rounds=3", "--config.runtime.num_subrounds=2"]
_PR_SET_PDEATHSIG = 1
_STATE = {}


def _end_with_this_test() -> None:
  ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _ip(*arguments: str) -> None:
  subprocess.run(["ip", *arguments], check=True, capture_output=True, text=True)


def _in(role: str, command: list[str]) -> list[str]:
  return ["ip", "netns", "exec", _NAMESPACES[role], *command]


def _make_hosts() -> None:
  for namespace in _NAMESPACES.values():
    _ip("netns", "add", namespace)
    _ip("-n", namespace, "link", "set", "lo", "up")
  for link, ends in _LINKS.items():
    names = [f"{_TAG}{link}{index}" for index in range(2)]
    _ip("link", "add", names[0], "type", "veth", "peer", "name", names[1])
    for name, (role, address) in zip(names, ends):
      _ip("link", "set", name, "netns", _NAMESPACES[role])
      _ip("-n", _NAMESPACES[role], "address", "add", f"{address}/30", "dev", name)
      _ip("-n", _NAMESPACES[role], "link", "set", name, "up")


def _remove_hosts() -> None:
  for namespace in _NAMESPACES.values():  # Deleting a namespace deletes its veth ends.
    subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, check=False)


def _start_worker(port: int) -> subprocess.Popen:
  log = open(os.path.join(_STATE["root"], f"worker_{port}.err"), "a")  # pylint: disable=consider-using-with
  worker = subprocess.Popen(
      _in("worker", [sys.executable, "-m", "tff_resume.cli", "worker", f"--port={port}",
                     f"--host={_WORKER_HOST}", f"--tls_dir={_STATE['study']}"]),
      cwd=_REPO_ROOT, env=_ENV, stdout=subprocess.PIPE, stderr=log, text=True,
      preexec_fn=_end_with_this_test)
  log.close()
  line = worker.stdout.readline()
  if not line.startswith(f"tff-resume worker: serving TFF computations on {_WORKER_HOST}:{port} "
                         "over mutual TLS"):
    worker.kill()
    raise AssertionError(line + worker.communicate()[0])
  _STATE["workers"][port] = worker
  return worker


def _stop_worker(port: int, kill: bool = False) -> None:
  worker = _STATE["workers"].pop(port)
  worker.kill() if kill else worker.terminate()  # pylint: disable=expression-not-assigned
  worker.wait(timeout=30)


def setUpModule():
  if os.geteuid() != 0 or shutil.which("ip") is None:
    raise unittest.SkipTest("simulating hosts needs root and iproute2's ip")
  root = tempfile.mkdtemp(prefix="tls_workers")
  _STATE.update(root=root, workers={}, study=os.path.join(root, "study"),
                other=os.path.join(root, "other"), expired=os.path.join(root, "expired"))
  try:
    _set_up()
  except BaseException:
    _cleanup()
    raise


def tearDownModule():
  _cleanup()


def _set_up():
  certificates.make_certificates(_STATE["study"], [_WORKER_HOST])
  certificates.make_certificates(_STATE["other"], [_WORKER_HOST])
  os.mkdir(_STATE["expired"], 0o700)  # The study's CA, and a runner pair it signed that expired.
  for name in ("ca.pem", "ca.key"):
    shutil.copy2(os.path.join(_STATE["study"], name), _STATE["expired"])
  certificates.make_certificates(_STATE["expired"], [], days=1, now=datetime.datetime.now(
      datetime.timezone.utc) - datetime.timedelta(days=3))
  _make_hosts()
  for port in _PORTS:
    _start_worker(port)


def _cleanup():
  """Stops the workers, removes the namespaces and the folder (again harmless)."""
  for port in list(_STATE.get("workers", {})):
    _stop_worker(port)
  _remove_hosts()
  shutil.rmtree(_STATE.get("root", ""), ignore_errors=True)


def _runner(name: str, *overrides: str, role: str | None = "runner"):
  command = [sys.executable, "-m", "experiments.run_emnist", "--config=configs/demo.py:smoke",
             f"--root_output_dir={_STATE['root']}/runs", f"--experiment_name={name}", *_OVERRIDES,
             *overrides]
  return _in(role, command) if role else command


def _over_tls(tls_dir: str | None = None) -> list[str]:
  return [f"--config.runtime.workers={','.join(f'{_WORKER_HOST}:{port}' for port in _PORTS)}",
          f"--config.runtime.tls_dir={tls_dir or _STATE['study']}"]


def _run(command, **kwargs):
  return subprocess.run(command, cwd=_REPO_ROOT, env=kwargs.pop("env", _ENV), capture_output=True,
                        text=True, check=False, timeout=300, **kwargs)


def _straight() -> dict:
  """The local worker's run with the same num_subrounds (in this machine's namespace), once."""
  if "straight" not in _STATE:
    result = _run(_runner("local", role=None))
    assert result.returncode == 0, result.stderr
    _STATE["straight"] = chaos.run_outcome(os.path.join(_STATE["root"], "runs", "local"))
  return _STATE["straight"]


# Run in the attacker's namespace: each kind of client against the worker host; prints what each got.
_ATTACK = r"""
import json, socket, ssl, sys
import grpc
host, port, inner_port, study, other, expired = sys.argv[1:]
found = {}
channel = grpc.insecure_channel(f"{host}:{port}")
try:
  grpc.channel_ready_future(channel).result(timeout=3)
  found["plaintext_grpc"] = "ready"
except grpc.FutureTimeoutError:
  found["plaintext_grpc"] = "never ready"
def tls(folder):
  context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
  context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # An attacker trusts anyone.
  context.set_alpn_protocols(["h2"])
  if folder:
    context.load_cert_chain(f"{folder}/runner.pem", f"{folder}/runner.key")
  try:
    with context.wrap_socket(socket.create_connection((host, int(port)), timeout=5)) as connection:
      connection.settimeout(3)
      data = connection.recv(9)
      return f"answered {data.hex()}" if data else "closed"
  except (ssl.SSLError, OSError) as error:
    return f"refused {type(error).__name__}"
for name, folder in (("no_certificate", None), ("other_ca", other), ("expired", expired),
                     ("study_runner", study)):
  found[name] = tls(folder)
try:
  socket.create_connection((host, int(inner_port)), timeout=3).close()
  found["inner_port"] = "connected"
except OSError as error:
  found["inner_port"] = type(error).__name__
print(json.dumps(found))
"""


class AttackerTest(absltest.TestCase):

  def test_only_the_study_runner_certificate_reaches_the_worker(self):
    result = _run(_in("attacker", [sys.executable, "-c", _ATTACK, _ATTACKED_HOST, str(_PORTS[0]),
                                   str(_INNER_PORT), _STATE["study"], _STATE["other"],
                                   _STATE["expired"]]))
    self.assertEqual(result.returncode, 0, result.stderr)
    found = json.loads(result.stdout.splitlines()[-1])
    # An HTTP/2 SETTINGS frame (type 4 on stream 0) is what TFF's worker says first.
    self.assertRegex(found.pop("study_runner"), r"^answered [0-9a-f]{6}040000000000$")
    self.assertEqual(found, {"plaintext_grpc": "never ready", "no_certificate": "closed",
                             "other_ca": "closed", "expired": "closed",
                             "inner_port": "ConnectionRefusedError"})
    with open(os.path.join(_STATE["root"], f"worker_{_PORTS[0]}.err")) as log:
      refusals = [line for line in log if line.startswith("tff-resume worker: refused 198.18.0.5:")]
    reasons = [line.rsplit("(", 1)[1].rstrip(").\n") for line in refusals]
    self.assertIn("PEER_DID_NOT_RETURN_A_CERTIFICATE", reasons)
    self.assertIn("CERTIFICATE_VERIFY_FAILED", reasons)
    self.assertGreaterEqual(len(reasons), 4)

  def test_nothing_but_the_tls_ports_listens_on_the_worker_host(self):
    listening = subprocess.run(_in("worker", ["ss", "-ltnH"]), capture_output=True, text=True,
                               check=True).stdout.splitlines()
    ports = {int(line.split()[3].rsplit(":", 1)[1]) for line in listening}
    self.assertEqual(ports, set(_PORTS))


class RunnerTest(absltest.TestCase):

  def test_a_run_over_tls_equals_the_local_workers_run(self):
    result = _run(_runner("tls", *_over_tls()))
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertEqual(chaos.run_outcome(os.path.join(_STATE["root"], "runs", "tls")), _straight())

  def test_a_worker_killed_mid_run_stops_it_with_75_and_the_same_command_resumes(self):
    command = _runner("killed", *_over_tls())
    env = dict(_ENV, TFF_RESUME_FAULT="phases,pause-during-save:1")
    runner = subprocess.Popen(command, cwd=_REPO_ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    lines = []
    for line in runner.stderr:
      lines.append(line)
      # Version 1 is saved in the background (held 2 s) while round 2 trains, which the kill may
      # meet or miss (round 2's datasets are ready, and its 0.4 s may be over); round 3 starts only
      # after the save, so it meets the dead worker either way.
      if line.startswith("tff_resume fault hook: saving version 1"):
        _stop_worker(_PORTS[1], kill=True)
        break
    stdout, stderr = runner.communicate(timeout=120)
    self.assertEqual(runner.returncode, 75, "".join(lines) + stderr)
    self.assertIn(f"TFF worker {_WORKER_HOST}:{_PORTS[1]} failed during a computation", stderr)
    run_dir = os.path.join(_STATE["root"], "runs", "killed")
    rounds_done = tff_resume.run_status(run_dir)["rounds_done"]
    self.assertIn(rounds_done, (1, 2), stdout)
    _start_worker(_PORTS[1])
    resumed = _run(command)
    self.assertEqual(resumed.returncode, 0, resumed.stderr)
    self.assertIn(f"from version {rounds_done} (0 rounds to redo)", resumed.stdout)
    self.assertEqual(chaos.run_outcome(run_dir), _straight())

  def test_certificates_of_another_ca_are_one_line_and_status_2_with_nothing_written(self):
    result = _run(_runner("other_ca", *_over_tls(_STATE["other"])))
    self.assertEqual(result.returncode, 2, result.stderr)
    self.assertEqual(result.stderr.splitlines(), [
        f"run_emnist: error: TFF worker {_WORKER_HOST}:{_PORTS[0]} (runtime.workers): mutual TLS "
        "failed (its certificate: certificate signature failure). The worker (--tls_dir) and "
        f"runtime.tls_dir={_STATE['other']} must hold certificates of one `tff-resume certs` "
        "folder, the worker's made for the name runs use. Nothing was written."])
    self.assertFalse(os.path.exists(os.path.join(_STATE["root"], "runs", "other_ca")))

  def test_an_expired_or_missing_runner_certificate_is_refused_before_anything_is_written(self):
    expired = _run(_runner("expired", *_over_tls(_STATE["expired"]), role=None))
    self.assertEqual(expired.returncode, 2, expired.stderr)
    self.assertRegex(expired.stderr, r"^run_emnist: error: runtime.tls_dir: .*/expired/runner.pem "
                     r"expired on \d{4}-\d\d-\d\d \d\d:\d\d UTC; make new certificates with "
                     r"`tff-resume certs` in a new folder. Nothing was written.\n$")
    missing = os.path.join(_STATE["root"], "missing")
    config = tff_resume.load_config("configs/demo.py:smoke", {
        "runtime.workers": f"{_WORKER_HOST}:{_PORTS[0]}", "runtime.tls_dir": missing})
    with self.assertRaisesRegex(certificates.CertificateError,
                                f"^runtime.tls_dir: {missing}/ca.pem does not exist"):
      tff_resume.Run(config, os.path.join(_STATE["root"], "runs"), "missing").train()
    for name in ("expired", "missing"):
      self.assertFalse(os.path.exists(os.path.join(_STATE["root"], "runs", name)))


# Run in the runner's namespace: a mutual-TLS connection that stays open until stdin closes.
_HOLD = r"""
import socket, ssl, sys
host, port, study = sys.argv[1:]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.load_verify_locations(f"{study}/ca.pem")
context.load_cert_chain(f"{study}/runner.pem", f"{study}/runner.key")
context.set_alpn_protocols(["h2"])
with context.wrap_socket(socket.create_connection((host, int(port)), timeout=10),
                         server_hostname=host) as connection:
  print(connection.recv(9).hex(), flush=True)  # TFF's worker's SETTINGS: the relay is joined.
  sys.stdin.read()
"""
_PIDFD_OPEN, _PIDFD_GETFD = 434, 438  # The same on every Linux architecture.


def _connected_tcp_sockets(pid: int) -> list[socket.socket]:
  """Copies (pidfd_getfd) of the connected TCP sockets process `pid` holds."""
  libc = ctypes.CDLL(None, use_errno=True)
  pidfd = libc.syscall(_PIDFD_OPEN, pid, 0)
  if pidfd < 0:
    raise OSError(ctypes.get_errno(), "pidfd_open")
  found = []
  try:
    for name in os.listdir(f"/proc/{pid}/fd"):
      try:
        if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
          continue
      except OSError:
        continue
      copy = libc.syscall(_PIDFD_GETFD, pidfd, int(name), 0)
      if copy < 0:
        raise OSError(ctypes.get_errno(), "pidfd_getfd")
      connection = socket.socket(fileno=copy)
      try:
        connection.getpeername()
      except OSError:  # Listening, or not connected.
        connection.close()
        continue
      if connection.family in (socket.AF_INET, socket.AF_INET6):
        found.append(connection)
      else:
        connection.close()
  finally:
    os.close(pidfd)
  return found


class RelaySocketTest(absltest.TestCase):

  def test_relayed_connections_send_small_writes_at_once(self):
    # An accepted socket has proto 0, so asyncio left Nagle's algorithm on for it: a gRPC response
    # after an upload then waited for the runner's delayed ACK, about 33 ms a call.
    hold = subprocess.Popen(
        _in("runner", [sys.executable, "-c", _HOLD, _WORKER_HOST, str(_PORTS[0]), _STATE["study"]]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=_end_with_this_test)
    try:
      self.assertRegex(hold.stdout.readline(), r"^[0-9a-f]{6}040000000000$")
      relayed = _connected_tcp_sockets(_STATE["workers"][_PORTS[0]].pid)
      try:  # The runner's connection and the one to TFF's worker in the helper's namespace (and
        # any of an earlier test's runner the relay has not closed yet).
        self.assertGreaterEqual(len(relayed), 2)
        self.assertEqual({c.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for c in relayed},
                         {1})
      finally:
        for connection in relayed:
          connection.close()
    finally:
      hold.stdin.close()
      hold.wait(timeout=30)


class WorkerProcessTest(absltest.TestCase):

  def test_zz_sigterm_and_sigkill_end_the_worker_its_helper_and_tffs_worker(self):
    port = 8103
    marked_before = chaos.processes_with(_MARKER.encode())
    worker = _start_worker(port)
    ours = chaos.processes_with(_MARKER.encode()) - marked_before
    self.assertLen(ours, 3)  # tff-resume worker, its helper and worker_binary.
    _stop_worker(port)
    self.assertEqual(worker.returncode, 0)
    self.assertEqual(worker.stdout.read(), "tff-resume worker: stopped by SIGTERM; relayed 0 "
                     "bytes to TFF's worker and 0 back.\n")
    self.assertEqual(chaos.processes_with(_MARKER.encode()) & ours, set())
    _start_worker(port)
    ours = chaos.processes_with(_MARKER.encode()) - marked_before
    _stop_worker(port, kill=True)
    deadline = time.monotonic() + 10
    while chaos.processes_with(_MARKER.encode()) & ours:
      self.assertLess(time.monotonic(), deadline, "a process outlived its tff-resume worker")
      time.sleep(0.1)


if __name__ == "__main__":
  absltest.main()
