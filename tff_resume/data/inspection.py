"""Summaries of a federated dataset: clients, examples per client and the label distribution.

Works on any of the three sources through one representation, an iterable of `(client id, labels)`:
`labels_from_sqlite` reads TFF's EMNIST SQLite file (real, or imported from LEAF) directly,
`labels_from_leaf` reads LEAF's JSON shards, and `labels_from_arrays` the synthetic set.
"""

import collections
import dataclasses
import itertools
import sqlite3
from typing import Iterable, Iterator, Mapping

import numpy as np
import tensorflow as tf

from tff_resume.data import leaf


@dataclasses.dataclass(frozen=True)
class DatasetSummary:
  """Counts describing one split of a federated dataset."""
  num_clients: int
  num_examples: int
  min_examples_per_client: int
  median_examples_per_client: float
  max_examples_per_client: int
  label_counts: dict[int, int]

  def format(self, title: str) -> str:
    """Returns the summary as the lines `tff-resume data inspect` prints."""
    lines = [
        f"{title}: {self.num_clients} clients, {self.num_examples} examples",
        f"  examples per client: min {self.min_examples_per_client}, "
        f"median {self.median_examples_per_client:g}, max {self.max_examples_per_client}",
        f"  labels ({len(self.label_counts)} classes present):",
    ]
    for start in range(0, len(self.label_counts), 8):
      row = itertools.islice(self.label_counts.items(), start, start + 8)
      lines.append("    " + "  ".join(f"{label:>2}: {count:<6}" for label, count in row).rstrip())
    return "\n".join(lines)


def summarize(clients: Iterable[tuple[str, np.ndarray]]) -> DatasetSummary:
  """Summarizes `(client id, labels)` pairs, one pair per client."""
  sizes = []
  label_counts = collections.Counter()
  for _, labels in clients:
    sizes.append(len(labels))
    label_counts.update(int(label) for label in labels)
  if not sizes:
    raise ValueError("The dataset has no clients.")
  return DatasetSummary(
      num_clients=len(sizes), num_examples=int(sum(sizes)), min_examples_per_client=min(sizes),
      median_examples_per_client=float(np.median(sizes)), max_examples_per_client=max(sizes),
      label_counts=dict(sorted(label_counts.items())))


def labels_from_arrays(
    arrays: Mapping[str, Mapping[str, np.ndarray]]) -> Iterator[tuple[str, np.ndarray]]:
  """Yields each client's labels from arrays keyed by client id (as `synthetic_arrays` returns)."""
  for client_id, examples in arrays.items():
    yield client_id, examples["label"]


def labels_from_leaf(leaf_dir: str, split: str) -> Iterator[tuple[str, np.ndarray]]:
  """Yields each writer's labels of one split (`train` or `test`) of a LEAF FEMNIST folder."""
  for records in leaf.iter_leaf_split(leaf_dir, split):
    yield records.writer, records.labels


def labels_from_sqlite(path: str, split_name: str) -> Iterator[tuple[str, np.ndarray]]:
  """Yields each client's labels of one TFF split (e.g. `all_train`) of an EMNIST SQLite file."""
  connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
  try:
    rows = connection.execute(
        "SELECT client_id, serialized_example_proto FROM examples WHERE split_name = ? "
        "ORDER BY client_id", (split_name,))
    for client_id, client_rows in itertools.groupby(rows, key=lambda row: row[0]):
      labels = [tf.train.Example.FromString(blob).features.feature["label"].int64_list.value[0]
                for _, blob in client_rows]
      yield client_id, np.asarray(labels, dtype=np.int64)
  finally:
    connection.close()
