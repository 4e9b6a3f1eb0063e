"""Chaos soak: a small run hit by faults at the instants where they can do harm, again and again,
must end as if never touched.

    python -m experiments.chaos --faults 100 --root_output_dir=runs/chaos [--seed 0] [--rounds 20]

Runs the linear-model smoke config (20 rounds of 2 clients) once straight, then again under faults:
each start of the runner gets one fault from a seeded schedule. The fault is one of SIGKILL of the
runner, SIGKILL of its whole process group, SIGTERM, SIGINT, or a second start of the same command
while the first is held (SIGSTOPped) at that instant, which must be refused with exit status 75 once
the first holds the run's lock. Its instant is timed from the run's own progress, which the runner
announces through `TFF_RESUME_FAULT=phases` (`tff_resume.runtime.fault_hooks`): a moment after the
start (TensorFlow's import), data loading, tracing the process, right after `config.json` is written,
while a version is being written (`pause-during-save:N` holds the save of the start's first, second or
third version for 2 s: the version-0 save of a fresh run), or right after the start's first, second or
third round is saved. Every start is restarted until its run is complete, and the start after a fault
must resume from the newest version the fault left; a complete run (an episode) is then compared with
the straight run, and the next faults go to a fresh run. Compared: every leaf of the newest state,
the final weights' SHA-256, the clients sampled in every round, `metrics.csv` without time columns,
the TensorBoard points of every tag (as the real `tensorboard` serves them, time tags by step only)
and the participation rows; and after each episode: no process of the soak left (runner or
`worker_binary`, found by an environment variable they carry), the run folder's lock free, no
temporary file or folder. Prints `faults F, runs identical I of R, leaked processes 0, hit a run with
saved rounds S, a save in progress W, a live lock L (T s)` and exits 0 only when every run is
identical and nothing leaked.
"""

import csv
import dataclasses
import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from typing import Callable

from absl import app
from absl import flags
import numpy as np

from tff_resume.runtime import fault_hooks
from tff_resume.storage import history
from tff_resume.storage import run_lock

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAULT_KINDS = ("sigkill", "sigkill_group", "sigterm", "sigint", "second_start")
# Where a fault lands, and how often (of 10): most where saved rounds and a held lock are at stake.
MOMENTS = {"import": 1, "data": 1, "tracing": 1, "config": 1, "save": 3, "saved": 3}
_MARKERS = {"data": "loading data", "tracing": "tracing", "config": "wrote config.json"}
_EXPECTED_STATUS = {
    "sigkill": {-signal.SIGKILL, 0}, "sigkill_group": {-signal.SIGKILL, 0},
    "sigterm": {75, 0}, "sigint": {75, 0}, "second_start": {0, 75},  # 75: the second took the lock.
}
# Seconds after the moment: the import after Python itself started (its own start-up has no
# handlers); data loading and the worker's start take about 0.1 s, tracing about 3 s (more beside
# other work), the paused save 2 s.
_DELAY_SECONDS = {"import": (1.0, 4.0), "data": (0.0, 0.05), "tracing": (0.0, 3.0),
                  "config": (0.0, 0.0), "save": (0.0, 1.0), "saved": (0.0, 0.12)}
_PROCESS_TIMEOUT_SECONDS = 300
_VERSION = re.compile(r"^version_(\d+)$")


@dataclasses.dataclass(frozen=True)
class Fault:
  """One fault for one start of the runner.

  Attributes:
    kind: one of FAULT_KINDS.
    moment: one of MOMENTS.
    step: `save`: the start's step-th save (0 its first: version 0 of a fresh run, else the version
      after the one resumed); `saved`: after the start's step-th round (1 its first).
    delay: seconds after the moment (`import`: after the process started).
  """
  kind: str
  moment: str
  step: int = 0
  delay: float = 0.0

  def describe(self) -> str:
    where = {"save": f"during save {self.step}", "saved": f"after round {self.step}"}.get(
        self.moment, self.moment)
    return f"{self.kind} {where} +{self.delay:.2f} s"


