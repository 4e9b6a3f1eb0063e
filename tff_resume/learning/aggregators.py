"""The model-update aggregators, one registry chosen by name.

* `mean`: TFF's weighted mean, uncompressed (the baseline).
* `compression`: `tff.learning.compression_aggregator()`: 8-bit uniform quantization of tensors above
  20,000 elements, with adaptive zeroing and clipping.
* `quantize`: uniform quantization to `bits` (1-16) of tensors above `threshold` elements, with
  stochastic or deterministic rounding and optionally a random Hadamard rotation first, built from
  `tff.aggregators.EncodedSumFactory` over tensorflow-model-optimization's encoders (flatten, uniform
  quantization, bit-packing) inside a weighted `tff.aggregators.MeanFactory`.
* `dp`: `tff.learning.dp_aggregator` (adaptive clipping, Gaussian noise, zeroing); DP bounds each
  client's contribution, so updates are averaged uniformly, as in TFF's unweighted FedAvg.
"""

import dataclasses

import tensorflow_federated as tff

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
  """
  name: str = "mean"
  bits: int = 8
  threshold: int = 20000
  stochastic: bool = True
  hadamard: bool = False
  noise_multiplier: float = 1.0
  clients_per_round: int = 10

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


def build_aggregator(spec: AggregatorSpec) -> tff.aggregators.WeightedAggregationFactory:
  """Returns the weighted aggregation factory for model updates that `spec` names.

  Raises:
    ValueError: a setting is invalid (the message names the field).
  """
  spec.validate()
  if spec.name == "mean":
    return tff.aggregators.MeanFactory()
  if spec.name == "compression":
    return tff.learning.compression_aggregator()
  if spec.name == "dp":
    return tff.aggregators.as_weighted_aggregator(
        tff.learning.dp_aggregator(spec.noise_multiplier, spec.clients_per_round))
  quantized_sum = tff.aggregators.EncodedSumFactory.quantize_above_threshold(
      quantization_bits=spec.bits, threshold=spec.threshold, stochastic=spec.stochastic)
  if spec.hadamard:
    quantized_sum = tff.aggregators.HadamardTransformFactory(quantized_sum)
  return tff.aggregators.MeanFactory(quantized_sum)
