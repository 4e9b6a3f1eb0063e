"""Measuring tools shared by the benchmarks: side-by-side timing, process memory, runner starts."""

import contextlib
import os
import re
import statistics
import subprocess
import sys
import time

_ROUND_LINE = re.compile(r"^round +(\d+)/(\d+) ")  # The runner's line after each round.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def alternate(contenders, repetitions: int) -> dict[str, list[float]]:
  """Times each contender once per repetition, reversing their order every other repetition.

  Args:
    contenders: name -> a function of no arguments. One that returns a float has measured itself
      (e.g. up to a point inside a subprocess): that float counts instead of its wall time.
    repetitions: how many times each runs.

  Returns:
    name -> seconds of each run.
  """
  names = list(contenders)
  seconds = {name: [] for name in names}
  for repetition in range(repetitions):
    for name in (names if repetition % 2 == 0 else names[::-1]):
      started = time.perf_counter()
      measured = contenders[name]()
      seconds[name].append(measured if isinstance(measured, float)
                           else time.perf_counter() - started)
  return seconds


def summarize(seconds: dict[str, list[float]]) -> dict[str, dict[str, float]]:
  return {name: {"median_s": statistics.median(values), "min_s": min(values),
                 "max_s": max(values), "n": len(values)} for name, values in seconds.items()}


def paired_ratios(seconds: dict[str, list[float]], numerator: str, denominator: str) -> list[float]:
  """Ratios of two contenders' times repetition by repetition (each pair ran back to back)."""
  return [a / b for a, b in zip(seconds[numerator], seconds[denominator])]


def memory_bytes(pid: int | str) -> dict[str, int]:
  """{"rss": resident now, "peak": the most resident so far (VmHWM)} of a process, in bytes."""
  found = {}
  with open(f"/proc/{pid}/status") as status:
    for line in status:
      if line.startswith(("VmRSS:", "VmHWM:")):
        found["rss" if line.startswith("VmRSS") else "peak"] = int(line.split()[1]) * 1024
  return found


def reset_peak_memory(pid: int | str) -> None:
  """Makes the process's peak (VmHWM) restart from its current resident size."""
  with contextlib.suppress(OSError):
    with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
      clear_refs.write("5")


def child_pids(pid: int) -> list[int]:
  """The direct children of process `pid`."""
  children = []
  with contextlib.suppress(OSError):
    for task in os.listdir(f"/proc/{pid}/task"):
      with open(f"/proc/{pid}/task/{task}/children") as listed:
        children.extend(int(child) for child in listed.read().split())
  return children


def _worker_pid(runner_pid: int) -> int | None:
  for child in child_pids(runner_pid):
    with contextlib.suppress(OSError):
      with open(f"/proc/{child}/cmdline", "rb") as cmdline:
        if b"worker_binary" in cmdline.read():
          return child
  return None


def runner_command(root: str, name: str, overrides: dict) -> list[str]:
  """The command line of `experiments.run_emnist` on configs/demo.py with `--config.` overrides."""
  return [sys.executable, "-m", "experiments.run_emnist", "--config=configs/demo.py",
          f"--root_output_dir={root}", f"--experiment_name={name}",
          *[f"--config.{field}={value}" for field, value in overrides.items()]]


def watch_runner(command: list[str], rounds: list[int], total_rounds: int,
                 wait_for_exit: bool = False) -> dict[int, dict]:
  """Starts the runner and, when it reports each of `rounds`, notes the seconds since its start and
  the memory of the runner and of its TFF worker; then kills it (SIGKILL), or with `wait_for_exit`
  lets it finish.

  Returns:
    round -> {"seconds", "runner": memory_bytes, "worker": memory_bytes}.

  Raises:
    RuntimeError: the runner exited before reporting every round.
  """
  started = time.perf_counter()
  process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True,
                             env=dict(os.environ, PYTHONPATH=REPO_ROOT))
  wanted = set(rounds)
  seen = {}
  try:
    for line in process.stdout:
      match = _ROUND_LINE.match(line)
      if not match or int(match.group(2)) != total_rounds or int(match.group(1)) not in wanted:
        continue
      round_num = int(match.group(1))
      seconds = time.perf_counter() - started
      worker = _worker_pid(process.pid)
      seen[round_num] = {"seconds": seconds, "runner": memory_bytes(process.pid),
                         "worker": memory_bytes(worker) if worker else {}}
      if len(seen) == len(wanted) and not wait_for_exit:
        return seen
    if len(seen) < len(wanted):
      raise RuntimeError(f"the runner exited with status {process.wait()} after reporting rounds "
                         f"{sorted(seen)} of {sorted(wanted)}: {' '.join(command)}")
    process.wait()
    return seen
  finally:
    process.kill()
    process.wait()


def seconds_until_round(command: list[str], round_num: int, total_rounds: int) -> float:
  """The seconds from the runner's start until it reports `round_num` (then it is killed)."""
  return watch_runner(command, [round_num], total_rounds)[round_num]["seconds"]
