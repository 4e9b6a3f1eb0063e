"""An example of your own model for the runner: a small CNN with batch normalization.

    python -m experiments.run_emnist --config=configs/demo.py --root_output_dir=runs \\
        --experiment_name=custom --config.model.name=experiments.custom_model:create_model

The runner calls `create_model(num_classes=..., seed=...)` and expects an uncompiled Keras model
mapping images `[batch, 28, 28, 1]` to logits `[batch, num_classes]`. Seeded initializers make the
initial weights the same in every process (a resumed run does not need it: version 0 holds them).
Batch normalization's moving statistics are non-trainable weights: FedAvg keeps the server's, and
export, warm start and checkpoints carry them like the trainable ones.
"""

import tensorflow as tf


def create_model(num_classes: int, seed: int) -> tf.keras.Model:
  initializer_seeds = iter(range(seed * 100, seed * 100 + 100))

  def glorot():
    return tf.keras.initializers.GlorotUniform(seed=next(initializer_seeds))

  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(28, 28, 1)),
      tf.keras.layers.Conv2D(16, 3, activation="relu", kernel_initializer=glorot()),
      tf.keras.layers.MaxPool2D(2),
      tf.keras.layers.Conv2D(32, 3, kernel_initializer=glorot()),
      tf.keras.layers.BatchNormalization(),
      tf.keras.layers.ReLU(),
      tf.keras.layers.MaxPool2D(2),
      tf.keras.layers.Flatten(),
      tf.keras.layers.Dense(num_classes, kernel_initializer=glorot()),
  ], name="small_cnn_bn")
