"""deploy/slurm/study.sbatch on a real SLURM (Debian's 22.05, a private cluster of three nodes on this
host, tests/slurm_cluster.py): preempted, timed out, a node lost, cancelled, and a start that cannot
make progress. Each job runs the script unchanged, with 2 TLS workers (nodes n2, n3 on ports P and
P+1) and the runner on n1; a completed job's run equals an uninterrupted run of the same config on the
local worker with the same `num_subrounds` (2): the server state's every leaf, the clients of every
round, metrics.csv but wall times, participation.

Not part of `make test` (it needs root, and a minute of apt where SLURM is missing): `make test-slurm`,
which `.ci/run` calls. About 11 minutes here (6 tests, 634 s on 2026-12-07).
"""

import json
import os
import re
import socket
import subprocess
import sys
import time

from absl.testing import absltest
import portpicker

from experiments import chaos
from tests import slurm_cluster

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SCRIPT = "deploy/slurm/study.sbatch"
_VENV = os.path.dirname(os.path.dirname(sys.executable))
_SHORT_ROUNDS = 60  # Linear model, about 0.1 s a round on the TLS workers.
# The time limit's signal comes at SLURM's first check (every 30 s) once fewer than
# --signal's seconds are left: with --time=2 --signal=B:TERM@75, 15 to 45 s after the start. The run
# must last longer: start-up (about 12 s) and 500 rounds take about 60 s.
_LONG_ROUNDS = 500
_FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
_REFERENCES: dict[tuple[str, ...], dict] = {}


def _reference(scratch: str, rounds: int, *overrides: str) -> dict:
  """The outcome of an uninterrupted run on the local worker (made once per config)."""
  key = (str(rounds), *overrides)
  if key not in _REFERENCES:
    name = f"reference-{len(_REFERENCES)}"
    subprocess.run(
        [sys.executable, "-m", "experiments.run_emnist", "--config=configs/demo.py:smoke",
         f"--root_output_dir={scratch}", f"--experiment_name={name}",
         "--config.model.name=linear", f"--config.training.total_rounds={rounds}", *overrides],
        cwd=_REPO_ROOT, check=True, capture_output=True, timeout=600)
    _REFERENCES[key] = chaos.run_outcome(os.path.join(scratch, name))
  return _REFERENCES[key]


def _free_port_pair() -> int:
  """A port P with P and P+1 free (the two workers' ports with TFF_WORKER_PORT_STEP=1)."""
  while True:
    port = portpicker.pick_unused_port()
    if portpicker.is_port_free(port + 1):
      return port


def setUpModule():
  reason = slurm_cluster.missing()
  if reason:
    raise absltest.SkipTest(reason)


class StudySbatchOnSlurmTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.scratch = self.create_tempdir().full_path
    self.cluster = slurm_cluster.PrivateSlurm()
    self.cluster.start()
    self.addCleanup(self.cluster.stop)

  def submit(self, rounds: int, sbatch_options: tuple[str, ...] = (),
             env: dict[str, str] | None = None) -> str:
    env = {"CONFIG": "configs/demo.py:smoke", "ROOT_OUTPUT_DIR": self.scratch, "EXPERIMENT": "run",
           "VENV": _VENV, "TFF_WORKER_PORT": str(_free_port_pair()), "TFF_WORKER_PORT_STEP": "1",
           "PYTHONPATH": _REPO_ROOT, **(env or {})}
    self.cluster.wait_until_idle()  # What an earlier job of the test left has ended.
    # Overrides of the script's defaults on the command line, as a user on a small cluster would.
    self.job_id = self.cluster.sbatch(
        ["--cpus-per-task=1", f"--output={self.scratch}/slurm-%j.out", *sbatch_options, _SCRIPT,
         "--config.model.name=linear", f"--config.training.total_rounds={rounds}"],
        env=env, cwd=_REPO_ROOT)
    return self.job_id

  def output(self) -> str:
    try:
      with open(os.path.join(self.scratch, f"slurm-{self.job_id}.out")) as out:
        return out.read()
    except FileNotFoundError:
      return ""

  def wait_for_output(self, pattern: str, timeout_seconds: float = 120) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not re.search(pattern, self.output(), re.MULTILINE):
      if time.monotonic() > deadline:
        self.fail(f"no line matching {pattern!r} in {timeout_seconds} s; the job's output:\n"
                  f"{self.output()[-3000:]}")
      time.sleep(0.2)

  def wait_until_final(self, timeout_seconds: float = 240) -> dict[str, str]:
    """Waits for the job's end (a requeued job starts after its begin time, ~10 s)."""
    deadline = time.monotonic() + timeout_seconds
    while True:
      try:
        fields = self.cluster.wait_for(self.job_id, _FINAL + ("RUNNING",),
                                       max(1.0, deadline - time.monotonic()))
      except AssertionError as error:
        self.fail(f"{error}\nthe job's output ends:\n{self.output()[-4000:]}")
      if fields["JobState"] in _FINAL:
        return fields
      time.sleep(0.5)

  def assert_nothing_left(self) -> None:
    deadline = time.monotonic() + 30
    while self.cluster.job_processes() and time.monotonic() < deadline:
      time.sleep(0.2)
    left = {pid: slurm_cluster.command_line(pid) for pid in self.cluster.job_processes()}
    self.assertEqual(left, {}, "processes of the job outlived it")

  def assert_job(self, fields: dict[str, str], expected: tuple[str, ...]) -> None:
    """The job's JobState, Restarts (and ExitCode, when given)."""
    keys = ("JobState", "Restarts", "ExitCode")[:len(expected)]
    self.assertEqual(tuple(fields[key] for key in keys), expected, self.output()[-4000:])

  def assert_starts(self, count: int) -> None:
    starts = re.findall(rf"^study\.sbatch \(job {self.job_id}, start (\d+)\): runner on n1",
                        self.output(), re.MULTILINE)
    self.assertEqual(starts, [str(k) for k in range(1, count + 1)], self.output()[-3000:])

  def assert_same_as_uninterrupted(self, rounds: int) -> None:
    run_dir = os.path.join(self.scratch, "run")
    outcome = chaos.run_outcome(run_dir)
    expected = _reference(self.scratch, rounds, "--config.runtime.num_subrounds=2")
    self.assertLen(outcome["sampled_clients"], rounds)
    for key in expected:
      self.assertEqual(outcome[key], expected[key], key)

  def test_scontrol_requeue_mid_run_resumes_identically(self):
    self.submit(_SHORT_ROUNDS)
    self.wait_for_output(r"^round +10/")
    self.cluster.run(["scontrol", "requeue", self.job_id])  # A preemption: SIGTERM, then SIGKILL.
    fields = self.wait_until_final()
    self.assert_job(fields, ("COMPLETED", "1", "0:0"))
    out = self.output()
    stopped = re.search(r"start 1\): stopped after round (\d+) \(saved, \d+ new\) as SLURM "
                        r"requeues the job", out)
    self.assertIsNotNone(stopped, out[-3000:])
    self.assertIn(f"Resuming {self.scratch}/run from version {stopped.group(1)} (0 rounds to redo)",
                  out)
    self.assert_starts(2)
    self.assert_same_as_uninterrupted(_SHORT_ROUNDS)
    self.assert_nothing_left()

  def test_time_limit_signal_stops_requeues_and_the_next_start_resumes(self):
    self.submit(_LONG_ROUNDS, sbatch_options=("--time=2", "--signal=B:TERM@75"))
    self.wait_for_output(r"start 1\): .*requeued$", timeout_seconds=180)
    # The next start gets time to finish (an admin's `scontrol update`; a real job is long enough).
    self.cluster.run(["scontrol", "update", f"JobId={self.job_id}", "TimeLimit=10"])
    fields = self.wait_until_final()
    self.assert_job(fields, ("COMPLETED", "1"))
    out = self.output()
    self.assertRegex(out, r"Stopped by SIGTERM (after round \d+ \(saved\)|during start-up)")
    self.assertRegex(out, r"start 1\): stopped after round \d+ \(saved, \d+ new\): requeued")
    self.assert_starts(2)
    self.assert_same_as_uninterrupted(_LONG_ROUNDS)
    self.assert_nothing_left()

  def test_worker_node_lost_mid_round_requeues_and_resumes(self):
    self.submit(_SHORT_ROUNDS)
    self.wait_for_output(r"^round +10/")
    # slurmd, the step's slurmstepd and the worker task (with its TFF worker): nothing of the node
    # answers, so srun cannot end the workers' step in order.
    killed = self.cluster.kill_node("n2")
    self.assertEqual(sum(line.startswith("slurmstepd: [1.0]") for line in killed), 1, killed)
    self.assertEqual(sum(" worker --port " in line for line in killed), 1, killed)
    self.wait_for_output(r"start 1\): stopped after round \d+ \(saved, \d+ new\): requeued")
    self.assertRegex(self.output(), r"TFF worker 127\.0\.0\.1:\d+ failed during a computation.*"
                                    r"Exit status 75\.")
    self.cluster.start_node("n2")  # The node is back (ReturnToService=2); the job can run again.
    fields = self.wait_until_final()
    self.assert_job(fields, ("COMPLETED", "1", "0:0"))
    self.assert_starts(2)
    self.assert_same_as_uninterrupted(_SHORT_ROUNDS)
    self.assert_nothing_left()

  def test_scancel_stops_at_a_safe_point_and_is_not_requeued(self):
    self.submit(_SHORT_ROUNDS)
    self.wait_for_output(r"^round +10/")
    self.cluster.run(["scancel", self.job_id])
    fields = self.wait_until_final()
    self.assert_job(fields, ("CANCELLED", "0"))
    self.wait_for_output(r"not requeued; submit the same command again to resume$")
    out = self.output()
    saved = int(re.search(r"cancelled \(\w+\) after round (\d+) \(saved\)", out).group(1))
    self.assertNotIn("send it again to stop at once).\n\nSIGTERM received again", out)
    time.sleep(3)  # Not requeued later either.
    self.assertEqual(self.cluster.job(self.job_id)["JobState"], "CANCELLED")
    self.assert_starts(1)
    self.assert_nothing_left()
    # What was saved is whole: the same command, submitted again, resumes it to the same end.
    self.submit(_SHORT_ROUNDS)
    fields = self.wait_until_final()
    self.assertEqual(fields["JobState"], "COMPLETED")
    self.assertIn(f"Resuming {self.scratch}/run from version {saved} (0 rounds to redo)",
                  self.output())
    self.assert_same_as_uninterrupted(_SHORT_ROUNDS)
    self.assert_nothing_left()

  def test_a_start_without_progress_ends_the_job_instead_of_requeueing_for_ever(self):
    # Another program holds both workers' ports (bound, not listening): the workers cannot start and
    # the runner's connections are refused until its wait for them ends.
    port = _free_port_pair()
    for offset in (0, 1):
      holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      self.addCleanup(holder.close)
      holder.bind(("127.0.0.1", port + offset))
    self.submit(_SHORT_ROUNDS, env={"TFF_WORKER_PORT": str(port), "TFF_CONNECT_TIMEOUT": "3"})
    fields = self.wait_until_final()
    self.assert_job(fields, ("FAILED", "1", "75:0"))
    out = self.output()
    self.assertIn("start 1): stopped after round 0 (saved, 0 new): requeued", out)
    self.assertIn("start 2): no new round saved in 2 starts in a row (still 0 rounds): not "
                  "requeued again; the runner's last line above says why "
                  "(TFF_REQUEUES_WITHOUT_PROGRESS=1)", out)
    self.assertEqual(len(re.findall(r"nothing was written|Nothing was written", out)), 2, out)
    time.sleep(3)
    self.assertEqual(self.cluster.job(self.job_id)["JobState"], "FAILED")
    self.assertFalse(os.path.exists(os.path.join(self.scratch, ".run.requeues-without-progress")))
    self.assert_starts(2)
    self.assert_nothing_left()


  def test_a_study_as_a_job_array_requeues_a_task_and_summarizes(self):
    env = dict(CONFIG="configs/demo.py:smoke", ROOT_OUTPUT_DIR=f"{self.scratch}/study", VENV=_VENV,
               PYTHONPATH=_REPO_ROOT)
    array = self.cluster.sbatch(
        ["--array=0-1", "--cpus-per-task=1", f"--output={self.scratch}/slurm-%A_%a.out",
         "deploy/slurm/study_array.sbatch", "--grid=training.seed=0,1",
         "--config.model.name=linear", f"--config.training.total_rounds={_SHORT_ROUNDS}"],
        env=env, cwd=_REPO_ROOT)
    self.job_id = f"{array}_0"
    self.wait_for_output(r"^\[\S+\] round +10/|^round +10/")
    self.cluster.run(["scontrol", "requeue", self.job_id])
    tasks = {}
    for task in (0, 1):
      self.job_id = f"{array}_{task}"
      tasks[task] = self.wait_until_final()
    self.assertEqual({task: (fields["JobState"], fields["Restarts"])
                      for task, fields in tasks.items()},
                     {0: ("COMPLETED", "1"), 1: ("COMPLETED", "0")})
    self.job_id = f"{array}_0"
    starts = re.findall(r"^study_array\.sbatch task 0 \(job \d+, start (\d+)\): run 0 of the study",
                        self.output(), re.MULTILINE)
    self.assertEqual(starts, ["1", "2"], self.output()[-3000:])
    with open(os.path.join(self.scratch, "study", "study.json")) as plan:
      names = [run["name"] for run in json.load(plan)["runs"]]
    for seed, name in enumerate(names):
      outcome = chaos.run_outcome(os.path.join(self.scratch, "study", name))
      expected = _reference(self.scratch, _SHORT_ROUNDS, f"--config.training.seed={seed}")
      for key in expected:
        self.assertEqual(outcome[key], expected[key], f"{name}: {key}")
    summary = self.cluster.sbatch(
        [f"--dependency=afterok:{array}", f"--output={self.scratch}/summary.out", "--wrap",
         f"{_VENV}/bin/python -m experiments.sweep --config=configs/demo.py:smoke "
         f"--root_output_dir={self.scratch}/study --summarize_only"], env=env, cwd=_REPO_ROOT)
    self.job_id = summary
    self.assertEqual(self.wait_until_final()["JobState"], "COMPLETED")
    self.assertTrue(os.path.exists(os.path.join(self.scratch, "study", "study_summary", "study.md")))
    self.assert_nothing_left()


if __name__ == "__main__":
  absltest.main()
