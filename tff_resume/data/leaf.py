"""Imports LEAF's FEMNIST JSON output into a file with TFF's federated EMNIST SQLite schema.

LEAF writes `train/` and `test/` folders of `all_data_*.json` shards, each
`{"users": [writer, ...], "num_samples": [n, ...], "user_data": {writer: {"x": [[784 floats]], "y": [...]}}}`.
The import writes `emnist_all.sqlite` with TFF's two tables,

    examples(split_name TEXT, client_id TEXT, serialized_example_proto BLOB)
    client_metadata(client_id TEXT, split_name TEXT, num_examples INTEGER)

and the four splits `all_train`, `all_test`, `digits_only_train`, `digits_only_test` (digits are labels
0-9). Each example is a `tf.train.Example` with `pixels` (784 floats, row-major 28x28) and `label`
(int64), so `tff.simulation.datasets.emnist.load_data(cache_dir=OUT)` reads it unchanged. An index on
`(client_id, split_name)` is added so TFF's per-client query does not scan the whole table.

Shards are read one at a time (memory is bounded by one shard), every record is validated, and the
file appears at its final path only when complete: it is written to a temporary file beside it and
renamed, since TFF trusts any file at that path.
"""

import dataclasses
import glob
import json
import os
import sqlite3
from typing import Callable, Iterator

import numpy as np
import tensorflow as tf

from tff_resume.data import emnist

PIXELS_PER_IMAGE = 28 * 28
NUM_CLASSES = 62
NUM_DIGIT_CLASSES = 10
LEAF_SPLITS = ("train", "test")
_TEMPORARY_PREFIX = ".importing-"


class LeafFormatError(ValueError):
  """A LEAF shard or record does not have the documented format."""


@dataclasses.dataclass(frozen=True)
class WriterRecords:
  """All examples of one writer in one LEAF split."""
  shard_path: str
  writer: str
  pixels: np.ndarray  # float32 [num_examples, 784]
  labels: np.ndarray  # int64 [num_examples]


@dataclasses.dataclass
class ImportSummary:
  """What an import wrote, per TFF split name."""
  path: str
  clients: dict[str, int]
  examples: dict[str, int]


def shard_paths(leaf_dir: str, split: str) -> list[str]:
  """Returns the sorted `all_data_*.json` shards of `leaf_dir/split`, or raises if there are none."""
  paths = sorted(glob.glob(os.path.join(leaf_dir, split, "*.json")))
  if not paths:
    raise LeafFormatError(
        f"No LEAF shards (*.json) in {os.path.join(leaf_dir, split)}: --src must be LEAF's FEMNIST "
        "data folder, the one holding train/ and test/.")
  return paths


def _validate_writer(path: str, writer: str, count, data) -> WriterRecords:
  where = f"{path}, writer {writer}"
  if not isinstance(data, dict) or "x" not in data or "y" not in data:
    raise LeafFormatError(f"{where}: user_data entry needs 'x' and 'y'.")
  xs, ys = data["x"], data["y"]
  if not isinstance(xs, list) or not isinstance(ys, list):
    raise LeafFormatError(f"{where}: 'x' and 'y' must be lists, got {type(xs).__name__} and "
                          f"{type(ys).__name__}.")
  if len(xs) != count or len(ys) != count:
    raise LeafFormatError(
        f"{where}: num_samples says {count} but there are {len(xs)} images and {len(ys)} labels.")
  for index, (x, y) in enumerate(zip(xs, ys)):
    if not isinstance(x, list) or len(x) != PIXELS_PER_IMAGE:
      size = len(x) if isinstance(x, list) else type(x).__name__
      raise LeafFormatError(f"{where}, index {index}: {size} pixel values, expected 784.")
    if isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < NUM_CLASSES:
      raise LeafFormatError(f"{where}, index {index}: label {y!r} is not an integer in 0..61.")
  try:
    pixels = np.asarray(xs)
    if pixels.dtype.kind not in "iuf":  # Strings, booleans, nulls or a mix: not pixel values.
      raise ValueError(f"they read as {pixels.dtype}")
    pixels = pixels.astype(np.float32).reshape(count, PIXELS_PER_IMAGE)
  except (TypeError, ValueError) as error:
    raise LeafFormatError(f"{where}: pixel values are not all numbers ({error}).") from None
  outside = np.flatnonzero(~((pixels >= 0.0) & (pixels <= 1.0)).all(axis=1))
  if outside.size:
    index = int(outside[0])
    raise LeafFormatError(f"{where}, index {index}: pixel values outside [0, 1] "
                          f"(min {pixels[index].min()}, max {pixels[index].max()}).")
  return WriterRecords(path, writer, pixels, np.asarray(ys, dtype=np.int64))