@dataclasses.dataclass
class Hit:
  """What one fault did.

  Attributes:
    landed: the moment came and the runner was alive when the fault was applied.
    saved_before: the newest version on disk when the fault was applied (None: none).
    saved_after: the newest version on disk once the start ended: the next start must resume there.
    in_save: it landed while a version was being written.
    live_lock: (second_start) the second start was refused: the run folder in use (exit status 75).
    second_status: (second_start) the second start's exit status.
    resumed_from: the version the next start that got that far resumed from (None: started fresh,
      or no start got that far); checked against `saved_after`.
    output: the runner's output (stdout and stderr).
  """
  fault: Fault
  status: int
  landed: bool = False
  saved_before: int | None = None
  saved_after: int | None = None
  in_save: bool = False
  live_lock: bool = False
  second_status: int | None = None
  resumed_from: int | None = None
  problem: str = ""
  output: str = ""


# Every process the soak starts (runners, and through them their workers) carries this variable, so
# leaks are found by it, whatever else runs on the machine (other tests' workers included).
_MARKER_VALUE = f"{os.getpid()}-{time.time_ns()}"
_MARKER = f"TFF_RESUME_CHAOS={_MARKER_VALUE}".encode()


def _runner_environment(hooks: str = "phases") -> dict[str, str]:
  # Without PYTHONUNBUFFERED, whatever the caller's shell sets: a batch job's log is a buffered
  # pipe or file, and the order of its lines is part of what a fault must leave right.
  environment = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
  return dict(environment, PYTHONPATH=_REPO_ROOT, TFF_RESUME_CHAOS=_MARKER_VALUE,
              TFF_RESUME_FAULT=hooks)


def schedule(seed: int, faults: int) -> list[Fault]:
  """The seeded list of faults (kinds alike, moments weighted by MOMENTS); steps count from each
  start, so every fault has a round to land after whatever the run's length."""
  rng = random.Random(seed)
  planned = []
  for _ in range(faults):
    kind = rng.choice(FAULT_KINDS)
    moment = rng.choices(list(MOMENTS), weights=list(MOMENTS.values()))[0]
    step = {"save": rng.randint(0, 2), "saved": rng.randint(1, 3)}.get(moment, 0)
    planned.append(Fault(kind, moment, step, rng.uniform(*_DELAY_SECONDS[moment])))
  return planned


def runner_command(root: str, name: str, rounds: int) -> list[str]:
  return [sys.executable, "-m", "experiments.run_emnist", "--config=configs/demo.py:smoke",
          "--config.model.name=linear", f"--config.training.total_rounds={rounds}",
          f"--root_output_dir={root}", f"--experiment_name={name}"]


def newest_version(run_dir: str) -> int | None:
  """The newest committed checkpoint version in `run_dir` (None: none)."""
  try:
    names = os.listdir(os.path.join(run_dir, "checkpoints"))
  except FileNotFoundError:
    return None
  versions = [int(match.group(1)) for match in map(_VERSION.match, names) if match]
  return max(versions, default=None)


