"""`tff-resume worker --tls_dir DIR`: TFF's worker reachable only through mutual TLS.

TFF's `worker_binary` serves gRPC without TLS or authentication on every interface. Here it runs in
a network namespace of its own (a helper process that entered a new user and network namespace, as
`network_isolation` does for the local worker), where nothing outside can reach it. This process
listens on `--port` in the machine's namespace and, for each connection, completes a TLS handshake
(TLS 1.2 or 1.3, ECDHE with AES-GCM or ChaCha20, ALPN `h2` as gRPC needs) that requires a client
certificate signed by the study's CA; only then does it ask the helper for a connection to the
worker (the helper connects inside its namespace and hands the socket over an inherited Unix socket
pair, `SCM_RIGHTS`) and relays bytes both ways. A refused handshake is one line on stderr naming the
peer and the reason, and nothing reaches the worker.

The helper dies with this process (`PR_SET_PDEATHSIG`), and the worker with the helper, so a SIGKILL
leaves nothing running. Where the kernel refuses the namespace (a container's seccomp profile),
`TFF_RESUME_NETWORK_ISOLATION` decides as for the local worker: `auto` warns that the worker's own
port is reachable and goes on (keep every other port firewalled), `require` stops.
"""

import asyncio
import ctypes
import os
import signal
import socket
import ssl
import subprocess
import sys
import time

import portpicker

from tff_resume.runtime import certificates
from tff_resume.runtime import local_worker
from tff_resume.runtime import network_isolation

EXIT_CODE_WORKER_FAILED = 1
_INNER_PORT = 8000  # In the helper's own namespace: no other process can hold it.
_HANDSHAKE_TIMEOUT_SECONDS = 10.0
_POLL_SECONDS = 0.2
_READY, _FAILED, _SOCKET = b"R", b"E", b"S"
_CIPHERS_TLS_1_2 = "ECDHE+AESGCM:ECDHE+CHACHA20"


def server_context(tls_dir: str, host: str) -> ssl.SSLContext:
  """The worker's TLS context: its certificate for `host`, client certificates required.

  Raises:
    certificates.CertificateError: a file missing, open to others, expired or not the CA's.
  """
  certificate_path, key_path = certificates.check_pair(tls_dir, certificates.worker_name(host))
  context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  context.minimum_version = ssl.TLSVersion.TLSv1_2
  context.set_ciphers(_CIPHERS_TLS_1_2)
  context.load_cert_chain(certificate_path, key_path)
  context.load_verify_locations(certificates.ca_path(tls_dir))
  context.verify_mode = ssl.CERT_REQUIRED
  context.set_alpn_protocols(["h2"])
  return context


class _Helper:
  """The helper process: TFF's worker in a private network namespace, handing out connections."""

  def __init__(self, max_concurrent_computation_calls: int | None, show_output: bool):
    self.channel, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [package_root, *filter(None, [environment.get("PYTHONPATH")])])
    limit = "" if max_concurrent_computation_calls is None else str(max_concurrent_computation_calls)
    self.process = subprocess.Popen(
        [sys.executable, "-m", "tff_resume.runtime.tls_worker", str(child_end.fileno()), limit,
         "1" if show_output else ""],
        pass_fds=[child_end.fileno()], stdin=subprocess.DEVNULL, env=environment,
        preexec_fn=local_worker._die_with_parent)  # pylint: disable=protected-access
    child_end.close()

  def wait_until_ready(self, stopped) -> str | None:
    """None when the worker serves; else why not (or "" when `stopped()` became true first)."""
    self.channel.settimeout(0.2)
    deadline = time.monotonic() + local_worker.WORKER_START_TIMEOUT_SECONDS
    try:
      while time.monotonic() < deadline and not stopped():
        try:
          message = self.channel.recv(4096)
        except socket.timeout:
          continue
        if message[:1] == _READY:
          return None
        return message[1:].decode(errors="replace") or f"exit status {self.process.wait()}"
      return "" if stopped() else "it did not serve within " \
          f"{local_worker.WORKER_START_TIMEOUT_SECONDS:g} s"
    finally:
      self.channel.settimeout(None)

  def connection(self) -> socket.socket:
    """A new socket connected to the worker (blocking: call it off the event loop, one at a time)."""
    self.channel.sendall(_SOCKET)
    _, descriptors, _, _ = socket.recv_fds(self.channel, 1, 1)
    if not descriptors:
      raise ConnectionError("TFF's worker is gone")
    return socket.socket(fileno=descriptors[0])

  def stop(self) -> None:
    self.channel.close()  # The helper stops its worker and exits when it reads the end.
    try:
      self.process.wait(local_worker._WORKER_STOP_TIMEOUT_SECONDS)  # pylint: disable=protected-access
    except subprocess.TimeoutExpired:
      self.process.kill()
      self.process.wait()


