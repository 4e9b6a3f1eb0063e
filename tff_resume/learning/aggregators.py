"""The model-update aggregators, one registry chosen by name.

* `mean`: TFF's weighted mean, uncompressed (the baseline).
* `compression`: the pipeline of `tff.learning.compression_aggregator()`: 8-bit stochastic uniform
  quantization of tensors above 20,000 elements, with adaptive zeroing and clipping.
* `quantize`: uniform quantization to `bits` (1-16) of tensors above `threshold` elements, with
  stochastic or deterministic rounding and optionally a random Hadamard rotation first, built from
  `tff.aggregators.EncodedSumFactory` over tensorflow-model-optimization's encoders (flatten, uniform
  quantization, bit-packing) inside a weighted `tff.aggregators.MeanFactory`.
* `dp`: the pipeline of `tff.learning.dp_aggregator` (adaptive clipping, Gaussian noise, zeroing); DP
  bounds each client's contribution, so updates are averaged uniformly, as in TFF's unweighted FedAvg.

Every random draw (stochastic rounding, the Hadamard rotation, the DP noise) is a stateless op keyed
by `AggregatorSpec.seed` and the round's state (`seeded_quantization`, `seeded_privacy`), so two runs
of one config give the same bits, and a resumed run those of a run never interrupted.
"""

import dataclasses
import hashlib

import tensorflow_federated as tff
from tensorflow_federated.python.learning import model_update_aggregator

from tff_resume.learning import seeded_privacy
from tff_resume.learning import seeded_quantization

AGGREGATOR_NAMES = ("mean", "compression", "quantize", "dp")


@dataclasses.dataclass(frozen=True)
class AggregatorSpec:
  """Which aggregator, with its settings.

  Attributes:
    name: one of AGGREGATOR_NAMES.
    bits: `quantize`: bits per quantized value, 1 to 16.
    threshold: `quantize`: tensors with more elements than this are quantized; smaller ones are sent
      unencoded.
    stochastic: `quantize`: stochastic rounding (unbiased) instead of rounding to nearest.
    hadamard: `quantize`: rotate by a random Hadamard transform before quantizing.
    noise_multiplier: `dp`: Gaussian noise standard deviation over the clipping norm.
    clients_per_round: `dp`: expected clients per round (the noise is calibrated to it).
    seed: the key of every random draw (`run_seed(training.seed, aggregator.seed)`).
  """
  name: str = "mean"
  bits: int = 8
  threshold: int = 20000
  stochastic: bool = True
  hadamard: bool = False
  noise_multiplier: float = 1.0
  clients_per_round: int = 10
  seed: int = 0

  def validate(self) -> None:
    """Raises ValueError naming the field when a setting is invalid."""
    if self.name not in AGGREGATOR_NAMES:
      raise ValueError(f"aggregator.name must be one of {', '.join(AGGREGATOR_NAMES)}, "
                       f"got {self.name!r}.")
    if self.name == "quantize":
      if not 1 <= self.bits <= 16:
        raise ValueError(f"aggregator.quantize.bits must be between 1 and 16, got {self.bits}.")
      if self.threshold < 0:
        raise ValueError(
            f"aggregator.quantize.threshold must be 0 or more, got {self.threshold}.")
    if self.name == "dp":
      if self.noise_multiplier < 0:
        raise ValueError(
            f"aggregator.dp.noise_multiplier must be 0 or more, got {self.noise_multiplier}.")
      if self.clients_per_round < 1:
        raise ValueError(
            f"clients_per_round must be at least 1 for dp, got {self.clients_per_round}.")


def _int63(*parts) -> int:
  digest = hashlib.sha256(" ".join(str(part) for part in parts).encode()).digest()
  return int.from_bytes(digest[:8], "big") >> 1


def run_seed(training_seed: int, aggregator_seed: int) -> int:
  """The aggregator's key: a function of `training.seed` and `aggregator.seed` (0 by default), so
  changing `aggregator.seed` redraws the aggregator's randomness and nothing else."""
  return _int63("tff_resume aggregator", training_seed, aggregator_seed)


def purpose_seed(seed: int, purpose: str) -> int:
  """An independent key per kind of draw (rounding, rotation, noise) from the aggregator's."""
  return _int63(seed, purpose)


def build_aggregator(spec: AggregatorSpec) -> tff.aggregators.WeightedAggregationFactory:
  """Returns the weighted aggregation factory for model updates that `spec` names.

  Raises:
    ValueError: a setting is invalid (the message names the field).
  """
  spec.validate()
  if spec.name == "mean":
    return tff.aggregators.MeanFactory()
  if spec.name == "dp":
    try:
      return tff.aggregators.as_weighted_aggregator(seeded_privacy.dp_aggregator(
          spec.noise_multiplier, spec.clients_per_round, purpose_seed(spec.seed, "noise")))
    except ValueError as error:
      raise ValueError(f"aggregator.dp.noise_multiplier {spec.noise_multiplier}: {error}") from None
  rounding_seed = purpose_seed(spec.seed, "rounding")
  if spec.name == "compression":
    # TFF's compression_aggregator() with the seeded 8-bit rounding: the same stages, thresholds
    # and estimators, built with TFF's own zeroing and clipping wrappers.
    factory = tff.aggregators.MeanFactory(
        seeded_quantization.quantize_above_threshold(8, 20000, rounding_seed))
    return model_update_aggregator._default_zeroing(  # pylint: disable=protected-access
        model_update_aggregator._default_clipping(factory))  # pylint: disable=protected-access
  quantized_sum = seeded_quantization.quantize_above_threshold(
      spec.bits, spec.threshold, rounding_seed if spec.stochastic else None)
  if spec.hadamard:
    quantized_sum = seeded_quantization.SeededHadamardTransformFactory(
        quantized_sum, purpose_seed(spec.seed, "rotation"))
  return tff.aggregators.MeanFactory(quantized_sum)
