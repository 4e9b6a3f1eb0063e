"""The run record: everything about a run besides the server state, saved with every version.

It holds the configuration fingerprint, the seeds, the library versions, the ids of the clients
sampled in every round, the metrics of every round, the SHA-256 of the model weights and a resume log
with one entry per start. It is stored as JSON beside the server state in each checkpoint version, so
the two are always consistent and a resumed run continues both exactly.
"""

import dataclasses
import datetime
from typing import Any


@dataclasses.dataclass
class RunRecord:
  """The history of a run up to its last completed round.

  Attributes:
    fingerprint: the math-changing configuration fields (see `fingerprint.compute_fingerprint`).
    seeds: the seeds used, by purpose.
    library_versions: TensorFlow's and TFF's versions.
    total_rounds: the rounds asked for by the latest start.
    sampled_clients: the client ids of every round; entry r-1 is round r.
    metrics: the metrics of every round; entry r-1 is round r.
    resume_log: one entry per start: time, version resumed from (None for a fresh start), rounds redone.
    model_weights_sha256: SHA-256 of the model weights' raw bytes, in order, after the last round.
  """
  fingerprint: dict[str, Any]
  seeds: dict[str, int]
  library_versions: dict[str, str]
  total_rounds: int
  sampled_clients: list[list[str]] = dataclasses.field(default_factory=list)
  metrics: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  resume_log: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  model_weights_sha256: str = ""

  @property
  def rounds_done(self) -> int:
    return len(self.sampled_clients)

  def add_round(self, client_ids: list[str], metrics: dict[str, Any]) -> None:
    self.sampled_clients.append(list(client_ids))
    self.metrics.append(dict(metrics))

  def log_start(self, resumed_from_version: int | None, rounds_redone: int) -> None:
    self.resume_log.append({
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "resumed_from_version": resumed_from_version,
        "rounds_redone": rounds_redone,
        "total_rounds": self.total_rounds,
    })

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, value: dict[str, Any]) -> "RunRecord":
    return cls(**value)
