"""Benchmark section 10: the cost of the remote path and of subrounds (`--sections=workers`).

Alternates, on the demo workload's round: the local worker as the runner uses it by default; the
local worker with `runtime.num_subrounds` 1, 2 and 5; 1 and 2 TFF workers on loopback ports
reached as remote workers (2 subrounds); and 2 `tff-resume worker --tls_dir` workers (TFF's worker in
a namespace of its own behind the TLS relay) reached over mutual TLS (2 subrounds), against the same
2 workers without TLS, with the bytes the relays read per round (both directions: from the runner
and from TFF's worker) and their throughput. Each contender has a worker process of its own, so each
one's peak memory (VmHWM) is its own. On 2 cores no speed-up is expected: the figures show what the
remote path and the merges cost, and give the per-client time and transfer sizes the estimate for N
machines in docs/benchmarks.md is computed from.
"""

import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile

import numpy as np
import portpicker
import tensorflow_federated as tff

from experiments import measure
from tff_resume.runtime import certificates
from tff_resume.runtime import local_worker
from tff_resume.runtime import workers

_SUBROUNDS_COMPARED = 2  # The subrounds of the loopback contenders and of their local twin.
TARGETS = {"tls_vs_plain_workers": 1.05}
# Pairs of TLS and plain rounds the TLS ratio is the median of. Single pairs on 2 shared cores range
# over +-7%, more than the relay's cost: 5 pairs gave 1.069 and 9 gave 0.996 with the same code.
TLS_PAIRS = 15


def _weights_sha256(workload, state) -> str:
  weights = workload.process.get_model_weights(state).trainable
  return hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in weights)).hexdigest()


def _die_with_benchmark() -> None:
  local_worker.signal_when_parent_dies(signal.SIGTERM)


def _start_tls_worker(tls_dir: str) -> tuple[subprocess.Popen, int]:
  """A `tff-resume worker --tls_dir` on a free loopback port; (its process, the port)."""
  port = portpicker.pick_unused_port()
  worker = subprocess.Popen(
      [sys.executable, "-m", "tff_resume.cli", "worker", f"--port={port}", "--host=localhost",
       f"--tls_dir={tls_dir}"], cwd=measure.REPO_ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL, text=True, preexec_fn=_die_with_benchmark,
      env=dict(os.environ, PYTHONPATH=measure.REPO_ROOT))
  line = worker.stdout.readline()
  if "over mutual TLS" not in line:
    worker.kill()
    raise RuntimeError(f"the TLS worker did not start: {line}")
  return worker, port


