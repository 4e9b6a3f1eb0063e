"""Using what was trained: your own model (trained, resumed), export opened in plain TensorFlow, warm start
(killed and resumed, it ends as one never interrupted).

Every run is the real runner in a subprocess on the smoke preset; the export is loaded in a fresh process
that cannot import tff_resume.
"""

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys

from absl.testing import absltest
import numpy as np

from experiments import chaos
from tests import smoke_runs
from tff_resume.analysis import global_model
from tff_resume.data import synthetic
from tff_resume.learning import models
from tff_resume.releases import bookkeeping
from tff_resume.storage import checkpointing

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CUSTOM = "experiments.custom_model:create_model"

# A fresh interpreter that refuses to import tff_resume: the export must open in plain TensorFlow.
_LOAD_IN_PLAIN_TENSORFLOW = """
import json, sys
sys.modules["tff_resume"] = None
import numpy as np
import tensorflow as tf
model = tf.keras.models.load_model(sys.argv[1])
images = np.load(sys.argv[2])
print(json.dumps(model.predict(images, verbose=0).tolist()))
"""


_run = smoke_runs.run_smoke


def _newest(run_dir):
  manager = checkpointing.DurableProgramStateManager(os.path.join(run_dir, "checkpoints"))
  return manager, manager.latest_good_version()


def _record(run_dir, version=None):
  manager, newest = _newest(run_dir)
  return bookkeeping.full_record(manager, newest if version is None else version)


def _test_images_and_labels(count=None):
  """The synthetic test examples of the smoke preset's first test clients, in evaluation order."""
  spec = synthetic.SyntheticSpec(num_clients=10, min_examples_per_client=20,
                                 max_examples_per_client=40, test_examples_per_client=10)
  arrays = synthetic.synthetic_arrays(spec, "test")
  chosen = sorted(arrays)[:count]
  images = np.concatenate([arrays[client]["pixels"] for client in chosen])[..., None]
  labels = np.concatenate([arrays[client]["label"] for client in chosen])
  return images, labels


