"""The writers under the release managers (`release_managers`): TensorBoard event files, continuous
across kills and resumes, and the scalars a round's metrics become.

TensorBoard: the event files are written straight into the run folder, so `tensorboard --logdir ROOT`
names each run by its experiment name. Scalars are float32 tensors, the type both of TensorBoard's
loaders draw (its default Rust data server drops float64 scalars): a value v shows as the float32
nearest to v, relative error at most 2**-24 (integers exact up to 2**24). Bit counts also get
`..._mibit` tags (bits / 2**20) that read well on an axis.

Continuity after a kill, for either loader: each start first cuts every event file of the run at the
first event of a round it will redo (`prepare_logdir`), so the points of redone rounds are gone from
disk, whatever tags they had (an evaluation or checkpoint time that the new start does not write at that
round included). It also writes a `SessionLog.START` event, which TensorBoard's Python loader honours
while it runs. When a file cannot be read to its end (a torn or damaged record), every event file of
the run is set aside (renamed `...damaged-events...`, which TensorBoard ignores) and the runner rewrites
the rounds its checkpoint holds. The round's events are flushed before its checkpoint is saved, so
a checkpointed round never lacks its points.

HParams: every start records the run's hyperparameters (a session) and the experiment's metric
columns (final evaluation and training accuracy and loss, cumulative bits), so the HParams dashboard
lists every run of a study with its hyperparameters and final values.
"""

import os
import shutil
import time
from typing import Any, Iterator, Mapping

from absl import logging
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.proto import tensor_pb2
from tensorboard.compat.proto import tensor_shape_pb2
from tensorboard.compat.proto import types_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.summary.writer import event_file_writer

from tff_resume.releases import units

EVENT_FILE_MARKER = "tfevents"  # TensorBoard loads every file whose name contains this.
LEGACY_LOGDIR = "logdir"  # Where runs kept their events before they moved into the run folder.
HPARAMS_METRICS = (
    "evaluation/sparse_categorical_accuracy", "evaluation/loss",
    "client_work/train/sparse_categorical_accuracy", "client_work/train/loss",
    "communication/aggregated_mibit", "communication/broadcasted_mibit",
)
_RECORD_HEADER_BYTES = 12  # uint64 length + uint32 masked CRC of the length.
_RECORD_FOOTER_BYTES = 4  # uint32 masked CRC of the data.


def tensorboard_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Returns the scalars TensorBoard gets for a round's metrics: every numeric metric, plus a
  `..._mibit` twin of every `communication/..._bits...` count."""
  scalars = {}
  for name, value in metrics.items():
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      continue
    scalars[name] = float(value)
    if name.startswith("communication/") and "_bits" in name:
      scalars[name.replace("_bits", "_mibit")] = value / units.MEBIBIT
  return scalars


_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))


def _scalar_value(tag: str, value: float) -> summary_pb2.Summary.Value:
  return summary_pb2.Summary.Value(
      tag=tag, metadata=_SCALAR_METADATA,
      tensor=tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[value],
                                    tensor_shape=tensor_shape_pb2.TensorShapeProto()))


def event_files(run_dir: str) -> list[str]:
  """Returns the run's event files in the order TensorBoard reads them (by name)."""
  if not os.path.isdir(run_dir):
    return []
  return sorted(os.path.join(run_dir, name) for name in os.listdir(run_dir)
                if EVENT_FILE_MARKER in name and os.path.isfile(os.path.join(run_dir, name)))


