"""Tests for tff_resume.program.experiment: every config value is checked before anything is built or
written, with one message naming the field."""

import os
import sys

from absl.testing import absltest

from configs import demo
from tff_resume.program import experiment


def _smoke(**fields):
  config = demo.get_config("smoke")
  config.update_from_flattened_dict(fields)
  return config


class ValidateTest(absltest.TestCase):

  def test_nan_inf_and_negative_numbers_are_refused_in_any_field(self):
    for fields, message in (
        ({"data.synthetic.label_skew": float("nan")},
         "config.data.synthetic.label_skew must be a finite number, got nan."),
        ({"training.seed": -1}, "config.training.seed must be 0 or more, got -1."),
        ({"server.learning_rate": float("inf")},
         "config.server.learning_rate must be a finite number, got inf."),
        ({"aggregator.name": "dp", "aggregator.dp.noise_multiplier": float("nan")},
         "config.aggregator.dp.noise_multiplier must be a finite number, got nan."),
        ({"client.shuffle_buffer": -5}, "config.client.shuffle_buffer must be 0 or more, got -5."),
        ({"server.yogi.epsilon": float("-inf")},
         "config.server.yogi.epsilon must be a finite number, got -inf.")):
      with self.subTest(message):
        with self.assertRaises(experiment.ConfigError) as raised:
          experiment.validate(_smoke(**fields))
        self.assertEqual(str(raised.exception), message)

  def test_a_model_function_that_is_not_a_keras_model_factory_is_refused(self):
    modules = self.create_tempdir()
    modules.create_file("not_models.py", "def number(num_classes, seed):\n  return 42\n\n"
                        "def broken(num_classes, seed):\n  raise ValueError('no weights')\n")
    sys.path.insert(0, modules.full_path)
    self.addCleanup(sys.path.remove, modules.full_path)
    for name, message in (
        ("not_models:number",
         "config.model.name: Model function 'not_models:number' returned int, not a "
         "tf.keras.Model."),
        ("not_models:broken",
         "config.model.name: not_models:broken failed: ValueError: no weights"),
        ("not_models:missing",
         "config.model.name: Module 'not_models' has no function 'missing' (model "
         "'not_models:missing').")):
      with self.subTest(name):
        with self.assertRaises(experiment.ConfigError) as raised:
          experiment.validate(_smoke(**{"model.name": name}))
        self.assertEqual(str(raised.exception), message)
    self.assertFalse(os.path.exists(os.path.join(modules.full_path, "runs")))


if __name__ == "__main__":
  absltest.main()