class CustomModelExportTest(absltest.TestCase):
  """Two rounds with experiments/custom_model.py, resumed after the first, then exported."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = os.path.join(absltest.get_default_test_tmpdir(), "custom_model_runs")
    shutil.rmtree(cls.root, ignore_errors=True)
    model = f"--config.model.name={_CUSTOM}"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # Beside the resumed run's two starts.
      straight = pool.submit(_run, cls.root, "straight", model, rounds=2)
      cls.first = _run(cls.root, "resumed", model, rounds=1)
      cls.second = _run(cls.root, "resumed", model, rounds=2)
      cls.straight = straight.result()

  def test_custom_model_trains_resumes_and_matches_an_uninterrupted_run(self):
    for status, _, stderr in (self.first, self.second, self.straight):
      self.assertEqual(status, 0, stderr)
    self.assertIn("Resuming", self.second[1])
    resumed = _record(os.path.join(self.root, "resumed"))
    straight = _record(os.path.join(self.root, "straight"))
    self.assertLen(resumed["sampled_clients"], 2)
    self.assertEqual(resumed["sampled_clients"], straight["sampled_clients"])
    self.assertEqual(resumed["model_weights_sha256"], straight["model_weights_sha256"])
    self.assertEqual(resumed["fingerprint"]["model.name"], _CUSTOM)
    # Accounting works unchanged: the broadcast is every model weight (batch normalization's
    # moving statistics too) as float32, per client per round.
    model = models.create_keras_model(_CUSTOM, 10, 0)
    model_bits = 32 * sum(int(np.prod(variable.shape)) for variable in model.weights)
    self.assertEqual(resumed["metrics"][-1]["communication/broadcasted_bits"], 2 * 2 * model_bits)

  def test_export_opens_in_plain_tensorflow_and_predicts_like_the_checkpoint(self):
    run_dir = os.path.join(self.root, "straight")
    out = os.path.join(self.create_tempdir().full_path, "export")
    exported = subprocess.run(
        [sys.executable, "-m", "tff_resume.cli", "export", run_dir, f"--out={out}"],
        cwd=_REPO_ROOT, env=dict(os.environ, PYTHONPATH=_REPO_ROOT), capture_output=True,
        text=True, timeout=300)
    self.assertEqual(exported.returncode, 0, exported.stderr)
    self.assertEqual(sorted(os.listdir(out)), ["metadata.json", "model.keras", "weights.npz"])
    with open(os.path.join(out, "metadata.json")) as metadata_file:
      metadata = json.load(metadata_file)
    record = _record(run_dir)
    self.assertEqual(metadata["round"], 2)
    self.assertEqual(metadata["model_weights_sha256"], record["model_weights_sha256"])
    self.assertEqual(metadata["fingerprint"], record["fingerprint"])
    self.assertEqual(metadata["communication"]["communication/aggregated_bits"],
                     record["metrics"][-1]["communication/aggregated_bits"])
    self.assertEqual(metadata["last_evaluation_metrics"]["evaluation/sparse_categorical_accuracy"],
                     record["metrics"][-1]["evaluation/sparse_categorical_accuracy"])
    self.assertEqual(sorted(metadata["library_versions"]), ["tensorflow", "tensorflow_federated"])

    # The checkpoint's own weights (trainable, then non-trainable leaves of the server state).
    manager, version = _newest(run_dir)
    model = models.create_keras_model(_CUSTOM, 10, 0)
    ordered = list(model.trainable_variables) + list(model.non_trainable_variables)
    leaves = manager.load_leaves(version)[:len(ordered)]
    self.assertEqual(global_model.weights_sha256(leaves), record["model_weights_sha256"])
    for variable, leaf in zip(ordered, leaves):
      variable.assign(leaf)
    with np.load(os.path.join(out, "weights.npz")) as arrays:
      self.assertEqual([arrays[key].tobytes() for key in sorted(arrays.files)],
                       [weight.tobytes() for weight in model.get_weights()])

    images, labels = _test_images_and_labels(count=2)  # evaluation.max_clients of the preset.
    images_path = os.path.join(self.create_tempdir().full_path, "images.npy")
    np.save(images_path, images)
    loaded = subprocess.run(
        [sys.executable, "-c", _LOAD_IN_PLAIN_TENSORFLOW, os.path.join(out, "model.keras"),
         images_path], cwd=self.create_tempdir().full_path, capture_output=True, text=True,
        timeout=300, env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"})
    self.assertEqual(loaded.returncode, 0, loaded.stderr[-2000:])
    exported_logits = np.array(json.loads(loaded.stdout.splitlines()[-1]), np.float32)
    checkpoint_logits = model.predict(images, verbose=0)
    np.testing.assert_array_equal(exported_logits, checkpoint_logits)
    correct = int(np.sum(np.argmax(exported_logits, axis=1) == labels))
    self.assertEqual(metadata["last_evaluation_metrics"]["evaluation/num_examples"], len(labels))
    self.assertEqual(np.float32(correct / len(labels)),
                     np.float32(record["metrics"][-1]["evaluation/sparse_categorical_accuracy"]))

  def test_export_refuses_a_folder_in_use_and_a_missing_version(self):
    run_dir = os.path.join(self.root, "straight")
    taken = self.create_tempdir()
    taken.create_file("keep.txt", "mine")
    for args, message in (
        ([f"--out={taken.full_path}"], f"{taken.full_path} exists and is not empty"),
        ([f"--out={taken.full_path}/new", "--version=7"], "has no checkpoint version 7")):
      result = subprocess.run(
          [sys.executable, "-m", "tff_resume.cli", "export", run_dir, *args], cwd=_REPO_ROOT,
          env=dict(os.environ, PYTHONPATH=_REPO_ROOT), capture_output=True, text=True, timeout=300)
      self.assertEqual(result.returncode, 2)
      self.assertLen(result.stderr.splitlines(), 1)
      self.assertIn(message, result.stderr)
    self.assertEqual(sorted(os.listdir(taken.full_path)), ["keep.txt"])

  def test_export_refuses_a_config_json_that_disagrees_with_the_checkpoint(self):
    """config.json names the model's code (`module:function`): a changed one is never imported."""
    copy = os.path.join(self.create_tempdir().full_path, "copy")
    shutil.copytree(os.path.join(self.root, "straight"), copy)
    modules = self.create_tempdir()
    marker = os.path.join(modules.full_path, "imported")
    modules.create_file("planted_model.py", f"open({marker!r}, 'w').close()\n"
                        "def build(num_classes, seed):\n  raise AssertionError('called')\n")
    sys.path.insert(0, modules.full_path)
    self.addCleanup(sys.path.remove, modules.full_path)
    with open(os.path.join(copy, "config.json")) as config_file:
      config = json.load(config_file)
    config["model"]["name"] = "planted_model:build"
    with open(os.path.join(copy, "config.json"), "w") as config_file:
      json.dump(config, config_file)
    out = os.path.join(self.create_tempdir().full_path, "export")
    with self.assertRaisesRegex(global_model.ModelSourceError,
                                "model.name is 'planted_model:build' there and "
                                "'experiments.custom_model:create_model' in the version's record"):
      global_model.export_model(copy, out)
    self.assertFalse(os.path.exists(marker))
    self.assertNotIn("planted_model", sys.modules)
    self.assertFalse(os.path.exists(out))


