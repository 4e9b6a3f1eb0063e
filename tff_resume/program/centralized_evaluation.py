"""Centralized evaluation (`evaluation.mode = "centralized"`): the global model on pooled test data.

Instead of TFF's federated evaluation (a computation over each test client's own small batches),
the global model is evaluated in the runner's process, in plain TensorFlow, on every example of the
chosen test clients pooled into batches of `BATCH_SIZE`. Each client contributes the examples
federated evaluation would give it (its first `client.max_examples_per_client` when that is set),
and the metrics have federated evaluation's names:

* `evaluation/sparse_categorical_accuracy`: the fraction of examples whose top logit is the label;
* `evaluation/loss`: the models' loss (`models.keras_loss`, cross-entropy of the logits), the mean
  over every example, summed in float64;
* `evaluation/num_examples`: the examples evaluated, exactly;
* `evaluation/num_batches`: the batches of `BATCH_SIZE` they made (federated evaluation counts each
  client's batches of `client.batch_size` instead).

For a float32 model these are Keras's `model.evaluate` of the exported model (`tff-resume export`)
on the same examples, to float32 rounding. Nothing that grows is kept between evaluations: the Keras
model and its traced function are built at the first evaluation, and every evaluation reads the
examples again in one tf.data pass (a batch and tf.data's prefetch in memory at a time).
"""

from typing import Callable, Sequence

import tensorflow as tf
import tensorflow_federated as tff

from tff_resume.analysis import global_model
from tff_resume.data import preprocessing
from tff_resume.learning import models

BATCH_SIZE = 1000  # Examples per batch: large, so a pass costs few model calls.


def pooled_examples(client_data: tff.simulation.datasets.ClientData, client_ids: Sequence[str],
                    spec: preprocessing.PreprocessSpec) -> tf.data.Dataset:
  """The examples of `client_ids`, client after client in that order, each client's limited as in
  federated evaluation (`preprocessing.limit_examples`), as one dataset of single examples.

  A ClientData with a `serializable_dataset_fn` (TFF's SQL EMNIST) is read by one tf.data pipeline
  over the client ids, with no Python work per client (TFF 0.87's own
  `create_tf_dataset_from_all_clients` is the same per-client query, over every client in a shuffled
  order: no single sequential read either); one without (the synthetic data, drawn with numpy) is
  read through a Python generator, client by client.
  """
  try:
    dataset_fn = client_data.serializable_dataset_fn
  except NotImplementedError:
    def examples():
      for client_id in client_ids:
        yield from preprocessing.limit_examples(
            client_data.create_tf_dataset_for_client(client_id), spec)

    return tf.data.Dataset.from_generator(
        examples, output_signature=client_data.element_type_structure)
  return tf.data.Dataset.from_tensor_slices(list(client_ids)).flat_map(
      lambda client_id: preprocessing.limit_examples(dataset_fn(client_id), spec))


def _totals_fn(model: tf.keras.Model):
  """Returns totals(batches) -> (loss sum, correct, examples, batches), traced once."""
  loss_sum_of = models.keras_loss(tf.keras.losses.Reduction.SUM)

  @tf.function
  def totals(batches):
    loss_sum = tf.constant(0.0, tf.float64)
    correct = tf.constant(0, tf.int64)
    examples = tf.constant(0, tf.int64)
    num_batches = tf.constant(0, tf.int64)
    for batch in batches:
      labels = tf.reshape(batch["y"], [-1])
      logits = model(batch["x"], training=False)
      loss_sum += tf.cast(loss_sum_of(labels, logits), tf.float64)
      predicted = tf.argmax(logits, axis=-1, output_type=labels.dtype)
      correct += tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.int64))
      examples += tf.size(labels, out_type=tf.int64)
      num_batches += 1
    return loss_sum, correct, examples, num_batches

  return totals


def build_evaluation(keras_model_fn: Callable[[], tf.keras.Model],
                     client_data: tff.simulation.datasets.ClientData, client_ids: Sequence[str],
                     spec: preprocessing.PreprocessSpec, batch_size: int = BATCH_SIZE):
  """Returns evaluate(model_weights) -> {'evaluation/<metric>': value} (see the module docstring).

  Args:
    keras_model_fn: builds the run's Keras model (called once, at the first evaluation).
    client_data: the test ClientData.
    client_ids: the test clients evaluated, in the order they are read.
    spec: the run's preprocessing (the input format and `max_examples_per_client`).
    batch_size: examples per batch.
  """
  built = []  # [model, totals], at the first evaluation (a start that never evaluates builds none).

  def evaluate(model_weights: tff.learning.models.ModelWeights):
    if not built:
      model = keras_model_fn()
      built.extend((model, _totals_fn(model)))
    model, totals = built
    global_model.assign_weights(
        model, list(model_weights.trainable) + list(model_weights.non_trainable))
    batches = preprocessing.batch_for_evaluation(
        pooled_examples(client_data, client_ids, spec), spec, batch_size)
    loss_sum, correct, examples, num_batches = (value.numpy() for value in totals(batches))
    return {
        "evaluation/sparse_categorical_accuracy": float(correct / examples) if examples else 0.0,
        "evaluation/loss": float(loss_sum / examples) if examples else 0.0,
        "evaluation/num_examples": int(examples),
        "evaluation/num_batches": int(num_batches),
    }

  return evaluate
