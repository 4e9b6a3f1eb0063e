"""Chaos soak: a small run killed at random instants, again and again, must end as if never touched.

    python -m experiments.chaos --faults 300 --root_output_dir=runs/chaos [--seed 0] [--rounds 20]

Runs the linear-model smoke config (20 rounds of 2 clients) once straight, then again under faults: each
start of the runner gets one fault from a seeded schedule, at a random instant of its start-up or right
after a random round: SIGKILL of the runner, SIGKILL of its whole process group, SIGTERM, SIGINT, or a
second start of the same command while it runs (which must be refused with exit status 75). Every start
is restarted until its run is complete; a complete run (an episode) is then compared with the straight
run, and the next faults go to a fresh run. Compared: the final weights' SHA-256, the clients sampled in
every round, `metrics.csv` without time columns, the TensorBoard points of every tag (as the real
`tensorboard` serves them, time tags by step only) and the participation rows; and after each episode:
no process of the soak left (runner or `worker_binary`, found by an environment variable they
carry), the run folder's lock free, no temporary file or folder. Prints
`faults N, runs identical K of M, leaked processes L` and exits 0 only when every run is identical and
nothing leaked.
"""

import csv
import dataclasses
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from typing import Callable

from absl import app
from absl import flags
import numpy as np

from tff_resume.program import history
from tff_resume.program import run_lock

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAULT_KINDS = ("sigkill", "sigkill_group", "sigterm", "sigint", "second_start")
_EXPECTED_STATUS = {
    "sigkill": {-signal.SIGKILL, 0}, "sigkill_group": {-signal.SIGKILL, 0},
    "sigterm": {75, 0}, "sigint": {75, 0}, "second_start": {0, 75},  # 75: the second took the lock.
}
_START_UP_SECONDS = (1.0, 7.0)  # After Python itself started (its own start-up has no handlers).
_AFTER_ROUND_SECONDS = (0.0, 0.12)
_PROCESS_TIMEOUT_SECONDS = 300


@dataclasses.dataclass(frozen=True)
class Fault:
  kind: str
  after_round: int | None  # None: at `delay` seconds after the start; else `delay` after this round.
  delay: float


# Every process the soak starts (runners, and through them their workers) carries this variable, so
# leaks are found by it, whatever else runs on the machine (other tests' workers included).
_MARKER_VALUE = f"{os.getpid()}-{time.time_ns()}"
_MARKER = f"TFF_RESUME_CHAOS={_MARKER_VALUE}".encode()


def _runner_environment() -> dict[str, str]:
  return dict(os.environ, PYTHONPATH=_REPO_ROOT, TFF_RESUME_CHAOS=_MARKER_VALUE)


def schedule(seed: int, faults: int, rounds: int) -> list[Fault]:
  """The seeded list of faults: half at start-up instants, half right after a random round."""
  rng = random.Random(seed)
  planned = []
  for _ in range(faults):
    kind = rng.choice(FAULT_KINDS)
    if rng.random() < 0.5:
      planned.append(Fault(kind, None, rng.uniform(*_START_UP_SECONDS)))
    else:
      planned.append(Fault(kind, rng.randint(1, rounds - 1), rng.uniform(*_AFTER_ROUND_SECONDS)))
  return planned


def runner_command(root: str, name: str, rounds: int) -> list[str]:
  return [sys.executable, "-m", "experiments.run_emnist", "--config=configs/demo.py:smoke",
          "--config.model.name=linear", f"--config.training.total_rounds={rounds}",
          f"--root_output_dir={root}", f"--experiment_name={name}"]


