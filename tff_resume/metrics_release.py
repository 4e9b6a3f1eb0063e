"""Per-round metrics to TensorBoard, continuous across kills and resumes.

Each start writes a `SessionLog.START` event at the first round it will run. TensorBoard, reading the
run's event files in order, discards every earlier point at or after that step, so rounds that were
redone after a kill show once, with the values of the run that completed them. The round's events are
flushed before its checkpoint is saved, so a checkpointed round never lacks its points.
"""

import time
from typing import Any, Mapping

from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.summary.writer import event_file_writer


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

  def write_round(self, round_num: int, metrics: Mapping[str, Any]) -> None:
    """Writes every numeric metric of a round as a scalar and flushes to disk."""
    values = [summary_pb2.Summary.Value(tag=name, simple_value=float(value))
              for name, value in metrics.items() if isinstance(value, (int, float))]
    self._writer.add_event(event_pb2.Event(step=round_num, wall_time=time.time(),
                                           summary=summary_pb2.Summary(value=values)))
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()