def read_shard(path: str) -> Iterator[WriterRecords]:
  """Yields each writer of one LEAF shard after validating every record.

  Raises:
    LeafFormatError: naming the file, and the writer and index where there is one.
  """
  try:
    with open(path, encoding="utf-8") as shard_file:
      shard = json.load(shard_file)
  except UnicodeDecodeError as error:
    raise LeafFormatError(f"{path}: not UTF-8 text, so not JSON ({error}).") from None
  except (OSError, json.JSONDecodeError) as error:
    raise LeafFormatError(f"{path}: not readable as JSON ({error}).") from None
  if not isinstance(shard, dict) or not {"users", "num_samples", "user_data"} <= shard.keys():
    raise LeafFormatError(f"{path}: a LEAF shard needs 'users', 'num_samples' and 'user_data'.")
  users, counts, user_data = shard["users"], shard["num_samples"], shard["user_data"]
  if not (isinstance(users, list) and all(isinstance(user, str) for user in users)):
    raise LeafFormatError(f"{path}: 'users' must be a list of writer ids (strings).")
  if not (isinstance(counts, list) and all(
      isinstance(count, int) and not isinstance(count, bool) and count >= 0 for count in counts)):
    raise LeafFormatError(f"{path}: 'num_samples' must be a list of counts (integers, 0 or more).")
  if not isinstance(user_data, dict):
    raise LeafFormatError(f"{path}: 'user_data' must be an object keyed by writer id.")
  if len(users) != len(counts):
    raise LeafFormatError(f"{path}: {len(users)} users but {len(counts)} num_samples entries.")
  if len(set(users)) != len(users):
    raise LeafFormatError(f"{path}: a writer is listed twice in 'users'.")
  for writer, count in zip(users, counts):
    if writer not in user_data:
      raise LeafFormatError(f"{path}, writer {writer}: listed in users but has no user_data.")
    yield _validate_writer(path, writer, count, user_data[writer])


def iter_leaf_split(leaf_dir: str, split: str,
                    progress: Callable[[str], None] | None = None) -> Iterator[WriterRecords]:
  """Yields every writer of a LEAF split, shard by shard, refusing a writer found in two shards."""
  paths = shard_paths(leaf_dir, split)
  first_shard_of: dict[str, str] = {}
  for number, path in enumerate(paths, start=1):
    writers = examples = 0
    for records in read_shard(path):
      if records.writer in first_shard_of:
        raise LeafFormatError(
            f"{path}, writer {records.writer}: this writer's {split} examples are split across "
            f"shards (also in {first_shard_of[records.writer]}).")
      first_shard_of[records.writer] = path
      writers += 1
      examples += len(records.labels)
      yield records
    if progress:
      progress(f"[{split} {number}/{len(paths)}] {os.path.basename(path)}: "
               f"{writers} writers, {examples} examples")


def serialize_example(pixels: np.ndarray, label: int) -> bytes:
  """Returns a `tf.train.Example` as TFF's EMNIST stores it: `pixels` 784 floats, `label` int64."""
  return tf.train.Example(features=tf.train.Features(feature={
      "pixels": tf.train.Feature(float_list=tf.train.FloatList(value=pixels)),
      "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
  })).SerializeToString()


