"""The aggregators that draw random numbers, as config overrides: the configs every reproducibility
test runs (docs/resuming.md's table of random draws names the same four)."""

RANDOM_AGGREGATORS = {
    "compression": {"aggregator.name": "compression"},
    "quantize": {"aggregator.name": "quantize"},
    "hadamard": {"aggregator.name": "quantize", "aggregator.quantize.stochastic": False,
                 "aggregator.quantize.hadamard": True},
    "dp": {"aggregator.name": "dp"},
}

# The aggregators whose runs walk every draw and state leaf of the four: `quantize` (stochastic
# rounding) is `compression`'s seeded rounding without the zeroing and clipping around it
# (tff_resume/learning/aggregators.py), so `compression`'s runs walk its every draw and state leaf.
EVERY_DRAW = ("compression", "hadamard", "dp")
