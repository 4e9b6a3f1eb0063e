"""Every aggregator that draws random numbers reproduces: two fresh runs, and a run SIGKILLed while a
version is written then resumed, end with the same bytes in every leaf of the server state
(aggregator state included), clients and metrics; so does a run of an aggregator with adaptive state
SIGKILLed again right after a round, then resumed from that round's version. `aggregator.seed`
redraws only the aggregator's randomness. The 2nn model, whose two large kernels are quantized. Real
runner subprocesses.

Of `aggregator_configs.RANDOM_AGGREGATORS`, `quantize` (stochastic rounding) is not run here
(`aggregator_configs.EVERY_DRAW` says why). The seed is varied where it keys a draw of its own: the
Hadamard rotation and the DP noise (the rounding key's seed, tests/seeded_randomness_test).
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
_AGGREGATORS = {name: aggregator_configs.RANDOM_AGGREGATORS[name]
                for name in aggregator_configs.EVERY_DRAW}
# An aggregator with adaptive state (compression: its zeroing and clipping norms; dp: its clip
# norm), whose killed run is killed a second time, right after round 2 is saved, before it is
# resumed. Every killed run already resumes from version 1 with the state round 1 adapted.
_KILLED_AFTER_A_ROUND = ("compression",)
_SEEDED = ("hadamard", "dp")  # Also run with `aggregator.seed=1`.


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


def _kill_after_round(runner, round_num):
  """SIGKILLs `runner` as soon as it prints its line for `round_num` (the round is saved then);
  returns the output it read."""
  seen = []
  for line in runner.stdout:
    seen.append(line)
    if line.startswith(f"round {round_num:4d}/"):
      runner.kill()
      break
  return "".join(seen)


class ReproducibleAggregatorsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    cls.straight, cls.seeded, cls.killed = {}, {}, {}  # killed: every start of the killed run.
    for name, overrides in _AGGREGATORS.items():
      cls.straight[name], killed = _side_by_side(
          _start(cls.root, f"{name}_a", overrides),
          _start(cls.root, f"{name}_killed", overrides,
                 env={"TFF_RESUME_FAULT": "kill-during-save:2"}))
      resumed = _start(cls.root, f"{name}_killed", overrides)
      beside = [_start(cls.root, f"{name}_seed", overrides, "--config.aggregator.seed=1")
                for _ in range(name in _SEEDED)]
      seen = _kill_after_round(resumed, 2) if name in _KILLED_AFTER_A_ROUND else ""
      (status, out, err), *seeded = _side_by_side(resumed, *beside)
      cls.seeded.update({name: seeded[0]} if seeded else {})
      cls.killed[name] = [killed, (status, seen + out, err)]
    last_starts = _side_by_side(*[_start(cls.root, f"{name}_killed", _AGGREGATORS[name])
                                  for name in _KILLED_AFTER_A_ROUND])
    for name, last in zip(_KILLED_AFTER_A_ROUND, last_starts):
      cls.killed[name].append(last)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root)
    super().tearDownClass()

  def _outcome_of(self, run):
    return chaos.run_outcome(os.path.join(self.root, run))

  def test_fresh_and_killed_then_resumed_runs_are_identical(self):
    for name in _AGGREGATORS:
      self.assertEqual(self.straight[name][0], 0, self.straight[name][2])
      # Killed while saving version 2; then, with adaptive state, killed once round 2 is saved.
      expected = [(-signal.SIGKILL, None), (0, "from version 1 (1 round to redo)")]
      if name in _KILLED_AFTER_A_ROUND:
        expected[1:] = [(-signal.SIGKILL, "from version 1 (1 round to redo)"),
                        (0, "from version 2 (0 rounds to redo)")]
      starts = self.killed[name]
      self.assertEqual([status for status, _, _ in starts], [status for status, _ in expected],
                       f"{name}: {[err[-500:] for _, _, err in starts]}")
      for (_, out, _), (_, resumed_from) in zip(starts, expected):
        if resumed_from:
          self.assertIn(f"Resuming {self.root}/{name}_killed {resumed_from}, up to round "
                        f"{_ROUNDS}.\n", out)
      outcome = self._outcome_of(f"{name}_a")
      self.assertEqual(self._outcome_of(f"{name}_killed"), outcome, name)
      self.assertLen(outcome["sampled_clients"], _ROUNDS)

  def test_the_aggregator_seed_redraws_only_the_aggregator(self):
    for name in _SEEDED:
      self.assertEqual(self.seeded[name][0], 0, self.seeded[name][2])
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
