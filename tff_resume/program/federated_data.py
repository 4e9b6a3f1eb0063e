"""Our seeded, resumable client sampling as TFF's program API wants it: a
`tff.program.FederatedDataSource`, for `tff.learning.programs.train_model` and other TFF programs.

    source = federated_data.SeededClientsDataSource("train", client_data, seed=0, preprocess=...)
    await tff.learning.programs.train_model(train_data_source=source, ...)

Round r's clients are `sampling.sample_clients(client ids, k, seed, r)`, the same as a `tff_resume`
run with that seed draws: a pure function of (seed, round, population), so the iterator's whole
state is the next round's number. `to_bytes()` writes that position (with the source's name, seed
and a fingerprint of the population) in a few bytes whatever the round; `from_bytes` restores it
onto the source of that name made in this process, and refuses a different seed or population. A
`train_model` program saves the iterator with its state (`DurableProgramStateManager` keeps it as
its bytes), so a resumed program draws the same clients as one never stopped.
"""

import copy
import hashlib
import json
from typing import Callable, Sequence

import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.core.impl.types import computation_types

from tff_resume.learning import sampling

_SOURCES: dict[str, "SeededClientsDataSource"] = {}  # By name: what `from_bytes` restores onto.


def _population_sha256(client_ids: Sequence[str]) -> str:
  return hashlib.sha256("\n".join(sorted(client_ids)).encode()).hexdigest()


class SeededClientsIterator(tff.program.FederatedDataSourceIterator):
  """Selects each round's clients with `sampling.sample_clients`; its position is the next round."""

  def __init__(self, source: "SeededClientsDataSource", next_round: int = 1):
    self._source = source
    self.next_round = next_round
    self.selected: list[tuple[int, list[str]]] = []  # (round, client ids) drawn by this object.

  @property
  def federated_type(self) -> tff.FederatedType:
    return self._source.federated_type

  def select(self, k: int | None = None) -> list[tf.data.Dataset]:
    """The preprocessed datasets of the next round's `k` clients; advances one round."""
    if k is None:
      raise ValueError("select(k): give the number of clients a round (train_per_round_clients).")
    round_num = self.next_round
    client_ids = self._source.sample(round_num, k)
    self.next_round += 1
    self.selected.append((round_num, client_ids))
    if self._source.on_select is not None:
      self._source.on_select(round_num, client_ids)
    return [self._source.dataset(round_num, client_id) for client_id in client_ids]

  def to_bytes(self) -> bytes:
    """Its position as a few bytes of JSON: source name, seed, population hash, next round."""
    return json.dumps({"source": self._source.name, "seed": self._source.seed,
                       "population_sha256": self._source.population_sha256,
                       "next_round": self.next_round}, sort_keys=True).encode()

  @classmethod
  def from_bytes(cls, buffer: bytes) -> "SeededClientsIterator":
    """The iterator `buffer` describes, on this process's source of the same name.

    Raises:
      ValueError: no such source here, or it has another seed or population than when saved.
    """
    position = json.loads(buffer.decode())
    source = _SOURCES.get(position["source"])
    if source is None:
      raise ValueError(f"a saved position of the data source {position['source']!r}, which this "
                       f"program has not made (it has {sorted(_SOURCES)}).")
    if (position["seed"], position["population_sha256"]) != (source.seed, source.population_sha256):
      raise ValueError(f"the data source {source.name!r} was saved with seed {position['seed']} "
                       f"and another population (or seed) than now ({source.seed}): resume with "
                       "the data and seed the program started with.")
    return cls(source, position["next_round"])

  def __deepcopy__(self, memo) -> "SeededClientsIterator":
    # `train_model` copies the iterator every round: its position, not the client data.
    twin = SeededClientsIterator(self._source, self.next_round)
    twin.selected = copy.deepcopy(self.selected, memo)
    return twin

  def __eq__(self, other) -> bool:
    return (isinstance(other, SeededClientsIterator) and other._source is self._source
            and other.next_round == self.next_round)

  def __hash__(self) -> int:
    return hash((self._source.name, self.next_round))


class SeededClientsDataSource(tff.program.FederatedDataSource):
  """`client_data`'s clients, sampled per round as a `tff_resume` run with `seed` samples them.

  Args:
    name: what a saved position names (unique among this process's sources).
    client_data: a `tff.simulation.datasets.ClientData`.
    seed: the sampling seed (`training.seed`).
    preprocess: (dataset, round, client id) -> the client's training dataset for that round
      (`tff_resume.program.experiment.preprocess_fn(config)`); None uses the raw datasets.
    on_select: called with (round, client ids) as each round is selected (to log or record them).
  """

  def __init__(self, name: str, client_data, seed: int,
               preprocess: Callable[[tf.data.Dataset, int, str], tf.data.Dataset] | None = None,
               on_select: Callable[[int, list[str]], None] | None = None):
    self.name = name
    self.client_data = client_data
    self.seed = seed
    self.client_ids = sorted(client_data.client_ids)
    self.population_sha256 = _population_sha256(self.client_ids)
    self.on_select = on_select
    self._preprocess = preprocess
    self._federated_type = None
    _SOURCES[name] = self

  def sample(self, round_num: int, clients_per_round: int) -> list[str]:
    """The client ids of round `round_num`, in sampled order: a pure function of (seed, round,
    population), drawn without replacement."""
    return sampling.sample_clients(self.client_ids, clients_per_round, self.seed, round_num)

  def dataset(self, round_num: int, client_id: str) -> tf.data.Dataset:
    """The dataset of `client_id` in round `round_num`, preprocessed when a `preprocess` was
    given."""
    dataset = self.client_data.create_tf_dataset_for_client(client_id)
    return dataset if self._preprocess is None else self._preprocess(dataset, round_num, client_id)

  @property
  def federated_type(self) -> tff.FederatedType:
    if self._federated_type is None:  # Built on first use: a run that trains nothing reads no data.
      element_spec = self.dataset(1, self.client_ids[0]).element_spec
      self._federated_type = tff.FederatedType(
          tff.SequenceType(computation_types.tensorflow_to_type(element_spec)), tff.CLIENTS)
    return self._federated_type

  def iterator(self) -> SeededClientsIterator:
    """A new iterator over the rounds' seeded client samples, starting at round 1."""
    return SeededClientsIterator(self)
