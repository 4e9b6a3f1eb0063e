"""Per-client participation records: one row per sampled client per round, none twice after a kill
during a checkpoint save and a resume, and `tff-resume status --client/--coverage` reading them."""

import collections
import json
import os
import sqlite3
import subprocess
import sys

from absl.testing import absltest

from tff_resume.releases import bookkeeping
from tff_resume.storage import checkpointing

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ENV = dict(os.environ, PYTHONPATH=_REPO_ROOT)


def _run(root, name, env=None):
  return subprocess.run(
      [sys.executable, "-m", "experiments.run_emnist", "--config=configs/demo.py:smoke",
       f"--root_output_dir={root}", f"--experiment_name={name}", "--config.model.name=linear",
       "--config.training.total_rounds=4", "--config.training.clients_per_round=3",
       "--config.client.epochs=2"],
      cwd=_REPO_ROOT, env=dict(_ENV, **(env or {})), capture_output=True, text=True, timeout=300)


def _status(run_dir, *args):
  result = subprocess.run([sys.executable, "-m", "tff_resume.cli", "status", run_dir, "--json",
                           *args], cwd=_REPO_ROOT, env=_ENV, capture_output=True, text=True,
                          timeout=300)
  return result.returncode, result.stdout, result.stderr


class ParticipationTest(absltest.TestCase):

  def test_records_match_the_run_after_a_kill_during_a_save_and_a_resume(self):
    root = self.create_tempdir().full_path
    killed = _run(root, "run", env={"TFF_RESUME_FAULT": "kill-during-save:3"})
    self.assertEqual(killed.returncode, -9, killed.stderr)
    run_dir = os.path.join(root, "run")
    with sqlite3.connect(os.path.join(run_dir, "results", "participation.sqlite")) as connection:
      rounds_before = [r for (r,) in connection.execute(
          "SELECT DISTINCT round FROM participation ORDER BY round")]
    self.assertEqual(rounds_before, [1, 2, 3])  # Round 3 released, its version never finished.
    resumed = _run(root, "run")
    self.assertEqual(resumed.returncode, 0, resumed.stderr)
    self.assertIn("1 round to redo", resumed.stdout)

    manager = checkpointing.DurableProgramStateManager(os.path.join(run_dir, "checkpoints"))
    record = bookkeeping.full_record(manager)
    with sqlite3.connect(os.path.join(run_dir, "results", "participation.sqlite")) as connection:
      rows = connection.execute(
          "SELECT round, client_id, examples FROM participation ORDER BY round, client_id").fetchall()
    self.assertEqual([(r, c) for r, c, _ in rows],
                     sorted((r, c) for r, clients in enumerate(record["sampled_clients"], 1)
                            for c in clients))
    examples_by_round = collections.defaultdict(int)
    for round_num, _, examples in rows:
      examples_by_round[round_num] += examples
    # Each client trains on its examples once per local epoch (2 here).
    self.assertEqual([2 * examples_by_round[r] for r in range(1, 5)],
                     [m["client_work/train/num_examples"] for m in record["metrics"]])

    client = record["sampled_clients"][0][0]
    status, stdout, stderr = _status(run_dir, f"--client={client}", "--coverage")
    self.assertEqual(status, 0, stderr)
    report = json.loads(stdout)
    expected_rounds = [r for r, c, _ in rows if c == client]
    self.assertEqual([entry["round"] for entry in report["client"]["rounds"]], expected_rounds)
    self.assertEqual(report["client"]["examples"], sum(n for _, c, n in rows if c == client))
    times = collections.Counter(c for _, c, _ in rows)
    self.assertEqual(report["coverage"]["participations"], 12)
    self.assertEqual(report["coverage"]["distinct_clients"], len(times))
    self.assertEqual(report["coverage"]["rounds"], 4)
    self.assertEqual({int(k): v for k, v in report["coverage"]["clients_by_times"].items()},
                     dict(collections.Counter(times.values())))

    status, stdout, _ = _status(run_dir, "--client=nobody")  # A client that never took part.
    self.assertEqual(status, 0)
    self.assertEqual(json.loads(stdout)["client"],
                     {"client_id": "nobody", "rounds": [], "participations": 0, "examples": 0})


if __name__ == "__main__":
  absltest.main()
