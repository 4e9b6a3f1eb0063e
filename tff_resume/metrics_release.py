"""Per-round metrics to TensorBoard and a CSV file, continuous across kills and resumes.

CSV: `write_metrics_csv` rewrites the whole file from the run record (one row per round, `round`
first, then every metric in order of first appearance) through a temporary file and an atomic rename,
at every start and after every round, so rounds redone after a kill never appear twice.

TensorBoard:
Each start writes a `SessionLog.START` event at the first round it will run. TensorBoard, reading the
run's event files in order, discards every earlier point at or after that step, so rounds that were
redone after a kill show once, with the values of the run that completed them. The round's events are
flushed before its checkpoint is saved, so a checkpointed round never lacks its points.

Values are written as float64 scalar tensors (the scalars plugin's format), exact for integers up to
2**53, so cumulative bit counts read back exactly; `read_scalars` returns them.
"""

import csv
import os
import time
from typing import Any, Mapping, Sequence

from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.proto import tensor_pb2
from tensorboard.compat.proto import tensor_shape_pb2
from tensorboard.compat.proto import types_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.summary.writer import event_file_writer
from tensorboard.util import tensor_util


def write_metrics_csv(path: str, metrics_per_round: Sequence[Mapping[str, Any]]) -> None:
  """Writes one row per round (round r is `metrics_per_round[r - 1]`) to `path`, atomically."""
  columns = ["round"]
  for metrics in metrics_per_round:
    columns.extend(name for name in metrics if name not in columns)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  temporary_path = f"{path}.tmp-{os.getpid()}"
  with open(temporary_path, "w", newline="") as csv_file:
    writer = csv.DictWriter(csv_file, fieldnames=columns)
    writer.writeheader()
    for round_num, metrics in enumerate(metrics_per_round, start=1):
      writer.writerow({"round": round_num, **metrics})
  os.replace(temporary_path, path)


_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """Returns {tag: [(round, value), ...]} as TensorBoard's own backend reads `logdir` (its
  plugin EventAccumulator, which applies the SessionLog.START purge), keeping every point."""
  accumulator = plugin_event_accumulator.EventAccumulator(
      logdir, size_guidance={plugin_event_accumulator.TENSORS: 0})
  accumulator.Reload()
  return {tag: [(event.step, float(tensor_util.make_ndarray(event.tensor_proto)))
                for event in accumulator.Tensors(tag)]
          for tag in accumulator.PluginTagToContent("scalars")}


class TensorBoardRoundWriter:
  """Writes one scalar per metric per round into an event file under `logdir`."""

  def __init__(self, logdir: str):
    self._writer = event_file_writer.EventFileWriter(logdir)

  def start(self, first_round: int) -> None:
    """Marks a (re)start: TensorBoard drops earlier points at rounds >= `first_round`."""
    self._writer.add_event(event_pb2.Event(
        step=first_round, wall_time=time.time(),
        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
    self._writer.flush()

  def write_hparams(self, hyperparameters: Mapping[str, Any]) -> None:
    """Records the run's hyperparameters for TensorBoard's HParams dashboard."""
    self._writer.add_event(event_pb2.Event(
        step=0, wall_time=time.time(), summary=hparams_summary.hparams_pb(dict(hyperparameters))))
    self._writer.flush()

  def write_round(self, round_num: int, metrics: Mapping[str, Any]) -> None:
    """Writes every numeric metric of a round as a scalar and flushes to disk."""
    values = [
        summary_pb2.Summary.Value(
            tag=name, metadata=_SCALAR_METADATA,
            tensor=tensor_pb2.TensorProto(dtype=types_pb2.DT_DOUBLE, double_val=[float(value)],
                                          tensor_shape=tensor_shape_pb2.TensorShapeProto()))
        for name, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)]
    self._writer.add_event(event_pb2.Event(step=round_num, wall_time=time.time(),
                                           summary=summary_pb2.Summary(value=values)))
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()
