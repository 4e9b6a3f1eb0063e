"""The one place that builds every output path of a run: `{root}/{experiment}/...`."""

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class RunPaths:
  """Output paths of the run `experiment_name` under `root_output_dir`."""
  root_output_dir: str
  experiment_name: str

  @property
  def run_dir(self) -> str:
    return os.path.join(self.root_output_dir, self.experiment_name)

  @property
  def checkpoints(self) -> str:
    return os.path.join(self.run_dir, "checkpoints")

  @property
  def logdir(self) -> str:
    """TensorBoard event files."""
    return os.path.join(self.run_dir, "logdir")

  @property
  def metrics_csv(self) -> str:
    """One row per round."""
    return os.path.join(self.run_dir, "results", "metrics.csv")

  @property
  def participation_db(self) -> str:
    """Per-client participation: one row per sampled client per round (SQLite)."""
    return os.path.join(self.run_dir, "results", "participation.sqlite")

  @property
  def config_json(self) -> str:
    return os.path.join(self.run_dir, "config.json")

  @property
  def progress_json(self) -> str:
    """The last round completed, written after every round (checkpointed or not)."""
    return os.path.join(self.run_dir, "progress.json")

  @classmethod
  def from_run_dir(cls, run_dir: str) -> "RunPaths":
    run_dir = os.path.normpath(run_dir)
    return cls(os.path.dirname(run_dir), os.path.basename(run_dir))