class _Relay(asyncio.Protocol):
  """One end of a relayed connection: writes what its transport reads to its peer's transport.

  Two of them, joined, make a relay: no coroutine or copy per chunk beyond asyncio's own, and the
  peer's write buffer filling pauses this end's reading (asyncio's flow control), so neither side
  buffers without bound. Whatever arrives before the peer is joined waits, with reading paused.
  """

  def __init__(self, relayed: list, direction: int, live: set):
    self.transport = None
    self.peer = None
    self._relayed, self._direction, self._live = relayed, direction, live
    self._waiting = []  # Data read before the peer was joined.

  def connection_made(self, transport) -> None:
    self.transport = transport
    self._live.add(transport)

  def join(self, peer: "_Relay") -> None:
    self.peer, peer.peer = peer, self
    if self.transport.is_closing() or peer.transport.is_closing():  # One end left meanwhile.
      self.transport.close()
      peer.transport.close()
      return
    for end in (self, peer):
      for data in end._waiting:  # pylint: disable=protected-access
        end.peer.transport.write(data)
      end._waiting.clear()  # pylint: disable=protected-access
      end.transport.resume_reading()

  def data_received(self, data: bytes) -> None:
    self._relayed[self._direction] += len(data)
    if self.peer is None:
      self._waiting.append(data)
      self.transport.pause_reading()
    else:
      self.peer.transport.write(data)

  def eof_received(self) -> bool:
    return False  # The transport closes, and connection_lost closes the peer.

  def connection_lost(self, exc) -> None:
    self._live.discard(self.transport)
    if self.peer is not None:
      self.peer.transport.close()  # After writing what it holds.

  def pause_writing(self) -> None:
    if self.peer is not None:
      self.peer.transport.pause_reading()

  def resume_writing(self) -> None:
    if self.peer is not None:
      self.peer.transport.resume_reading()


def _without_delay(connection: socket.socket) -> socket.socket:
  """`connection` with Nagle's algorithm off. asyncio turns it off only for sockets made with
  `IPPROTO_TCP`, which an accepted one is not (its proto is 0): the relay's small writes (a gRPC
  response after a large upload) then waited for the runner's delayed ACK, about 33 ms a call."""
  connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
  return connection


def _listener(port: int) -> socket.socket:
  """A listening socket on `port` of every interface, IPv6 and IPv4 where the machine has both."""
  try:
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    address = ("::", port)
  except OSError:
    listener, address = socket.socket(socket.AF_INET, socket.SOCK_STREAM), ("0.0.0.0", port)
  listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  listener.bind(address)
  listener.listen(128)
  listener.setblocking(False)
  return listener


async def _serve(listener: socket.socket, context: ssl.SSLContext, helper: _Helper, announce,
                 stop: list, relayed: list) -> int:
  loop = asyncio.get_running_loop()
  stopped = asyncio.Event()
  for number in (signal.SIGTERM, signal.SIGINT):
    loop.add_signal_handler(number, lambda number=number: (stop.append(number), stopped.set()))
  handout = asyncio.Lock()
  live = set()  # The transports of relayed connections still open.

  async def relay(connection: socket.socket, peer) -> None:
    peer = f"{peer[0].removeprefix('::ffff:')}:{peer[1]}"  # IPv4 peers of the dual-stack socket.
    outer = _Relay(relayed, 0, live)
    try:  # The handshake starts with the connection's first byte (no plaintext is ever read).
      await loop.connect_accepted_socket(lambda: outer, _without_delay(connection), ssl=context,
                                         ssl_handshake_timeout=_HANDSHAKE_TIMEOUT_SECONDS)
    except ConnectionError:  # Closed before a handshake: a TCP probe (a readiness check).
      connection.close()
      return
    except (ssl.SSLError, OSError, asyncio.TimeoutError) as error:
      reason = getattr(error, "reason", None) or type(error).__name__
      print(f"tff-resume worker: refused {peer}: TLS handshake failed ({reason}).",
            file=sys.stderr, flush=True)
      connection.close()
      return
    try:
      async with handout:
        inner = await loop.run_in_executor(None, helper.connection)
    except OSError:
      outer.transport.close()
      stopped.set()
      return
    worker_end = _Relay(relayed, 1, live)
    await loop.create_connection(lambda: worker_end, sock=_without_delay(inner))
    outer.join(worker_end)

  async def accept() -> None:
    relays = set()
    while True:
      connection, peer = await loop.sock_accept(listener)
      task = asyncio.ensure_future(relay(connection, peer))
      relays.add(task)
      task.add_done_callback(relays.discard)

  async def helper_exit() -> None:  # Polled: a thread blocked in wait() would hold up the exit.
    while helper.process.poll() is None:
      await asyncio.sleep(_POLL_SECONDS)

  announce()
  waits = [asyncio.ensure_future(wait) for wait in (stopped.wait(), accept(), helper_exit())]
  await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
  for wait in waits:
    wait.cancel()
  listener.close()
  for transport in list(live):
    transport.abort()
  return 0 if stop else EXIT_CODE_WORKER_FAILED


