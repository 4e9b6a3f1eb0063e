"""Research-scale sections of `experiments.benchmark`: costs against rounds done and population.

* bookkeeping: one round's bookkeeping (sampling, communication metrics, history, TensorBoard, CSV,
  participation, progress file, a checkpoint of the linear model's real server state) in run folders
  holding 10, 1,000 and 10,000 rounds, alternated; the long histories are built synthetically (50
  clients of 3,400 per round), not trained.
* long_resume: the real runner resumed from version 10,000 of a run against a cold start of the same
  config, each timed from process start to its first round line.
* population: the runner's start-up to its first round line with 100 and with 3,400 synthetic
  writers, and the peak memory of the runner and its TFF worker at that line.
* long_run: one linear-model run of 1,000 small rounds (2 clients x 20 examples); the memory of the
  runner and of its worker at rounds 50, 500 and 1,000, and the size of checkpoint versions 50 and
  1,000.
"""

import os
import shutil
import sqlite3
import statistics
import time

from experiments import measure
from tff_resume.data import synthetic
from tff_resume.learning import sampling
from tff_resume.program import experiment
from tff_resume.program import fingerprint as fingerprint_lib
from tff_resume.program import training
from tff_resume.releases import bookkeeping
from tff_resume.releases import metrics_release
from tff_resume.releases import release_managers
from tff_resume.storage import atomic_files
from tff_resume.storage import checkpointing
from tff_resume.storage import history as history_lib
from tff_resume.storage import participation
from tff_resume.storage import paths as paths_lib
from tff_resume.storage import run_record

TARGETS = {
    "bookkeeping_10000_vs_10": 1.2,
    "resume_10000_extra_seconds": 2.0,
    "startup_3400_vs_100_writers": 1.5,
    "startup_3400_extra_mib": 200.0,
    "rss_growth_50_to_500_mib": 50.0,
}
_POPULATION = 3400  # EMNIST's training writers.
_CLIENTS_PER_ROUND = 50
_EXAMPLES_PER_CLIENT = 100  # Participation rows need a count; its value does not change the cost.


def rounds_done_cases(quick: bool) -> tuple[int, ...]:
  return (10, 100, 300) if quick else (10, 1000, 10000)


