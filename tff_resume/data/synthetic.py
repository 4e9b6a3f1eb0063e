"""A synthetic federated EMNIST: the embedded default data for the demo and fast tests.

Shaped like TFF's federated EMNIST (`pixels` float32 [28, 28] in [0, 1] with background 1.0, `label`
int32 []), deterministic from a seed, non-IID and learnable:

* every class has a glyph of a few dark strokes, drawn from the seed alone;
* every client (writer) has its own style: a shift of the whole glyph, a stroke width, an ink
  intensity and a noise level, and its own label skew (a Dirichlet draw over the classes);
* every example jitters the stroke end points by a pixel or so and adds noise to the ink.

A client's examples depend only on `(seed, client index, split)`, so a population of 50 clients holds
the same first 10 clients as a population of 10.
"""

import collections
import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

IMAGE_SIDE = 28
STROKES_PER_GLYPH = 3
_TRAIN, _TEST = 0, 1


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """Sizes and shape of a synthetic federated EMNIST.

  Attributes:
    num_clients: number of writers.
    min_examples_per_client: the fewest training examples a writer has.
    max_examples_per_client: the most training examples a writer has.
    test_examples_per_client: test examples of every writer.
    only_digits: 10 classes when true, 62 otherwise.
    label_skew: Dirichlet concentration of a writer's labels; smaller is more skewed.
    seed: the seed everything is drawn from.
  """
  num_clients: int = 100
  min_examples_per_client: int = 50
  max_examples_per_client: int = 150
  test_examples_per_client: int = 20
  only_digits: bool = True
  label_skew: float = 0.5
  seed: int = 0

  @property
  def num_classes(self) -> int:
    return 10 if self.only_digits else 62

  def validate(self) -> None:
    """Raises ValueError naming the field when a size is out of range."""
    if self.num_clients < 1:
      raise ValueError(f"num_clients must be at least 1, got {self.num_clients}.")
    if not 1 <= self.min_examples_per_client <= self.max_examples_per_client:
      raise ValueError(
          "need 1 <= min_examples_per_client <= max_examples_per_client, got "
          f"{self.min_examples_per_client} and {self.max_examples_per_client}.")
    if self.test_examples_per_client < 1:
      raise ValueError(
          f"test_examples_per_client must be at least 1, got {self.test_examples_per_client}.")
    if self.label_skew <= 0:
      raise ValueError(f"label_skew must be above 0, got {self.label_skew}.")


def client_ids(spec: SyntheticSpec) -> list[str]:
  """Returns the writer ids `synthetic_0000`, `synthetic_0001`, ... (sorted as strings)."""
  width = max(4, len(str(spec.num_clients - 1)))
  return [f"synthetic_{index:0{width}d}" for index in range(spec.num_clients)]


def _glyph_strokes(spec: SyntheticSpec) -> np.ndarray:
  """Returns stroke end points per class, float [num_classes, strokes, 2 points, (row, col)]."""
  rng = np.random.default_rng([spec.seed, 7919])
  return rng.uniform(6.0, IMAGE_SIDE - 7.0, size=(spec.num_classes, STROKES_PER_GLYPH, 2, 2))


def _draw(strokes: np.ndarray, width: np.ndarray, ink: np.ndarray) -> np.ndarray:
  """Rasterizes strokes [n, strokes, 2, 2] into images [n, 28, 28]: ink darkens a white page."""
  grid = np.stack(np.meshgrid(np.arange(IMAGE_SIDE), np.arange(IMAGE_SIDE), indexing="ij"), -1)
  points = grid.reshape(1, 1, -1, 2).astype(np.float64)
  start, end = strokes[:, :, None, 0, :], strokes[:, :, None, 1, :]
  direction = end - start
  length_squared = np.maximum((direction ** 2).sum(-1), 1e-9)
  along = np.clip(((points - start) * direction).sum(-1) / length_squared, 0.0, 1.0)
  distance_squared = ((points - (start + along[..., None] * direction)) ** 2).sum(-1)
  darkness = np.exp(-distance_squared / (2.0 * width[:, None, None] ** 2)).max(axis=1)
  darkness[darkness < 0.05] = 0.0  # Ink ends: the page away from the strokes stays exactly white.
  image = 1.0 - ink[:, None] * darkness
  return image.reshape(-1, IMAGE_SIDE, IMAGE_SIDE)


