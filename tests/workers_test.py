"""Rounds on several TFF workers: real `tff-resume worker` processes on loopback ports, runs through
`tff_resume.Run` and the real runner. Weights and metrics depend on `runtime.num_subrounds` only,
never on the number of workers; a killed worker stops the runner with status 75 and the same command
resumes bit-identically once it is back; a worker that is down at start changes nothing."""

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from absl.testing import absltest
import numpy as np
import portpicker
import tensorflow_federated as tff

from experiments import chaos
from tests import aggregator_configs
from tff_resume.runtime import workers
import tff_resume

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MARKER = f"TFF_RESUME_WORKERS_TEST={os.getpid()}-{time.time_ns()}"
_ENV = dict(os.environ, PYTHONPATH=_REPO_ROOT, TFF_RESUME_WORKERS_TEST=_MARKER.split("=")[1])
_OVERRIDES = {"model.name": "linear", "training.clients_per_round": 5, "training.total_rounds": 3}
_PR_SET_PDEATHSIG = 1
_WORKERS: dict[int, subprocess.Popen] = {}  # port -> `tff-resume worker` process
_ROOT = ""
_OUTCOMES: dict[str, dict] = {}  # Run name -> chaos.run_outcome of its folder.


def _end_with_this_test() -> None:
  """In the worker command's child before exec: SIGTERM it when the test process dies, however
  (a failed test stopped by `pytest -x` skips the module's cleanup)."""
  ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _start_worker(port: int) -> subprocess.Popen:
  worker = subprocess.Popen(
      [sys.executable, "-m", "tff_resume.cli", "worker", f"--port={port}", "--host=127.0.0.1",
       "--insecure"],
      cwd=_REPO_ROOT, env=_ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
      preexec_fn=_end_with_this_test)
  line = worker.stdout.readline()
  if not line.startswith(f"tff-resume worker: serving TFF computations on 127.0.0.1:{port} "):
    worker.kill()
    raise AssertionError(line + worker.communicate()[0])
  _WORKERS[port] = worker
  return worker


def _addresses(count: int) -> str:
  return ",".join(f"127.0.0.1:{port}" for port in list(_WORKERS)[:count])


def _marked_processes() -> set[int]:
  return chaos.processes_with(_MARKER.encode())


def setUpModule():
  global _ROOT
  _ROOT = tempfile.mkdtemp()
  unittest.addModuleCleanup(_stop_workers)  # Also when a start below fails.
  for _ in range(3):
    _start_worker(portpicker.pick_unused_port())


def _stop_workers():
  for worker in _WORKERS.values():
    worker.terminate()
    worker.wait(timeout=30)
  shutil.rmtree(_ROOT, ignore_errors=True)


def _train(name: str, **overrides) -> dict:
  """Trains `name` in this process once (tests share the runs); returns what must equal."""
  if name not in _OUTCOMES:
    config = tff_resume.load_config("configs/demo.py:smoke", {**_OVERRIDES, **overrides})
    tff_resume.Run(config, _ROOT, name).train()
    _OUTCOMES[name] = chaos.run_outcome(os.path.join(_ROOT, name))
  return _OUTCOMES[name]


def _on_workers(count: int, num_subrounds: int) -> dict:
  return _train(f"workers_{count}_{num_subrounds}", **{
      "runtime.num_subrounds": num_subrounds, "runtime.workers": _addresses(count)})


class _Timed:
  """A worker's stub that notes (worker, time) in `answered` each time a `compute` call returns."""

  def __init__(self, stub, worker: int, answered: list):
    self._stub, self._worker, self._answered = stub, worker, answered

  def __getattr__(self, name: str):
    attribute = getattr(self._stub, name)
    if name != "compute":
      return attribute

    def compute(*args, **kwargs):
      result = attribute(*args, **kwargs)
      self._answered.append((self._worker, time.monotonic()))
      return result

    return compute


