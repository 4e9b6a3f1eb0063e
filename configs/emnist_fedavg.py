"""The FedAvg baseline of TFF's EMNIST image-classification tutorial, on real federated EMNIST.

The original FedAvg CNN, 10 clients per round, 5 local epochs, batch 20, client SGD 0.02, server SGD
1.0. Needs `emnist_all.sqlite` in `data.cache_dir` (default ~/.tff); see docs/data.md.

    python -m experiments.run_emnist --config=configs/emnist_fedavg.py \\
        --root_output_dir=runs --experiment_name=fedavg
"""

import ml_collections

from configs import presets


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Where the clients' data comes from.
  config.data = ml_collections.ConfigDict()
  config.data.source = "emnist"  # "emnist" (TFF's file or a LEAF import) or "synthetic".
  config.data.cache_dir = ""  # Folder of emnist_all.sqlite; "" means TFF's default, ~/.tff.
  config.data.only_digits = True  # The 10 digit classes; False for all 62.
  # Synthetic writers; each is drawn when first used, so 3,400 (EMNIST's size) start as fast as 100.
  config.data.synthetic = ml_collections.ConfigDict()
  config.data.synthetic.num_clients = 100  # Synthetic writers.
  config.data.synthetic.min_examples_per_client = 50  # Fewest training examples of a writer.
  config.data.synthetic.max_examples_per_client = 150  # Most training examples of a writer.
  config.data.synthetic.test_examples_per_client = 20  # Test examples of each writer.
  # Dirichlet concentration of a writer's labels: smaller is more skewed.
  config.data.synthetic.label_skew = 0.5
  config.data.synthetic.seed = 0  # Seed of the synthetic data.

  # The Keras model the clients train.
  config.model = ml_collections.ConfigDict()
  # "cnn", "2nn", "linear", or your own model as "module:function" (see Models and exports).
  config.model.name = "cnn"
  # Warm start from an export folder or a run folder (its newest good version); "" starts from the
  # seeded initial weights.
  config.model.initial_weights = ""
  # "float32", or "bfloat16": mixed-precision client training (float32 weights, updates and
  # checkpoints; bfloat16 math). In the fingerprint when not "float32".
  config.model.compute_dtype = "float32"

  # Local training on each sampled client.
  config.client = ml_collections.ConfigDict()
  config.client.learning_rate = 0.02  # Client SGD learning rate.
  config.client.epochs = 5  # Local epochs per round.
  config.client.batch_size = 20  # Client batch size.
  config.client.shuffle_buffer = 100  # Shuffle buffer of a client's examples.
  config.client.max_examples_per_client = 0  # Use at most this many examples of a client; 0: all.

  # The federated algorithm.
  config.algorithm = ml_collections.ConfigDict()
  # "fedavg" (TFF's build_weighted_fed_avg) or "fedprox" (build_weighted_fed_prox).
  config.algorithm.name = "fedavg"
  config.algorithm.proximal_strength = 0.01  # fedprox: weight of the proximal term (mu), 0 or more.

  # The server optimizer of Adaptive Federated Optimization, applied to the averaged update; only
  # the chosen optimizer's settings are in the fingerprint.
  config.server = ml_collections.ConfigDict()
  # "sgd", "adam", "adagrad" or "yogi" (tff.learning.optimizers).
  config.server.optimizer = "sgd"
  config.server.learning_rate = 1.0  # Server learning rate, applied to the averaged update.
  config.server.momentum = 0.0  # sgd: momentum.
  config.server.adam = ml_collections.ConfigDict()
  config.server.adam.beta_1 = 0.9  # adam: first-moment decay.
  config.server.adam.beta_2 = 0.999  # adam: second-moment decay.
  config.server.adam.epsilon = 1e-7  # adam: added to the denominator.
  config.server.adagrad = ml_collections.ConfigDict()
  config.server.adagrad.initial_preconditioner_value = 0.1  # adagrad: the accumulator's start.
  config.server.adagrad.epsilon = 1e-7  # adagrad: added to the denominator.
  config.server.yogi = ml_collections.ConfigDict()
  config.server.yogi.beta_1 = 0.9  # yogi: first-moment decay.
  config.server.yogi.beta_2 = 0.999  # yogi: second-moment decay.
  config.server.yogi.epsilon = 1e-3  # yogi: added to the denominator.
  config.server.yogi.initial_preconditioner_value = 1e-6  # yogi: the accumulator's start.

  # How client updates are aggregated (see Compression and communication); invalid settings stop
  # the run before training with a message naming the field.
  config.aggregator = ml_collections.ConfigDict()
  config.aggregator.name = "mean"  # "mean", "compression", "quantize" or "dp".
  # Keys every random draw of the aggregator together with training.seed; another value redraws the
  # rounding, rotation and noise and nothing else (see Resuming: random draws, seeded).
  config.aggregator.seed = 0
  config.aggregator.quantize = ml_collections.ConfigDict()
  config.aggregator.quantize.bits = 8  # quantize: bits per value, 1 to 16.
  # quantize: tensors with more elements are quantized, smaller ones sent as float32.
  config.aggregator.quantize.threshold = 20000
  # quantize: stochastic (unbiased) rounding; False rounds to nearest.
  config.aggregator.quantize.stochastic = True
  config.aggregator.quantize.hadamard = False  # quantize: random Hadamard rotation first.
  config.aggregator.dp = ml_collections.ConfigDict()
  # dp: Gaussian noise over the adaptive clipping norm (calibrated to training.clients_per_round).
  config.aggregator.dp.noise_multiplier = 0.1
  # dp: the delta at which privacy/epsilon is reported each round; not in the fingerprint (see
  # Privacy).
  config.aggregator.dp.target_delta = 1e-5

  # Rounds, clients and the run's seed.
  config.training = ml_collections.ConfigDict()
  config.training.total_rounds = 100  # Rounds in all; raise it to extend a finished run.
  config.training.clients_per_round = 10  # Clients sampled per round (at most the population).
  config.training.seed = 0  # Seed of initialization, client sampling and shuffling.

  # Evaluation of the global model on the test clients.
  config.evaluation = ml_collections.ConfigDict()
  # Evaluate every this many rounds and after the last round; 0 evaluates only after the last.
  config.evaluation.rounds_per_eval = 10
  config.evaluation.max_clients = 0  # Test clients evaluated (first in sorted order); 0 is all.
  # "federated": TFF's federated evaluation (build_fed_eval), client by client. "centralized": the
  # global model on the pooled examples of the same test clients, in plain TensorFlow in batches of
  # 1,000, with the same evaluation/* metrics (Keras's model.evaluate of the exported model on those
  # examples; num_batches counts its batches of 1,000). Use it for thousands of test writers; the
  # Adaptive Federated Optimization EMNIST studies evaluate on the pooled test set. Not in the
  # fingerprint; each start's value is in its TensorBoard hparams.
  config.evaluation.mode = "federated"

  # Checkpoint versions and their retention, as TFF's FileProgramStateManager keeps them.
  config.checkpoint = ml_collections.ConfigDict()
  # Save every this many rounds (and at the last, and on a stop).
  config.checkpoint.rounds_per_checkpoint = 1
  config.checkpoint.keep_total = 5  # Versions kept; 0 keeps every version.
  config.checkpoint.keep_first = True  # Always keep the oldest version (version 0, initial state).
  config.checkpoint.keep_every_k = 1  # Keep only versions that are multiples of k (and the newest).

  # Where the rounds are computed (see Several machines).
  config.runtime = ml_collections.ConfigDict()
  # "" a local TFF worker of the runner's own; else host:port,host:port of `tff-resume worker`s.
  config.runtime.workers = ""
  # Split each round's sampled clients, in sampled order, into this many groups whose partial
  # aggregates are merged in order; 0: not split. In the fingerprint (it changes the float sums);
  # the workers are not.
  config.runtime.num_subrounds = 0
  config.runtime.connect_timeout_seconds = 15.0  # Seconds a start waits for each runtime.workers.
  # "" connects to runtime.workers without TLS (workers started with --insecure); else a
  # `tff-resume certs` folder (ca.pem, runner.pem, runner.key): mutual TLS with workers started with
  # `tff-resume worker --tls_dir`. Not in the fingerprint.
  config.runtime.tls_dir = ""
  return presets.apply(config, preset)
