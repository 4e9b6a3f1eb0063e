"""Where a run's TFF computations execute: the local worker, or `tff-resume worker`s on other machines,
with a round's clients split into subrounds.

TFF's `MergeableCompExecutionContext` splits a computation with one logical aggregation into
`up_to_merge` (clients to a partial aggregate), `merge` and `after_merge`, and runs the subrounds on
several async contexts. It merges partial aggregates in the order the subrounds *finish*, so a float
sum would depend on which worker is faster. `SubroundContext` runs the same compiled forms but merges
in subround order, `((p0 + p1) + p2) + ...`: the weights depend only on the number of subrounds, never
on how many workers there are or which finishes first. The clients of a round are split, in sampled
order, into `num_subrounds` consecutive groups (TFF's partitioning: the first groups take the extra
client); each free worker takes the next group. Computations without clients-placed arguments
(initialization) and every computation when `num_subrounds` is 0 run whole on the first worker.

A worker that fails while computing (killed, unreachable) raises `WorkerLostError` naming it; the
round is then not saved. With `tls_dir` the runner connects over mutual TLS (`tff-resume worker
--tls_dir`, `tls_worker`); TFF's worker itself has no authentication, TLS or bind address, so an
`--insecure` worker must stay on a private network (deploy/kubernetes/networkpolicy.yaml).
"""

import asyncio
import socket
import ssl
import threading
from typing import Any, Sequence
import weakref

import grpc
import tensorflow_federated as tff
from tensorflow_federated.python.common_libs import async_utils
from tensorflow_federated.python.core.backends.native import mergeable_comp_compiler
from tensorflow_federated.python.core.impl.execution_contexts import (
    mergeable_comp_execution_context as mergeable)
from tensorflow_federated.python.core.impl.executors import cardinalities_utils
from tensorflow_federated.python.core.impl.types import type_analysis
from tensorflow_federated.python.core.impl.types import type_conversions

from tff_resume.runtime import certificates
from tff_resume.runtime import local_worker

CONNECT_TIMEOUT_SECONDS = 15.0  # runtime.connect_timeout_seconds's default.
_REFUSAL_SECONDS = 2.0  # How long a TLS probe waits for a worker's verdict on our certificate.


class WorkerError(RuntimeError):
  """A TFF worker could not be reached or failed; `address` is its `host:port`."""

  def __init__(self, address: str, message: str):
    super().__init__(message)
    self.address = address


class WorkerUnreachableError(WorkerError):
  """A worker named in `runtime.workers` did not answer at start."""


class WorkerLostError(WorkerError):
  """A worker failed or became unreachable during a computation."""


class NotSplittableError(ValueError):
  """TFF cannot split this computation into subrounds (it has dependent aggregations)."""


def parse_workers(text: str) -> list[str]:
  """Returns the `host:port` addresses of `runtime.workers` ("" is no remote worker).

  Raises:
    ValueError: an entry is not `host:port` with a port from 1 to 65535, or repeats.
  """
  addresses = [part.strip() for part in text.split(",") if part.strip()]
  for address in addresses:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
      raise ValueError(f"runtime.workers: {address!r} is not host:port (e.g. "
                       "worker-0.tff-workers:8000,worker-1.tff-workers:8000).")
  repeated = sorted({address for address in addresses if addresses.count(address) > 1})
  if repeated:
    raise ValueError(f"runtime.workers names {', '.join(repeated)} more than once.")
  return addresses


class _UnavailableError(grpc.RpcError):
  """A worker call failed; unlike TFF's `RetryableGRPCError`, TFF's contexts do not retry it."""

  def __init__(self, detail: str):
    super().__init__(detail)
    self.detail = detail

  def details(self) -> str:
    return self.detail