def serve(port: int, tls_dir: str, host: str | None = None,
          max_concurrent_computation_calls: int | None = None, show_output: bool = False) -> int:
  """Serves TFF computations to TLS clients of the study's CA until SIGTERM/SIGINT (returns 0) or
  until the worker dies (returns 1).

  Args:
    port: the TCP port to serve on, 1 to 65535.
    tls_dir: the folder `tff-resume certs` wrote, holding `worker-HOST.pem` for `host`.
    host: the name runs reach this machine by (its certificate's name); default the hostname.
    max_concurrent_computation_calls: the worker's limit on parallel client computations; None
      this machine's CPU cores, -1 none.
    show_output: let the worker write to this process's stdout/stderr.

  Raises:
    ValueError: the port is out of range or taken.
    certificates.CertificateError: the TLS folder cannot be used.
  """
  from tff_resume.runtime import worker_server  # pylint: disable=g-import-not-at-top
  host = host or socket.gethostname()
  context = server_context(tls_dir, host)
  worker_server.check_port(port)
  stop = []
  previous = {number: signal.signal(number, lambda number, frame: stop.append(number))
              for number in (signal.SIGTERM, signal.SIGINT)}
  helper = _Helper(max_concurrent_computation_calls, show_output)
  try:
    problem = helper.wait_until_ready(lambda: bool(stop))
    if problem:
      print(f"tff-resume worker: error: TFF's worker could not start in a private network "
            f"namespace ({problem}).", file=sys.stderr)
      return EXIT_CODE_WORKER_FAILED

    def announce() -> None:
      print(f"tff-resume worker: serving TFF computations on {host}:{port} over mutual TLS "
            f"(pid {helper.process.pid}); runs use it with --config.runtime.workers={host}:{port} "
            f"--config.runtime.tls_dir=DIR (the CA and runner pair of {tls_dir}). SIGTERM or "
            "Ctrl-C stops it.", flush=True)

    relayed = [0, 0]  # Bytes from runs to TFF's worker, and back.
    status = 0 if stop else asyncio.run(
        _serve(_listener(port), context, helper, announce, stop, relayed))
    if stop:
      print(f"tff-resume worker: stopped by {signal.Signals(stop[0]).name}; relayed "
            f"{relayed[0]} bytes to TFF's worker and {relayed[1]} back.", flush=True)
    else:
      print(f"tff-resume worker: error: TFF's worker on port {port} exited.", file=sys.stderr)
    return status
  finally:
    helper.stop()
    for number, handler in previous.items():
      signal.signal(number, handler)


def _inside(channel_fd: int, limit: str, show_output: bool) -> int:
  """The helper: enters a private network namespace, starts the worker, hands out connections."""
  libc = ctypes.CDLL(None, use_errno=True)
  libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG, as for the worker itself.
  channel = socket.socket(fileno=channel_fd)
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # The parent stops us by closing the channel.
  try:
    try:
      network_isolation._enter_namespaces()  # pylint: disable=protected-access
      port = _INNER_PORT
    except OSError as error:  # TFF_RESUME_NETWORK_ISOLATION=require raises; auto warns.
      network_isolation.warn_unisolated(
          f"{error.strerror or error}", advice="Allow unprivileged user namespaces, or keep "
          "every port of this machine but --port firewalled (deploy/kubernetes/networkpolicy.yaml)")
      port = portpicker.pick_unused_port()
    worker = local_worker.LocalWorker(int(limit) if limit else None, show_output, port=port)
  except (OSError, local_worker.WorkerStartError) as error:
    channel.sendall(_FAILED + str(error).encode())
    return 1
  try:
    try:
      worker.wait_until_listening()
    except local_worker.WorkerStartError as error:
      channel.sendall(_FAILED + str(error).encode())
      return 1
    channel.sendall(_READY)
    while channel.recv(1) == _SOCKET and worker.process.poll() is None:
      with socket.create_connection(("localhost", port)) as connection:
        socket.send_fds(channel, [_SOCKET], [connection.fileno()])
    return 0
  finally:
    worker.stop()


if __name__ == "__main__":
  sys.exit(_inside(int(sys.argv[1]), sys.argv[2], bool(sys.argv[3])))