def _runner(name: str, *overrides: str) -> list[str]:
  return [sys.executable, "-m", "experiments.run_emnist", "--config=configs/demo.py:smoke",
          "--config.model.name=linear", "--config.training.clients_per_round=5",
          f"--root_output_dir={_ROOT}", f"--experiment_name={name}", *overrides]


class SubroundsTest(absltest.TestCase):

  def test_results_depend_on_subrounds_not_on_workers(self):
    for num_subrounds in (2, 3):
      local = _train(f"local_{num_subrounds}", **{"runtime.num_subrounds": num_subrounds})
      for count in (1, 2, 3):
        self.assertEqual(_on_workers(count, num_subrounds), local,
                         f"{count} workers, {num_subrounds} subrounds")
      self.assertLen(local["sampled_clients"], 3)
      self.assertEqual([len(clients) for clients in local["sampled_clients"]], [5, 5, 5])
      self.assertIn("evaluation/sparse_categorical_accuracy", local["metrics_csv"][-1])
    not_split = _train("local_0")
    # Subrounds change the float sums, so the weights: the split really happens.
    self.assertNotEqual(not_split["model_weights_sha256"], local["model_weights_sha256"])
    self.assertEqual(not_split["sampled_clients"], local["sampled_clients"])

  def test_partial_sums_are_merged_in_subround_order_while_workers_compute_at_once(self):
    # Three clients in three subrounds on three workers, one each. In float32 (spacing 8 at 1e8),
    # ((1e8 + 3) + 3) loses both 3s, while merging the first subround last (reversed, or in the
    # order the subrounds finish) adds 3 + 3 first: 1e8 + 8; and the other way round for the second
    # sum. The first worker's binary is stopped (SIGSTOP) during the first sum, so its subround
    # finishes last: the other two workers must answer meanwhile (TFF's remote executor calls its
    # worker synchronously, so workers sharing one event loop would wait for the stopped one), and
    # the merge must still be in subround order. The runs above cannot show the order: their local
    # reference merges through the same context.
    @tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
    def total(values):
      return tff.federated_sum(values)

    addresses = _addresses(3).split(",")
    answered = []  # (worker, when) of each `compute` (a subround's or a merge's result fetched).
    stubs = [_Timed(stub, worker, answered)
             for worker, stub in enumerate(workers.connect(addresses))]
    first_port = list(_WORKERS)[0]
    first_binary = [pid for pid in _marked_processes() if _is_worker_binary(pid, first_port)]
    self.assertLen(first_binary, 1)
    previous = tff.framework.get_context_stack().current
    tff.framework.set_default_context(workers.SubroundContext(addresses, 3, stubs))
    resumed = []
    timer = threading.Timer(1.5, lambda: (resumed.append(time.monotonic()),
                                          os.kill(first_binary[0], signal.SIGCONT)))
    os.kill(first_binary[0], signal.SIGSTOP)
    try:
      timer.start()
      sums = [total([1e8, 3.0, 3.0])]
      timer.join()
      sums.append(total([3.0, 3.0, 1e8]))
    finally:
      timer.cancel()
      os.kill(first_binary[0], signal.SIGCONT)
      tff.framework.set_default_context(previous)
    self.assertEqual(sums, [np.float32(1e8), np.float32(1e8 + 8)])
    self.assertEqual(sorted({worker for worker, when in answered if when < resumed[0]}), [1, 2])

  def test_every_random_aggregator_gives_the_local_workers_bits_on_two_workers(self):
    # The 2nn model: its 156,800- and 40,000-value kernels are quantized (above 20,000 values).
    for name in aggregator_configs.EVERY_DRAW:
      overrides = {**aggregator_configs.RANDOM_AGGREGATORS[name], "model.name": "2nn",
                   "runtime.num_subrounds": 2}
      local = _train(f"{name}_local", **overrides)
      remote = _train(f"{name}_workers", **overrides, **{"runtime.workers": _addresses(2)})
      self.assertEqual(remote, local, name)  # Every leaf of the state, clients, metrics, bits.

  def test_num_subrounds_is_in_the_fingerprint(self):
    _train("local_2", **{"runtime.num_subrounds": 2})
    result = subprocess.run(_runner("local_2", "--config.training.total_rounds=4",
                                    "--config.runtime.num_subrounds=3"),
                            cwd=_REPO_ROOT, env=_ENV, capture_output=True, text=True, check=False)
    self.assertEqual(result.returncode, 2, result.stderr)
    self.assertIn("  runtime.num_subrounds: saved 2, now 3", result.stderr)


