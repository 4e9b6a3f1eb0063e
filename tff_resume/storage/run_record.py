"""The run record: what a checkpoint version keeps besides the server state, small and fixed in size.

It holds the configuration fingerprint, the seeds, the library versions, the rounds done, the hash of
the run's history up to that round (`history.RunHistory`: the clients and metrics of every round live
there, appended once), the last round's metrics and the SHA-256 of the model weights. It is stored as
JSON beside the server state in each checkpoint version, so its size does not grow with the rounds.

Runs written before the history file existed kept the whole history in every version's record
("layout 1": `sampled_clients`, `metrics` and `resume_log` lists); `legacy_history` reads it so the
runner can move it into the history file at the next start.
"""

import dataclasses
from typing import Any

from tff_resume.storage import history as history_lib

LAYOUT = 2  # 1: the whole history in every version; 2: a history file and a fixed-size record.


@dataclasses.dataclass
class RunRecord:
  """The state of a run's bookkeeping after its last completed round.

  Attributes:
    fingerprint: the math-changing configuration fields (see `fingerprint.compute_fingerprint`).
    seeds: the seeds used, by purpose.
    library_versions: TensorFlow's and TFF's versions.
    total_rounds: the rounds asked for by the latest start.
    rounds_done: the rounds completed.
    history_sha256: chain(rounds_done) of the run's history (see `history`).
    last_metrics: the metrics of round `rounds_done` ({} before round 1).
    model_weights_sha256: SHA-256 of the model weights' raw bytes, in order, after the last round.
    layout: the on-disk layout that wrote the record.
  """
  fingerprint: dict[str, Any]
  seeds: dict[str, int]
  library_versions: dict[str, str]
  total_rounds: int
  rounds_done: int = 0
  history_sha256: str = history_lib.GENESIS
  last_metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
  model_weights_sha256: str = ""
  layout: int = LAYOUT

  def add_round(self, history_sha256: str, metrics: dict[str, Any]) -> None:
    """Counts one more round done, with the history's chain after it and the round's metrics."""
    self.rounds_done += 1
    self.history_sha256 = history_sha256
    self.last_metrics = dict(metrics)

  def to_json(self) -> dict[str, Any]:
    """The record as a JSON-serializable dict (the `metadata.json` of a version)."""
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, value: dict[str, Any]) -> "RunRecord":
    """Reads a record of either layout (a layout-1 record's history is summed up, not kept)."""
    rounds = legacy_history(value)
    if rounds is None:
      return cls(**value)
    return cls(fingerprint=value["fingerprint"], seeds=value["seeds"],
               library_versions=value["library_versions"], total_rounds=value["total_rounds"],
               rounds_done=len(rounds), history_sha256=history_lib.chain_of(rounds),
               last_metrics=dict(rounds[-1][1]) if rounds else {},
               model_weights_sha256=value["model_weights_sha256"])


def new_record(fingerprint: dict[str, Any], seeds: dict[str, int],
               total_rounds: int) -> RunRecord:
  """The record of a run before round 1, with the TensorFlow and TFF versions running it."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

  return RunRecord(fingerprint=dict(fingerprint), seeds=dict(seeds),
                   library_versions={"tensorflow": tf.__version__,
                                     "tensorflow_federated": tff.__version__},
                   total_rounds=total_rounds)


def legacy_history(value: dict[str, Any]) -> list[tuple[list[str], dict[str, Any]]] | None:
  """The rounds [(client ids, metrics), ...] of a layout-1 record; None for a layout-2 record."""
  if "sampled_clients" not in value:
    return None
  return list(zip(value["sampled_clients"], value["metrics"]))


def legacy_starts(value: dict[str, Any]) -> list[dict[str, Any]]:
  """The start log of a layout-1 record ([] for layout 2, whose log is in the history file)."""
  return list(value.get("resume_log", []))