def _log(message: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _cumulative_bits(metrics: dict, round_num: int) -> dict:
  """`metrics` with the cumulative bit counts of `round_num` equal rounds."""
  metrics = dict(metrics)
  for name in ("communication/broadcasted_bits", "communication/aggregated_bits"):
    metrics[name] = metrics[f"{name}_per_round"] * round_num
  return metrics


def _write_logs(paths: paths_lib.RunPaths, rounds: list, examples_of) -> str:
  """Writes `rounds` ([(client ids, metrics)], round r at r - 1) as a run's history, participation
  rows (`examples_of(client_id)`) and one TensorBoard event file (replacing any), the way the runner
  leaves them after training those rounds in one start; returns the history's chain."""
  history = history_lib.RunHistory(history_lib.path_in(paths.checkpoints))
  chain = history.replace_all(rounds)
  history.close()
  log = participation.ParticipationLog(paths.participation_db)
  log.replace_all((round_num, [(client_id, examples_of(client_id)) for client_id in clients])
                  for round_num, (clients, _) in enumerate(rounds, start=1))
  log.close()
  for path in metrics_release.event_files(paths.tensorboard_dir):
    os.remove(path)
  writer = metrics_release.TensorBoardRoundWriter(paths.tensorboard_dir)
  writer.start(1)
  for round_num, (_, metrics) in enumerate(rounds, start=1):
    writer.write_round(round_num, metrics)
  writer.close()
  atomic_files.write_json_atomically(paths.progress_json, {"last_completed_round": len(rounds)})
  return chain


class _LongRun:
  """A run folder holding `rounds_done` rounds as the runner leaves it, built without training."""

  def __init__(self, run_dir: str, rounds_done: int, workload, metrics_of):
    config = workload.config
    self.paths = paths_lib.RunPaths.from_run_dir(run_dir)
    self.manager = checkpointing.DurableProgramStateManager(
        self.paths.checkpoints, keep_total=config.checkpoint.keep_total)
    self._workload, self._metrics_of = workload, metrics_of
    self._population = synthetic.client_ids(synthetic.SyntheticSpec(num_clients=_POPULATION))
    rounds = [self.round(round_num) for round_num in range(1, rounds_done + 1)]
    chain = _write_logs(self.paths, rounds, lambda client_id: _EXAMPLES_PER_CLIENT)
    self.record = run_record.new_record(fingerprint_lib.compute_fingerprint(config),
                                        experiment.seeds(config), config.training.total_rounds)
    self.record.rounds_done, self.record.history_sha256 = rounds_done, chain
    self.record.last_metrics = rounds[-1][1]
    self.state = workload.bare_state
    bookkeeping.save_checkpoint(self.manager, self.state, self.record,
                                training.model_weights_sha256(workload.process, self.state))
    self.book = None

  def round(self, round_num: int) -> tuple[list[str], dict]:
    return (sampling.sample_clients(self._population, _CLIENTS_PER_ROUND, 0, round_num),
            self._metrics_of(round_num))

  def start(self) -> float:
    """What a start does to the logs (history check, TensorBoard cut, CSV); returns its seconds."""
    started = time.perf_counter()
    history, _ = bookkeeping.open_history(self.manager, self.record.rounds_done, self.record,
                                          self.record.to_json(), self.paths.progress_json)
    releases = release_managers.for_run(
        self.paths, fingerprint_lib.flatten_config(self._workload.config))
    self.book = bookkeeping.Bookkeeping(self.paths, self.manager, self.record, history,
                                        lambda client_id: _EXAMPLES_PER_CLIENT, releases)
    return time.perf_counter() - started

  def next_round(self) -> None:
    """One round's bookkeeping, as `training.train` does it after `process.next`."""
    round_num = self.record.rounds_done + 1
    clients, metrics = self.round(round_num)
    self.book.record_round(round_num, clients, metrics)
    bookkeeping.save_checkpoint(self.manager, self.state, self.record,
                                training.model_weights_sha256(self._workload.process, self.state))


def bench_bookkeeping(linear, scratch: str, quick: bool, repetitions: int) -> dict:
  """One round's bookkeeping at 10, 1,000 and 10,000 rounds done, alternated."""
  output = linear.process.next(linear.bare_state, linear.datasets(1))
  trained = training.flatten_metrics(output.metrics)

  per_round = {**trained, **training.communication_metrics(linear.communication,
                                                          _CLIENTS_PER_ROUND, None),
               "time/round_seconds": 0.1}

  def metrics_of(round_num):
    return _cumulative_bits(per_round, round_num)

  runs, start_seconds, build_seconds = {}, {}, {}
  for rounds_done in rounds_done_cases(quick):
    _log(f"bookkeeping: building a run of {rounds_done} rounds")
    started = time.perf_counter()
    runs[rounds_done] = _LongRun(os.path.join(scratch, f"long_{rounds_done}"), rounds_done, linear,
                                 metrics_of)
    build_seconds[rounds_done] = time.perf_counter() - started
    start_seconds[rounds_done] = runs[rounds_done].start()
    runs[rounds_done].next_round()  # Warm-up: the CSV gets its header, SQLite its pages.
  seconds = measure.alternate({f"round_at_{rounds_done}": runs[rounds_done].next_round
                               for rounds_done in runs}, repetitions)
  sizes = {}
  for rounds_done, run in runs.items():
    folder = run.manager.version_path(run.record.rounds_done)
    sizes[rounds_done] = sum(os.path.getsize(os.path.join(folder, name))
                             for name in os.listdir(folder))
    run.book.close()
  summary = measure.summarize(seconds)
  low, high = min(runs), max(runs)
  return {
      "contenders": summary, "seconds": seconds,
      "start_seconds": start_seconds, "build_seconds": build_seconds,
      "version_bytes": sizes,
      "bookkeeping_10000_vs_10": statistics.median(
          measure.paired_ratios(seconds, f"round_at_{high}", f"round_at_{low}")),
  }


def _runner_overrides(total_rounds: int, **extra) -> dict:
  overrides = {
      "model.name": "linear",
      "data.synthetic.num_clients": 100,
      "training.clients_per_round": 10,
      "training.total_rounds": total_rounds,
      "client.epochs": 1,
      "evaluation.rounds_per_eval": 0,
      "evaluation.max_clients": 1,
  }
  overrides.update({field.replace("__", "."): value for field, value in extra.items()})
  return overrides


def _extend_run(run_dir: str, rounds_done: int) -> None:
  """Turns a real run into one that stopped after round `rounds_done`: the rounds after its newest
  version repeat that version's last round (clients, metrics, cumulative bits growing), as history,
  participation, TensorBoard events and a checkpoint version holding its server state."""
  paths = paths_lib.RunPaths.from_run_dir(run_dir)
  manager = checkpointing.DurableProgramStateManager(paths.checkpoints, keep_total=2)
  version = manager.latest_good_version()
  metadata = manager.load_metadata(version)
  record = run_record.RunRecord.from_json(metadata)
  history = history_lib.RunHistory(history_lib.path_in(paths.checkpoints))
  history.restore(record.rounds_done, record.history_sha256)
  rounds = [(clients, metrics) for _, clients, metrics in history.rounds(record.rounds_done)]
  history.close()
  clients, last = rounds[-1]
  rounds += [(clients, _cumulative_bits(last, round_num))
             for round_num in range(len(rounds) + 1, rounds_done + 1)]
  with sqlite3.connect(paths.participation_db) as connection:
    examples = dict(connection.execute("SELECT client_id, examples FROM participation"))
  record.rounds_done, record.history_sha256 = rounds_done, _write_logs(paths, rounds, examples.__getitem__)
  record.last_metrics = rounds[-1][1]
  manager.save_version(manager.load_leaves(version), rounds_done, metadata=record.to_json())


def bench_long_resume(scratch: str, quick: bool, repetitions: int, seed_run: str,
                      overrides: dict) -> dict:
  """The runner resumed from version 10,000 against a cold start, process start to first round line.

  The long run is `seed_run` (a finished run of `overrides`) extended to 10,000 rounds."""
  rounds_done = rounds_done_cases(quick)[-1]
  total = rounds_done + 2  # The timed rounds are not the last one (no final evaluation).
  overrides = dict(overrides, **{"training.total_rounds": total})
  seed = os.path.join(scratch, "long_seed")
  _log(f"long_resume: the long run's folder extended to {rounds_done} rounds")
  shutil.copytree(seed_run, seed)
  _extend_run(seed, rounds_done)
  counter = {"cold": 0, "resumed": 0}

  def cold():
    counter["cold"] += 1
    return measure.seconds_until_round(
        measure.runner_command(scratch, f"long_cold{counter['cold']}", overrides), 1, total)

  def resumed():
    counter["resumed"] += 1
    name = f"long_resumed{counter['resumed']}"
    shutil.copytree(seed, os.path.join(scratch, name))  # Not timed.
    return measure.seconds_until_round(measure.runner_command(scratch, name, overrides),
                                       rounds_done + 1, total)

  seconds = measure.alternate({"cold_start_to_round_1": cold,
                               f"resume_to_round_{rounds_done + 1}": resumed}, repetitions)
  summary = measure.summarize(seconds)
  return {"rounds_done": rounds_done, "contenders": summary, "seconds": seconds,
          "resume_10000_extra_seconds": (summary[f"resume_to_round_{rounds_done + 1}"]["median_s"]
                                         - summary["cold_start_to_round_1"]["median_s"])}


def population_sizes(quick: bool) -> tuple[int, int]:
  return (100, 400) if quick else (100, _POPULATION)


def bench_population(scratch: str, quick: bool, repetitions: int) -> dict:
  """Start-up to the first round line with 100 and with 3,400 synthetic writers, and peak memory."""
  small, large = population_sizes(quick)
  seen = {small: [], large: []}

  def start_with(writers):
    def start():
      name = f"writers_{writers}_{len(seen[writers])}"
      overrides = _runner_overrides(2, data__synthetic__num_clients=writers)
      watched = measure.watch_runner(measure.runner_command(scratch, name, overrides), [1], 2)[1]
      seen[writers].append(watched)
      return watched["seconds"]
    return start

  seconds = measure.alternate({f"writers_{small}": start_with(small),
                               f"writers_{large}": start_with(large)}, repetitions)
  peak_mib = {writers: statistics.median(
      [(entry["runner"]["peak"] + entry["worker"].get("peak", 0)) / 2**20 for entry in entries])
              for writers, entries in seen.items()}
  return {
      "contenders": measure.summarize(seconds), "seconds": seconds,
      "peak_mib_runner_and_worker": peak_mib,
      "startup_3400_vs_100_writers": statistics.median(
          measure.paired_ratios(seconds, f"writers_{large}", f"writers_{small}")),
      "startup_3400_extra_mib": peak_mib[large] - peak_mib[small],
  }


def long_run_points(quick: bool) -> tuple[int, int, int]:
  return (5, 15, 20) if quick else (50, 500, 1000)


def long_run_overrides(quick: bool) -> dict:
  """Small rounds (2 clients x 20 examples), so 1,000 of them take minutes: what grows per round
  shows, not the work of big rounds."""
  first, _, last = long_run_points(quick)
  return _runner_overrides(
      last, checkpoint__keep_total=0, checkpoint__keep_every_k=first,
      training__clients_per_round=2, data__synthetic__min_examples_per_client=20,
      data__synthetic__max_examples_per_client=20)


def bench_long_run(scratch: str, quick: bool) -> dict:
  """One linear run of 1,000 rounds: memory at rounds 50, 500 and 1,000; versions 50 and 1,000."""
  first, middle, last = long_run_points(quick)
  # One round more than watched: at its last round a run stops its worker, which the watch could miss.
  overrides = {**long_run_overrides(quick), "training.total_rounds": last + 1}
  _log(f"long_run: {last} linear rounds")
  seen = measure.watch_runner(measure.runner_command(scratch, "long_run", overrides),
                              [first, middle, last], last + 1)
  checkpoints = os.path.join(scratch, "long_run", "checkpoints")

  def version_bytes(version):
    folder = os.path.join(checkpoints, f"version_{version}")
    return {name: os.path.getsize(os.path.join(folder, name)) for name in sorted(os.listdir(folder))}

  mib = {round_num: {process: entry[process]["rss"] / 2**20 for process in ("runner", "worker")}
         for round_num, entry in seen.items()}
  growth = {process: mib[middle][process] - mib[first][process] for process in ("runner", "worker")}
  return {
      "rounds": [first, middle, last], "rss_mib": mib, "rss_growth_mib": growth,
      "seconds_at": {round_num: entry["seconds"] for round_num, entry in seen.items()},
      "version_bytes": {first: version_bytes(first), last: version_bytes(last)},
      "rss_growth_50_to_500_mib": max(growth.values()),
  }


def run_sections(linear, scratch: str, quick: bool, repetitions: int) -> dict:
  """Every section above; returns {"targets": {name: value}, section: report, ...}."""
  _log("scale: bookkeeping against rounds done")
  bookkeeping_report = bench_bookkeeping(linear, scratch, quick, 3 if quick else 15)
  long_run = bench_long_run(scratch, quick)
  _log("scale: resume after a long run (runner subprocesses)")
  long_resume = bench_long_resume(scratch, quick, 1 if quick else min(3, repetitions),
                                  os.path.join(scratch, "long_run"), long_run_overrides(quick))
  _log("scale: start-up against the population (runner subprocesses)")
  population = bench_population(scratch, quick, 1 if quick else min(3, repetitions))
  values = {
      "bookkeeping_10000_vs_10": bookkeeping_report["bookkeeping_10000_vs_10"],
      "resume_10000_extra_seconds": long_resume["resume_10000_extra_seconds"],
      "startup_3400_vs_100_writers": population["startup_3400_vs_100_writers"],
      "startup_3400_extra_mib": population["startup_3400_extra_mib"],
      "rss_growth_50_to_500_mib": long_run["rss_growth_50_to_500_mib"],
  }
  return {"values": values, "bookkeeping": bookkeeping_report, "long_resume": long_resume,
          "population": population, "long_run": long_run}


def render_markdown(report: dict) -> list[str]:
  """The sections' figures as Markdown lines (the targets are in the main table)."""
  books = report["bookkeeping"]
  lines = ["", "## scale: bookkeeping per round against rounds done", "",
           "| rounds done | round median ms | start (logs) s | version bytes |",
           "| --- | --- | --- | --- |"]
  for rounds_done, start_s in books["start_seconds"].items():
    stats = books["contenders"][f"round_at_{rounds_done}"]
    lines.append(f"| {rounds_done} | {1000 * stats['median_s']:.1f} | {start_s:.3f} | "
                 f"{books['version_bytes'][rounds_done]} |")
  resume = report["long_resume"]
  lines += ["", f"## scale: resume from version {resume['rounds_done']} (runner starts)", "",
            "| contender | median s | min s | max s |", "| --- | --- | --- | --- |"]
  lines += [f"| {name} | {stats['median_s']:.2f} | {stats['min_s']:.2f} | {stats['max_s']:.2f} |"
            for name, stats in resume["contenders"].items()]
  population = report["population"]
  lines += ["", "## scale: start-up against the population (runner starts, linear model)", "",
            "| writers | start to round 1, median s | peak MiB, runner + worker |",
            "| --- | --- | --- |"]
  for writers, peak in population["peak_mib_runner_and_worker"].items():
    stats = population["contenders"][f"writers_{writers}"]
    lines.append(f"| {writers} | {stats['median_s']:.2f} | {peak:.0f} |")
  long_run = report["long_run"]
  lines += ["", f"## scale: one linear run of {long_run['rounds'][-1]} rounds", "",
            "| round | seconds since start | runner RSS MiB | worker RSS MiB |",
            "| --- | --- | --- | --- |"]
  for round_num in long_run["rounds"]:
    rss = long_run["rss_mib"][round_num]
    lines.append(f"| {round_num} | {long_run['seconds_at'][round_num]:.1f} | "
                 f"{rss['runner']:.0f} | {rss['worker']:.0f} |")
  first, last = long_run["rounds"][0], long_run["rounds"][-1]
  sizes = long_run["version_bytes"]
  lines += ["", f"Checkpoint version {first}: {sum(sizes[first].values())} bytes "
            f"({sizes[first]}); version {last}: {sum(sizes[last].values())} bytes "
            f"({sizes[last]})."]
  return lines