class _FailFastStub:
  """A `RemoteExecutorGrpcStub` whose failures end the computation. TFF's async context retries
  calls that fail with UNAVAILABLE forever, so a killed worker would hang the round; a run must
  instead stop with the worker named (and be resumed once it is back)."""

  def __init__(self, stub):
    self._stub = stub

  def __getattr__(self, name: str):
    attribute = getattr(self._stub, name)
    if not callable(attribute):
      return attribute

    def call(*args, **kwargs):
      try:
        return attribute(*args, **kwargs)
      except grpc.RpcError as error:
        detail = error.details() if hasattr(error, "details") else str(error)
        raise _UnavailableError(str(detail or type(error).__name__)) from None

    return call


def _stub(address: str, credentials: grpc.ChannelCredentials | None = None) -> _FailFastStub:
  if credentials is None:
    channel = grpc.insecure_channel(address, local_worker.GRPC_CHANNEL_OPTIONS)
  else:
    channel = grpc.secure_channel(address, credentials, local_worker.GRPC_CHANNEL_OPTIONS)
  return _FailFastStub(tff.framework.RemoteExecutorGrpcStub(channel))


def _channel_credentials(tls_dir: str) -> grpc.ChannelCredentials:
  """The runner's side of mutual TLS: its certificate, and the study's CA for the workers'."""
  try:
    certificate_path, key_path = certificates.check_pair(tls_dir, certificates.RUNNER)
  except certificates.CertificateError as error:
    raise certificates.CertificateError(f"runtime.tls_dir: {error} Nothing was written.") from None
  return grpc.ssl_channel_credentials(
      root_certificates=certificates.read(certificates.ca_path(tls_dir)),
      private_key=certificates.read(key_path), certificate_chain=certificates.read(certificate_path))


def _probe_context(tls_dir: str) -> ssl.SSLContext:
  """The runner's pair and the study's CA as Python's TLS client (checked by the caller)."""
  context = ssl.create_default_context(cafile=certificates.ca_path(tls_dir))
  context.load_cert_chain(*certificates.check_pair(tls_dir, certificates.RUNNER))
  context.set_alpn_protocols(["h2"])
  return context


def _tls_refusal(address: str, context: ssl.SSLContext, timeout_seconds: float) -> str | None:
  """Why mutual TLS with the worker at `address` fails (its certificate, or it refusing ours), or
  None when the worker accepts us or does not answer at all (the caller then waits for it)."""
  host, _, port = address.rpartition(":")
  host = host.strip("[]")
  try:
    with socket.create_connection((host, int(port)), timeout=timeout_seconds) as connection:
      try:
        tls = context.wrap_socket(connection, server_hostname=host)
      except ssl.SSLCertVerificationError as error:
        return f"its certificate: {error.verify_message}"
      with tls:
        tls.settimeout(_REFUSAL_SECONDS)  # TLS 1.3: the worker judges our certificate after.
        try:
          if not tls.recv(1):  # A worker that accepts sends its HTTP/2 settings at once.
            return "it refused our certificate"
        except (socket.timeout, TimeoutError):
          pass
        except ssl.SSLError as error:
          return f"it refused our certificate: {error.reason or error}"
  except ssl.SSLError as error:
    return str(error.reason or error)
  except OSError:
    return None
  return None


def _async_context(stub) -> tff.framework.AsyncExecutionContext:
  return tff.framework.AsyncExecutionContext(
      executor_fn=local_worker.executor_factory(stub),
      compiler_fn=tff.backends.native.desugar_and_transform_to_native,
      transform_args=tff.tensorflow.transform_args,
      transform_result=tff.tensorflow.transform_result)


def _has_clients(arg: Any, type_signature) -> bool:
  if arg is None:
    return False
  return bool(cardinalities_utils.infer_cardinalities(arg, type_signature).get(tff.CLIENTS))


def _is_server_only(type_signature) -> bool:
  return type_analysis.contains_only(
      type_signature,
      lambda t: not isinstance(t, tff.FederatedType) or t.all_equal)