class WorkerFailureTest(absltest.TestCase):

  def test_killed_worker_stops_the_run_and_the_same_command_resumes_it(self):
    straight = _on_workers(2, 2)
    rounds = _OVERRIDES["training.total_rounds"]
    port = list(_WORKERS)[1]
    command = _runner("killed", f"--config.training.total_rounds={rounds}",
                      f"--config.runtime.workers={_addresses(2)}", "--config.runtime.num_subrounds=2")
    runner = subprocess.Popen(command, cwd=_REPO_ROOT, env=_ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    for line in runner.stdout:
      if line.startswith("round    1/"):  # Killed while the runner saves round 1 or computes 2.
        _WORKERS[port].kill()
        _WORKERS[port].wait()
        break
    stdout, stderr = runner.communicate(timeout=120)
    self.assertEqual(runner.returncode, 75, stderr)
    self.assertLen(stderr.splitlines(), 1)
    self.assertStartsWith(stderr, f"run_emnist: TFF worker 127.0.0.1:{port} failed during a "
                          "computation: ")
    self.assertEndsWith(stderr, "Nothing of the round in progress was saved; when the worker is "
                        "back, run the same command again to resume. Exit status 75.\n")
    run_dir = os.path.join(_ROOT, "killed")
    status = tff_resume.run_status(run_dir)
    self.assertLess(status["rounds_done"], rounds, stdout)
    self.assertEqual(status["newest_good_version"], status["rounds_done"])
    self.assertEqual(chaos.leftovers(run_dir), [])
    partial = chaos.run_outcome(run_dir)
    self.assertEqual(partial["sampled_clients"],
                     straight["sampled_clients"][:status["rounds_done"]])
    _start_worker(port)
    resumed = subprocess.run(command, cwd=_REPO_ROOT, env=_ENV, capture_output=True, text=True,
                             check=False)
    self.assertEqual(resumed.returncode, 0, resumed.stderr)
    self.assertEqual(chaos.run_outcome(run_dir), straight)

  def test_worker_down_at_start_writes_nothing(self):
    down = f"127.0.0.1:{portpicker.pick_unused_port()}"
    result = subprocess.run(_runner("down", f"--config.runtime.workers={_addresses(1)},{down}",
                                    "--config.runtime.connect_timeout_seconds=1"),
                            cwd=_REPO_ROOT, env=_ENV, capture_output=True, text=True, check=False)
    self.assertEqual(result.returncode, 75, result.stderr)
    self.assertEqual(result.stderr.splitlines(), [
        f"run_emnist: TFF worker {down} (runtime.workers) did not answer within 1 s "
        "(runtime.connect_timeout_seconds); start it (tff-resume worker --port PORT) or fix the "
        "address. Nothing was written. Exit status 75."])
    self.assertFalse(os.path.exists(os.path.join(_ROOT, "down")))

  def test_malformed_worker_address_is_refused(self):
    config = tff_resume.load_config("configs/demo.py:smoke",
                                    {"runtime.workers": "localhost", **_OVERRIDES})
    with self.assertRaisesRegex(tff_resume.ConfigError,
                                "^config.runtime.workers: 'localhost' is not host:port"):
      tff_resume.Run(config, _ROOT, "malformed").train()
    self.assertFalse(os.path.exists(os.path.join(_ROOT, "malformed")))


class WorkerCommandTest(absltest.TestCase):

  def _worker_of_this_test(self) -> tuple[subprocess.Popen, int, int]:
    """A `tff-resume worker` the module's cleanup does not stop: (process, its binary's pid, port)."""
    port = portpicker.pick_unused_port()
    worker = _start_worker(port)
    del _WORKERS[port]
    binary = [pid for pid in _marked_processes() if _is_worker_binary(pid, port)]
    self.assertLen(binary, 1)
    return worker, binary[0], port

  def test_sigterm_stops_the_worker_and_its_binary(self):
    worker, binary, port = self._worker_of_this_test()
    worker.send_signal(signal.SIGTERM)
    self.assertEqual(worker.wait(timeout=30), 0)
    self.assertEqual(worker.stdout.read(), "tff-resume worker: stopped by SIGTERM.\n")
    self.assertFalse(_is_worker_binary(binary, port))

  def test_sigkill_of_the_command_ends_its_binary(self):
    worker, binary, port = self._worker_of_this_test()
    worker.kill()
    worker.wait()
    deadline = time.monotonic() + 10
    while _is_worker_binary(binary, port):
      self.assertLess(time.monotonic(), deadline, "worker_binary outlived its command")
      time.sleep(0.1)

  def test_port_in_use_is_one_line_and_status_2(self):
    port = list(_WORKERS)[0]
    result = subprocess.run(
        [sys.executable, "-m", "tff_resume.cli", "worker", f"--port={port}", "--insecure"],
        cwd=_REPO_ROOT,
        env=_ENV, capture_output=True, text=True, check=False, timeout=60)
    self.assertEqual(result.returncode, 2)
    self.assertEqual(result.stderr, f"tff-resume worker: error: port {port} is in use on this "
                     "machine; choose another --port.\n")

  def test_parse_workers(self):
    self.assertEqual(workers.parse_workers(" a:1, b.c:65535 ,"), ["a:1", "b.c:65535"])
    self.assertEqual(workers.parse_workers(""), [])
    for bad in ("a", "a:0", "a:65536", ":80", "a:x"):
      with self.assertRaises(ValueError):
        workers.parse_workers(bad)
    with self.assertRaisesRegex(ValueError, "names a:1 more than once"):
      workers.parse_workers("a:1,a:1")


class SplittingTest(absltest.TestCase):

  def test_dependent_aggregations_are_refused_with_the_reason(self):
    @tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
    def sum_of_broadcast_sum(values):  # The second aggregation needs the first one's result.
      return tff.federated_sum(tff.federated_broadcast(tff.federated_sum(values)))

    with self.assertRaises(workers.NotSplittableError) as raised:
      workers.compile_for_subrounds(sum_of_broadcast_sum, "the process's round (next)")
    message = str(raised.exception)
    self.assertStartsWith(message, "runtime.num_subrounds: TFF cannot split the process's round "
                          "(next) into subrounds (")
    self.assertEndsWith(message, "Use runtime.num_subrounds=0.")
    self.assertLen(message.splitlines(), 1)

  def test_one_aggregation_compiles(self):
    @tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
    def total(values):
      return tff.federated_sum(values)

    form = workers.compile_for_subrounds(total)
    self.assertEqual(str(form.merge.type_signature), "(<<float32>,<float32>> -> <float32>)")


def _is_worker_binary(pid: int, port: int) -> bool:
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
      arguments = cmdline.read().split(b"\0")
  except OSError:
    return False
  return arguments[0].endswith(b"/worker_binary") and f"--port={port}".encode() in arguments


class NothingLeftTest(absltest.TestCase):

  def test_zz_no_process_of_this_test_is_left_but_its_workers(self):
    expected = set()
    for port, worker in _WORKERS.items():
      expected.add(worker.pid)
      expected.update(pid for pid in _marked_processes() if _is_worker_binary(pid, port))
    self.assertEqual(_marked_processes(), expected)


if __name__ == "__main__":
  absltest.main()