def bench_workers(workload, repetitions: int, tls_pairs: int = TLS_PAIRS) -> dict:
  """Round medians, paired ratios to the local worker, worker peak memory, whether the split
  contenders computed identical weights, and the TLS ratio over at least `tls_pairs` pairs (the
  TLS and plain 2-worker contenders alternated alone after the others)."""
  datasets = workload.datasets(1)
  previous = tff.framework.get_context_stack().current
  handles, owned = {}, []
  handles["local"] = local_worker.start_local_execution_context()
  owned.append(handles["local"])
  for subrounds in (1, 2, 5):
    handles[f"local_subrounds_{subrounds}"] = workers.start_execution_context((), subrounds)
    owned.append(handles[f"local_subrounds_{subrounds}"])
  loopback = [local_worker.LocalWorker() for _ in range(2)]
  owned.extend(loopback)
  for count in (1, 2):
    addresses = [f"localhost:{worker.port}" for worker in loopback[:count]]
    handles[f"loopback_workers_{count}"] = workers.start_execution_context(
        addresses, _SUBROUNDS_COMPARED)
  tls_dir = os.path.join(tempfile.mkdtemp(prefix="tff_resume_tls"), "tls")
  certificates.make_certificates(tls_dir, ["localhost"])
  relays = [_start_tls_worker(tls_dir) for _ in range(2)]
  handles["tls_workers_2"] = workers.start_execution_context(
      [f"localhost:{port}" for _, port in relays], _SUBROUNDS_COMPARED, tls_dir=tls_dir)
  relayed = []
  try:
    hashes = {}

    def round_on(name):
      def run():
        tff.framework.set_default_context(handles[name].context)
        state = workload.process.next(workload.initial_state, datasets).state
        hashes[name] = _weights_sha256(workload, state)
      return run

    contenders = {name: round_on(name) for name in handles}
    for contender in contenders.values():
      contender()  # Warm-up: compiles each context's forms.
    for worker in owned:
      measure.reset_peak_memory(worker.pid)
    seconds = measure.alternate(contenders, repetitions)
    compared = ("loopback_workers_2", "tls_workers_2")
    more = measure.alternate({name: contenders[name] for name in compared},
                             max(0, tls_pairs - repetitions))
    peaks = {name: measure.memory_bytes(handles[name].pid)["peak"]
             for name in handles if hasattr(handles[name], "pid")}
    # The loopback contenders share their workers: their peak is the larger of the two.
    peaks["loopback_workers"] = max(measure.memory_bytes(w.pid)["peak"] for w in loopback)
  finally:
    tff.framework.set_default_context(previous)
    for worker in owned:
      worker.stop()
    for relay, _ in relays:  # Each says, as it stops, the bytes it relayed each way.
      relay.terminate()
      words = relay.communicate(timeout=30)[0].split()
      relayed.append([int(words[words.index("relayed") + 1]), int(words[-2])])
    shutil.rmtree(os.path.dirname(tls_dir))
  summary = measure.summarize(seconds)
  split = [f"local_subrounds_{_SUBROUNDS_COMPARED}", "loopback_workers_1", "loopback_workers_2",
           "tls_workers_2"]
  tls_rounds = 1 + len(seconds["tls_workers_2"]) + len(more["tls_workers_2"])  # With the warm-up.
  tls_ratios = [*measure.paired_ratios(seconds, "tls_workers_2", "loopback_workers_2"),
                *measure.paired_ratios(more, "tls_workers_2", "loopback_workers_2")]
  to_workers, back = (sum(counts[way] for counts in relayed) / tls_rounds for way in (0, 1))
  clients = len(datasets)
  communication = workload.communication
  return {
      "contenders": summary,
      "seconds": seconds,
      "ratio_to_local": {name: statistics.median(measure.paired_ratios(seconds, name, "local"))
                         for name in handles if name != "local"},
      "worker_peak_bytes": peaks,
      "identical_weights_for_equal_subrounds": len({hashes[name] for name in split}) == 1,
      "clients_per_round": clients,
      "seconds_per_client_local": summary["local"]["median_s"] / clients,
      "broadcast_bits_per_client": communication.broadcasted_bits_per_client,
      "aggregated_bits_per_client": communication.aggregated_bits_per_client,
      "tls_vs_plain_workers": statistics.median(tls_ratios),
      "tls_pair_ratios": tls_ratios,
      "relay_bytes_per_round": {"to_workers": to_workers, "back": back},
      "relay_mib_per_second": (to_workers + back) / 2**20 / summary["tls_workers_2"]["median_s"],
  }


def render_markdown(report: dict) -> list[str]:
  lines = ["", "## workers (section 10)", "",
           "| contender | median s | ratio to local | worker peak MiB |", "| --- | --- | --- | --- |"]
  for name, stats in report["contenders"].items():
    ratio = report["ratio_to_local"].get(name)
    peak = report["worker_peak_bytes"].get(
        name, report["worker_peak_bytes"].get("loopback_workers"))
    lines.append(f"| {name} | {stats['median_s']:.4f} | "
                 f"{'-' if ratio is None else f'{ratio:.3f}'} | {peak / 2**20:.0f} |")
  lines += ["",
            f"- {report['clients_per_round']} clients a round: "
            f"{report['seconds_per_client_local']:.3f} s per client on the local worker; "
            f"{report['broadcast_bits_per_client']} bits broadcast and "
            f"{report['aggregated_bits_per_client']} bits aggregated per client.",
            f"- Equal weights for {_SUBROUNDS_COMPARED} subrounds on the local worker, on 1 and "
            f"2 loopback workers and on 2 TLS workers: "
            f"{report['identical_weights_for_equal_subrounds']}.",
            f"- 2 workers over mutual TLS against the same without TLS: "
            f"{report['tls_vs_plain_workers']:.3f}x, the median of "
            f"{len(report['tls_pair_ratios'])} back-to-back pairs (single pairs "
            f"{min(report['tls_pair_ratios']):.3f}-{max(report['tls_pair_ratios']):.3f}); "
            f"the two relays carried "
            f"{report['relay_bytes_per_round']['to_workers'] / 2**20:.1f} MiB a round to TFF's "
            f"workers and {report['relay_bytes_per_round']['back'] / 2**20:.1f} MiB back, "
            f"{report['relay_mib_per_second']:.0f} MiB/s over the round."]
  return lines
