"""A TFF process built here, not through a config, trained by `tff_resume.ResumableLoop` (for
loop_test): FedAvg with an Adam server of a 4-feature linear model on 8 clients of random data.

    python tests/loop_script.py RUN_DIR TOTAL_ROUNDS {learning,iterative}

`iterative` wraps the same process as a plain `tff.templates.IterativeProcess` whose `next` returns
(state, metrics), with a function from state to model weights, and releases the metrics to a
release manager of its own besides ours. The last line printed is the result as JSON: the last
metrics, the process ids of this program's children still running and the rounds the own release
manager got (with the number of metrics each).
"""

import collections
import json
import os
import sys

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

import tff_resume

_FEATURES, _CLASSES, _EXAMPLES = 4, 3, 12


def _model_fn():
  keras_model = tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(_FEATURES,)),
      tf.keras.layers.Dense(_CLASSES, kernel_initializer="zeros"),
  ])
  return tff.learning.models.from_keras_model(
      keras_model, loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      input_spec=collections.OrderedDict(
          x=tf.TensorSpec([None, _FEATURES], tf.float32), y=tf.TensorSpec([None], tf.int32)),
      metrics=[tf.keras.metrics.SparseCategoricalAccuracy()])


def _client_data():
  rng = np.random.default_rng(0)
  return tff.simulation.datasets.TestClientData({
      f"client_{index}": collections.OrderedDict(
          x=rng.normal(size=(_EXAMPLES, _FEATURES)).astype(np.float32),
          y=rng.integers(0, _CLASSES, size=_EXAMPLES).astype(np.int32))
      for index in range(8)})


def _preprocess(dataset, round_num, client_id):
  del client_id
  return dataset.shuffle(_EXAMPLES, seed=round_num).batch(5)


def _as_iterative(process):
  state_type, data_type = process.next.type_signature.parameter

  @tff.federated_computation(state_type, data_type)
  def next_fn(state, data):
    output = process.next(state, data)
    return output.state, output.metrics

  return tff.templates.IterativeProcess(process.initialize, next_fn)


class _Collected(tff.program.ReleaseManager):
  """Keeps (round, number of metrics) of every release."""

  def __init__(self):
    self.released = []

  async def release(self, value, key) -> None:
    self.released.append([key, len(value)])


def main(run_dir: str, total_rounds: int, kind: str) -> None:
  process = tff.learning.algorithms.build_weighted_fed_avg(
      _model_fn, client_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=0.1),
      server_optimizer_fn=tff.learning.optimizers.build_adam(learning_rate=0.05))
  options = {"aggregator": tff.aggregators.MeanFactory()}
  collected = _Collected()
  if kind == "iterative":
    options = {"model_weights_fn": lambda state: state.global_model_weights,
               "release_managers": [
                   tff_resume.TensorBoardReleaseManager(run_dir),
                   tff_resume.CsvReleaseManager(os.path.join(run_dir, "results", "metrics.csv")),
                   collected]}
    process = _as_iterative(process)
  source = tff_resume.SeededClientsDataSource("train", _client_data(), seed=7,
                                              preprocess=_preprocess)
  loop = tff_resume.ResumableLoop(process, source, run_dir=run_dir, clients_per_round=3, **options)
  metrics = loop.train(total_rounds)
  children = [pid for pid in os.listdir("/proc") if pid.isdigit() and _parent(pid) == os.getpid()]
  print(json.dumps({"metrics": metrics, "children": children, "released": collected.released}))


def _parent(pid: str) -> int | None:
  try:
    with open(f"/proc/{pid}/stat") as stat:
      return int(stat.read().rsplit(")", 1)[1].split()[1])
  except (OSError, IndexError, ValueError):
    return None


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
