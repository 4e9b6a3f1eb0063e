"""Every aggregator that draws random numbers reproduces: two fresh runs, and a run SIGKILLed while a
version is written then resumed, end with the same bytes in every leaf of the server state
(aggregator state included), clients and metrics; `aggregator.seed` redraws only the aggregator's
randomness. The 2nn model, whose two large kernels are quantized. Real runner subprocesses.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from absl.testing import absltest

from experiments import chaos
from tff_resume.learning import privacy_accounting
from tests import aggregator_configs

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ROUNDS = 3


def _start(root, name, overrides, *extra, env=None):
  command = [sys.executable, "-m", "experiments.run_emnist", "--config=configs/demo.py:smoke",
             f"--root_output_dir={root}", f"--experiment_name={name}", "--config.model.name=2nn",
             f"--config.training.total_rounds={_ROUNDS}",
             *[f"--config.{field}={value}" for field, value in overrides.items()], *extra]
  return subprocess.Popen(command, cwd=_REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=dict(os.environ, PYTHONPATH=_REPO_ROOT, **(env or {})))


def _side_by_side(*runners):
  """Waits for runners started together (two at a time on the two cores)."""
  outputs = [runner.communicate(timeout=300) for runner in runners]
  return [(runner.returncode, *output) for runner, output in zip(runners, outputs)]


class ReproducibleAggregatorsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    cls.starts = {}
    for name, overrides in aggregator_configs.RANDOM_AGGREGATORS.items():
      first = _side_by_side(_start(cls.root, f"{name}_a", overrides),
                            _start(cls.root, f"{name}_killed", overrides,
                                   env={"TFF_RESUME_FAULT": "kill-during-save:2"}))
      second = _side_by_side(_start(cls.root, f"{name}_killed", overrides),
                             _start(cls.root, f"{name}_seed", overrides, "--config.aggregator.seed=1"))
      cls.starts[name] = first + second

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root)
    super().tearDownClass()

  def _outcome_of(self, run):
    return chaos.run_outcome(os.path.join(self.root, run))

  def test_fresh_and_killed_then_resumed_runs_are_identical(self):
    for name in aggregator_configs.RANDOM_AGGREGATORS:
      (straight, _, err), (killed, _, _), (resumed, out, err2), _ = self.starts[name]
      self.assertEqual((straight, killed, resumed), (0, -signal.SIGKILL, 0), err + err2)
      self.assertIn("from version 1 (1 round to redo)", out)
      outcome = self._outcome_of(f"{name}_a")
      self.assertEqual(self._outcome_of(f"{name}_killed"), outcome, name)
      self.assertLen(outcome["sampled_clients"], _ROUNDS)

  def test_the_aggregator_seed_redraws_only_the_aggregator(self):
    for name in aggregator_configs.RANDOM_AGGREGATORS:
      self.assertEqual(self.starts[name][3][0], 0, self.starts[name][3][2])
      seeded, outcome = self._outcome_of(f"{name}_seed"), self._outcome_of(f"{name}_a")
      self.assertNotEqual(seeded["model_weights_sha256"], outcome["model_weights_sha256"], name)
      self.assertEqual(seeded["sampled_clients"], outcome["sampled_clients"], name)
      self.assertEqual(seeded["participation"], outcome["participation"], name)
      bits = [{k: v for k, v in row.items() if k.startswith("communication/")}
              for row in outcome["metrics_csv"]]
      self.assertEqual([{k: v for k, v in row.items() if k.startswith("communication/")}
                        for row in seeded["metrics_csv"]], bits, name)

  def test_dp_reports_the_privacy_spent_every_round(self):
    rows = self._outcome_of("dp_a")["metrics_csv"]
    # configs/demo.py:smoke: 2 of 10 clients a round, noise multiplier 0.1, delta 1e-5.
    accountant = privacy_accounting.PrivacyAccountant(
        privacy_accounting.round_event(0.1, 2, 10), 1e-5)
    self.assertEqual([float(row["privacy/epsilon"]) for row in rows],
                     [accountant.epsilon(rounds) for rounds in range(1, _ROUNDS + 1)])
    self.assertEqual({row["privacy/target_delta"] for row in rows}, {"1e-05"})
    status = subprocess.run(
        [sys.executable, "-m", "tff_resume.cli", "status", os.path.join(self.root, "dp_killed")],
        capture_output=True, text=True, check=True, cwd=_REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=_REPO_ROOT)).stdout
    self.assertIn(f"  privacy spent: epsilon {accountant.epsilon(_ROUNDS):.6g} at delta 1e-05 "
                  f"after {_ROUNDS} rounds\n", status)
    with open(os.path.join(self.root, "compression_a", "checkpoints", "version_3",
                           "metadata.json")) as metadata:
      self.assertNotIn("privacy/epsilon", json.load(metadata)["last_metrics"])


if __name__ == "__main__":
  absltest.main()
