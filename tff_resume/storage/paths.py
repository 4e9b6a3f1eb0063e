"""The one place that builds every output path of a run: `{root}/{experiment}/...`."""

import dataclasses
import os


class InvalidExperimentNameError(ValueError):
  """An experiment name that is not one plain folder name."""


class NotOwnFileError(ValueError):
  """A path the run writes is a symbolic link (or a folder is not a folder) in the run folder."""


def check_experiment_name(name: str) -> None:
  """Refuses a name that would not be one folder directly under the root.

  Raises:
    InvalidExperimentNameError: empty, `.`, `..`, or holding a `/` (an absolute path included) or a
      NUL character.
  """
  if not name or name in (".", "..") or "/" in name or "\0" in name:
    raise InvalidExperimentNameError(
        f"--experiment_name must be one folder name under --root_output_dir (no '/', not '.' or "
        f"'..', not empty), got {name!r}; e.g. --experiment_name=demo_compressed.")


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
  def tensorboard_dir(self) -> str:
    """TensorBoard event files: the run folder itself, so TensorBoard on the root names the run
    after the experiment."""
    return self.run_dir

  @property
  def results_dir(self) -> str:
    return os.path.join(self.run_dir, "results")

  @property
  def metrics_csv(self) -> str:
    """One row per round."""
    return os.path.join(self.results_dir, "metrics.csv")

  @property
  def participation_db(self) -> str:
    """Per-client participation: one row per sampled client per round (SQLite)."""
    return os.path.join(self.results_dir, "participation.sqlite")

  @property
  def config_json(self) -> str:
    return os.path.join(self.run_dir, "config.json")

  @property
  def progress_json(self) -> str:
    """The last round completed, written after every round (checkpointed or not)."""
    return os.path.join(self.run_dir, "progress.json")

  @classmethod
  def from_run_dir(cls, run_dir: str) -> "RunPaths":
    """The paths of the run folder `run_dir` (ROOT/NAME)."""
    run_dir = os.path.normpath(run_dir)
    return cls(os.path.dirname(run_dir), os.path.basename(run_dir))


def check_own_files(paths: RunPaths) -> None:
  """Refuses a run folder whose own files or folders are symbolic links (or folders that are files):
  the run would read or write through them, possibly outside the run folder. Call before writing.

  Raises:
    NotOwnFileError: naming the first such path; nothing was changed.
  """
  run_dir = paths.run_dir
  if not os.path.isdir(run_dir):
    return
  candidates = [os.path.join(run_dir, "run.lock"), paths.config_json, paths.progress_json,
                paths.checkpoints, paths.results_dir, paths.metrics_csv, paths.participation_db,
                os.path.join(paths.checkpoints, "history.sqlite")]
  candidates += [os.path.join(run_dir, name) for name in sorted(os.listdir(run_dir))
                 if name.startswith("events.out.tfevents.")]
  for path in candidates:
    if os.path.islink(path):
      raise NotOwnFileError(
          f"{path} is a symbolic link: a run writes only its own files, never through a link "
          "(which may lead out of the run folder). Replace it with the file itself, or move the "
          "run folder away; nothing was changed.")
  for folder in (paths.checkpoints, paths.results_dir):
    if os.path.exists(folder) and not os.path.isdir(folder):
      raise NotOwnFileError(f"{folder} is not a folder; move it away. Nothing was changed.")
