"""The FedAvg baseline with TFF's compression aggregator (8-bit quantization, adaptive zeroing and
clipping), on real federated EMNIST.

    python -m experiments.run_emnist --config=configs/emnist_compression.py \\
        --root_output_dir=runs --experiment_name=compression
"""

import ml_collections

from configs import emnist_fedavg
from configs import presets


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = emnist_fedavg.get_config()
  config.aggregator.name = "compression"
  return presets.apply(config, preset)
