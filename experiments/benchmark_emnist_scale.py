"""Benchmark section `emnist_scale`: federated EMNIST at research scale, in TFF's own file format.

    python -m experiments.benchmark --sections=emnist_scale --out runs/benchmark \\
        [--leaf_dir ../shared/data/femnist-leaf] [--emnist_scale_writers 3400]

Builds once, under `OUT/emnist_scale_data/`, an EMNIST-62 file at EMNIST's scale from a LEAF FEMNIST
folder: the LEAF import (`sample/`, 105 writers for the sample in `../shared`), then its writers
replicated (writer `w` becomes `w~00`, `w~01`, ...) up to `--emnist_scale_writers` training writers,
the test split's writers replicated alike, written as TFF's own writer writes it: TFF's two tables and
splits `all_train` and `all_test`, and no index (`unindexed/`); and a copy with the index the
toolkit adds (`indexed/`). Then, each comparison side by side in this run:

- client reads: one client's examples through TFF's `SqlClientData`, without and with the index;
- runner rounds (`configs/emnist_fedavg.py`, all 62 classes): on TFF's unindexed file (a fresh copy
  each start; the start adds the index) against the indexed file, and against the in-memory floor
  (the same clients' SGD steps on batches already in memory); the seconds from a start to its first
  round line on the scaled file against the 105-writer import; the runner's peak memory;
- the `tf.train.Example` parse's share of a round;
- evaluation of every test writer: federated (TFF, once) and centralized, against the plain-TF
  forward-pass floor over the same examples in memory.
"""

import csv
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time

import tensorflow as tf
import tensorflow_federated as tff

from configs import emnist_fedavg
from experiments import measure
from tff_resume.analysis import global_model
from tff_resume.data import client_index
from tff_resume.data import emnist
from tff_resume.data import leaf
from tff_resume.data import preprocessing
from tff_resume.learning import models
from tff_resume.program import centralized_evaluation
from tff_resume.program import experiment
from tff_resume.runtime import local_worker

TARGETS = {
    "unindexed_round_vs_indexed": 1.05,
    "emnist_round_vs_in_memory_floor": 1.15,
    "centralized_evaluation_vs_forward_floor": 2.0,
    "startup_scaled_vs_sample_writers": 1.2,
}
_SPLITS = ("all_train", "all_test")
_BUILD_FILE = "build.json"


