"""The EMNIST models of the FedAvg paper, with seeded initialization, and their TFF wrapping.

* `cnn`: the original FedAvg CNN of McMahan et al.: 5x5 conv 32, 2x2 max-pool, 5x5 conv 64, 2x2
  max-pool, dense 512, dense to the classes (1,663,370 parameters for 10 classes).
* `2nn`: two dense layers of 200 units with ReLU (199,210 parameters for 10 classes).
* `linear`: one dense layer on the 784 pixels (7,850 parameters for 10 classes).

Every initializer has its own seed derived from the model seed, so the same seed gives the same
initial weights in any process. Models output logits.

Compute dtype `bfloat16` builds the model under Keras's `mixed_bfloat16` policy: the variables (so the
weights TFF averages, counts the bits of and checkpoints) stay float32, the layers compute in
bfloat16, and a final float32 layer gives float32 logits to the loss. The weights are those of the
float32 model, variable for variable, so a float32 export or warm start reads them.

Your own model: a model name of the form `module:function` names a Python callable
`function(num_classes, seed)` returning an uncompiled `tf.keras.Model` that maps images
`[batch, 28, 28, 1]` to logits `[batch, num_classes]` (see `experiments/custom_model.py`).
"""

import contextlib
import importlib

import tensorflow as tf
import tensorflow_federated as tff

MODEL_NAMES = ("cnn", "2nn", "linear")
COMPUTE_DTYPES = ("float32", "bfloat16")
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


def check_compute_dtype(compute_dtype: str) -> None:
  """Raises ValueError unless `compute_dtype` is one of COMPUTE_DTYPES."""
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"model.compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got "
                     f"{compute_dtype!r}.")


@contextlib.contextmanager
def _keras_policy(compute_dtype: str):
  """Layers created inside compute in `compute_dtype` (variables stay float32)."""
  check_compute_dtype(compute_dtype)
  if compute_dtype == "float32":
    yield
    return
  previous = tf.keras.mixed_precision.global_policy()
  tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    yield
  finally:
    tf.keras.mixed_precision.set_global_policy(previous)


def create_keras_model(model_name: str, num_classes: int, seed: int,
                       compute_dtype: str = "float32") -> tf.keras.Model:
  """Returns the named model, uncompiled, with weights drawn from `seed`, computing in
  `compute_dtype` (one of COMPUTE_DTYPES; the weights are float32 either way).

  Raises:
    UnknownModelError: `model_name` is not one of MODEL_NAMES.
    ValueError: `compute_dtype` is not one of COMPUTE_DTYPES.
  """
  check_model_name(model_name)
  function = _custom_model_callable(model_name) if is_custom(model_name) else None
  return _create_keras_model(model_name, num_classes, seed, compute_dtype, function)


def _create_keras_model(model_name: str, num_classes: int, seed: int, compute_dtype: str,
                        function) -> tf.keras.Model:
  """`create_keras_model` with a custom model's `function` already imported (or None)."""
  with _keras_policy(compute_dtype):
    model = (_builtin_model(model_name, num_classes, seed) if function is None
             else _call_custom(function, model_name, num_classes, seed))
  if compute_dtype == "float32":
    return model
  if not model.outputs:
    raise UnknownModelError(
        f"Model {model_name!r} cannot compute in {compute_dtype}: it has no known outputs (give its "
        "first layer an input shape, or build it as a functional model).")
  logits = tf.keras.layers.Activation("linear", dtype="float32", name="float32_logits")
  return tf.keras.Model(model.inputs, logits(model.outputs[0]), name=model.name)


def _builtin_model(model_name: str, num_classes: int, seed: int) -> tf.keras.Model:
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


def build_model_fn(model_name: str, num_classes: int, seed: int, input_spec,
                   compute_dtype: str = "float32"):
  """Returns a no-argument function building the model as a `tff.learning.models.VariableModel`.

  Args:
    model_name: one of MODEL_NAMES, or `module:function`.
    num_classes: 10 for digits, 62 for all of EMNIST.
    seed: initialization seed.
    input_spec: the element spec of the client batches (see `data.preprocessing.element_spec`).
    compute_dtype: one of COMPUTE_DTYPES: what the layers compute in (weights stay float32).
  """
  check_model_name(model_name)  # Fail now, not inside TFF's tracing.
  check_compute_dtype(compute_dtype)
  # A custom model's function is imported now too: importing inside TFF's tracing would make
  # AutoGraph try (and fail, noisily) to convert importlib.
  function = _custom_model_callable(model_name) if is_custom(model_name) else None

  def model_fn():
    keras_model = _create_keras_model(model_name, num_classes, seed, compute_dtype, function)
    return tff.learning.models.from_keras_model(
        keras_model,
        input_spec=input_spec,
        loss=keras_loss(),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy()])

  if function is None:  # The built-in models have no control flow for AutoGraph to convert; TFF
    # calls model_fn in graphs it traces, where converting it and all it calls took 0.5-0.9 s of
    # each start. A custom model's function is converted as before (its layers may need it).
    return tf.autograph.experimental.do_not_convert(model_fn)
  return model_fn


def keras_loss(reduction: str = tf.keras.losses.Reduction.AUTO) -> tf.keras.losses.Loss:
  """The models' loss: sparse categorical cross-entropy of the logits, reduced as `reduction`."""
  return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction)


def initial_model_weights(model_name: str, num_classes: int, seed: int):
  """Returns the seeded initial weights as `tff.learning.models.ModelWeights` of numpy arrays."""
  model = create_keras_model(model_name, num_classes, seed)
  return tff.learning.models.ModelWeights(
      trainable=[variable.numpy() for variable in model.trainable_variables],
      non_trainable=[variable.numpy() for variable in model.non_trainable_variables])
