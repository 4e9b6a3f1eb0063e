"""What a run has done, as one dict: `tff-resume status --json` and `Run.status()`."""

from typing import Any

from tff_resume.releases import bookkeeping
from tff_resume.storage import checkpointing
from tff_resume.storage import participation
from tff_resume.storage import paths


def run_status(run_dir: str, round_num: int | None = None, client_id: str | None = None,
               coverage: bool = False) -> dict[str, Any]:
  """The run's rounds, versions, start log, last metrics and hashes, read from its newest good
  version; with `round_num` the clients of that round, with `client_id` that client's
  participation, with `coverage` how many distinct clients took part and how often.

  Raises:
    ValueError: no checkpoint in `run_dir`, or `round_num` out of range.
    history.HistoryMismatchError: the history does not match the newest good version.
  """
  run_paths = paths.RunPaths.from_run_dir(run_dir)
  manager = checkpointing.DurableProgramStateManager(run_paths.checkpoints)
  version = manager.latest_good_version()
  if version is None:
    raise ValueError(f"No checkpoints in {run_paths.checkpoints}: is {run_dir} a run folder?")
  metadata = manager.load_metadata(version)
  with bookkeeping.VersionHistory(run_paths.checkpoints, metadata) as recorded:
    record = recorded.record
    rounds_done = record.rounds_done
    if round_num is not None and not 1 <= round_num <= rounds_done:
      raise ValueError(f"--round must be between 1 and {rounds_done}, got {round_num}.")
    status = {
        "run_dir": run_dir,
        "rounds_done": rounds_done,
        "total_rounds": record.total_rounds,
        "complete": rounds_done >= record.total_rounds,
        "newest_good_version": version,
        "versions": manager.versions(),
        "resume_log": recorded.starts(),
        "last_metrics": record.last_metrics,
        "model_weights_sha256": record.model_weights_sha256,
        "history_sha256": record.history_sha256,
        "fingerprint": record.fingerprint,
        "library_versions": record.library_versions,
    }
    if round_num is not None:
      status["round"] = round_num
      status["sampled_clients"] = recorded.clients(round_num)
  if client_id is not None:
    rounds = participation.client_participation(run_paths.participation_db, client_id,
                                                rounds_done)
    status["client"] = {"client_id": client_id,
                        "rounds": [{"round": r, "examples": n} for r, n in rounds],
                        "participations": len(rounds), "examples": sum(n for _, n in rounds)}
  if coverage:
    status["coverage"] = participation.coverage(run_paths.participation_db, rounds_done)
  return status
