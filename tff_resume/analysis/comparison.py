"""Side-by-side comparison of runs from their `results/metrics.csv`: a Markdown table and plots.

Accuracy is the evaluation accuracy (federated or centralized, `evaluation.mode`) where a run has
evaluation rounds, else the training accuracy; the table says which. Bits are the cumulative totals
after the last round.
"""

import csv
import dataclasses
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from tff_resume.releases import units
from tff_resume.storage import paths as paths_lib

TRAIN_ACCURACY = "client_work/train/sparse_categorical_accuracy"
EVAL_ACCURACY = "evaluation/sparse_categorical_accuracy"


class RunNotFoundError(FileNotFoundError):
  """A run folder has no metrics.csv."""


@dataclasses.dataclass(frozen=True)
class RunSummary:
  """The numbers of one run that the comparison shows."""
  name: str
  rounds: int
  accuracy_kind: str
  final_accuracy: float
  best_accuracy: float
  broadcasted_bits: int
  aggregated_bits: int
  wall_seconds: float
  train_accuracy: list[float]
  cumulative_aggregated_bits: list[int]


def read_rows(run_dir: str) -> list[dict[str, str]]:
  """The rows of a run's `results/metrics.csv`; raises RunNotFoundError when it has none."""
  path = paths_lib.RunPaths.from_run_dir(run_dir).metrics_csv
  if not os.path.isfile(path):
    raise RunNotFoundError(f"{path} not found: is {run_dir} a run folder of experiments.run_emnist?")
  with open(path, newline="") as csv_file:
    return list(csv.DictReader(csv_file))


def summarize_run(run_dir: str) -> RunSummary:
  """Reads a run's metrics.csv into a RunSummary."""
  rows = read_rows(run_dir)
  if not rows:
    raise RunNotFoundError(f"{run_dir} has no completed round yet.")
  evaluated = [float(row[EVAL_ACCURACY]) for row in rows if row.get(EVAL_ACCURACY)]
  accuracies = evaluated or [float(row[TRAIN_ACCURACY]) for row in rows]
  wall_seconds = sum(float(row.get(name) or 0)
                     for row in rows for name in ("time/round_seconds", "time/evaluation_seconds"))
  return RunSummary(
      name=os.path.basename(os.path.normpath(run_dir)), rounds=len(rows),
      accuracy_kind="evaluation" if evaluated else "training",
      final_accuracy=accuracies[-1], best_accuracy=max(accuracies),
      broadcasted_bits=int(rows[-1]["communication/broadcasted_bits"]),
      aggregated_bits=int(rows[-1]["communication/aggregated_bits"]),
      wall_seconds=wall_seconds,
      train_accuracy=[float(row[TRAIN_ACCURACY]) for row in rows],
      cumulative_aggregated_bits=[int(row["communication/aggregated_bits"]) for row in rows])


def markdown_table(runs: list[RunSummary]) -> str:
  """Returns the comparison table; ratios are aggregated bits relative to the first run."""
  lines = [
      "| run | rounds | accuracy | final accuracy | best accuracy | broadcast bits | "
      "aggregated bits | aggregated vs first | wall time (s) |",
      "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for run in runs:
    ratio = run.aggregated_bits / runs[0].aggregated_bits
    lines.append(
        f"| {run.name} | {run.rounds} | {run.accuracy_kind} | {run.final_accuracy:.4f} | "
        f"{run.best_accuracy:.4f} | {run.broadcasted_bits} "
        f"({units.format_bits(run.broadcasted_bits)}) | {run.aggregated_bits} "
        f"({units.format_bits(run.aggregated_bits)}) | {ratio:.4f} | {run.wall_seconds:.1f} |")
  return "\n".join(lines) + "\n"


def _plot(runs: list[RunSummary], path: str, x_of, x_label: str) -> None:
  figure, axes = plt.subplots(figsize=(7, 4.5))
  for run in runs:
    axes.plot(x_of(run), run.train_accuracy, marker=".", label=run.name)
  axes.set_xlabel(x_label)
  axes.set_ylabel("training accuracy")
  axes.grid(True, alpha=0.3)
  axes.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def write_comparison(run_dirs: list[str], out_dir: str) -> list[str]:
  """Writes comparison.md and two PNG plots into `out_dir`; returns their paths.

  Raises:
    RunNotFoundError: a run folder has no metrics.csv or no round yet.
  """
  runs = [summarize_run(run_dir) for run_dir in run_dirs]
  os.makedirs(out_dir, exist_ok=True)
  table_path = os.path.join(out_dir, "comparison.md")
  with open(table_path, "w") as table_file:
    table_file.write(markdown_table(runs))
  by_round = os.path.join(out_dir, "accuracy_vs_round.png")
  _plot(runs, by_round, lambda run: list(range(1, run.rounds + 1)), "round")
  by_bits = os.path.join(out_dir, "accuracy_vs_aggregated_bits.png")
  _plot(runs, by_bits, lambda run: [bits / units.MEBIBIT
                                    for bits in run.cumulative_aggregated_bits],
        "cumulative aggregated Mibit")
  return [table_path, by_round, by_bits]
