"""The TFF execution context, and the guarantee that its worker process ends with the program.

TFF's default local context starts TFF's C++ `worker_binary` lazily and never stops it: the worker
outlives Python, keeps the script's stdout/stderr open (so `python script.py | cat` hangs) and keeps its
port. `start_local_execution_context` starts the same worker itself instead, with three guarantees:

* the kernel kills the worker when the thread that started it dies, however it dies (normal exit,
  uncaught exception, SIGINT, SIGTERM, even SIGKILL), through Linux's `PR_SET_PDEATHSIG`;
* `atexit` stops it gracefully on a normal interpreter exit;
* it never inherits the program's stdout/stderr unless asked to, so pipes close when Python exits.

This module imports neither TensorFlow nor TFF at import time, so `quiet_tensorflow_logging` can run
before TensorFlow prints its start-up noise.
"""

import atexit
import ctypes
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from absl import logging as absl_logging
import portpicker

_PR_SET_PDEATHSIG = 1
WORKER_START_TIMEOUT_SECONDS = 60.0
_WORKER_READY_POLL_SECONDS = 0.02
_WORKER_STOP_TIMEOUT_SECONDS = 5.0
# Starts of a worker that exits before it listens: one of the suite run of 2026-12-07 died of
# SIGSEGV (exit -11) before listening, once, at the start of a run.
_STARTS = 3
_GRPC_MAX_MESSAGE_BYTES = 2 * 1000 * 1000 * 1000
GRPC_CHANNEL_OPTIONS = [
    ("grpc.max_message_length", _GRPC_MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", _GRPC_MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", _GRPC_MAX_MESSAGE_BYTES),
]


_LEVEL_NAMES = {logging.INFO: "info", logging.WARNING: "warning"}


class WorkerStartError(RuntimeError):
  """The TFF worker process could not be started or did not become ready."""


def _drop_bitpacking_memory_warning(record: logging.LogRecord) -> bool:
  """tensorflow-model-optimization warns once per bit-packed tensor, through the root logger."""
  return not record.getMessage().startswith("This code path can temporarily allocate extra memory")


def quiet_tensorflow_logging(verbose: bool = False) -> None:
  """Hides TensorFlow's start-up messages (CUDA, TensorRT, oneDNN) and TFF's info logs unless `verbose`.

  TensorFlow reads `TF_CPP_MIN_LOG_LEVEL` once, at import: call this before importing it, and again
  after absl parsed its flags, which resets absl's verbosity. The variable is always set, since
  TensorFlow's own import sets it to 1 for every child process.

  Args:
    verbose: show every TensorFlow message and info log.
  """
  os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if verbose else "3"
  if not verbose:
    logging.getLogger().addFilter(_drop_bitpacking_memory_warning)
  level = logging.INFO if verbose else logging.WARNING
  logging.getLogger("tensorflow").setLevel(level)
  absl_logging.set_verbosity(_LEVEL_NAMES[level])


_LIBC = ctypes.CDLL(None, use_errno=True)  # Loaded here: a forked child must not call dlopen.


def signal_when_parent_dies(signal_number: int) -> None:
  """For a forked child before exec (`preexec_fn`): the kernel sends it `signal_number` when its
  parent dies, however it dies (PR_SET_PDEATHSIG), through libc loaded at import: the child of a
  process with threads must not load a library."""
  _LIBC.prctl(_PR_SET_PDEATHSIG, signal_number)


def _die_with_parent() -> None:
  """Runs in the forked child before exec: SIGKILL it when the parent dies, and give it its own
  process group, so a Ctrl-C at the terminal reaches the program (which stops at a safe point)
  and not the worker in the middle of a round."""
  signal_when_parent_dies(signal.SIGKILL)
  os.setpgid(0, 0)


def worker_binary_path() -> str:
  """Returns the path of the C++ worker shipped inside the tensorflow_federated package (found
  without importing it, which would import TensorFlow)."""
  spec = importlib.util.find_spec("tensorflow_federated")
  if spec is None or not spec.submodule_search_locations:
    raise WorkerStartError("tensorflow-federated is not installed; run make install.")
  return os.path.join(spec.submodule_search_locations[0], "data", "worker_binary")


def default_concurrency() -> int:
  """The default limit on client computations a worker runs at once: the CPU cores this process may
  use. TFF's own default (no limit) starts every client of a round at once; they then contend for
  the cores, which took 1.4x (float32) and 1.2x (bfloat16) as long here (docs/benchmarks.md)."""
  return len(os.sched_getaffinity(0))


