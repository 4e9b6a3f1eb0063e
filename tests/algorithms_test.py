"""FedProx and adaptive server optimizers: a killed run resumes bit-identically, optimizer state
included; their fields are in the fingerprint, while FedAvg with SGD keeps the fingerprint it had."""

import concurrent.futures
import os
import signal
import subprocess
import sys

from absl.testing import absltest
import numpy as np

from configs import demo
from tff_resume.program import checkpointing
from tff_resume.program import experiment
from tff_resume.program import fingerprint

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ADAM_FEDPROX = ("--config.algorithm.name=fedprox", "--config.algorithm.proximal_strength=0.5",
                 "--config.server.optimizer=adam", "--config.server.learning_rate=0.01",
                 "--config.server.adam.beta_1=0.8")


def _run(root, name, *extra, fault=""):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.run_emnist", "--config=configs/demo.py:smoke",
       f"--root_output_dir={root}", f"--experiment_name={name}", "--config.model.name=linear",
       "--config.training.total_rounds=3", *extra],
      cwd=_REPO_ROOT, env=dict(os.environ, PYTHONPATH=_REPO_ROOT, TFF_RESUME_FAULT=fault),
      capture_output=True, text=True, timeout=300)
  return result.returncode, result.stdout, result.stderr


def _leaves(root, name):
  manager = checkpointing.DurableProgramStateManager(os.path.join(root, name, "checkpoints"))
  version = manager.latest_good_version()
  with np.load(os.path.join(manager.version_path(version), "state.npz")) as arrays:
    return version, {key: arrays[key].tobytes() for key in arrays.files}


def _fingerprint(**fields):
  config = demo.get_config("smoke")
  config.update_from_flattened_dict(fields)
  return fingerprint.compute_fingerprint(config)


class AlgorithmTest(absltest.TestCase):

  def test_fedprox_with_adam_killed_then_resumed_equals_straight_with_the_adam_state(self):
    root = self.create_tempdir().full_path
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # Beside the killed run's two starts.
      straight_run = pool.submit(_run, root, "straight", *_ADAM_FEDPROX)
      status, _, _ = _run(root, "killed", *_ADAM_FEDPROX, fault="kill-during-save:2")
      self.assertEqual(status, -signal.SIGKILL)
      status, stdout, stderr = _run(root, "killed", *_ADAM_FEDPROX)
      self.assertEqual(status, 0, stderr)
      status, _, stderr = straight_run.result()
      self.assertEqual(status, 0, stderr)
    self.assertIn("from version 1", stdout)
    version, straight = _leaves(root, "straight")
    self.assertEqual((version, _leaves(root, "killed")), (3, (3, straight)))
    # Adam's first and second moments are in the checkpoint: three 784x10 float32 arrays (weights,
    # m, v) where an SGD run has one.
    kernels = [leaf for leaf in straight.values() if len(leaf) == 784 * 10 * 4]
    self.assertLen(kernels, 3)
    self.assertLen(set(kernels), 3)

  def test_fingerprint_names_the_algorithm_and_the_chosen_optimizer_only(self):
    default = _fingerprint()
    self.assertEmpty([field for field in default
                      if field.startswith(("algorithm.", "server.adam", "server.optimizer"))])
    self.assertEqual(sorted(f for f in default if f.startswith("server.")),
                     ["server.learning_rate", "server.momentum"])
    yogi = _fingerprint(**{"server.optimizer": "yogi"})
    self.assertEqual(sorted(f for f in yogi if f.startswith("server.")),
                     ["server.learning_rate", "server.optimizer", "server.yogi.beta_1",
                      "server.yogi.beta_2", "server.yogi.epsilon",
                      "server.yogi.initial_preconditioner_value"])
    self.assertEqual(_fingerprint(**{"server.adam.beta_1": 0.5}), default)  # Adam not chosen.
    prox = _fingerprint(**{"algorithm.name": "fedprox"})
    self.assertEqual({k: v for k, v in prox.items() if k.startswith("algorithm.")},
                     {"algorithm.name": "fedprox", "algorithm.proximal_strength": 0.01})

  def test_bad_optimizer_settings_name_the_field(self):
    for fields, message in (
        ({"server.optimizer": "adamw"}, "server.optimizer must be one of sgd, adam, adagrad, yogi"),
        ({"server.optimizer": "adam", "server.adam.beta_2": 1.0},
         r"server.adam.beta_2 must be in \[0, 1\), got 1.0"),
        ({"server.optimizer": "adagrad", "server.adagrad.epsilon": 0.0},
         "server.adagrad.epsilon must be above 0"),
        ({"algorithm.name": "fedprox", "algorithm.proximal_strength": -1.0},
         "algorithm.proximal_strength must be 0 or more"),
        ({"algorithm.name": "scaffold"}, "algorithm.name must be one of fedavg, fedprox")):
      config = demo.get_config("smoke")
      config.update_from_flattened_dict(fields)
      with self.assertRaisesRegex(experiment.ConfigError, message):
        experiment.validate(config)


if __name__ == "__main__":
  absltest.main()