class WarmStartTest(absltest.TestCase):

  def test_warm_start_from_an_export_and_a_run_folder_resumes_and_refuses_a_changed_source(self):
    root = self.create_tempdir().full_path
    linear = "--config.model.name=linear"
    self.assertEqual(_run(root, "source", linear, rounds=2)[0], 0)
    source_sha = _record(os.path.join(root, "source"))["model_weights_sha256"]
    export = os.path.join(root, "export")
    global_model.export_model(os.path.join(root, "source"), export)

    sources = {"from_export": export, "from_run": os.path.join(root, "source")}
    # from_export is SIGKILLed while saving its round 2; from_run trains its 2 rounds uninterrupted.
    faults = {"from_export": {"TFF_RESUME_FAULT": "kill-during-save:2"}, "from_run": {}}
    with concurrent.futures.ThreadPoolExecutor(len(sources)) as pool:  # Two runners, two cores.
      results = dict(zip(sources, pool.map(
          lambda name: _run(root, name, linear, f"--config.model.initial_weights={sources[name]}",
                            env=faults[name]), sources)))
    self.assertEqual({name: status for name, (status, _, _) in results.items()},
                     {"from_export": -signal.SIGKILL, "from_run": 0}, results["from_run"][2])
    for name in sources:
      self.assertEqual(_record(os.path.join(root, name), version=0)["model_weights_sha256"],
                       source_sha)
    # Resumed from its round-1 checkpoint, not from the warm start again: it ends as the
    # uninterrupted warm start, every leaf of the state, metric and sampled client.
    status, stdout, stderr = _run(root, "from_export", linear,
                                  f"--config.model.initial_weights={export}")
    self.assertEqual(status, 0, stderr)
    self.assertIn("from version 1 (1 round to redo)", stdout)
    self.assertEqual(chaos.run_outcome(os.path.join(root, "from_export")),
                     chaos.run_outcome(os.path.join(root, "from_run")))
    self.assertEqual(
        _record(os.path.join(root, "from_export"))["fingerprint"]["model.initial_weights_sha256"],
        global_model.source_sha256(export))

    # The same path now holding another model: refused, nothing changed.
    shutil.rmtree(export)
    global_model.export_model(os.path.join(root, "source"), export, version=1)
    versions_before = sorted(os.listdir(os.path.join(root, "from_export", "checkpoints")))
    status, _, stderr = _run(root, "from_export", linear,
                             f"--config.model.initial_weights={export}", rounds=3)
    self.assertEqual(status, 2)
    self.assertIn("model.initial_weights_sha256: saved", stderr)
    self.assertEqual(sorted(os.listdir(os.path.join(root, "from_export", "checkpoints"))),
                     versions_before)

  def test_shape_mismatch_names_the_variable_and_both_shapes(self):
    root = self.create_tempdir().full_path
    self.assertEqual(_run(root, "digits", "--config.model.name=linear", rounds=1)[0], 0)
    status, stdout, stderr = _run(
        root, "letters", "--config.model.name=linear", "--config.data.only_digits=false",
        f"--config.model.initial_weights={os.path.join(root, 'digits')}", rounds=1)
    self.assertEqual(status, 2)
    self.assertEqual(stdout, "")
    self.assertRegex(stderr, r"^run_emnist: error: config.model.initial_weights: .*variable "
                     r"\S+kernel:0 has shape \(784, 62\) in the model but \(784, 10\) in the "
                     r"source")
    self.assertFalse(os.path.exists(os.path.join(root, "letters")))


if __name__ == "__main__":
  absltest.main()