def _client_examples(spec: SyntheticSpec, glyphs: np.ndarray, index: int, split: int):
  """Returns (labels int32 [n], pixels float32 [n, 28, 28]) of one client's split."""
  style = np.random.default_rng([spec.seed, index])
  label_weights = style.dirichlet(np.full(spec.num_classes, spec.label_skew))
  shift = style.uniform(-1.5, 1.5, size=2)
  width = style.uniform(1.4, 2.2)
  ink = style.uniform(0.7, 1.0)
  noise = style.uniform(0.02, 0.12)
  if split == _TRAIN:
    count = int(style.integers(spec.min_examples_per_client, spec.max_examples_per_client + 1))
  else:
    count = spec.test_examples_per_client
  rng = np.random.default_rng([spec.seed, index, split])
  labels = rng.choice(spec.num_classes, size=count, p=label_weights)
  strokes = glyphs[labels] + shift + rng.normal(0.0, 0.4, size=(count, STROKES_PER_GLYPH, 2, 2))
  images = _draw(strokes, np.full(count, width), np.full(count, ink))
  # Noise scales with the ink, so the page stays exactly 1.0 as in EMNIST.
  images += rng.normal(0.0, noise, size=images.shape) * (1.0 - images)
  return labels.astype(np.int32), np.clip(images, 0.0, 1.0).astype(np.float32)


def synthetic_arrays(spec: SyntheticSpec, split: str) -> dict[str, collections.OrderedDict]:
  """Returns every client's examples of `split` ('train' or 'test') as numpy arrays (all of them in
  memory: for inspection; training reads clients one at a time through `SyntheticClientData`).

  Returns:
    client id -> OrderedDict(label=int32 [n], pixels=float32 [n, 28, 28]).
  """
  data = SyntheticClientData(spec, split)
  return {client_id: data.client_arrays(client_id) for client_id in data.client_ids}


class SyntheticClientData(tff.simulation.datasets.ClientData):
  """One split of a synthetic federated EMNIST, each writer drawn from the seed when it is asked for.

  Nothing is built per writer up front, so creating it costs the same for 100 writers as for 3,400
  (EMNIST's size); a writer's examples are the same bytes whenever and in whatever order it is drawn.
  The most recently drawn writers are kept (`cached_clients`), so a writer sampled again soon is not
  drawn twice.
  """

  def __init__(self, spec: SyntheticSpec, split: str, cached_clients: int = 32):
    spec.validate()
    self._spec = spec
    self._split = {"train": _TRAIN, "test": _TEST}[split]
    self._client_ids = client_ids(spec)
    self._index = {client_id: index for index, client_id in enumerate(self._client_ids)}
    self._glyphs = _glyph_strokes(spec)
    self._cached_clients = cached_clients
    self._cache: collections.OrderedDict[str, collections.OrderedDict] = collections.OrderedDict()
    self._element_spec = collections.OrderedDict(
        label=tf.TensorSpec([], tf.int32),
        pixels=tf.TensorSpec([IMAGE_SIDE, IMAGE_SIDE], tf.float32))

  @property
  def client_ids(self) -> list[str]:
    return self._client_ids

  def client_arrays(self, client_id: str) -> collections.OrderedDict:
    """OrderedDict(label=int32 [n], pixels=float32 [n, 28, 28]) of one writer."""
    arrays = self._cache.get(client_id)
    if arrays is not None:
      self._cache.move_to_end(client_id)
      return arrays
    if client_id not in self._index:
      raise ValueError(f"{client_id!r} is not a client of this synthetic EMNIST "
                       f"({len(self._client_ids)} writers, {self._client_ids[0]} to "
                       f"{self._client_ids[-1]}).")
    labels, pixels = _client_examples(self._spec, self._glyphs, self._index[client_id],
                                      self._split)
    arrays = collections.OrderedDict(label=labels, pixels=pixels)
    self._cache[client_id] = arrays
    if len(self._cache) > self._cached_clients:
      self._cache.popitem(last=False)
    return arrays

  def create_tf_dataset_for_client(self, client_id: str) -> tf.data.Dataset:
    """The writer's examples (`pixels`, `label`) as a `tf.data.Dataset`, drawn when first asked
    for."""
    return tf.data.Dataset.from_tensor_slices(self.client_arrays(client_id))

  @property
  def serializable_dataset_fn(self):
    # Writers are drawn with numpy, which a TensorFlow graph cannot trace: this data is for
    # simulations in one process (create_tf_dataset_for_client), not for dataset_computation.
    raise NotImplementedError(
        "synthetic EMNIST draws writers with numpy; use create_tf_dataset_for_client.")

  @property
  def element_type_structure(self):
    return self._element_spec


def load_synthetic(spec: SyntheticSpec):
  """Returns `(train, test)` `tff.simulation.datasets.ClientData` of a synthetic federated EMNIST.

  Elements are `OrderedDict(label=int32 [], pixels=float32 [28, 28])`, as in TFF's EMNIST. Writers
  are drawn when first asked for (see `SyntheticClientData`).

  Raises:
    ValueError: a size in `spec` is out of range.
  """
  return SyntheticClientData(spec, "train"), SyntheticClientData(spec, "test")
