"""Tests for tff_resume.learning.models: the FedAvg paper's architectures and seeded initialization."""

import hashlib
import os
import subprocess
import sys

from absl.testing import absltest

from tff_resume.learning import models

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _weights_sha256(model_name, seed):
  weights = models.initial_model_weights(model_name, 10, seed)
  return hashlib.sha256(b"".join(array.tobytes() for array in weights.trainable)).hexdigest()


class CreateKerasModelTest(absltest.TestCase):

  def test_parameter_counts(self):
    self.assertEqual(
        {name: models.create_keras_model(name, 10, 0).count_params()
         for name in models.MODEL_NAMES},
        {"cnn": 1_663_370, "2nn": 199_210, "linear": 7_850})
    self.assertEqual(models.create_keras_model("cnn", 62, 0).count_params(), 1_690_046)

  def test_cnn_layers_are_the_fedavg_papers(self):
    layers = models.create_keras_model("cnn", 10, 0).layers
    self.assertEqual([type(layer).__name__ for layer in layers],
                     ["Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense",
                      "Dense"])
    self.assertEqual([layers[0].filters, layers[2].filters, layers[5].units, layers[6].units],
                     [32, 64, 512, 10])
    self.assertEqual(layers[0].kernel_size, (5, 5))

  def test_same_seed_same_weights_in_another_process(self):
    program = ("import hashlib; from tff_resume.learning import models; "
               "w = models.initial_model_weights('cnn', 10, 4); "
               "print(hashlib.sha256(b''.join(a.tobytes() for a in w.trainable)).hexdigest())")
    env = dict(os.environ, PYTHONPATH=_REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    other = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                           env=env, check=True, timeout=120).stdout.strip()
    self.assertEqual(other, _weights_sha256("cnn", 4))
    self.assertNotEqual(_weights_sha256("cnn", 5), other)

  def test_unknown_model_lists_the_choices(self):
    with self.assertRaisesRegex(models.UnknownModelError, "'resnet'; choose one of cnn, 2nn, linear"):
      models.create_keras_model("resnet", 10, 0)


if __name__ == "__main__":
  absltest.main()
