"""The demo: the FedAvg baseline on the embedded synthetic federated EMNIST, 10 rounds (~1 min).

    python -m experiments.run_emnist --config=configs/demo.py --root_output_dir=runs \\
        --experiment_name=demo
"""

import ml_collections

from configs import emnist_fedavg
from configs import presets


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = emnist_fedavg.get_config()
  config.data.source = "synthetic"
  config.training.total_rounds = 10
  config.evaluation.rounds_per_eval = 5
  return presets.apply(config, preset)