def _log(message: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _write_scaled(sample_path: str, path: str, copies: int) -> None:
  """Writes `copies` copies of every writer of `sample_path`'s 62-class splits into a new file at
  `path`, in TFF's tables and without an index; the file appears only when complete."""
  temporary = f"{path}.tmp-{os.getpid()}"
  connection = sqlite3.connect(temporary)
  try:
    connection.execute("PRAGMA journal_mode = OFF")
    connection.execute("PRAGMA synchronous = OFF")
    # The tables of TFF's `sql_client_data_utils.save_to_sql_client_data`, which adds no index.
    connection.execute("CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT NULL, "
                       "serialized_example_proto BLOB NOT NULL)")
    connection.execute("CREATE TABLE client_metadata (client_id TEXT NOT NULL, "
                       "split_name TEXT NOT NULL, num_examples INTEGER NOT NULL)")
    connection.execute("ATTACH DATABASE ? AS sample", (f"file:{sample_path}?mode=ro",))
    for split_name in _SPLITS:
      writers = [row[0] for row in connection.execute(
          "SELECT client_id FROM sample.client_metadata WHERE split_name = ? ORDER BY client_id",
          (split_name,))]
      for copy in range(copies):  # Writer after writer, as TFF's writer writes them.
        for writer in writers:
          connection.execute(
              "INSERT INTO examples SELECT split_name, ? , serialized_example_proto "
              "FROM sample.examples WHERE client_id = ? AND split_name = ? ORDER BY rowid",
              (f"{writer}~{copy:02d}", writer, split_name))
          connection.execute(
              "INSERT INTO client_metadata SELECT ?, split_name, num_examples "
              "FROM sample.client_metadata WHERE client_id = ? AND split_name = ?",
              (f"{writer}~{copy:02d}", writer, split_name))
      connection.commit()
    connection.execute("DETACH DATABASE sample")
  finally:
    connection.close()
  os.replace(temporary, path)


def build_data(leaf_dir: str, folder: str, writers: int) -> dict:
  """The three EMNIST folders under `folder` (built at the first call, then reused): `sample` (the
  LEAF import), `unindexed` (writers replicated, as TFF writes it) and `indexed` (with the index)."""
  wanted = {"leaf_dir": os.path.abspath(leaf_dir), "writers": writers}
  build_path = os.path.join(folder, _BUILD_FILE)
  dirs = {name: os.path.join(folder, name) for name in ("sample", "unindexed", "indexed")}
  if os.path.exists(build_path):
    with open(build_path) as build_file:
      built = json.load(build_file)
    if {k: built.get(k) for k in wanted} == wanted:
      _log(f"emnist_scale: reusing the files built in {folder}")
      return {**built, "dirs": dirs}
    shutil.rmtree(folder)
  os.makedirs(folder)
  started = time.perf_counter()
  _log(f"emnist_scale: importing {leaf_dir}")
  leaf.import_leaf(leaf_dir, dirs["sample"])
  sample_path = emnist.emnist_database_path(dirs["sample"])
  with sqlite3.connect(f"file:{sample_path}?mode=ro", uri=True) as connection:
    sample_writers = connection.execute(
        "SELECT count(*) FROM client_metadata WHERE split_name = 'all_train'").fetchone()[0]
  copies = max(1, round(writers / sample_writers))
  _log(f"emnist_scale: writing {copies} copies of {sample_writers} writers (no index)")
  os.makedirs(dirs["unindexed"])
  unindexed = emnist.emnist_database_path(dirs["unindexed"])
  _write_scaled(sample_path, unindexed, copies)
  _log("emnist_scale: an indexed copy")
  os.makedirs(dirs["indexed"])
  indexed = emnist.emnist_database_path(dirs["indexed"])
  shutil.copyfile(unindexed, f"{indexed}.tmp")
  client_index.add_client_index(f"{indexed}.tmp")
  os.replace(f"{indexed}.tmp", indexed)
  with sqlite3.connect(f"file:{unindexed}?mode=ro", uri=True) as connection:
    counts = dict(connection.execute(
        "SELECT split_name, count(*) FROM client_metadata GROUP BY split_name").fetchall())
    examples = dict(connection.execute(
        "SELECT split_name, sum(num_examples) FROM client_metadata GROUP BY split_name").fetchall())
  built = {**wanted, "sample_writers": sample_writers, "copies": copies, "writers_by_split": counts,
           "examples_by_split": examples, "unindexed_bytes": os.path.getsize(unindexed),
           "index_bytes": client_index.added_index_bytes(indexed),
           "build_seconds": time.perf_counter() - started}
  with open(build_path, "w") as build_file:
    json.dump(built, build_file, indent=1)
  return {**built, "dirs": dirs}


def round_config(cache_dir: str, quick: bool, rounds: int):
  """`configs/emnist_fedavg.py` on all 62 classes, evaluated once at the end on 20 test writers."""
  config = emnist_fedavg.get_config()
  config.data.cache_dir = cache_dir
  config.data.only_digits = False
  config.training.total_rounds = rounds
  config.training.clients_per_round = 2 if quick else 10
  config.client.epochs = 1 if quick else 5
  config.evaluation.rounds_per_eval = 0
  config.evaluation.max_clients = 2 if quick else 20
  return config


def _runner_command(config, root: str, name: str) -> list[str]:
  fields = {"data.cache_dir": config.data.cache_dir, "data.only_digits": "false",
            "training.total_rounds": config.training.total_rounds,
            "training.clients_per_round": config.training.clients_per_round,
            "client.epochs": config.client.epochs, "evaluation.rounds_per_eval": 0,
            "evaluation.max_clients": config.evaluation.max_clients}
  return [sys.executable, "-m", "experiments.run_emnist", "--config=configs/emnist_fedavg.py",
          f"--root_output_dir={root}", f"--experiment_name={name}",
          *[f"--config.{field}={value}" for field, value in fields.items()]]


def _round_1_seconds(run_dir: str) -> float:
  with open(os.path.join(run_dir, "results", "metrics.csv"), newline="") as csv_file:
    return float(next(csv.DictReader(csv_file))["time/round_seconds"])


class _RunnerStarts:
  """Runner starts on one EMNIST folder. A start's round time is the wall time between its round
  lines (process.next, the bookkeeping and the checkpoint: all a round costs), for rounds 2 (1
  traces) to the one before the last (the last also evaluates); its seconds to the first round line
  and its peak memory (runner and worker) are kept too."""

  def __init__(self, name: str, cache_dir: str, scratch: str, quick: bool, rounds: int,
               fresh_copy_of: str | None = None):
    self.name, self.cache_dir, self.scratch = name, cache_dir, scratch
    self.quick, self.rounds, self.fresh_copy_of = quick, rounds, fresh_copy_of
    self.startup_seconds, self.round_seconds, self.peak_bytes = [], [], []
    self._starts = 0

  def __call__(self) -> float:
    self._starts += 1
    cache_dir = self.cache_dir
    if self.fresh_copy_of:  # TFF's file as it was written: this start finds no index.
      shutil.rmtree(cache_dir, ignore_errors=True)
      os.makedirs(cache_dir)
      shutil.copyfile(emnist.emnist_database_path(self.fresh_copy_of),
                      emnist.emnist_database_path(cache_dir))
      os.sync()  # Its 2.3 GiB written back first, not during the rounds timed.
    config = round_config(cache_dir, self.quick, self.rounds)
    root, name = os.path.join(self.scratch, "runs"), f"{self.name}_{self._starts}"
    seen = measure.watch_runner(_runner_command(config, root, name),
                                list(range(1, self.rounds + 1)), self.rounds, wait_for_exit=True)
    # Start-up: to the first round line, less round 1's own `process.next` (the clients sampled
    # from 105 and from 3,400 writers differ, and so does their work).
    run_dir = os.path.join(root, name)
    self.startup_seconds.append(seen[1]["seconds"] - _round_1_seconds(run_dir))
    last = seen[self.rounds]
    self.peak_bytes.append(last["runner"].get("peak", 0) + last["worker"].get("peak", 0))
    seconds = statistics.median(seen[r]["seconds"] - seen[r - 1]["seconds"]
                                for r in range(2, self.rounds))
    self.round_seconds.append(seconds)
    return seconds


def bench_client_reads(dirs: dict, quick: bool, repetitions: int) -> dict:
  """Seconds to read one client's examples through TFF's `SqlClientData`, without and with the
  index (the same clients, alternated)."""
  # TFF's loader itself: the toolkit's would add the index to the unindexed file.
  data = {name: tff.simulation.datasets.emnist.load_data(
      only_digits=False, cache_dir=dirs[name])[0] for name in ("unindexed", "indexed")}
  client_ids = sorted(data["indexed"].client_ids)[::997][:2 if quick else 5]

  def reader(client_data):
    def read() -> float:
      started = time.perf_counter()
      for client_id in client_ids:
        for _ in client_data.create_tf_dataset_for_client(client_id):
          pass
      return (time.perf_counter() - started) / len(client_ids)
    return read

  seconds = measure.alternate({name: reader(client_data) for name, client_data in data.items()},
                              repetitions)
  return {"clients": client_ids, "seconds": seconds, "contenders": measure.summarize(seconds),
          "unindexed_vs_indexed": statistics.median(
              measure.paired_ratios(seconds, "unindexed", "indexed"))}


def bench_rounds(dirs: dict, scratch: str, quick: bool, repetitions: int, floor_trainer,
                 workload) -> dict:
  """Runner starts on the unindexed file (a fresh copy), the indexed file and the 105-writer import,
  alternated, against the in-memory floor on the indexed file's clients of the same rounds."""
  rounds = 3 if quick else 5
  starts = {
      "unindexed": _RunnerStarts("unindexed", os.path.join(scratch, "unindexed_copy"), scratch,
                                 quick, rounds, fresh_copy_of=dirs["unindexed"]),
      "indexed": _RunnerStarts("indexed", dirs["indexed"], scratch, quick, rounds),
      "sample": _RunnerStarts("sample", dirs["sample"], scratch, quick, rounds),
  }
  config = round_config(dirs["indexed"], quick, rounds)
  bench = workload(config)
  floor = floor_trainer(config)
  batches = {round_num: floor.materialize(bench.datasets(round_num))
             for round_num in range(2, rounds)}

  def in_memory_floor() -> float:
    times = []
    for round_num in range(2, rounds):
      started = time.perf_counter()
      floor.round(batches[round_num], in_memory=True)
      times.append(time.perf_counter() - started)
    return statistics.median(times)

  floor.round(batches[2], in_memory=True)  # Traces its step.
  seconds = measure.alternate({**starts, "in_memory_floor": in_memory_floor}, repetitions)
  startup = {name: start.startup_seconds for name, start in starts.items()}
  return {
      "rounds_per_start": rounds, "seconds": seconds, "contenders": measure.summarize(seconds),
      "startup_seconds": startup,
      "peak_mib": {name: max(start.peak_bytes) / 2**20 for name, start in starts.items()},
      "unindexed_round_vs_indexed": statistics.median(
          measure.paired_ratios(seconds, "unindexed", "indexed")),
      "emnist_round_vs_in_memory_floor": statistics.median(
          measure.paired_ratios(seconds, "indexed", "in_memory_floor")),
      "startup_scaled_vs_sample_writers": statistics.median(
          [a / b for a, b in zip(startup["indexed"], startup["sample"])]),
      "workload": bench,
  }


def bench_parse(bench, rounds: int, round_seconds: float, repetitions: int) -> dict:
  """The share of a round that reading its clients' examples takes: the serialized examples alone
  (TFF's SQL query), and read and parsed as TFF's loader does (once a round: the pipeline caches
  parsed examples across epochs)."""
  client_data = bench.train_data
  clients = {round_num: bench.select_clients(round_num) for round_num in range(2, rounds)}
  raw_fn = client_data.serializable_dataset_fn  # The parsed dataset of a client id.
  database = emnist.emnist_database_path(bench.config.data.cache_dir)

  def serialized(client_id):
    return tf.data.experimental.SqlDataset(
        "sqlite", database, "SELECT serialized_example_proto FROM examples WHERE client_id = '"
        f"{client_id}' AND split_name = 'all_train'", (tf.string,))

  def per_round(make):
    def run() -> float:
      times = []
      for ids in clients.values():
        started = time.perf_counter()
        for client_id in ids:  # Iterated in TensorFlow's graph, as a round iterates them.
          make(client_id).reduce(tf.constant(0, tf.int64), lambda count, _: count + 1)
        times.append(time.perf_counter() - started)
      return statistics.median(times)
    return run

  seconds = measure.alternate({"read_serialized": per_round(serialized),
                               "read_and_parse": per_round(raw_fn)}, repetitions)
  read = statistics.median(seconds["read_serialized"])
  parsed = statistics.median(seconds["read_and_parse"])
  return {"seconds": seconds, "contenders": measure.summarize(seconds),
          "parse_share_of_round": (parsed - read) / round_seconds,
          "read_and_parse_share_of_round": parsed / round_seconds}


def _evaluation_config(cache_dir: str, quick: bool, mode: str):
  config = round_config(cache_dir, quick, 1)
  config.evaluation.max_clients = 20 if quick else 0  # 0: every test writer.
  config.evaluation.mode = mode
  return config


def federated_evaluation_child(cache_dir: str, quick: bool) -> dict:
  """TFF's federated evaluation of the initial weights on every test writer of `cache_dir`, once,
  run in a process of its own (`python -m experiments.benchmark_emnist_scale DIR`): its seconds,
  metrics and that process's peak memory (TFF serializes every writer's dataset into the call)."""
  worker = local_worker.start_local_execution_context()
  try:
    config = _evaluation_config(cache_dir, quick, "federated")
    _, test_data = experiment.load_data(config)
    weights = models.initial_model_weights(config.model.name, experiment.num_classes(config),
                                           config.training.seed)
    evaluate = experiment.build_evaluation(config, test_data)
    started = time.perf_counter()
    metrics = evaluate(weights)
    seconds = time.perf_counter() - started
  finally:
    worker.stop()
  return {"seconds": seconds, "metrics": metrics,
          "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def bench_evaluation(dirs: dict, quick: bool, repetitions: int) -> dict:
  """Every test writer evaluated: centralized evaluation and the plain-TF forward pass over the same
  examples already in memory, alternated; TFF's federated evaluation once, in a child process (its
  memory is TFF's, not this benchmark's)."""
  config = _evaluation_config(dirs["indexed"], quick, "centralized")
  _, test_data = experiment.load_data(config)
  weights = models.initial_model_weights(config.model.name, experiment.num_classes(config),
                                         config.training.seed)
  evaluate = experiment.build_evaluation(config, test_data)
  client_ids = sorted(test_data.client_ids)[:config.evaluation.max_clients or None]
  spec = experiment.preprocess_spec(config)
  batches = list(preprocessing.batch_for_evaluation(
      centralized_evaluation.pooled_examples(test_data, client_ids, spec), spec,
      centralized_evaluation.BATCH_SIZE))  # The same examples, in the same batches, in memory.
  model = models.create_keras_model(config.model.name, experiment.num_classes(config),
                                    config.training.seed)
  global_model.assign_weights(model, list(weights.trainable) + list(weights.non_trainable))
  loss_sum_of = models.keras_loss(tf.keras.losses.Reduction.SUM)

  @tf.function
  def forward(x, y):
    labels = tf.reshape(y, [-1])
    logits = model(x, training=False)
    correct = tf.reduce_sum(tf.cast(tf.equal(
        tf.argmax(logits, -1, output_type=labels.dtype), labels), tf.int64))
    return loss_sum_of(labels, logits), correct

  def floor() -> None:
    for batch in batches:
      forward(batch["x"], batch["y"])

  results = {}

  def centralized() -> None:
    results["centralized"] = evaluate(weights)

  floor()  # Traces it (the full batches and the last one).
  centralized()  # Builds its model and traces it.
  seconds = measure.alternate({"centralized": centralized, "forward_floor": floor}, repetitions)
  del batches
  command = [sys.executable, "-m", "experiments.benchmark_emnist_scale", dirs["indexed"],
             *(["--quick"] if quick else [])]
  federated = json.loads(subprocess.run(command, check=True, stdout=subprocess.PIPE,
                                        text=True).stdout.splitlines()[-1])
  return {
      "test_writers": len(client_ids), "examples": results["centralized"]["evaluation/num_examples"],
      "seconds": seconds, "contenders": measure.summarize(seconds),
      "centralized_metrics": results["centralized"], "federated": federated,
      "centralized_evaluation_vs_forward_floor": statistics.median(
          measure.paired_ratios(seconds, "centralized", "forward_floor")),
      "federated_vs_centralized": federated["seconds"] / statistics.median(seconds["centralized"]),
  }


def run_section(out: str, leaf_dir: str, writers: int, scratch: str, quick: bool,
                repetitions: int, floor_trainer, workload) -> dict:
  """The whole section; returns its report with {"values": target values}."""
  built = build_data(leaf_dir, os.path.join(out, "emnist_scale_data"), writers)
  dirs = built.pop("dirs")
  _log("emnist_scale: client reads without and with the index")
  reads = bench_client_reads(dirs, quick, repetitions)
  _log("emnist_scale: runner rounds (unindexed, indexed, 105 writers) and the in-memory floor")
  rounds = bench_rounds(dirs, scratch, quick, 1 if quick else min(3, repetitions), floor_trainer,
                        workload)
  bench = rounds.pop("workload")
  _log("emnist_scale: the parse's share of a round")
  parse = bench_parse(bench, rounds["rounds_per_start"],
                      rounds["contenders"]["indexed"]["median_s"], repetitions)
  _log("emnist_scale: evaluation of every test writer (federated once, centralized)")
  evaluation = bench_evaluation(dirs, quick, 2 if quick else min(3, repetitions))
  values = {name: source[name] for name, source in (
      ("unindexed_round_vs_indexed", rounds), ("emnist_round_vs_in_memory_floor", rounds),
      ("startup_scaled_vs_sample_writers", rounds),
      ("centralized_evaluation_vs_forward_floor", evaluation))}
  return {"values": values, "data": built, "client_reads": reads, "rounds": rounds,
          "parse": parse, "evaluation": evaluation}


def render_markdown(report: dict) -> list[str]:
  data, reads, rounds = report["data"], report["client_reads"], report["rounds"]
  parse, evaluation = report["parse"], report["evaluation"]
  reads_ms = {name: 1000 * stats["median_s"] for name, stats in reads["contenders"].items()}
  lines = [
      "", "## emnist_scale: TFF's file format at EMNIST's scale", "",
      f"{data['writers_by_split']} writers, {data['examples_by_split']} examples "
      f"({data['copies']} copies of {data['sample_writers']} LEAF writers), "
      f"{data['unindexed_bytes'] / 2**30:.2f} GiB as TFF writes it (no index); the index "
      f"{data['index_bytes'] / 2**20:.1f} MiB.", "",
      "| measure | median |", "| --- | --- |",
      f"| one client's read, no index | {reads_ms['unindexed']:.0f} ms |",
      f"| one client's read, index | {reads_ms['indexed']:.0f} ms |",
  ]
  for name in ("unindexed", "indexed", "sample", "in_memory_floor"):
    lines.append(f"| round ({name}) | {rounds['contenders'][name]['median_s']:.3f} s |")
  for name, values in rounds["startup_seconds"].items():
    lines.append(f"| start-up: to round 1's line less its process.next ({name}) | "
                 f"{statistics.median(values):.1f} s |")
  for name, mib in rounds["peak_mib"].items():
    lines.append(f"| peak memory, runner + worker ({name}) | {mib:.0f} MiB |")
  lines += [
      f"| parse's share of a round | {100 * parse['parse_share_of_round']:.1f}% |",
      f"| read and parse's share of a round | {100 * parse['read_and_parse_share_of_round']:.1f}% |",
      f"| federated evaluation, {evaluation['test_writers']} test writers | "
      f"{evaluation['federated']['seconds']:.1f} s |",
      f"| peak memory, federated evaluation's process | {evaluation['federated']['peak_mib']:.0f} MiB |",
      f"| centralized evaluation, {evaluation['examples']} examples | "
      f"{evaluation['contenders']['centralized']['median_s']:.2f} s |",
      f"| plain-TF forward pass, same examples in memory | "
      f"{evaluation['contenders']['forward_floor']['median_s']:.2f} s |",
  ]
  return lines



if __name__ == "__main__":  # The section's child: python -m experiments.benchmark_emnist_scale DIR.
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description="TFF's federated evaluation of an EMNIST folder's "
                                   "test writers; prints seconds, metrics, peak memory as JSON.")
  parser.add_argument("cache_dir")
  parser.add_argument("--quick", action="store_true", help="20 test writers instead of all.")
  arguments = parser.parse_args()
  print(json.dumps(federated_evaluation_child(arguments.cache_dir, arguments.quick)))