def _records(path: str) -> Iterator[tuple[int, bytes | None]]:
  """Yields (offset, data) of each record of a TFRecord file; data None for an unreadable record
  (torn, bad length or checksum), after which it stops."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.python.util import deprecation  # pylint: disable=g-import-not-at-top

  offset = 0
  with deprecation.silence():  # TF's iterator is the fast, checksum-verifying reader we need here.
    iterator = tf.compat.v1.io.tf_record_iterator(path)
  while True:
    try:
      data = next(iterator)
    except StopIteration:
      return
    except tf.errors.DataLossError:
      yield offset, None
      return
    yield offset, data
    offset += _RECORD_HEADER_BYTES + len(data) + _RECORD_FOOTER_BYTES


class _DamagedEventFile(Exception):
  """An event file has a record that cannot be read."""


def _cut_offset(path: str, first_round: int) -> tuple[int | None, int | None]:
  """Returns (offset to cut `path` at, step of its first SessionLog.START).

  The cut is at the first record of a round >= `first_round` (a summary, or a session start, at that
  step); None when the whole file is kept.

  Raises:
    _DamagedEventFile: a record before the cut is torn or fails its checksum.
  """
  start_step = None
  for offset, data in _records(path):
    if data is None:
      raise _DamagedEventFile(f"unreadable record at byte {offset}")
    event = event_pb2.Event.FromString(data)
    is_start = (event.HasField("session_log")
                and event.session_log.status == event_pb2.SessionLog.START)
    if is_start and start_step is None:
      start_step = event.step
    if (event.HasField("summary") or is_start) and event.step >= first_round:
      return offset, start_step
  return None, start_step


def adopt_legacy_logdir(run_dir: str) -> bool:
  """Moves the event files of a run written before events lived in the run folder (`logdir/`) into
  the run folder, so TensorBoard shows one run named after the experiment. Returns whether it did."""
  legacy = os.path.join(run_dir, LEGACY_LOGDIR)
  if not os.path.isdir(legacy):
    return False
  for path in event_files(legacy):
    os.replace(path, os.path.join(run_dir, os.path.basename(path)))
  if not os.listdir(legacy):
    shutil.rmtree(legacy)
  return True


def _set_aside_event_files(run_dir: str) -> list[str]:
  """Renames every event file so TensorBoard no longer loads it ("tfevents" -> "damaged-events")."""
  set_aside = []
  for path in event_files(run_dir):
    new_path = os.path.join(run_dir, os.path.basename(path).replace(EVENT_FILE_MARKER,
                                                                    "damaged-events"))
    os.replace(path, new_path)
    set_aside.append(new_path)
  return set_aside


def prepare_logdir(run_dir: str, first_round: int) -> bool:
  """Cuts the run's event files so no point of round `first_round` or later remains.

  A file is also cut below the first round of every newer file (a later start redid those rounds).
  Files are looked at newest first, and the look stops at a file begun by a start at a round below
  `first_round`: that start cut every older file below its own first round. Files adopted from a
  legacy `logdir/` were never cut that way, so all of them are looked at.

  Returns:
    True when the files held rounds 1 .. `first_round` - 1 intact. False when a file was damaged (a
    record unreadable): every event file was then set aside with a warning, and the caller rewrites
    the rounds before `first_round` from what its checkpoint holds.
  """
  look_at_all = adopt_legacy_logdir(run_dir)
  below = first_round
  for path in reversed(event_files(run_dir)):
    try:
      offset, start_step = _cut_offset(path, below)
    except _DamagedEventFile as error:
      set_aside = _set_aside_event_files(run_dir)
      logging.warning("TensorBoard event file %s is damaged (%s): set aside the run's event files "
                      "as %s; rewriting its rounds from the checkpoint.", path, error,
                      ", ".join(os.path.basename(name) for name in set_aside))
      return False
    if offset is not None:
      with open(path, "r+b") as event_file:
        event_file.truncate(offset)
        event_file.flush()
        os.fsync(event_file.fileno())
    if start_step is not None and start_step < below:
      if not look_at_all:
        break
      below = start_step
  return True


def _hparams_experiment(hyperparameters: Mapping[str, Any]) -> summary_pb2.Summary:
  """The experiment's columns: every hyperparameter, and the metrics of `HPARAMS_METRICS`."""
  return hparams_summary.hparams_config_pb(
      hparams=[hparams_summary.HParam(name) for name in hyperparameters],
      metrics=[hparams_summary.Metric(tag) for tag in HPARAMS_METRICS])


def _wait_for_a_later_second(run_dir: str) -> None:
  """Waits, at most a second, until the clock is past the second the newest event file was begun in.

  TensorBoard reads a folder's event files in name order, and a file's name is the second it was
  begun in, the host, the pid and a counter of the process's writers, which sorts as text (".10."
  before ".9."): a file begun in the same second as the one before could sort before it, and
  TensorBoard would then drop the newer file's points as those of an older start.
  """
  begun = []
  for path in event_files(run_dir):
    seconds = os.path.basename(path).split(EVENT_FILE_MARKER + ".", 1)[-1].split(".", 1)[0]
    if seconds.isdigit():
      begun.append(int(seconds))
  newest = max(begun, default=0)
  while newest == int(time.time()):
    time.sleep(0.02)


class TensorBoardRoundWriter:
  """Writes one scalar per metric per round into a new event file in `run_dir`.

  Call `prepare_logdir(run_dir, first_round)` before the first write of a start.
  """

  def __init__(self, run_dir: str):
    _wait_for_a_later_second(run_dir)
    self._writer = event_file_writer.EventFileWriter(run_dir)

  def start(self, first_round: int) -> None:
    """Marks a (re)start: TensorBoard's Python loader drops earlier points at rounds >= `first_round`."""
    self._writer.add_event(event_pb2.Event(
        step=first_round, wall_time=time.time(),
        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
    self._writer.flush()

  def write_hparams(self, hyperparameters: Mapping[str, Any]) -> None:
    """Records the run's hyperparameters, and the experiment's columns, for the HParams dashboard."""
    for summary in (_hparams_experiment(hyperparameters),
                    hparams_summary.hparams_pb(dict(hyperparameters))):
      self._writer.add_event(event_pb2.Event(step=0, wall_time=time.time(), summary=summary))
    self._writer.flush()

  def write_round(self, round_num: int, metrics: Mapping[str, Any]) -> None:
    """Writes the round's `tensorboard_scalars` and flushes them to disk."""
    values = [_scalar_value(tag, value) for tag, value in tensorboard_scalars(metrics).items()]
    self._writer.add_event(event_pb2.Event(step=round_num, wall_time=time.time(),
                                           summary=summary_pb2.Summary(value=values)))
    self._writer.flush()

  def close(self) -> None:
    """Flushes and closes the event file."""
    self._writer.close()
