"""Presets that any config in configs/ applies when named after its path: `--config=FILE.py:PRESET`.

A preset changes fields before the command-line overrides are applied, so `--config.section.field=value`
still wins. `smoke` shrinks a run to a few seconds for tests and quick checks: two rounds of two clients on
a small synthetic population, one local epoch, evaluation at the end on two test clients. It keeps the
model, the optimizers and the aggregator, so a smoke run builds what the full config builds.
"""

import ml_collections

PRESETS = ("smoke",)


def _smoke(config: ml_collections.ConfigDict) -> None:
  config.data.source = "synthetic"
  config.data.synthetic.num_clients = 10
  config.data.synthetic.min_examples_per_client = 20
  config.data.synthetic.max_examples_per_client = 40
  config.data.synthetic.test_examples_per_client = 10
  config.client.epochs = 1
  config.training.total_rounds = 2
  config.training.clients_per_round = 2
  config.evaluation.rounds_per_eval = 0
  config.evaluation.max_clients = 2


def apply(config: ml_collections.ConfigDict, preset: str) -> ml_collections.ConfigDict:
  """Returns `config` changed by `preset` ("" changes nothing); raises ValueError naming the presets."""
  if preset == "smoke":
    _smoke(config)
  elif preset:
    raise ValueError(f"unknown config preset '{preset}'; presets: {', '.join(PRESETS)} "
                     "(e.g. --config=configs/demo.py:smoke)")
  return config
