"""Benchmarks the runner side by side: wrapper overhead, compute floor, checkpoints, resume, scaling.

    python -m experiments.benchmark --out runs/benchmark

Writes OUT/benchmark.json and OUT/benchmark.md (`--sections=workers` adds the cost of remote workers
and subrounds). Every comparison runs its contenders in the same
process, alternating them (A B, then B A, ...) for several repetitions, and reports medians and their
ratios: absolute times on a shared machine are not comparable across runs, ratios measured side by side
are. The workload is the FedAvg CNN on synthetic EMNIST-shaped data, 10 clients x 100 examples, batch
20, 5 local epochs (the demo config), unless a section says otherwise. `--quick` shrinks everything
to seconds (the tests use it); its numbers mean nothing.
"""

import asyncio
import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

from tff_resume.runtime import local_worker
from tff_resume.runtime import network_isolation

if __name__ == "__main__":
  network_isolation.isolate()  # Before TensorFlow's threads: its workers serve a private loopback.
local_worker.quiet_tensorflow_logging(verbose="--verbose" in sys.argv[1:])
# pylint: disable=g-import-not-at-top,g-bad-import-order
import tensorflow as tf
import tensorflow_federated as tff
from absl import app
from absl import flags

from configs import demo
from experiments import benchmark_emnist_scale
from experiments import benchmark_scale
from experiments import benchmark_workers
from experiments import measure
from tff_resume.data import preprocessing
from tff_resume.learning import accounting
from tff_resume.learning import models
from tff_resume.program import experiment
from tff_resume.program import federated_data
from tff_resume.program import fingerprint as fingerprint_lib
from tff_resume.program import loop as loop_lib
from tff_resume.program import training
from tff_resume.releases import bookkeeping
from tff_resume.releases import release_managers
from tff_resume.storage import atomic_files
from tff_resume.storage import checkpointing
from tff_resume.storage import history as history_lib
from tff_resume.storage import paths as paths_lib
from tff_resume.storage import run_record
# pylint: enable=g-import-not-at-top,g-bad-import-order

local_worker.install_guard_context()

_OUT = flags.DEFINE_string("out", None, "Folder to write benchmark.json and benchmark.md into.",
                           required=True)
_REPETITIONS = flags.DEFINE_integer("repetitions", 5, "Repetitions of each side-by-side comparison.")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny workload and 2 repetitions (for tests; numbers "
                           "mean nothing).")
_SECTIONS = flags.DEFINE_multi_enum(
    "sections", ["core", "scale"], ["core", "scale", "workers", "emnist_scale"],
    "Which sections to run: core (1-5: rounds, checkpoints, resume, scaling on the CNN), scale "
    "(6-9: costs against rounds done, population and run length), workers (10: the local "
    "worker against loopback workers and subrounds; not run by default) and emnist_scale (11: "
    "TFF's EMNIST file format at EMNIST's scale, built from --leaf_dir; not run by default).")
_LEAF_DIR = flags.DEFINE_string(
    "leaf_dir", os.path.join(measure.REPO_ROOT, "..", "shared", "data", "femnist-leaf"),
    "emnist_scale: the LEAF FEMNIST folder whose writers are replicated.")
_EMNIST_SCALE_WRITERS = flags.DEFINE_integer(
    "emnist_scale_writers", 3400, "emnist_scale: training writers of the file built (about).")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show TensorFlow's and TFF's messages.")

_RESUME_TOTAL_ROUNDS = 10
TARGETS = {
    "wrapper_overhead": 1.01,
    "bfloat16_own_floor_ratio": 1.15,
    "floor_ratio": 1.3,
    "in_memory_floor_ratio": 1.15,
    "bfloat16_in_memory_floor_ratio": 0.75,
    "checkpoint_save_vs_file_manager": 0.5,
    "checkpoint_share_of_round": 0.02,
    "resume_extra_seconds": 1.0,
}
ALL_TARGETS = {**TARGETS, **benchmark_scale.TARGETS, **benchmark_workers.TARGETS,
               **benchmark_emnist_scale.TARGETS}