def compile_for_subrounds(comp, what: str = "a computation") -> mergeable.MergeableCompForm:
  """Returns TFF's mergeable form of `comp`.

  Raises:
    NotSplittableError: TFF cannot split it (an aggregation depends on another), naming `what` and
      TFF's reason.
  """
  try:
    return mergeable_comp_compiler.compile_to_mergeable_comp_form(comp)
  except (ValueError, TypeError) as error:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise NotSplittableError(
        f"runtime.num_subrounds: TFF cannot split {what} into subrounds ({reason}); it needs one "
        "aggregation per round, or no aggregation depending on another. Use "
        "runtime.num_subrounds=0.") from None


def _loop_of_its_own(name: str) -> asyncio.AbstractEventLoop:
  """A new event loop running on a daemon thread of its own."""
  loop = asyncio.new_event_loop()
  threading.Thread(target=loop.run_forever, name=name, daemon=True).start()
  return loop


def _stop_loops(loops: Sequence[asyncio.AbstractEventLoop]) -> None:
  for loop in loops:
    loop.call_soon_threadsafe(loop.stop)


class SubroundContext(tff.framework.SyncContext):
  """Runs computations on TFF workers, splitting clients into subrounds merged in subround order."""

  def __init__(self, addresses: Sequence[str], num_subrounds: int, stubs: Sequence[Any]):
    """
    Args:
      addresses: each worker's `host:port`, for error messages.
      num_subrounds: groups a round's clients are split into; 0 runs computations whole.
      stubs: a `RemoteExecutorGrpcStub` per worker, ready.
    """
    self.addresses = list(addresses)
    self.num_subrounds = num_subrounds
    self._contexts = [_async_context(stub) for stub in stubs]
    # TFF's remote executor calls its worker synchronously from its coroutines, so contexts sharing
    # one event loop would compute one worker after the other; each worker's has a loop of its own.
    self._loops = [_loop_of_its_own(f"tff-resume worker {address}") for address in self.addresses]
    weakref.finalize(self, _stop_loops, list(self._loops))
    self._forms: dict[int, tuple[Any, mergeable.MergeableCompForm]] = {}
    self._runner = async_utils.AsyncThreadRunner()

  def form(self, comp, what: str = "a computation") -> mergeable.MergeableCompForm:
    """`comp`'s mergeable form, compiled once (`what` names it in `NotSplittableError`)."""
    key = id(comp)
    if key not in self._forms:
      self._forms[key] = (comp, compile_for_subrounds(comp, what))  # Keeps comp alive: ids stay unique.
    return self._forms[key][1]

  def invoke(self, comp, arg):
    """Runs `comp` on `arg` in subrounds across the workers and returns the merged result."""
    return self._runner.run_coro_and_return_result(self._invoke(comp, arg))

  async def _call(self, worker: int, comp, arg):
    try:
      return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
          self._contexts[worker].invoke(comp, arg), self._loops[worker]))
    except grpc.RpcError as error:
      detail = (error.details() if hasattr(error, "details") else str(error)) or type(error).__name__
      detail = str(detail).strip().splitlines()[0]
      raise WorkerLostError(self.addresses[worker], f"TFF worker {self.addresses[worker]} failed "
                            f"during a computation: {detail}.") from None

  async def _invoke(self, comp, arg):
    if self.num_subrounds == 0 or not _has_clients(arg, comp.type_signature.parameter):
      return await self._call(0, comp, arg)
    form = self.form(comp)
    parts = mergeable.MergeableCompExecutionContextValue(
        arg, form.up_to_merge.type_signature.parameter, self.num_subrounds).value()
    partials = await self._in_pool(form.up_to_merge, parts)
    merged = partials[0]
    for partial in partials[1:]:  # In subround order, whichever worker finished first.
      merged = await self._call(0, form.merge, tff.structure.Struct.unnamed(merged, partial))
    result_type = form.after_merge.type_signature.result
    if _is_server_only(result_type):
      result = await self._call(0, form.after_merge, tff.structure.Struct.unnamed(parts[0], merged))
    else:
      results = await self._in_pool(form.after_merge, [
          tff.structure.Struct.unnamed(part, merged) for part in parts])
      result = mergeable._repackage_partitioned_values(results, result_type)  # pylint: disable=protected-access
    return type_conversions.type_to_py_container(result, result_type)

  async def _in_pool(self, comp, args: Sequence[Any]) -> list[Any]:
    """Runs `comp` on each of `args`, each free worker taking the next; results in `args` order."""
    results: list[Any] = [None] * len(args)
    next_index = iter(range(len(args)))

    async def serve(worker: int) -> None:
      for index in next_index:
        results[index] = await self._call(worker, comp, args[index])

    tasks = [asyncio.ensure_future(serve(worker)) for worker in range(len(self._contexts))]
    try:
      await asyncio.gather(*tasks)
    finally:
      for task in tasks:
        task.cancel()
    return results