def _create_tables(connection: sqlite3.Connection) -> None:
  connection.execute("CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT NULL, "
                     "serialized_example_proto BLOB NOT NULL)")
  connection.execute("CREATE TABLE client_metadata (client_id TEXT NOT NULL, "
                     "split_name TEXT NOT NULL, num_examples INTEGER NOT NULL)")


def _write_writer(connection: sqlite3.Connection, records: WriterRecords, split: str,
                  summary: ImportSummary) -> None:
  is_digit = records.labels < NUM_DIGIT_CLASSES
  for prefix, keep in (("all", np.ones_like(is_digit)), ("digits_only", is_digit)):
    split_name = f"{prefix}_{split}"
    indices = np.flatnonzero(keep)
    if not indices.size:
      continue
    connection.executemany(
        "INSERT INTO examples (split_name, client_id, serialized_example_proto) VALUES (?, ?, ?)",
        ((split_name, records.writer, serialize_example(records.pixels[i], int(records.labels[i])))
         for i in indices))
    connection.execute(
        "INSERT INTO client_metadata (client_id, split_name, num_examples) VALUES (?, ?, ?)",
        (records.writer, split_name, int(indices.size)))
    summary.clients[split_name] = summary.clients.get(split_name, 0) + 1
    summary.examples[split_name] = summary.examples.get(split_name, 0) + int(indices.size)


def remove_stale_temporary_files(out_dir: str) -> list[str]:
  """Removes temporary files that an interrupted import left in `out_dir`; returns their paths."""
  stale = sorted(glob.glob(os.path.join(out_dir, _TEMPORARY_PREFIX + "*")))
  for path in stale:
    os.remove(path)
  return stale


def import_leaf(leaf_dir: str, out_dir: str,
                progress: Callable[[str], None] | None = None) -> ImportSummary:
  """Converts LEAF FEMNIST JSON shards into `out_dir/emnist_all.sqlite` for TFF's EMNIST loader.

  Args:
    leaf_dir: LEAF's FEMNIST data folder, holding `train/` and `test/` shard folders.
    out_dir: the folder to write `emnist_all.sqlite` into (pass it as TFF's `cache_dir`).
    progress: called with one line per shard written.

  Returns:
    The output path and the clients and examples written per split.

  Raises:
    LeafFormatError: a shard or record is malformed; no output file is left behind.
    FileExistsError: `out_dir/emnist_all.sqlite` already exists (it is never overwritten).
  """
  final_path = emnist.emnist_database_path(out_dir)
  if os.path.exists(final_path):
    raise FileExistsError(f"{final_path} already exists; remove it or choose another --out.")
  for split in LEAF_SPLITS:
    shard_paths(leaf_dir, split)
  created = not os.path.isdir(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  remove_stale_temporary_files(out_dir)
  temporary_path = os.path.join(out_dir, f"{_TEMPORARY_PREFIX}{os.getpid()}-{emnist.EMNIST_FILENAME}")
  summary = ImportSummary(final_path, {}, {})
  try:
    connection = sqlite3.connect(temporary_path)
    try:
      # No journal: an interrupted import discards the whole temporary file anyway.
      connection.execute("PRAGMA journal_mode = OFF")
      connection.execute("PRAGMA synchronous = OFF")
      _create_tables(connection)
      for split in LEAF_SPLITS:
        for records in iter_leaf_split(leaf_dir, split, progress):
          _write_writer(connection, records, split, summary)
      connection.execute("CREATE INDEX examples_by_client ON examples (client_id, split_name)")
      connection.commit()
    finally:
      connection.close()
    with open(temporary_path, "rb") as written:
      os.fsync(written.fileno())
    os.replace(temporary_path, final_path)
  except BaseException:
    if os.path.exists(temporary_path):
      os.remove(temporary_path)
    if created and not os.listdir(out_dir):
      os.rmdir(out_dir)  # A failed import leaves no empty --out behind.
    raise
  directory = os.open(out_dir, os.O_RDONLY)
  try:
    os.fsync(directory)
  finally:
    os.close(directory)
  return summary