def _log(message: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def scaling_client_counts(quick: bool) -> tuple[int, ...]:
  return (2, 4) if quick else (10, 20, 50)


def workload_config(quick: bool, model_name: str = "cnn"):
  """The benchmark's config: the demo config with equal-sized clients, enough of them for scaling."""
  config = demo.get_config()
  config.model.name = model_name
  config.data.synthetic.num_clients = max(scaling_client_counts(quick))
  config.data.synthetic.min_examples_per_client = 20 if quick else 100
  config.data.synthetic.max_examples_per_client = 20 if quick else 100
  config.training.clients_per_round = 2 if quick else 10
  config.training.total_rounds = 1000
  config.client.epochs = 1 if quick else 5
  config.checkpoint.keep_total = 2
  return config


class FloorTrainer:
  """The compute floor: the same SGD steps as FedAvg's clients in one plain TensorFlow tf.function.

  Each client starts from the global weights and takes one SGD step per batch of its (already
  shuffled, repeated and batched) dataset; the weighted mean of the client models is the new model.
  The in-memory floor takes the same steps on batches materialized before timing, one compiled step
  per batch: no input pipeline at all.
  """

  def __init__(self, config):
    """The floor of `config`'s model, in its `model.compute_dtype` (bfloat16: under Keras's
    `mixed_bfloat16` policy, as the clients compute; float32 weights either way)."""
    self._model = models.create_keras_model(config.model.name, experiment.num_classes(config),
                                            config.training.seed,
                                            config.model.get("compute_dtype", "float32"))
    self._learning_rate = config.client.learning_rate
    self._loss = tf.keras.losses.SparseCategoricalCrossentropy()
    self._weights = [variable.numpy() for variable in self._model.trainable_variables]
    self._train = tf.function(self._train_client)
    self._compiled_step = tf.function(self._step)

  def _train_client(self, dataset):
    examples = tf.constant(0, tf.int32)
    for batch in iter(dataset):  # A while loop over the iterator, as the clients' (the fastest).
      self._step(batch["x"], batch["y"])
      examples += tf.shape(batch["y"])[0]
    return examples

  def _step(self, x, y):
    with tf.GradientTape() as tape:
      loss = self._loss(y, self._model(x, training=True))
    gradients = tape.gradient(loss, self._model.trainable_variables)
    for variable, gradient in zip(self._model.trainable_variables, gradients):
      variable.assign_sub(self._learning_rate * gradient)

  def _train_in_memory(self, batches) -> int:
    for batch in batches:
      self._compiled_step(batch["x"], batch["y"])
    return sum(int(batch["y"].shape[0]) for batch in batches)

  def round(self, datasets, in_memory: bool = False) -> None:
    """One round over `datasets`, or with `in_memory` over lists of batches already materialized
    (`materialize`): the same SGD steps without the input pipeline."""
    total = [tf.zeros_like(weight) for weight in self._weights]
    examples_seen = 0
    for dataset in datasets:
      for variable, weight in zip(self._model.trainable_variables, self._weights):
        variable.assign(weight)
      examples = float(self._train_in_memory(dataset) if in_memory else self._train(dataset))
      examples_seen += examples
      total = [acc + examples * variable for acc, variable in
               zip(total, self._model.trainable_variables)]
    self._weights = [(acc / examples_seen).numpy() for acc in total]

  @staticmethod
  def materialize(datasets) -> list[list[dict]]:
    """Every client's batches as tensors in memory (shuffled, repeated and batched as TFF sees
    them)."""
    return [list(dataset) for dataset in datasets]


class Workload:
  """A FedAvg process with its data, client functions and a bare-loop state (`compute_dtype`
  overrides the config's `model.compute_dtype`)."""

  def __init__(self, config, compute_dtype: str | None = None):
    if compute_dtype is not None:
      config = config.copy_and_resolve_references()
      config.model.compute_dtype = compute_dtype
    self.config = config
    self.train_data, _ = experiment.load_data(config)
    aggregator = experiment.build_aggregator(config)
    self.process = experiment.build_process(config, aggregator)
    self.communication = accounting.communication_cost(self.process, aggregator)
    self.initial_state = experiment.initial_state(config, self.process)
    # The runner's own sampling and datasets (a loop object only describes a run until it trains).
    clients = loop_lib.ResumableLoop(
        self.process, federated_data.SeededClientsDataSource(
            "benchmark", self.train_data, config.training.seed, experiment.preprocess_fn(config)),
        run_dir="unused", clients_per_round=config.training.clients_per_round, fingerprint={})
    self.select_clients, self.client_datasets = clients.select_clients, clients.client_datasets
    self.bare_state = self.initial_state
    self.bare_round_num = 0

  def datasets(self, round_num: int, num_clients: int | None = None):
    client_ids = self.select_clients(round_num)
    if num_clients is not None:
      client_ids = sorted(self.train_data.client_ids)[:num_clients]
    return self.client_datasets(round_num, client_ids)

  def bare_round(self, datasets=None) -> None:
    """`process.next` on the clients of the next round; nothing else."""
    self.bare_round_num += 1
    datasets = datasets or self.datasets(self.bare_round_num)
    self.bare_state = self.process.next(self.bare_state, datasets).state


RUNNER_ROUNDS_PER_CALL = 4  # Rounds of each timed runner call (its last commit is not overlapped).


class RunnerLoop:
  """What the runner does around `process.next` each round: sampling, datasets, metrics, accounting,
  history, TensorBoard, CSV, participation, progress file and a checkpoint version, through
  `training.train`."""

  def __init__(self, workload: Workload, run_dir: str):
    config = workload.config
    self._workload = workload
    paths = paths_lib.RunPaths.from_run_dir(run_dir)
    manager = checkpointing.DurableProgramStateManager(paths.checkpoints,
                                                       keep_total=config.checkpoint.keep_total)
    record = run_record.new_record(fingerprint_lib.compute_fingerprint(config),
                                    experiment.seeds(config), config.training.total_rounds)
    history, _ = bookkeeping.open_history(manager, None, None, None, paths.progress_json)
    self._book = bookkeeping.Bookkeeping(
        paths, manager, record, history,
        loop_lib.counted_examples(workload.train_data,
                                  config.client.max_examples_per_client or None),
        release_managers.for_run(paths, fingerprint_lib.flatten_config(config)))
    self._state = workload.initial_state
    self.checkpoint_seconds = []
    # (seconds from a round's sampling to the next's, that round's time/round_seconds; the next
    # round's sampling and datasets are built while a round trains, so the two overlap).
    self.period_and_inner_seconds = []

  def rounds(self, count: int = RUNNER_ROUNDS_PER_CALL) -> float:
    """Trains `count` rounds in one `training.train` call, as a run does (each round committed in
    the background while the next trains; the last one before `train` returns); returns the
    seconds per round."""
    workload = self._workload
    starts, inner = [], []

    def select_clients(round_num: int) -> list[str]:
      starts.append(time.perf_counter())
      return workload.select_clients(round_num)

    def on_round(result: training.RoundResult) -> None:
      self.checkpoint_seconds.append(result.checkpoint_seconds)
      inner.append(result.metrics["time/round_seconds"])

    started = time.perf_counter()
    self._state, _ = training.train(
        process=workload.process, state=self._state, book=self._book,
        total_rounds=self._book.record.rounds_done + count, rounds_per_checkpoint=1,
        communication=workload.communication, evaluate=None, rounds_per_eval=0,
        select_clients=select_clients, client_datasets=workload.client_datasets,
        should_stop=lambda: False, on_round=on_round)
    seconds = (time.perf_counter() - started) / count
    self.period_and_inner_seconds += [(following - start, own) for start, following, own
                                      in zip(starts, starts[1:], inner)]
    return seconds

  def close(self) -> None:
    self._book.close()


def _tiny_datasets(workload: Workload):
  """One batch per client (20 examples, 1 epoch): what a round costs besides the SGD steps."""
  spec = preprocessing.PreprocessSpec(
      epochs=1, batch_size=20, max_examples_per_client=20,
      flatten=models.needs_flat_input(workload.config.model.name))
  return [preprocessing.preprocess_for_training(
      workload.train_data.create_tf_dataset_for_client(client_id), spec, seed=0, round_num=1,
      client_id=client_id) for client_id in workload.select_clients(1)]


def bench_rounds(workload: Workload, scratch: str, repetitions: int,
                 worker: local_worker.LocalWorker) -> dict:
  """Sections 1 and 2: the runner's round, a bare `process.next` round (float32 and bfloat16) and
  the plain-TF floors on the same examples, alternated; then where a TFF round's time goes besides
  the SGD steps."""
  runner = RunnerLoop(workload, os.path.join(scratch, "runner"))
  bfloat16 = Workload(workload.config, compute_dtype="bfloat16")
  floor = FloorTrainer(workload.config)
  bfloat16_floor = FloorTrainer(bfloat16.config)
  datasets = workload.datasets(1)
  batches = FloorTrainer.materialize(datasets)
  tiny = _tiny_datasets(workload)
  _log("rounds: warm-up (tracing)")
  workload.bare_round(datasets)
  bfloat16.bare_round(datasets)
  runner.rounds(1)
  floor.round(datasets)
  floor.round(batches, in_memory=True)
  bfloat16_floor.round(batches, in_memory=True)
  seconds = measure.alternate({
      "bare_process_next": lambda: workload.bare_round(datasets),
      "bare_loop": workload.bare_round,  # Each round's sampling and datasets, then process.next.
      "bare_bfloat16": lambda: bfloat16.bare_round(datasets),
      "runner": runner.rounds,
      "plain_tf_floor": lambda: floor.round(datasets),
      "in_memory_floor": lambda: floor.round(batches, in_memory=True),
      "in_memory_floor_bfloat16": lambda: bfloat16_floor.round(batches, in_memory=True)},
                              repetitions)
  runner.close()
  in_round = [period / inner for period, inner in runner.period_and_inner_seconds]
  _log("rounds: the runner against a bare loop on the linear model (bookkeeping a larger share)")
  linear_config = workload.config.copy_and_resolve_references()
  linear_config.model.name = "linear"
  linear = Workload(linear_config)
  linear_runner = RunnerLoop(linear, os.path.join(scratch, "runner_linear"))
  linear_datasets = linear.datasets(1)
  linear.bare_round(linear_datasets)
  linear_runner.rounds(1)
  linear_seconds = measure.alternate({"bare_loop": linear.bare_round,
                                      "runner": linear_runner.rounds}, repetitions)
  linear_runner.close()
  linear_report = {
      "contenders": measure.summarize(linear_seconds), "seconds": linear_seconds,
      "wrapper_overhead_in_round": statistics.median(
          [period / inner for period, inner in linear_runner.period_and_inner_seconds]),
      "period_and_round_seconds": linear_runner.period_and_inner_seconds,
      "wrapper_overhead_side_by_side": statistics.median(
          measure.paired_ratios(linear_seconds, "runner", "bare_loop"))}
  _log("rounds: one batch per client (fixed costs)")
  workload.bare_round(tiny)
  floor.round(tiny)
  seconds.update(measure.alternate(
      {"bare_one_batch_per_client": lambda: workload.bare_round(tiny),
       "floor_one_batch_per_client": lambda: floor.round(tiny)}, repetitions))
  _log("rounds: worker concurrency, as many clients at once as cores (the default) or all")
  unlimited = local_worker.start_local_execution_context(max_concurrent_computation_calls=-1)

  def bare_with(context, bare):
    def round_with_context():
      tff.framework.set_default_context(context)
      bare.bare_round(datasets)
    return round_with_context

  contenders = {"bare_worker_concurrency_cores": bare_with(worker.context, workload),
                "bare_worker_concurrency_unlimited": bare_with(unlimited.context, workload),
                "bare_bfloat16_worker_concurrency_cores": bare_with(worker.context, bfloat16),
                "bare_bfloat16_worker_concurrency_unlimited": bare_with(unlimited.context, bfloat16)}
  for contender in contenders.values():
    contender()  # Warm-up of each worker.
  seconds.update(measure.alternate(contenders, repetitions))
  tff.framework.set_default_context(worker.context)
  unlimited.stop()
  summary = measure.summarize(seconds)
  median = {name: stats["median_s"] for name, stats in summary.items()}
  return {
      "contenders": summary,
      "seconds": seconds,
      "wrapper_overhead_side_by_side": statistics.median(
          measure.paired_ratios(seconds, "runner", "bare_loop")),
      "wrapper_overhead_in_round": statistics.median(in_round),
      "period_and_round_seconds": runner.period_and_inner_seconds,
      "floor_ratio": statistics.median(
          measure.paired_ratios(seconds, "bare_process_next", "plain_tf_floor")),
      "in_memory_floor_ratio": statistics.median(
          measure.paired_ratios(seconds, "bare_process_next", "in_memory_floor")),
      "bfloat16_in_memory_floor_ratio": statistics.median(
          measure.paired_ratios(seconds, "bare_bfloat16", "in_memory_floor")),
      "bfloat16_own_floor_ratio": statistics.median(
          measure.paired_ratios(seconds, "bare_bfloat16", "in_memory_floor_bfloat16")),
      "linear": linear_report,
      "unlimited_concurrency_vs_cores": {dtype: statistics.median(measure.paired_ratios(
          seconds, f"bare{infix}_worker_concurrency_unlimited", f"bare{infix}_worker_concurrency_cores"))
                                         for dtype, infix in (("float32", ""),
                                                              ("bfloat16", "_bfloat16"))},
      "fixed_seconds_per_round": (median["bare_one_batch_per_client"]
                                  - median["floor_one_batch_per_client"]),
      "runner_checkpoint_median_s": statistics.median(runner.checkpoint_seconds[1:]),
  }


def bench_checkpoints(workload: Workload, scratch: str, repetitions: int,
                      bare_round_s: float) -> dict:
  """Section 3: save and load of one FedAvg server state, ours against TFF's FileProgramStateManager."""
  state = workload.bare_state
  ours = checkpointing.DurableProgramStateManager(os.path.join(scratch, "ours"), keep_total=2)
  theirs = tff.program.FileProgramStateManager(os.path.join(scratch, "tff"), keep_total=2)
  config = workload.config
  record = run_record.new_record(fingerprint_lib.compute_fingerprint(config),
                                 experiment.seeds(config), config.training.total_rounds)
  versions = {"tff": 0}
  loop = runtime_loop()

  def save_ours():  # As the runner saves: weights SHA-256 and run record included.
    record.add_round(history_lib.GENESIS, {"round": record.rounds_done + 1})
    bookkeeping.save_checkpoint(ours, state, record,
                                training.model_weights_sha256(workload.process, state))

  def save_tff():
    versions["tff"] += 1
    loop.run_until_complete(theirs.save(state, versions["tff"]))

  seconds = measure.alternate(
      {"save_ours": save_ours, "save_file_program_state_manager": save_tff}, repetitions)
  seconds.update(measure.alternate({
      "load_ours": lambda: ours.load_version(ours.latest_good_version(), state),
      "load_file_program_state_manager":
          lambda: loop.run_until_complete(theirs.load(versions["tff"], state)),
  }, repetitions))
  summary = measure.summarize(seconds)
  save = summary["save_ours"]["median_s"]
  return {
      "contenders": summary,
      "state_bytes": os.path.getsize(os.path.join(ours.version_path(ours.latest_good_version()),
                                                  "state.npz")),
      "checkpoint_save_vs_file_manager":
          save / summary["save_file_program_state_manager"]["median_s"],
      "checkpoint_load_vs_file_manager":
          summary["load_ours"]["median_s"] / summary["load_file_program_state_manager"]["median_s"],
      "checkpoint_share_of_round": save / bare_round_s,
  }


def runtime_loop():
  """An event loop for the async `tff.program` API."""
  loop = asyncio.new_event_loop()
  asyncio.set_event_loop(loop)
  return loop


def _runner_command(root: str, name: str, quick: bool, total_rounds: int) -> list[str]:
  # --quick times the linear model's starts: its numbers mean nothing, and it spares the tests the
  # CNN's longer tracing in every runner start.
  config = workload_config(quick, "linear" if quick else "cnn")
  return measure.runner_command(root, name, {
      "model.name": config.model.name,
      "data.synthetic.num_clients": config.data.synthetic.num_clients,
      "data.synthetic.min_examples_per_client": config.data.synthetic.min_examples_per_client,
      "data.synthetic.max_examples_per_client": config.data.synthetic.max_examples_per_client,
      "training.clients_per_round": config.training.clients_per_round,
      "training.total_rounds": total_rounds,
      "client.epochs": config.client.epochs,
      "evaluation.rounds_per_eval": 0,
      "evaluation.max_clients": 1,
  })


def bench_resume(scratch: str, quick: bool, repetitions: int) -> dict:
  """Section 4: process start to the end of the first new round, resumed after a kill (from version
  2, round 3) against a cold start of the same config (round 1). Neither is the last round, which
  would add the final evaluation."""
  total = _RESUME_TOTAL_ROUNDS
  killed = os.path.join(scratch, "killed")
  # Killed (SIGKILL) once it reports round 2.
  measure.seconds_until_round(_runner_command(scratch, "killed", quick, total), 2, total)
  counter = {"cold": 0, "resumed": 0}

  def cold():
    counter["cold"] += 1
    return measure.seconds_until_round(
        _runner_command(scratch, f"cold{counter['cold']}", quick, total), 1, total)

  def resumed():
    counter["resumed"] += 1
    name = f"resumed{counter['resumed']}"
    shutil.copytree(killed, os.path.join(scratch, name))  # Not timed: the clock starts at exec.
    return measure.seconds_until_round(_runner_command(scratch, name, quick, total), 3, total)

  summary = measure.summarize(measure.alternate(
      {"cold_start_to_round_1": cold, "resume_to_round_3": resumed}, repetitions))
  return {"contenders": summary,
          "resume_extra_seconds": (summary["resume_to_round_3"]["median_s"]
                                   - summary["cold_start_to_round_1"]["median_s"])}


def bench_scaling(quick: bool, worker: local_worker.LocalWorker, repetitions: int,
                  cnn: "Workload") -> list[dict]:
  """Section 5: round time and peak memory (worker and Python) against clients per round and model."""
  client_counts = scaling_client_counts(quick)
  # Small models first: the worker keeps memory it has allocated, so peaks only grow.
  cases = [(Workload(workload_config(quick, model_name)), client_counts[0])
           for model_name in ("linear", "2nn")]
  cases += [(cnn, count) for count in client_counts]
  rows = []
  for workload, count in cases:
    datasets = workload.datasets(1, count)
    workload.bare_round(datasets)  # Warm-up for this number of clients.
    for pid in (worker.pid, "self"):
      measure.reset_peak_memory(pid)
    median = statistics.median(
        measure.alternate({"round": lambda: workload.bare_round(datasets)}, repetitions)["round"])
    examples = count * workload.config.data.synthetic.max_examples_per_client * (
        workload.config.client.epochs)
    rows.append({"model": workload.config.model.name, "clients_per_round": count,
                 "examples_processed": examples, "round_median_s": median,
                 "ms_per_1000_examples": 1000 * median / examples * 1000,
                 "worker_peak_rss_bytes": measure.memory_bytes(worker.pid)["peak"],
                 "python_peak_rss_bytes": measure.memory_bytes("self")["peak"]})
    _log(f"scaling: {workload.config.model.name} x {count} clients: {median:.2f} s")
  return rows


def _unit(name: str) -> str:
  return " s" if name.endswith("_seconds") else " MiB" if name.endswith("_mib") else ""


def _verdict(name: str, value: float) -> str:
  target = ALL_TARGETS[name]
  if value <= target:
    return "met"
  if _unit(name):
    return f"missed by {value - target:.2f}{_unit(name)}"
  return f"missed by {100 * (value / target - 1):.1f}%"


def render_markdown(report: dict) -> str:
  """The report as Markdown: the targets table, then each section's medians."""
  lines = [f"# tff_resume benchmark, {report['date']}", "",
           f"Machine: {report['machine']}. Workload: {report['workload']}. "
           f"{report['repetitions']} alternated repetitions per comparison; medians.", "",
           "| measure | value | target | verdict |", "| --- | --- | --- | --- |"]
  for name, value in report["targets"].items():
    unit = _unit(name)
    shown = f"{value['value']:.3f}{unit}"
    lines.append(f"| {name} | {shown} | <= {value['target']}{unit} | {value['verdict']} |")
  if "rounds" in report:
    lines += _render_core(report)
  if "scale" in report:
    lines += benchmark_scale.render_markdown(report["scale"])
  if "workers" in report:
    lines += benchmark_workers.render_markdown(report["workers"])
  if "emnist_scale" in report:
    lines += benchmark_emnist_scale.render_markdown(report["emnist_scale"])
  return "\n".join(lines) + "\n"


def _render_core(report: dict) -> list[str]:
  lines = []
  rounds = report["rounds"]
  bare = rounds["contenders"]["bare_process_next"]["median_s"]
  lines += [
      "",
      f"- wrapper_overhead is the median of runner/bare-loop ratios of back-to-back calls: the "
      f"runner trains {RUNNER_ROUNDS_PER_CALL} rounds a call, as a run does (each round committed "
      f"while the next trains, and the next round's datasets built meanwhile; the call's last "
      f"commit has no round to overlap), timed per round, against a bare loop's round (the same "
      f"sampling and datasets, then `process.next`). One round's sampling to the next's, over its "
      f"`time/round_seconds` (which no longer includes building its datasets, so the two overlap): "
      f"{rounds['wrapper_overhead_in_round']:.3f}. On the linear "
      f"model, where the bookkeeping is a larger share of a round: "
      f"{rounds['linear']['wrapper_overhead_side_by_side']:.3f} side by side, "
      f"{rounds['linear']['wrapper_overhead_in_round']:.3f} inside its rounds.",
      f"- bfloat16_own_floor_ratio is a bare bfloat16 round over the same SGD steps in plain "
      f"TensorFlow under `mixed_bfloat16` on batches in memory (its own floor).",
      f"- floor_ratio is the median of bare/floor ratios of back-to-back rounds on the same examples; "
      f"in_memory_floor_ratio is the same against the in-memory floor (the same SGD steps, float32, "
      f"on batches materialized before timing: no input pipeline), and "
      f"bfloat16_in_memory_floor_ratio that of a bare round with `model.compute_dtype=bfloat16` "
      f"against the same float32 floor.",
      f"- With one batch per client, a TFF round minus the floor's is "
      f"{rounds['fixed_seconds_per_round']:+.3f} s ({100 * rounds['fixed_seconds_per_round'] / bare:+.1f}%"
      " of a full bare round): TFF's fixed costs per round (serializing datasets and weights to the "
      "worker, gRPC, aggregation); negative means they are below the floor's own per-client Python "
      "overhead.",
      f"- The worker runs as many clients at once as there are cores ({os.cpu_count()} here); "
      f"with no limit (TFF's default) a round takes "
      f"{rounds['unlimited_concurrency_vs_cores']['float32']:.3f}x as long in float32 and "
      f"{rounds['unlimited_concurrency_vs_cores']['bfloat16']:.3f}x in bfloat16 (medians of paired "
      "ratios).",
  ]
  for section in ("rounds", "checkpoints", "resume"):
    lines += ["", f"## {section}", "", "| contender | median s | min s | max s |",
              "| --- | --- | --- | --- |"]
    for name, stats in report[section]["contenders"].items():
      lines.append(f"| {name} | {stats['median_s']:.4f} | {stats['min_s']:.4f} | "
                   f"{stats['max_s']:.4f} |")
  lines += ["", "## scaling", "",
            "| model | clients | examples | round median s | ms per 1000 examples | worker peak MiB "
            "| python peak MiB |", "| --- | --- | --- | --- | --- | --- | --- |"]
  for row in report["scaling"]:
    lines.append(f"| {row['model']} | {row['clients_per_round']} | {row['examples_processed']} | "
                 f"{row['round_median_s']:.3f} | {row['ms_per_1000_examples']:.1f} | "
                 f"{row['worker_peak_rss_bytes'] / 2**20:.0f} | "
                 f"{row['python_peak_rss_bytes'] / 2**20:.0f} |")
  return lines


def _core_sections(scratch: str, quick: bool, repetitions: int, worker) -> dict:
  """Sections 1-5 on the FedAvg CNN; returns their reports and {"values": target values}."""
  _log("building the FedAvg CNN workload")
  cnn = Workload(workload_config(quick))
  _log("sections 1-2: runner vs bare process.next vs plain-TF floor")
  rounds = bench_rounds(cnn, scratch, repetitions, worker)
  _log("section 3: checkpoints")
  checkpoints = bench_checkpoints(
      cnn, scratch, repetitions, rounds["contenders"]["bare_process_next"]["median_s"])
  _log("section 4: resume latency (runner subprocesses)")
  # --quick: one start of each kind (runner starts dominate the quick run's time).
  resume = bench_resume(scratch, quick, 1 if quick else min(3, repetitions))
  _log("section 5: scaling")
  scaling = bench_scaling(quick, worker, max(1, repetitions // 2), cnn)
  values = {"wrapper_overhead": rounds["wrapper_overhead_side_by_side"],
            "floor_ratio": rounds["floor_ratio"],
            "in_memory_floor_ratio": rounds["in_memory_floor_ratio"],
            "bfloat16_in_memory_floor_ratio": rounds["bfloat16_in_memory_floor_ratio"],
            "bfloat16_own_floor_ratio": rounds["bfloat16_own_floor_ratio"],
            "checkpoint_save_vs_file_manager": checkpoints["checkpoint_save_vs_file_manager"],
            "checkpoint_share_of_round": checkpoints["checkpoint_share_of_round"],
            "resume_extra_seconds": resume["resume_extra_seconds"]}
  return {"values": values, "rounds": rounds, "checkpoints": checkpoints, "resume": resume,
          "scaling": scaling}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  local_worker.quiet_tensorflow_logging(_VERBOSE.value)
  quick = _QUICK.value
  repetitions = 2 if quick else _REPETITIONS.value
  if repetitions < 1:
    print("benchmark: error: --repetitions must be at least 1.", file=sys.stderr)
    return 2
  os.makedirs(_OUT.value, exist_ok=True)
  started = time.perf_counter()
  worker = local_worker.start_local_execution_context(show_worker_output=_VERBOSE.value)
  sections, values = {}, {}
  with tempfile.TemporaryDirectory(prefix="tff_resume_benchmark_") as scratch:
    if "core" in _SECTIONS.value:
      sections.update(_core_sections(scratch, quick, repetitions, worker))
      values.update(sections.pop("values"))
    if "scale" in _SECTIONS.value:
      _log("sections 6-9: research scale")
      linear = Workload(workload_config(quick, "linear"))
      sections["scale"] = benchmark_scale.run_sections(linear, scratch, quick, repetitions)
      values.update(sections["scale"].pop("values"))
    if "workers" in _SECTIONS.value:
      _log("section 10: local worker, subrounds and loopback workers")
      sections["workers"] = benchmark_workers.bench_workers(
          Workload(workload_config(quick)), repetitions,
          repetitions if quick else benchmark_workers.TLS_PAIRS)
      values.update({name: sections["workers"][name] for name in benchmark_workers.TARGETS})
    if "emnist_scale" in _SECTIONS.value:
      _log("section 11: TFF's EMNIST file format at EMNIST's scale")
      sections["emnist_scale"] = benchmark_emnist_scale.run_section(
          _OUT.value, _LEAF_DIR.value, _EMNIST_SCALE_WRITERS.value, scratch, quick, repetitions,
          FloorTrainer, Workload)
      values.update(sections["emnist_scale"].pop("values"))
  config = workload_config(quick)
  report = {
      "date": datetime.date.today().isoformat(),
      "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}",
      "versions": {"tensorflow": tf.__version__, "tensorflow_federated": tff.__version__,
                   "python": platform.python_version()},
      "workload": (f"FedAvg {config.model.name}, {config.training.clients_per_round} clients x "
                   f"{config.data.synthetic.max_examples_per_client} synthetic examples, "
                   f"{config.client.epochs} epochs, batch {config.client.batch_size}"),
      "quick": quick, "repetitions": repetitions,
      "targets": {name: {"value": value, "target": ALL_TARGETS[name],
                         "verdict": _verdict(name, value)} for name, value in values.items()},
      **sections,
      "seconds": time.perf_counter() - started,
  }
  json_path = os.path.join(_OUT.value, "benchmark.json")
  markdown_path = os.path.join(_OUT.value, "benchmark.md")
  atomic_files.write_json_atomically(json_path, report)
  markdown = render_markdown(report)
  atomic_files.write_text_atomically(markdown_path, markdown)
  print(markdown, end="")
  print(f"Wrote {json_path} and {markdown_path} in {report['seconds']:.0f} s.")
  return 0


if __name__ == "__main__":
  app.run(main)
