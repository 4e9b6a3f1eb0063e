"""The EMNIST models of the FedAvg paper, with seeded initialization, and their TFF wrapping.

* `cnn`: the original FedAvg CNN of McMahan et al.: 5x5 conv 32, 2x2 max-pool, 5x5 conv 64, 2x2
  max-pool, dense 512, dense to the classes (1,663,370 parameters for 10 classes).
* `2nn`: two dense layers of 200 units with ReLU (199,210 parameters for 10 classes).
* `linear`: one dense layer on the 784 pixels (7,850 parameters for 10 classes).

Every initializer has its own seed derived from the model seed, so the same seed gives the same
initial weights in any process. Models output logits.

Your own model: a model name of the form `module:function` names a Python callable
`function(num_classes, seed)` returning an uncompiled `tf.keras.Model` that maps images
`[batch, 28, 28, 1]` to logits `[batch, num_classes]` (see `experiments/custom_model.py`).
"""

import importlib

import tensorflow as tf
import tensorflow_federated as tff

MODEL_NAMES = ("cnn", "2nn", "linear")
IMAGE_SIDE = 28


class UnknownModelError(ValueError):
  """The model name is not one of MODEL_NAMES nor an importable `module:function`."""


def is_custom(model_name: str) -> bool:
  """True when `model_name` names a callable, `module:function`."""
  return ":" in model_name


def _custom_model_callable(model_name: str):
  module_name, _, function_name = model_name.partition(":")
  try:
    module = importlib.import_module(module_name)
  except ImportError as error:
    raise UnknownModelError(
        f"Cannot import module {module_name!r} of model {model_name!r}: {error}. Put it on "
        "PYTHONPATH (or in the folder you run from).") from None
  function = getattr(module, function_name, None)
  if not callable(function):
    raise UnknownModelError(
        f"Module {module_name!r} has no function {function_name!r} (model {model_name!r}).")
  return function


def check_model_name(model_name: str) -> None:
  """Raises UnknownModelError unless `model_name` is one of MODEL_NAMES or an importable callable."""
  if is_custom(model_name):
    _custom_model_callable(model_name)
  elif model_name not in MODEL_NAMES:
    raise UnknownModelError(
        f"Unknown model {model_name!r}; choose one of {', '.join(MODEL_NAMES)}, or name your own "
        "as module:function.")


def needs_flat_input(model_name: str) -> bool:
  """True when the model takes 784 values rather than a 28x28x1 image (custom models take images)."""
  return model_name in ("2nn", "linear")


def _call_custom(function, model_name: str, num_classes: int, seed: int) -> tf.keras.Model:
  model = function(num_classes=num_classes, seed=seed)
  if not isinstance(model, tf.keras.Model):
    raise UnknownModelError(
        f"Model function {model_name!r} returned {type(model).__name__}, not a tf.keras.Model.")
  return model


def create_keras_model(model_name: str, num_classes: int, seed: int) -> tf.keras.Model:
  """Returns the named model, uncompiled, with weights drawn from `seed`.

  Raises:
    UnknownModelError: `model_name` is not one of MODEL_NAMES.
  """
  check_model_name(model_name)
  if is_custom(model_name):
    return _call_custom(_custom_model_callable(model_name), model_name, num_classes, seed)
  seeds = iter(range(seed * 1000, seed * 1000 + 1000))

  def dense(units, activation=None):
    return tf.keras.layers.Dense(
        units, activation=activation,
        kernel_initializer=tf.keras.initializers.GlorotUniform(seed=next(seeds)))

  def conv(filters):
    return tf.keras.layers.Conv2D(
        filters, 5, padding="same", activation="relu",
        kernel_initializer=tf.keras.initializers.GlorotUniform(seed=next(seeds)))

  if model_name == "cnn":
    layers = [
        tf.keras.layers.InputLayer(input_shape=(IMAGE_SIDE, IMAGE_SIDE, 1)),
        conv(32), tf.keras.layers.MaxPool2D(2, padding="same"),
        conv(64), tf.keras.layers.MaxPool2D(2, padding="same"),
        tf.keras.layers.Flatten(), dense(512, "relu"), dense(num_classes),
    ]
  elif model_name == "2nn":
    layers = [
        tf.keras.layers.InputLayer(input_shape=(IMAGE_SIDE * IMAGE_SIDE,)),
        dense(200, "relu"), dense(200, "relu"), dense(num_classes),
    ]
  else:
    layers = [tf.keras.layers.InputLayer(input_shape=(IMAGE_SIDE * IMAGE_SIDE,)),
              dense(num_classes)]
  return tf.keras.Sequential(layers, name=model_name)


def build_model_fn(model_name: str, num_classes: int, seed: int, input_spec):
  """Returns a no-argument function building the model as a `tff.learning.models.VariableModel`.

  Args:
    model_name: one of MODEL_NAMES, or `module:function`.
    num_classes: 10 for digits, 62 for all of EMNIST.
    seed: initialization seed.
    input_spec: the element spec of the client batches (see `data.preprocessing.element_spec`).
  """
  check_model_name(model_name)  # Fail now, not inside TFF's tracing.
  # A custom model's function is imported now too: importing inside TFF's tracing would make
  # AutoGraph try (and fail, noisily) to convert importlib.
  function = _custom_model_callable(model_name) if is_custom(model_name) else None

  def model_fn():
    keras_model = (create_keras_model(model_name, num_classes, seed) if function is None
                   else _call_custom(function, model_name, num_classes, seed))
    return tff.learning.models.from_keras_model(
        keras_model,
        input_spec=input_spec,
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy()])

  return model_fn


def initial_model_weights(model_name: str, num_classes: int, seed: int):
  """Returns the seeded initial weights as `tff.learning.models.ModelWeights` of numpy arrays."""
  model = create_keras_model(model_name, num_classes, seed)
  return tff.learning.models.ModelWeights(
      trainable=[variable.numpy() for variable in model.trainable_variables],
      non_trainable=[variable.numpy() for variable in model.non_trainable_variables])
