"""FedProx and adaptive server optimizers: a killed run resumes bit-identically, optimizer state
included; their fields are in the fingerprint, while FedAvg with SGD keeps the fingerprint it had.
The clients' faster training loop and input pipeline give the bits of TFF's default ones."""

import concurrent.futures
import os
import signal
import subprocess
import sys

from absl.testing import absltest
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from configs import demo
from tff_resume.data import preprocessing
from tff_resume.learning import algorithms
from tff_resume.program import experiment
from tff_resume.program import fingerprint
from tff_resume.runtime import local_worker
from tff_resume.storage import checkpointing

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


class ClientLoopTest(absltest.TestCase):

  def test_iterator_loop_and_cached_epochs_give_the_bits_of_tffs_default_loop(self):
    """The CNN, 3 clients x 2 epochs, 2 rounds: our process and pipeline (DATASET_ITERATOR, examples
    cached after the first epoch) against TFF's DATASET_REDUCE on the pipeline without the cache."""
    config = demo.get_config("smoke")
    config.update_from_flattened_dict({"model.name": "cnn", "client.epochs": 2,
                                       "training.clients_per_round": 3})
    spec = experiment.preprocess_spec(config)
    train, _ = experiment.load_data(config)
    client_ids = sorted(train.client_ids)[:3]

    batch_format = preprocessing._to_batch_format(spec)  # pylint: disable=protected-access

    def uncached(dataset, round_num, client_id):  # The pipeline as it was before the cache.
      seed = preprocessing.shuffle_seed(config.training.seed, round_num, client_id)
      return dataset.shuffle(spec.shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat(
          spec.epochs).batch(spec.batch_size).map(batch_format)

    ours = experiment.build_process(config)
    self.assertEqual(algorithms.LOOP_IMPLEMENTATION,
                     tff.learning.LoopImplementation.DATASET_ITERATOR)
    tffs = tff.learning.algorithms.build_weighted_fed_avg(
        experiment._model_fn(config),  # pylint: disable=protected-access
        client_optimizer_fn=tff.learning.optimizers.build_sgdm(config.client.learning_rate),
        server_optimizer_fn=tff.learning.optimizers.build_sgdm(config.server.learning_rate),
        loop_implementation=tff.learning.LoopImplementation.DATASET_REDUCE)
    worker = local_worker.start_local_execution_context()
    try:
      leaves = []
      for process, preprocess in ((ours, experiment.preprocess_fn(config)), (tffs, uncached)):
        state = experiment.initial_state(config, process)
        for round_num in (1, 2):
          datasets = [preprocess(train.create_tf_dataset_for_client(client_id), round_num,
                                 client_id) for client_id in client_ids]
          state = process.next(state, datasets).state
        leaves.append([np.asarray(leaf).tobytes() for leaf in tf.nest.flatten(state)])
    finally:
      worker.stop()
    self.assertEqual(leaves[0], leaves[1])
    self.assertLen(leaves[0][0], 32 * 5 * 5 * 4)  # The first conv kernel: the CNN really ran.


if __name__ == "__main__":
  absltest.main()
