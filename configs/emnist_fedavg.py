"""The FedAvg baseline of TFF's EMNIST image-classification tutorial, on real federated EMNIST.

The original FedAvg CNN, 10 clients per round, 5 local epochs, batch 20, client SGD 0.02, server SGD
1.0. Needs `emnist_all.sqlite` in `data.cache_dir` (default ~/.tff); see the README's Data section.

    python -m experiments.run_emnist --config=configs/emnist_fedavg.py \\
        --root_output_dir=runs --experiment_name=fedavg
"""

import ml_collections

from configs import presets


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.data = ml_collections.ConfigDict()
  config.data.source = "emnist"  # "emnist" (TFF's file or a LEAF import) or "synthetic".
  config.data.cache_dir = ""  # Folder of emnist_all.sqlite; "" means TFF's default, ~/.tff.
  config.data.only_digits = True
  config.data.synthetic = ml_collections.ConfigDict()
  config.data.synthetic.num_clients = 100
  config.data.synthetic.min_examples_per_client = 50
  config.data.synthetic.max_examples_per_client = 150
  config.data.synthetic.test_examples_per_client = 20
  config.data.synthetic.label_skew = 0.5
  config.data.synthetic.seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.name = "cnn"  # "cnn", "2nn", "linear", or your own as "module:function".
  config.model.initial_weights = ""  # Warm start: an export folder or a run folder; "" is seeded.
  config.model.compute_dtype = "float32"  # "float32", or "bfloat16" (float32 weights, bf16 math).

  config.client = ml_collections.ConfigDict()
  config.client.learning_rate = 0.02
  config.client.epochs = 5
  config.client.batch_size = 20
  config.client.shuffle_buffer = 100
  config.client.max_examples_per_client = 0  # 0 uses all of a client's examples.

  config.algorithm = ml_collections.ConfigDict()
  config.algorithm.name = "fedavg"  # "fedavg" (weighted) or "fedprox".
  config.algorithm.proximal_strength = 0.01  # fedprox: the proximal term's weight (mu).

  config.server = ml_collections.ConfigDict()
  config.server.optimizer = "sgd"  # "sgd", "adam", "adagrad" or "yogi".
  config.server.learning_rate = 1.0
  config.server.momentum = 0.0  # sgd only.
  config.server.adam = ml_collections.ConfigDict()
  config.server.adam.beta_1 = 0.9
  config.server.adam.beta_2 = 0.999
  config.server.adam.epsilon = 1e-7
  config.server.adagrad = ml_collections.ConfigDict()
  config.server.adagrad.initial_preconditioner_value = 0.1
  config.server.adagrad.epsilon = 1e-7
  config.server.yogi = ml_collections.ConfigDict()
  config.server.yogi.beta_1 = 0.9
  config.server.yogi.beta_2 = 0.999
  config.server.yogi.epsilon = 1e-3
  config.server.yogi.initial_preconditioner_value = 1e-6

  config.aggregator = ml_collections.ConfigDict()
  config.aggregator.name = "mean"  # "mean", "compression", "quantize" or "dp".
  config.aggregator.seed = 0  # Keys the aggregator's random draws with training.seed; change to redraw.
  config.aggregator.quantize = ml_collections.ConfigDict()
  config.aggregator.quantize.bits = 8
  config.aggregator.quantize.threshold = 20000
  config.aggregator.quantize.stochastic = True
  config.aggregator.quantize.hadamard = False
  config.aggregator.dp = ml_collections.ConfigDict()
  config.aggregator.dp.noise_multiplier = 0.1
  config.aggregator.dp.target_delta = 1e-5  # The delta of the privacy/epsilon reported each round.

  config.training = ml_collections.ConfigDict()
  config.training.total_rounds = 100
  config.training.clients_per_round = 10
  config.training.seed = 0  # Initialization, client sampling and shuffling.

  config.evaluation = ml_collections.ConfigDict()
  config.evaluation.rounds_per_eval = 10  # Also after the last round; 0 evaluates only then.
  config.evaluation.max_clients = 0  # Test clients evaluated (first in sorted order); 0 is all.
  # "federated" (TFF's federated evaluation, client by client) or "centralized" (the global model on
  # the pooled test examples of those clients, in batches of 1,000: far faster for thousands).
  config.evaluation.mode = "federated"

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.rounds_per_checkpoint = 1
  config.checkpoint.keep_total = 5  # 0 keeps every version.
  config.checkpoint.keep_first = True
  config.checkpoint.keep_every_k = 1

  config.runtime = ml_collections.ConfigDict()
  config.runtime.workers = ""  # "" a local worker; else host:port,host:port of `tff-resume worker`s.
  config.runtime.num_subrounds = 0  # Split a round's clients into this many merged groups; 0: don't.
  config.runtime.connect_timeout_seconds = 15.0  # How long a start waits for runtime.workers.
  # "" connects to runtime.workers without TLS; else a `tff-resume certs` folder (ca.pem and the
  # runner pair): mutual TLS with workers started with `tff-resume worker --tls_dir`.
  config.runtime.tls_dir = ""
  return presets.apply(config, preset)