class LocalWorker:
  """One TFF `worker_binary` process owned by this program.

  Attributes:
    process: the running `subprocess.Popen`.
    port: the localhost port it serves on.
  """

  def __init__(self, max_concurrent_computation_calls: int | None = None, show_output: bool = False,
               port: int | None = None):
    """`max_concurrent_computation_calls`: at most this many client computations at once; None the
    CPU cores (`default_concurrency`), non-positive no limit."""
    if max_concurrent_computation_calls is None:
      max_concurrent_computation_calls = default_concurrency()
    binary = worker_binary_path()
    if not os.path.isfile(binary):
      raise WorkerStartError(
          f"TFF's worker binary is missing at {binary}; reinstall tensorflow-federated "
          "(make install).")
    self.port = port or portpicker.pick_unused_port()
    self.context = None  # The TFF execution context using this worker, once installed.
    self._command = [binary, f"--port={self.port}",
                     f"--max_concurrent_computation_calls={max_concurrent_computation_calls}"]
    self._output = None if show_output else subprocess.DEVNULL
    self._start()
    atexit.register(self.stop)

  def _start(self) -> None:
    self.process = subprocess.Popen(self._command, stdin=subprocess.DEVNULL, stdout=self._output,
                                    stderr=self._output, preexec_fn=_die_with_parent)

  @property
  def pid(self) -> int:
    return self.process.pid

  def stop(self) -> None:
    """Stops the worker (SIGTERM, then SIGKILL after a few seconds) and reaps it. Idempotent."""
    if self.process.poll() is not None:
      return
    self.process.terminate()
    try:
      self.process.wait(timeout=_WORKER_STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
      self.process.kill()
      self.process.wait()
    atexit.unregister(self.stop)

  def wait_until_listening(self) -> None:
    """Waits until the worker accepts connections on its port, starting it again (on the same port,
    at most `_STARTS` starts in all, each said on stderr) when it exits first; raises
    WorkerStartError if the last start exits or any times out. Make the gRPC channel after it: a
    channel whose first connection is refused tries again only after gRPC's reconnect backoff
    (1 s), while the worker listens within 0.05 s here."""
    for start in range(1, _STARTS + 1):
      deadline = time.monotonic() + WORKER_START_TIMEOUT_SECONDS
      while self.process.poll() is None and time.monotonic() < deadline:
        try:
          socket.create_connection(("localhost", self.port),
                                   timeout=_WORKER_READY_POLL_SECONDS * 10).close()
          return
        except OSError:
          time.sleep(_WORKER_READY_POLL_SECONDS / 4)
      if self.process.poll() is None or start == _STARTS:
        break
      print(f"tff_resume: TFF's worker binary exited with code {self.process.returncode} before "
            f"serving on port {self.port}; starting it again ({start + 1} of {_STARTS}).",
            file=sys.stderr, flush=True)
      self._start()
    self._did_not_start()

  def wait_until_ready(self, stub: Any) -> None:
    """Waits until the worker serves on its port; raises WorkerStartError if it exits or times
    out."""
    if not wait_for_stub(stub, WORKER_START_TIMEOUT_SECONDS, self.process):
      self._did_not_start()

  def _did_not_start(self) -> None:
    if self.process.poll() is not None:
      raise WorkerStartError(
          f"TFF's worker binary exited with code {self.process.returncode} before serving on "
          f"port {self.port}; rerun with --verbose to see its output.")
    self.stop()
    raise WorkerStartError(
        f"TFF's worker binary did not serve on port {self.port} within "
        f"{WORKER_START_TIMEOUT_SECONDS:.0f} s.")


def wait_for_stub(stub: Any, timeout_seconds: float,
                  process: subprocess.Popen | None = None) -> bool:
  """Waits until the gRPC channel of a `RemoteExecutorGrpcStub` is ready; False after
  `timeout_seconds`, or as soon as `process` (the worker, when it is ours) has exited."""
  deadline = time.monotonic() + timeout_seconds
  while not stub.is_ready:
    if (process is not None and process.poll() is not None) or time.monotonic() > deadline:
      return False
    time.sleep(_WORKER_READY_POLL_SECONDS)
  return True


class ExecutionContextNotStartedError(RuntimeError):
  """A TFF computation ran before `start_local_execution_context`."""


def _refuse_to_execute(cardinalities):
  del cardinalities
  raise ExecutionContextNotStartedError(
      "No TFF execution context: call tff_resume.runtime.local_worker.start_local_execution_context() first.")


def install_guard_context() -> None:
  """Replaces the context that importing TFF installs with one that refuses to run computations.

  TFF's import-time context would start an unowned worker on first use, and its worker manager raises
  an error during interpreter shutdown. Programs that import TFF without computing call this.
  """
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

  tff.framework.set_default_context(tff.framework.SyncExecutionContext(
      executor_fn=tff.framework.ResourceManagingExecutorFactory(
          executor_stack_fn=_refuse_to_execute),
      compiler_fn=tff.backends.native.desugar_and_transform_to_native))


def executor_factory(stub: Any, default_num_clients: int = 0):
  """TFF's executor factory over one worker's `RemoteExecutorGrpcStub`; a computation whose
  arguments do not imply the number of clients (initialization, a merge) gets
  `default_num_clients`."""
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

  def executor_stack(cardinalities):
    cardinalities.setdefault(tff.CLIENTS, default_num_clients)
    executor = tff.framework.RemoteExecutor(stub)
    executor.set_cardinalities(cardinalities)
    return executor

  return tff.framework.ResourceManagingExecutorFactory(executor_stack_fn=executor_stack)


def _started_worker(max_concurrent_computation_calls: int | None,
                    show_worker_output: bool) -> tuple["LocalWorker", Any]:
  """A serving local worker and a `RemoteExecutorGrpcStub` to it."""
  import grpc  # pylint: disable=g-import-not-at-top
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

  worker = LocalWorker(max_concurrent_computation_calls, show_worker_output)
  worker.wait_until_listening()
  channel = grpc.insecure_channel(f"localhost:{worker.port}", GRPC_CHANNEL_OPTIONS)
  stub = tff.framework.RemoteExecutorGrpcStub(channel)
  worker.wait_until_ready(stub)
  return worker, stub


def start_local_execution_context(
    max_concurrent_computation_calls: int | None = None,
    default_num_clients: int = 0,
    show_worker_output: bool = False,
) -> LocalWorker:
  """Starts a TFF C++ worker and installs it as TFF's default synchronous execution context.

  The context runs computations exactly as TFF's own
  `tff.backends.native.set_sync_local_cpp_execution_context` does; only the worker's lifetime differs
  (see the module docstring). Call it from the main thread: the worker dies with the starting thread.

  Args:
    max_concurrent_computation_calls: the worker's limit on parallel client computations; None
      the CPU cores (`default_concurrency`), non-positive no limit.
    default_num_clients: the number of clients when a computation does not imply it.
    show_worker_output: let the worker write to this program's stdout/stderr.

  Returns:
    The worker; `stop()` ends it early, otherwise it ends with the program.

  Raises:
    WorkerStartError: the worker is missing, exited, or did not start serving.
  """
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

  worker, stub = _started_worker(max_concurrent_computation_calls, show_worker_output)
  context = tff.framework.SyncExecutionContext(
      executor_fn=executor_factory(stub, default_num_clients),
      compiler_fn=tff.backends.native.desugar_and_transform_to_native,
      transform_args=tff.tensorflow.transform_args,
      transform_result=tff.tensorflow.transform_result,
  )
  tff.framework.set_default_context(context)
  worker.context = context  # To switch back to this worker later (the benchmark alternates them).
  return worker


def start_local_program_context(max_concurrent_computation_calls: int | None = None,
                                show_worker_output: bool = False) -> "LocalWorker":
  """As `start_local_execution_context`, but installs a `tff.program.NativeFederatedContext` (over
  an async context on the same kind of worker): the context TFF's program API
  (`tff.learning.programs.train_model`) requires.

  Raises:
    WorkerStartError: the worker is missing, exited, or did not start serving.
  """
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

  worker, stub = _started_worker(max_concurrent_computation_calls, show_worker_output)
  context = tff.program.NativeFederatedContext(tff.framework.AsyncExecutionContext(
      executor_fn=executor_factory(stub),
      compiler_fn=tff.backends.native.desugar_and_transform_to_native,
      transform_args=tff.tensorflow.transform_args,
      transform_result=tff.tensorflow.transform_result))
  tff.framework.set_default_context(context)
  worker.context = context
  return worker
