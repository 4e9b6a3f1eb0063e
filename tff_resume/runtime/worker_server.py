"""`tff-resume worker`: one TFF worker in the foreground, for a cluster node that runs' rounds use.

It starts TFF's C++ `worker_binary` on `--port`, waits until it serves, prints one line saying where,
and stays in the foreground until SIGTERM or SIGINT (Kubernetes and SLURM stop pods and steps with
SIGTERM), then stops the worker and exits 0. The worker dies with this process even on SIGKILL
(`local_worker`'s guarantees), so nothing is left running. It imports neither TensorFlow nor TFF.

TFF's worker has no bind address, TLS or authentication: it listens on every interface, and whoever
reaches the port can run any TensorFlow computation as this user. Keep it on a private network
(deploy/kubernetes/networkpolicy.yaml admits only the runner's pods).
"""

import signal
import socket
import sys
import time

from tff_resume.runtime import local_worker

EXIT_CODE_WORKER_FAILED = 1
_POLL_SECONDS = 0.2


def _port_is_free(port: int) -> bool:
  with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as probe:
    # As the worker binds: a port left in TIME_WAIT by a worker that just stopped is free.
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      probe.bind(("", port))
    except OSError:
      return False
  return True


def _accepts_connections(port: int) -> bool:
  try:
    socket.create_connection(("localhost", port), timeout=_POLL_SECONDS).close()
  except OSError:
    return False
  return True


def check_port(port: int) -> None:
  """Raises ValueError when `port` is out of range or taken on this machine."""
  if not 1 <= port <= 65535:
    raise ValueError(f"--port must be between 1 and 65535, got {port}.")
  if not _port_is_free(port):
    raise ValueError(f"port {port} is in use on this machine; choose another --port.")


def serve(port: int, host: str | None = None, max_concurrent_computation_calls: int | None = None,
          show_output: bool = False) -> int:
  """Serves until SIGTERM/SIGINT (returns 0) or until the worker dies (returns 1).

  Args:
    port: the TCP port to serve on, 1 to 65535.
    host: the name or address runs reach this machine by, for the log line; default the hostname.
    max_concurrent_computation_calls: the worker's limit on parallel client computations; None
      this machine's CPU cores, -1 none.
    show_output: let the worker write to this process's stdout/stderr.

  Raises:
    ValueError: the port is out of range or taken.
  """
  check_port(port)
  host = host or socket.gethostname()
  stop = []
  previous = {number: signal.signal(number, lambda number, frame: stop.append(number))
              for number in (signal.SIGTERM, signal.SIGINT)}
  worker = local_worker.LocalWorker(max_concurrent_computation_calls, show_output, port=port)
  try:
    deadline = time.monotonic() + local_worker.WORKER_START_TIMEOUT_SECONDS
    while not stop and worker.process.poll() is None and time.monotonic() < deadline:
      if _accepts_connections(port):
        break
      time.sleep(_POLL_SECONDS)
    if worker.process.poll() is not None or (not stop and time.monotonic() >= deadline):
      print(f"tff-resume worker: error: TFF's worker did not serve on port {port} (exit status "
            f"{worker.process.poll()}); rerun with --verbose to see its output.", file=sys.stderr)
      return EXIT_CODE_WORKER_FAILED
    if not stop:
      print(f"tff-resume worker: serving TFF computations on {host}:{port} (pid {worker.pid}); "
            f"runs use it with --config.runtime.workers={host}:{port}. It accepts computations from "
            "anyone who reaches this port (no authentication or TLS): keep the port on a private "
            "network. SIGTERM or Ctrl-C stops it.", flush=True)
    while not stop and worker.process.poll() is None:
      time.sleep(_POLL_SECONDS)
    if not stop:
      print(f"tff-resume worker: error: TFF's worker on port {port} exited with status "
            f"{worker.process.returncode}.", file=sys.stderr)
      return EXIT_CODE_WORKER_FAILED
    print(f"tff-resume worker: stopped by {signal.Signals(stop[0]).name}.", flush=True)
    return 0
  finally:
    worker.stop()
    for number, handler in previous.items():
      signal.signal(number, handler)
