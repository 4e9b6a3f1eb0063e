"""The aggregators that draw random numbers, as config overrides: the configs every reproducibility
test runs (docs/resuming.md's table of random draws names the same four)."""

RANDOM_AGGREGATORS = {
    "compression": {"aggregator.name": "compression"},
    "quantize": {"aggregator.name": "quantize"},
    "hadamard": {"aggregator.name": "quantize", "aggregator.quantize.stochastic": False,
                 "aggregator.quantize.hadamard": True},
    "dp": {"aggregator.name": "dp"},
}
