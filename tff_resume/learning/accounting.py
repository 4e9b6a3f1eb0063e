"""Exact communication accounting: broadcast and aggregated bits per client, from TFF's types.

* Broadcast bits per client: the model weights the server sends each sampled client (trainable and
  non-trainable), elements x dtype bits, read from the learning process's state type.
* Aggregated bits per client: everything a client sends up under the chosen aggregator. The
  aggregator's own `AggregationProcess` is built for the model-update type, and every intrinsic in its
  `next` computation that moves data from clients to the server (`federated_aggregate`, `_sum`,
  `_mean`, `_weighted_mean`, `_secure_sum*`) contributes the bits of its client-placed arguments. For
  encoded tensors these are the encoders' real outputs (bit-packed values, min/max), so unencoded
  tensors, the client weight, and the zeroing/clipping norm estimates and counters are all counted.

Not counted: the scalars the server broadcasts besides the model (learning rate, clipping and zeroing
thresholds, encoder parameters), the training metrics clients report, and transport framing.
"""

import dataclasses
import math

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

CLIENT_TO_SERVER_INTRINSICS = frozenset({
    "federated_aggregate", "federated_sum", "federated_mean", "federated_weighted_mean",
    "federated_secure_sum", "federated_secure_sum_bitwidth", "federated_secure_modular_sum",
})


@dataclasses.dataclass(frozen=True)
class CommunicationCost:
  """Bits one client receives and sends in a round."""
  broadcasted_bits_per_client: int
  aggregated_bits_per_client: int


def _tensor_types(type_spec):
  if isinstance(type_spec, tff.TensorType):
    yield type_spec
  elif isinstance(type_spec, (tff.FederatedType, tff.StructType)):
    for child in type_spec.children():
      yield from _tensor_types(child)
  else:
    raise TypeError(f"Cannot count the bits of {type_spec}.")


def tensor_bits(type_spec) -> int:
  """Returns the bits of every tensor in a TFF type (elements x dtype bits); shapes must be known."""
  total = 0
  for tensor_type in _tensor_types(type_spec):
    shape = tf.TensorShape(tensor_type.shape)
    if not shape.is_fully_defined():
      raise ValueError(f"Cannot count the bits of {tensor_type}: its shape is not fully known.")
    total += math.prod(shape.as_list()) * tf.as_dtype(tensor_type.dtype).size * 8
  return total


def _client_placed_parts(type_spec):
  """Yields the CLIENTS-placed federated types inside an intrinsic's argument type."""
  if isinstance(type_spec, tff.FederatedType):
    if type_spec.placement == tff.CLIENTS:
      yield type_spec
  elif isinstance(type_spec, tff.StructType):
    for element in type_spec.children():
      yield from _client_placed_parts(element)


def client_upload_bits(computation) -> int:
  """Returns the bits one client sends in one call of `computation`, summed over every
  client-to-server intrinsic in it (each counted once per call)."""
  total = 0
  pending = [computation.to_building_block()]
  while pending:
    block = pending.pop()
    if (isinstance(block, tff.framework.Call)
        and isinstance(block.function, tff.framework.Intrinsic)
        and block.function.uri in CLIENT_TO_SERVER_INTRINSICS):
      total += sum(tensor_bits(part.member)
                   for part in _client_placed_parts(block.argument.type_signature))
    pending.extend(block.children())
  return total


def communication_cost(process, aggregator: tff.aggregators.WeightedAggregationFactory
                       ) -> CommunicationCost:
  """Returns the per-client bits of one round of a FedAvg `LearningProcess` using `aggregator`."""
  model_weights_type = process.next.type_signature.parameter[0].member.global_model_weights
  aggregation = aggregator.create(model_weights_type.trainable, tff.TensorType(np.float32))
  return CommunicationCost(
      broadcasted_bits_per_client=tensor_bits(model_weights_type),
      aggregated_bits_per_client=client_upload_bits(aggregation.next))
