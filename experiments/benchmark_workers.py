"""Benchmark section 10: the cost of the remote path and of subrounds (`--sections=workers`).

Alternates, on the demo workload's round: the local worker as the runner uses it by default; the
local worker with `runtime.num_subrounds` 1, 2 and 5; and 1 and 2 TFF workers on loopback ports
reached as remote workers (2 subrounds). Each contender has a worker process of its own, so each
one's peak memory (VmHWM) is its own. On 2 cores no speed-up is expected: the figures show what the
remote path and the merges cost, and give the per-client time and transfer sizes the README's estimate
for N machines is computed from.
"""

import hashlib
import statistics

import numpy as np
import tensorflow_federated as tff

from experiments import measure
from tff_resume.runtime import local_worker
from tff_resume.runtime import workers

_SUBROUNDS_COMPARED = 2  # The subrounds of the loopback contenders and of their local twin.


def _weights_sha256(workload, state) -> str:
  weights = workload.process.get_model_weights(state).trainable
  return hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in weights)).hexdigest()


def bench_workers(workload, repetitions: int) -> dict:
  """Round medians, paired ratios to the local worker, worker peak memory, and whether the split
  contenders computed identical weights."""
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
    peaks = {name: measure.memory_bytes(handles[name].pid)["peak"]
             for name in handles if hasattr(handles[name], "pid")}
    # The loopback contenders share their workers: their peak is the larger of the two.
    peaks["loopback_workers"] = max(measure.memory_bytes(w.pid)["peak"] for w in loopback)
  finally:
    tff.framework.set_default_context(previous)
    for worker in owned:
      worker.stop()
  summary = measure.summarize(seconds)
  split = [f"local_subrounds_{_SUBROUNDS_COMPARED}", "loopback_workers_1", "loopback_workers_2"]
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
            f"- Equal weights for {_SUBROUNDS_COMPARED} subrounds on the local worker and on 1 and "
            f"2 loopback workers: {report['identical_weights_for_equal_subrounds']}."]
  return lines
