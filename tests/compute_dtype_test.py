"""`model.compute_dtype=bfloat16`: float32 weights, bfloat16 kernels inside TFF's worker.

The runner trains with it end to end; the checkpoints, the bit accounting and the state's layout are
those of a float32 run; it is in the fingerprint; and the computation TFF sends to its worker holds
bfloat16 matrix products (and a float32 one holds none).
"""

import concurrent.futures
import os
import subprocess
import sys

from absl.testing import absltest
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_resume.data import preprocessing
from tff_resume.learning import models
from tff_resume.releases import bookkeeping
from tff_resume.storage import checkpointing

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SMALL = [
    "--config.model.name=2nn", "--config.data.synthetic.num_clients=6",
    "--config.data.synthetic.min_examples_per_client=20",
    "--config.data.synthetic.max_examples_per_client=30",
    "--config.training.clients_per_round=3", "--config.client.epochs=1",
    "--config.evaluation.rounds_per_eval=0", "--config.evaluation.max_clients=2",
]


def _run(root, name, *extra, total_rounds=2):
  command = [sys.executable, "-m", "experiments.run_emnist", "--config=configs/demo.py",
             f"--root_output_dir={root}", f"--experiment_name={name}",
             f"--config.training.total_rounds={total_rounds}", *_SMALL, *extra]
  result = subprocess.run(command, cwd=_REPO_ROOT, env=dict(os.environ, PYTHONPATH=_REPO_ROOT),
                          capture_output=True, text=True, timeout=300, check=False)
  return result.returncode, result.stderr


def _final(root, name):
  manager = checkpointing.DurableProgramStateManager(os.path.join(root, name, "checkpoints"))
  version = manager.latest_good_version()
  with np.load(os.path.join(manager.version_path(version), "state.npz")) as arrays:
    leaves = {key: arrays[key] for key in arrays.files}
  return version, bookkeeping.full_record(manager, version), leaves


def _matmul_dtypes(computation) -> set[str]:
  """The dtypes (`T`) of every MatMul in the TensorFlow graphs of a TFF computation, functions
  included."""
  found = set()

  def graph_nodes(graph_def):
    yield from graph_def.node
    for function in graph_def.library.function:
      yield from function.node_def

  def walk(message):
    for field, value in message.ListFields():
      values = value if field.label == field.LABEL_REPEATED else [value]
      for item in values:
        if field.name == "graph_def" and hasattr(item, "type_url"):
          graph_def = tf.compat.v1.GraphDef()
          item.Unpack(graph_def)
          found.update(tf.dtypes.as_dtype(node.attr["T"].type).name
                       for node in graph_nodes(graph_def) if node.op == "MatMul")
        elif hasattr(item, "ListFields"):
          walk(item)

  walk(tff.framework.serialize_computation(computation))
  return found


class ComputeDtypeTest(absltest.TestCase):

  def test_bfloat16_run_keeps_float32_state_and_bits_and_is_fingerprinted(self):
    root = self.create_tempdir().full_path
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      float32, bfloat16 = pool.map(
          lambda args: _run(root, *args),
          [("float32",), ("bfloat16", "--config.model.compute_dtype=bfloat16")])
    self.assertEqual(float32[0], 0, float32[1])
    self.assertEqual(bfloat16[0], 0, bfloat16[1])
    _, float32_record, float32_leaves = _final(root, "float32")
    version, record, leaves = _final(root, "bfloat16")
    self.assertEqual(version, 2)
    self.assertEqual({key: (array.dtype, array.shape) for key, array in leaves.items()},
                     {key: (array.dtype, array.shape) for key, array in float32_leaves.items()})
    self.assertEqual({array.dtype.name for array in leaves.values()} - {"int64", "int32"},
                     {"float32"})
    self.assertNotEqual(record["model_weights_sha256"], float32_record["model_weights_sha256"])
    self.assertEqual(record["sampled_clients"], float32_record["sampled_clients"])
    bits = ("communication/broadcasted_bits", "communication/aggregated_bits")
    self.assertEqual([[m[name] for name in bits] for m in record["metrics"]],
                     [[m[name] for name in bits] for m in float32_record["metrics"]])
    self.assertEqual(record["fingerprint"]["model.compute_dtype"], "bfloat16")
    self.assertNotIn("model.compute_dtype", float32_record["fingerprint"])
    # Resumed as float32: refused, naming the field; nothing changes.
    status, stderr = _run(root, "bfloat16", total_rounds=3)
    self.assertEqual(status, 2, stderr)
    self.assertIn("  model.compute_dtype: saved 'bfloat16', now 'float32'", stderr)
    self.assertEqual(_final(root, "bfloat16")[0], 2)

  def test_the_workers_computation_multiplies_in_bfloat16(self):
    input_spec = preprocessing.element_spec(preprocessing.PreprocessSpec(flatten=True))
    dtypes = {}
    for compute_dtype in models.COMPUTE_DTYPES:
      process = tff.learning.algorithms.build_weighted_fed_avg(
          models.build_model_fn("2nn", 10, 0, input_spec, compute_dtype),
          client_optimizer_fn=tff.learning.optimizers.build_sgdm(0.1))
      dtypes[compute_dtype] = _matmul_dtypes(process.next)
    self.assertEqual(dtypes, {"float32": {"float32"}, "bfloat16": {"bfloat16"}})

  def test_bfloat16_model_has_the_float32_models_weights(self):
    for name in models.MODEL_NAMES:
      float32 = models.create_keras_model(name, 10, 3)
      bfloat16 = models.create_keras_model(name, 10, 3, "bfloat16")
      self.assertEqual([v.shape for v in bfloat16.weights], [v.shape for v in float32.weights])
      for ours, theirs in zip(bfloat16.weights, float32.weights):
        self.assertEqual(ours.dtype, tf.float32)
        self.assertEqual(ours.numpy().tobytes(), theirs.numpy().tobytes())
      self.assertEqual(bfloat16.layers[1].compute_dtype, "bfloat16")
      self.assertEqual(bfloat16.output.dtype, tf.float32)

  def test_an_unknown_compute_dtype_names_the_choices(self):
    with self.assertRaisesRegex(
        ValueError, "model.compute_dtype must be one of float32, bfloat16, got 'float16'."):
      models.create_keras_model("linear", 10, 0, "float16")


if __name__ == "__main__":
  absltest.main()
