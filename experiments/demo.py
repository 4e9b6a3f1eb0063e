"""The demo: weighted FedAvg with the original FedAvg CNN on synthetic federated EMNIST.

TFF's EMNIST tutorial settings: 10 clients per round, 5 local epochs, batch 20, client SGD 0.02,
server SGD 1.0; 100 synthetic writers (seeded).

Runs in well under a minute here, writing checkpoints and TensorBoard logs under
`--root_output_dir/demo/`, and prints how to open TensorBoard. Running it again continues from the
newest checkpoint (TFF's `FileProgramStateManager`) up to `--total_rounds`.

    python -m experiments.demo --root_output_dir=runs --total_rounds=10
"""

import asyncio
import os
import sys
import time

from tff_resume import runtime

# TensorFlow reads its log level once, at import, so --verbose is looked at before flags are parsed.
# TensorFlow must also be imported before absl.app.run: Keras 2.14 first imported inside app.run
# builds broken Sequential models ("Output tensors of a Sequential model must be the output of a
# TensorFlow `Layer`").
runtime.quiet_tensorflow_logging(verbose="--verbose" in sys.argv[1:])
# pylint: disable=g-import-not-at-top,g-bad-import-order
import tensorflow as tf
import tensorflow_federated as tff
from absl import app
from absl import flags

from tff_resume import fedavg
from tff_resume import models
from tff_resume import sampling
from tff_resume.data import preprocessing
from tff_resume.data import synthetic
# pylint: enable=g-import-not-at-top,g-bad-import-order

_ROOT_OUTPUT_DIR = flags.DEFINE_string("root_output_dir", "runs", "Folder the run is written under.")
_TOTAL_ROUNDS = flags.DEFINE_integer("total_rounds", 10, "Rounds to train in all.", lower_bound=1)
_CLIENTS_PER_ROUND = flags.DEFINE_integer("clients_per_round", 10, "Clients sampled per round.",
                                          lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of data, initialization, sampling and shuffling.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show TensorFlow's start-up messages.")

_MODEL = "cnn"
_NUM_CLASSES = 10


def main(argv):
  del argv
  runtime.quiet_tensorflow_logging(_VERBOSE.value)
  run_dir = os.path.abspath(os.path.join(_ROOT_OUTPUT_DIR.value, "demo"))
  print(f"Output directory: {run_dir}")
  runtime.start_local_execution_context(show_worker_output=_VERBOSE.value)

  train_data, _ = synthetic.load_synthetic(synthetic.SyntheticSpec(seed=_SEED.value))
  preprocess_spec = preprocessing.PreprocessSpec(epochs=5, batch_size=20)
  model_fn = models.build_model_fn(_MODEL, _NUM_CLASSES, _SEED.value,
                                   preprocessing.element_spec(preprocess_spec))
  process = fedavg.build_fedavg(model_fn, client_learning_rate=0.02, server_learning_rate=1.0)
  state = fedavg.initialize(process, _MODEL, _NUM_CLASSES, _SEED.value)

  state_manager = tff.program.FileProgramStateManager(os.path.join(run_dir, "checkpoints"))
  restored, rounds_done = asyncio.run(state_manager.load_latest(state))
  if restored is not None:
    state = restored
    print(f"Resuming after round {rounds_done}.")
  else:
    rounds_done = 0
  summary_writer = tf.summary.create_file_writer(os.path.join(run_dir, "logdir"))

  for round_num in range(rounds_done + 1, _TOTAL_ROUNDS.value + 1):
    started = time.monotonic()
    client_ids = sampling.sample_clients(train_data.client_ids, _CLIENTS_PER_ROUND.value,
                                         _SEED.value, round_num)
    client_datasets = [
        preprocessing.preprocess_for_training(
            train_data.create_tf_dataset_for_client(client_id), preprocess_spec,
            seed=_SEED.value, round_num=round_num, client_id=client_id)
        for client_id in client_ids
    ]
    output = process.next(state, client_datasets)
    state = output.state
    asyncio.run(state_manager.save(state, round_num))
    train_metrics = output.metrics["client_work"]["train"]
    with summary_writer.as_default(step=round_num):
      for name, value in train_metrics.items():
        tf.summary.scalar(f"train/{name}", value)
    summary_writer.flush()
    print(f"round {round_num:3d}/{_TOTAL_ROUNDS.value}  loss {train_metrics['loss']:.4f}  "
          f"accuracy {train_metrics['sparse_categorical_accuracy']:.4f}  "
          f"{time.monotonic() - started:.2f} s", flush=True)

  print(f"Done: {_TOTAL_ROUNDS.value} rounds. Checkpoints: {os.path.join(run_dir, 'checkpoints')}")
  print(f"Open TensorBoard with: .venv/bin/tensorboard --logdir {os.path.join(run_dir, 'logdir')}")


if __name__ == "__main__":
  app.run(main)