def _start(command: list[str], hooks: str) -> subprocess.Popen:
  return subprocess.Popen(command, cwd=_REPO_ROOT, env=_runner_environment(hooks),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _read_until(runner: subprocess.Popen, found: Callable[[str], bool], seen: list[str]) -> bool:
  """Reads the runner's output into `seen` up to a line `found` accepts; False at its end."""
  for line in runner.stdout:
    seen.append(line)
    if found(line):
      return True
  return False


def _wait_for_moment(runner: subprocess.Popen, fault: Fault, save_version: int,
                     seen: list[str]) -> bool:
  if fault.moment == "import":
    return True
  if fault.moment == "saved":
    rounds_seen = [0]

    def is_last_round_line(line: str) -> bool:
      rounds_seen[0] += line.startswith("round ")
      return rounds_seen[0] == fault.step
    return _read_until(runner, is_last_round_line, seen)
  phase = (f"saving version {save_version}" if fault.moment == "save"
           else _MARKERS[fault.moment])
  return _read_until(runner, lambda line: line.rstrip("\n") == fault_hooks.marker(phase), seen)


def _second_start(command: list[str], runner: subprocess.Popen, hit: Hit) -> str:
  """A second start of `command` while `runner` is held (SIGSTOP) at the fault's instant."""
  held = runner.poll() is None
  if held:
    os.kill(runner.pid, signal.SIGSTOP)
  try:
    second = subprocess.run(command, cwd=_REPO_ROOT, env=_runner_environment(),
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=_PROCESS_TIMEOUT_SECONDS, check=False)
  finally:
    if held:
      os.kill(runner.pid, signal.SIGCONT)
  hit.second_status = second.returncode
  # Whichever of the two takes the lock first trains; the other is refused (75) or, when it
  # starts after the run is complete, says so (0).
  hit.live_lock = (second.returncode == 75
                   and f"is in use by another process (PID {runner.pid} on " in second.stderr)
  if second.returncode not in (0, 75) or "Traceback" in second.stderr or (
      second.returncode == 75 and not hit.live_lock):
    hit.problem = f"second start ended with {second.returncode}: {second.stderr.strip()[-300:]}"
  return second.stdout


def inflict(command: list[str], run_dir: str, fault: Fault) -> tuple[Hit, list[str]]:
  """Starts the runner, applies `fault` at its instant, waits for it; returns what the fault did
  and the output of the starts (the runner's, and a second start's)."""
  before = newest_version(run_dir)
  save_version = (0 if before is None else before + 1) + fault.step
  hooks = "phases" + (f",pause-during-save:{save_version}" if fault.moment == "save" else "")
  runner = _start(command, hooks)
  hit, seen, second_output = Hit(fault, status=0), [], ""
  try:
    reached = _wait_for_moment(runner, fault, save_version, seen)
    time.sleep(fault.delay)
    hit.landed = reached and runner.poll() is None
    if hit.landed:
      hit.saved_before = newest_version(run_dir)
      hit.in_save = fault.moment == "save"
      if fault.kind == "second_start":
        second_output = _second_start(command, runner, hit)
      elif fault.kind == "sigkill_group":
        try:
          os.killpg(runner.pid, signal.SIGKILL)
        except ProcessLookupError:
          pass  # It ended (with its worker) since the poll above.
      else:
        runner.send_signal({"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM,
                            "sigint": signal.SIGINT}[fault.kind])
    output, _ = runner.communicate(timeout=_PROCESS_TIMEOUT_SECONDS)
    hit.output = "".join(seen) + output
  finally:
    if runner.poll() is None:
      runner.kill()
      runner.wait()
  hit.status, hit.saved_after = runner.returncode, newest_version(run_dir)
  if hit.status not in _EXPECTED_STATUS[fault.kind] and not hit.problem:
    hit.problem = f"{fault.kind} ended the runner with status {hit.status}: {hit.output[-300:]}"
  if "Traceback" in hit.output and not hit.problem:
    hit.problem = f"{fault.kind}: traceback in the output: {hit.output.strip()[-300:]}"
  # A second start that trained (the first was held before it took the lock) said where it
  # started before the first did; one that found the run complete, after.
  if " is complete: " in second_output:
    return hit, [hit.output, second_output]
  return hit, [second_output, hit.output]


def start_line_version(output: str, run_dir: str) -> tuple[bool, int | None]:
  """(whether a start's output says where it started, the version it resumed from or found
  complete; None when it started fresh)."""
  folder = re.escape(run_dir)
  resumed = re.search(f"^Resuming {folder} from version (\\d+) ", output, re.M)
  complete = re.search(f"^Run {folder} is complete: (\\d+) rounds done", output, re.M)
  if resumed or complete:
    return True, int((resumed or complete).group(1))
  return re.search(f"^Starting {folder}:", output, re.M) is not None, None


def run_to_completion(command: list[str]) -> str:
  """Runs `command` without a fault; returns its output."""
  result = subprocess.run(command, cwd=_REPO_ROOT, env=_runner_environment(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=_PROCESS_TIMEOUT_SECONDS, check=False)
  if result.returncode != 0:
    raise RuntimeError(f"{' '.join(command)} ended with {result.returncode}: {result.stderr}")
  return result.stdout


def processes_with(variable: bytes) -> set[int]:
  """PIDs of live (not zombie) processes whose environment holds `variable` (b"NAME=VALUE")."""
  found = set()
  for name in os.listdir("/proc"):
    if not name.isdigit():
      continue
    try:
      with open(f"/proc/{name}/environ", "rb") as environ:
        marked = variable in environ.read().split(b"\0")
      with open(f"/proc/{name}/stat") as stat:
        state = stat.read().rsplit(")", 1)[1].split()[0]
    except OSError:
      continue
    if marked and state != "Z":
      found.add(int(name))
  return found


def marked_processes() -> set[int]:
  """PIDs of live processes started by this soak (runners and TFF workers)."""
  return processes_with(_MARKER)


def processes_left(timeout_seconds: float = 10.0) -> set[int]:
  """Processes of this soak still alive after `timeout_seconds` (a killed runner's worker dies
  asynchronously)."""
  deadline = time.monotonic() + timeout_seconds
  while True:
    leaked = marked_processes()
    if not leaked or time.monotonic() > deadline:
      return leaked
    time.sleep(0.2)


def run_outcome(run_dir: str) -> dict:
  """What must equal between two runs of the same config (wall times aside)."""
  checkpoints = os.path.join(run_dir, "checkpoints")
  newest = max(int(name.split("_")[1]) for name in os.listdir(checkpoints)
               if name.startswith("version_"))
  with open(os.path.join(checkpoints, f"version_{newest}", "metadata.json")) as metadata:
    record = json.load(metadata)
  with np.load(os.path.join(checkpoints, f"version_{newest}", "state.npz")) as arrays:
    # Every leaf of the server state (aggregator and finalizer state included), not only the model.
    state_sha256 = {key: hashlib.sha256(arrays[key].tobytes()).hexdigest() for key in arrays.files}
  with open(os.path.join(run_dir, "results", "metrics.csv"), newline="") as csv_file:
    rows = [{k: v for k, v in row.items() if not k.startswith("time/")}
            for row in csv.DictReader(csv_file)]
  connection = sqlite3.connect(os.path.join(run_dir, "results", "participation.sqlite"))
  try:
    participation = connection.execute(
        "SELECT round, client_id, examples FROM participation ORDER BY round, client_id").fetchall()
  finally:
    connection.close()
  run_history = history.RunHistory(history.path_in(checkpoints), read_only=True)
  try:
    sampled_clients = [clients for _, clients, _ in run_history.rounds(record["rounds_done"])]
  finally:
    run_history.close()
  return {"model_weights_sha256": record["model_weights_sha256"], "state_sha256": state_sha256,
          "sampled_clients": sampled_clients,
          "metrics_csv": rows, "participation": participation}


def leftovers(run_dir: str) -> list[str]:
  """Temporary files or folders under `run_dir`, and a held lock."""
  found = [os.path.join(folder, name) for folder, folders, files in os.walk(run_dir)
           for name in folders + files if ".tmp-" in name]
  lock = run_lock.RunLock(run_dir)
  try:
    lock.acquire()
    lock.release()
  except run_lock.RunLockedError as error:
    found.append(str(error))
  return found


def tensorboard_points(server, run: str) -> dict:
  """{tag: [(step, value)]} as the server serves them; time tags by step only."""
  points = {}
  for tag in server.get("data/plugin/scalars/tags").get(run, {}):
    series = server.get("data/plugin/scalars/scalars", run=run, tag=tag)
    points[tag] = [step if tag.startswith("time/") else (step, value) for _, step, value in series]
  return points


@dataclasses.dataclass
class ChaosReport:
  faults: int = 0
  runs: int = 0
  identical: int = 0
  leaked_processes: int = 0
  hits: list[Hit] = dataclasses.field(default_factory=list)
  problems: list[str] = dataclasses.field(default_factory=list)

  def summary(self) -> str:
    saved_rounds = sum(hit.landed and (hit.saved_before or 0) >= 1 for hit in self.hits)
    return (f"faults {self.faults}, runs identical {self.identical} of {self.runs}, "
            f"leaked processes {self.leaked_processes}, hit a run with saved rounds "
            f"{saved_rounds}, a save in progress {sum(hit.in_save for hit in self.hits)}, "
            f"a live lock {sum(hit.live_lock for hit in self.hits)}")


class _Episode:
  """One run under faults: checks that each start resumes from the newest version the previous
  start left."""

  def __init__(self, root: str, name: str, rounds: int):
    self.name, self.run_dir = name, os.path.join(root, name)
    self.command = runner_command(root, name, rounds)
    self._waiting: list[Hit] = []  # Faults whose next start has not yet said where it started.

  def starts_seen(self, outputs: list[str], report: ChaosReport) -> None:
    for output in outputs:
      said, version = start_line_version(output, self.run_dir)
      if not said:
        continue
      for hit in self._waiting:
        hit.resumed_from = version
        if version != hit.saved_after:
          report.problems.append(
              f"{self.name}: after {hit.fault.describe()} the newest version was "
              f"{hit.saved_after}, but the next start began from {version}")
      self._waiting.clear()

  def inflict(self, fault: Fault, report: ChaosReport) -> Hit:
    hit, outputs = inflict(self.command, self.run_dir, fault)
    self.starts_seen(outputs, report)
    self._waiting.append(hit)
    return hit


def chaos(root: str, faults: int, seed: int, rounds: int,
          compare_tensorboard: Callable[[list[str]], dict[str, dict]],
          progress: Callable[[str], None] = lambda line: None,
          planned: list[Fault] | None = None) -> ChaosReport:
  """Runs the soak under `root` (see the module docstring); returns what it found.

  Args:
    compare_tensorboard: run names -> {run: tensorboard points}, read through a real server.
    planned: the faults, in order, instead of `schedule(seed, faults)`.
  """
  report = ChaosReport()
  if not os.path.isdir(os.path.join(root, "straight")):  # A caller may have run it already.
    run_to_completion(runner_command(root, "straight", rounds))
  episodes = []
  pending = list(planned) if planned is not None else schedule(seed, faults)
  total = len(pending)
  while pending:
    episode = _Episode(root, f"chaos_{len(episodes)}", rounds)
    while pending:
      hit = episode.inflict(pending.pop(0), report)
      report.hits.append(hit)
      report.faults += 1
      if hit.problem:
        report.problems.append(f"{episode.name}: {hit.problem}")
      progress(f"fault {report.faults}/{total}: {hit.fault.describe()} -> status {hit.status}"
               f"{'' if hit.landed else ' (the run ended before the instant)'}"
               f"{' PROBLEM ' + hit.problem if hit.problem else ''}")
      if hit.status == 0:  # The run is complete.
        break
    else:
      episode.starts_seen([run_to_completion(episode.command)], report)
    report.leaked_processes += len(processes_left())
    report.problems.extend(f"{episode.name}: left {path}" for path in leftovers(episode.run_dir))
    episodes.append(episode.name)
  straight = run_outcome(os.path.join(root, "straight"))
  points = compare_tensorboard(["straight", *episodes])
  for name in episodes:
    report.runs += 1
    differences = [key for key, value in run_outcome(os.path.join(root, name)).items()
                   if value != straight[key]]
    if points[name] != points["straight"]:
      differences.append("tensorboard points")
    if differences:
      report.problems.append(f"{name} differs from the straight run in {', '.join(differences)}")
    else:
      report.identical += 1
  return report


def served_points(root: str) -> Callable[[list[str]], dict[str, dict]]:
  """Reads runs' TensorBoard points through the real `tensorboard` over `root` (default loader)."""
  from experiments import tensorboard_server  # pylint: disable=g-import-not-at-top

  def read(runs: list[str]) -> dict[str, dict]:
    server = tensorboard_server.TensorBoardServer(root)
    try:
      server.wait_for(lambda s: all(s.get("data/plugin/scalars/tags").get(run) for run in runs),
                      "every run")
      return {run: tensorboard_points(server, run) for run in runs}
    finally:
      server.stop()
  return read


_FAULTS = flags.DEFINE_integer("faults", 100, "Faults to inflict in all.")
_ROOT = flags.DEFINE_string("root_output_dir", "runs/chaos", "Where the runs are written.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the fault schedule.")
_ROUNDS = flags.DEFINE_integer("rounds", 20, "Rounds of each run.")


def main(argv):
  del argv
  if os.path.exists(_ROOT.value) and os.listdir(_ROOT.value):
    print(f"chaos: error: {_ROOT.value} is not empty; choose a new --root_output_dir.",
          file=sys.stderr)
    return 2
  started = time.monotonic()
  report = chaos(_ROOT.value, _FAULTS.value, _SEED.value, _ROUNDS.value,
                 served_points(_ROOT.value), progress=lambda line: print(line, flush=True))
  for problem in report.problems:
    print(f"PROBLEM {problem}")
  print(f"{report.summary()} ({time.monotonic() - started:.0f} s)")
  return 0 if not report.problems and report.identical == report.runs else 1


if __name__ == "__main__":
  app.run(main)
