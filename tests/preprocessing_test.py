"""Tests for tff_resume.data.preprocessing: batches, and an order fixed by (seed, round, client)."""

import collections
import os
import subprocess
import sys
import textwrap

from absl.testing import absltest
import numpy as np
import tensorflow as tf

from tff_resume.data import preprocessing

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _client_dataset(num_examples=47):
  """Examples whose label is their index, so a batch's labels show the order."""
  return tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
      label=np.arange(num_examples, dtype=np.int32),
      pixels=np.broadcast_to(np.arange(num_examples, dtype=np.float32)[:, None, None],
                             (num_examples, 28, 28)).copy()))


def _training_order(spec, seed=3, round_num=5, client_id="f0001_01"):
  dataset = preprocessing.preprocess_for_training(_client_dataset(), spec, seed=seed,
                                                  round_num=round_num, client_id=client_id)
  return [int(label) for batch in dataset for label in batch["y"].numpy().ravel()]


class PreprocessForTrainingTest(absltest.TestCase):

  def test_order_is_a_pure_function_of_seed_round_and_client(self):
    spec = preprocessing.PreprocessSpec(epochs=2, batch_size=10, shuffle_buffer=47)
    order = _training_order(spec)
    self.assertEqual(_training_order(spec), order)
    self.assertNotEqual(_training_order(spec, round_num=6), order)
    self.assertNotEqual(_training_order(spec, seed=4), order)
    self.assertNotEqual(_training_order(spec, client_id="f0001_02"), order)
    # Each epoch is a permutation of all 47 examples, and the two epochs differ.
    self.assertEqual(sorted(order[:47]), list(range(47)))
    self.assertEqual(sorted(order[47:]), list(range(47)))
    self.assertNotEqual(order[:47], order[47:])

  def test_order_is_the_same_in_another_process(self):
    program = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        import preprocessing_test as t
        from tff_resume.data import preprocessing
        spec = preprocessing.PreprocessSpec(epochs=2, batch_size=10, shuffle_buffer=47)
        print(t._training_order(spec))
        """)
    env = dict(os.environ, PYTHONPATH=_REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", program, os.path.dirname(__file__)],
                            capture_output=True, text=True, env=env, check=True, timeout=120)
    spec = preprocessing.PreprocessSpec(epochs=2, batch_size=10, shuffle_buffer=47)
    self.assertEqual(result.stdout.strip(), str(_training_order(spec)))

  def test_shuffle_buffer_of_one_keeps_stored_order(self):
    spec = preprocessing.PreprocessSpec(epochs=1, batch_size=10, shuffle_buffer=1)
    self.assertEqual(_training_order(spec), list(range(47)))

  def test_batches_shapes_and_maximum_examples(self):
    spec = preprocessing.PreprocessSpec(epochs=3, batch_size=8, max_examples_per_client=20)
    dataset = preprocessing.preprocess_for_training(_client_dataset(), spec, seed=0, round_num=1,
                                                    client_id="c")
    sizes = [int(batch["x"].shape[0]) for batch in dataset]
    self.assertEqual(sizes, [8] * 7 + [4])
    self.assertEqual(sorted(_training_order(spec)), sorted(list(range(20)) * 3))
    batch = next(iter(dataset))
    self.assertEqual(batch["x"].shape[1:], (28, 28, 1))
    self.assertEqual(batch["y"].shape[1:], (1,))
    self.assertEqual(dataset.element_spec, preprocessing.element_spec(spec))

  def test_flatten_gives_784_values(self):
    spec = preprocessing.PreprocessSpec(flatten=True)
    dataset = preprocessing.preprocess_for_evaluation(_client_dataset(), spec)
    self.assertEqual(dataset.element_spec["x"], tf.TensorSpec([None, 784], tf.float32))
    self.assertEqual(dataset.element_spec, preprocessing.element_spec(spec))

  def test_shuffle_seed_is_pinned(self):
    # Pinned: a change would make resumed runs replay different batches.
    self.assertEqual(preprocessing.shuffle_seed(0, 1, "f0001_01"), 4668790516710519955)

  def test_values_out_of_range_name_the_field(self):
    for spec, field in ((preprocessing.PreprocessSpec(epochs=0), "epochs"),
                        (preprocessing.PreprocessSpec(batch_size=0), "batch_size"),
                        (preprocessing.PreprocessSpec(max_examples_per_client=-1),
                         "max_examples_per_client")):
      with self.assertRaisesRegex(ValueError, field):
        spec.validate()


class PreprocessForEvaluationTest(absltest.TestCase):

  def test_one_pass_in_stored_order(self):
    spec = preprocessing.PreprocessSpec(epochs=4, batch_size=10)
    dataset = preprocessing.preprocess_for_evaluation(_client_dataset(), spec)
    labels = [int(label) for batch in dataset for label in batch["y"].numpy().ravel()]
    self.assertEqual(labels, list(range(47)))


if __name__ == "__main__":
  absltest.main()