def connect(addresses: Sequence[str], timeout_seconds: float = CONNECT_TIMEOUT_SECONDS,
            tls_dir: str | None = None) -> list[Any]:
  """Returns a ready stub per worker; over mutual TLS with `tls_dir`'s runner pair when given.

  Raises:
    WorkerUnreachableError: a worker did not answer within `timeout_seconds` (the first found).
    certificates.CertificateError: `tls_dir` cannot be used, or mutual TLS with a worker failed.
  """
  credentials = _channel_credentials(tls_dir) if tls_dir else None
  probe = _probe_context(tls_dir) if tls_dir else None
  for address in addresses if tls_dir else ():  # Before gRPC tries: its own errors say less.
    refusal = _tls_refusal(address, probe, timeout_seconds)
    if refusal:
      raise certificates.CertificateError(
          f"TFF worker {address} (runtime.workers): mutual TLS failed ({refusal}). The worker "
          f"(--tls_dir) and runtime.tls_dir={tls_dir} must hold certificates of one `tff-resume "
          "certs` folder, the worker's made for the name runs use. Nothing was written.")
  stubs = [_stub(address, credentials) for address in addresses]
  for address, stub in zip(addresses, stubs):
    if not local_worker.wait_for_stub(stub, timeout_seconds):
      raise WorkerUnreachableError(
          address, f"TFF worker {address} (runtime.workers) did not answer within "
          f"{timeout_seconds:g} s (runtime.connect_timeout_seconds); start it (tff-resume worker "
          "--port PORT) or fix the address. Nothing was written.")
  return stubs


class RemoteWorkers:
  """The remote workers a run computes on; `stop()` leaves them running (they are not ours)."""

  def __init__(self, context: SubroundContext):
    self.context = context

  def stop(self) -> None:
    """Does nothing: remote workers are started and stopped by whoever runs them."""


def start_execution_context(addresses: Sequence[str] = (), num_subrounds: int = 0,
                            show_worker_output: bool = False,
                            timeout_seconds: float = CONNECT_TIMEOUT_SECONDS,
                            tls_dir: str | None = None):
  """Installs TFF's default context on the workers at `addresses`, or on a local worker of this
  program's own when there are none (`local_worker`'s guarantees), splitting rounds into
  `num_subrounds` (0: not split); waits up to `timeout_seconds` for each remote worker, connecting
  over mutual TLS with `tls_dir`'s certificates when given.

  Returns:
    An object with `context` and `stop()` (which ends the local worker, if one was started).

  Raises:
    WorkerUnreachableError: a remote worker did not answer.
    local_worker.WorkerStartError: the local worker did not start.
  """
  if not addresses and not num_subrounds:
    return local_worker.start_local_execution_context(show_worker_output=show_worker_output)
  if addresses:
    handle = RemoteWorkers(SubroundContext(addresses, num_subrounds,
                                           connect(addresses, timeout_seconds, tls_dir)))
  else:
    handle = local_worker.LocalWorker(show_output=show_worker_output)
    handle.wait_until_listening()
    stub = _stub(f"localhost:{handle.port}")
    handle.wait_until_ready(stub)
    handle.context = SubroundContext([f"localhost:{handle.port}"], num_subrounds, [stub])
  tff.framework.set_default_context(handle.context)
  return handle