def _start(command: list[str]) -> subprocess.Popen:
  return subprocess.Popen(command, cwd=_REPO_ROOT, env=_runner_environment(),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for_round(runner: subprocess.Popen, round_num: int) -> str:
  """Reads the runner's output until its line for `round_num` (or its end: a resumed start may begin
  past that round); returns what it read."""
  seen = []
  for line in runner.stdout:
    seen.append(line)
    if line.startswith(f"round {round_num:4d}/"):
      break
  return "".join(seen)


def inflict(command: list[str], fault: Fault) -> tuple[int, str]:
  """Starts the runner, applies `fault`, waits for it; returns (exit status, problem or "")."""
  runner = _start(command)
  problem, seen = "", ""
  try:
    if fault.after_round is not None:
      seen = _wait_for_round(runner, fault.after_round)
    time.sleep(fault.delay)
    if fault.kind == "second_start":
      second = subprocess.run(command, cwd=_REPO_ROOT, env=_runner_environment(),
                              capture_output=True, text=True, timeout=_PROCESS_TIMEOUT_SECONDS,
                              check=False)
      # Whichever of the two takes the lock first trains; the other is refused (75) or, when it
      # starts after the run is complete, says so (0).
      refused = second.returncode == 75 and "is in use by another process (PID" in second.stderr
      if not refused and second.returncode != 0 or "Traceback" in second.stderr:
        problem = f"second start ended with {second.returncode}: {second.stderr.strip()[-300:]}"
    elif fault.kind == "sigkill_group":
      try:
        os.killpg(runner.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass  # It had ended already.
    elif runner.poll() is None:
      runner.send_signal({"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM,
                          "sigint": signal.SIGINT}[fault.kind])
    output, _ = runner.communicate(timeout=_PROCESS_TIMEOUT_SECONDS)
    output = seen + output
  finally:
    if runner.poll() is None:
      runner.kill()
      runner.wait()
  status = runner.returncode
  if status not in _EXPECTED_STATUS[fault.kind] and not problem:
    problem = f"{fault.kind} ended the runner with status {status}: {output.strip()[-300:]}"
  if "Traceback" in output and not problem:
    problem = f"{fault.kind}: traceback in the output: {output.strip()[-300:]}"
  return status, problem


def run_to_completion(command: list[str]) -> None:
  result = subprocess.run(command, cwd=_REPO_ROOT, env=_runner_environment(),
                          capture_output=True, text=True, timeout=_PROCESS_TIMEOUT_SECONDS,
                          check=False)
  if result.returncode != 0:
    raise RuntimeError(f"{' '.join(command)} ended with {result.returncode}: {result.stderr}")


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
  problems: list[str] = dataclasses.field(default_factory=list)

  def summary(self) -> str:
    return (f"faults {self.faults}, runs identical {self.identical} of {self.runs}, "
            f"leaked processes {self.leaked_processes}")


def chaos(root: str, faults: int, seed: int, rounds: int,
          compare_tensorboard: Callable[[list[str]], dict[str, dict]],
          progress: Callable[[str], None] = lambda line: None) -> ChaosReport:
  """Runs the soak under `root` (see the module docstring); returns what it found.

  Args:
    compare_tensorboard: run names -> {run: tensorboard points}, read through a real server.
  """
  report = ChaosReport()
  if not os.path.isdir(os.path.join(root, "straight")):  # A caller may have run it already.
    run_to_completion(runner_command(root, "straight", rounds))
  episodes, episode = [], 0
  pending = schedule(seed, faults, rounds)
  while pending:
    name = f"chaos_{episode}"
    command = runner_command(root, name, rounds)
    while pending:
      fault = pending.pop(0)
      status, problem = inflict(command, fault)
      report.faults += 1
      if problem:
        report.problems.append(f"{name}: {problem}")
      progress(f"fault {report.faults}/{faults}: {fault.kind} "
               f"{'at start-up' if fault.after_round is None else f'after round {fault.after_round}'}"
               f" +{fault.delay:.2f} s -> status {status}{' PROBLEM ' + problem if problem else ''}")
      if status == 0:  # The run is complete.
        break
    else:
      run_to_completion(command)
    leaked = processes_left()
    report.leaked_processes += len(leaked)
    report.problems.extend(f"{name}: left {path}" for path in leftovers(os.path.join(root, name)))
    episodes.append(name)
    episode += 1
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


_FAULTS = flags.DEFINE_integer("faults", 300, "Faults to inflict in all.")
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
