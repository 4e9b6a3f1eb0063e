"""A study: the runs a grid of config values names, its plan (`study.json`) and its summary.

`expand` takes the product of the grid's value lists; a field the rest of a run's config makes unused
(`aggregator.quantize.bits` when `aggregator.name` is `mean`) is dropped from that run, so it does not
make duplicate runs. Each run is named from the swept fields that differ between runs, in grid order:
`aggregator-quantize_bits-4_seed-1` (a field's last name, its section's for `*.name`, the whole
dotted name where two would read the same; characters outside `[A-Za-z0-9.-]` become `_`). Names
depend only on the values, so a study run again, or with values added, finds its runs again.
"""

import dataclasses
import itertools
import json
import os
import re
import statistics
from typing import Any, Sequence

from tff_resume.analysis import comparison
from tff_resume.program import fingerprint
from tff_resume.releases import units
from tff_resume.storage import atomic_files

PLAN_FILE = "study.json"
SUMMARY_FOLDER = "study_summary"
SEED_FIELD = "training.seed"
_UNSAFE = re.compile(r"[^A-Za-z0-9.\-]")


class GridError(ValueError):
  """A --grid is malformed or names an unknown field."""


@dataclasses.dataclass(frozen=True)
class PlannedRun:
  """One run of a study: its name and the swept fields' values it overrides."""
  name: str
  overrides: dict[str, Any]  # dotted field -> value, for the swept fields that apply to the run


def _typed(field: str, text: str, default: Any) -> Any:
  try:
    if isinstance(default, bool):
      if text.lower() not in ("true", "false"):
        raise ValueError
      return text.lower() == "true"
    return type(default)(text)
  except ValueError:
    raise GridError(f"--grid {field}: {text!r} is not a {type(default).__name__} (the field's "
                    f"type; its default is {default!r}).") from None


def parse_grid(specs: Sequence[str], config) -> list[tuple[str, list[Any]]]:
  """Parses `--grid FIELD=V1,V2,...` flags into (field, typed values), in flag order.

  Raises:
    GridError: not FIELD=VALUES, an unknown field, a repeated field, or a value of the wrong type.
  """
  fields = fingerprint.flatten_config(config)
  grid = []
  for spec in specs:
    field, equals, values = spec.partition("=")
    if not equals or not field or not values:
      raise GridError(f"--grid {spec!r}: write FIELD=VALUE1,VALUE2 (e.g. "
                      "--grid=aggregator.name=mean,quantize).")
    if field not in fields or isinstance(fields[field], dict):
      raise GridError(f"--grid {spec!r}: unknown config field {field!r}.")
    if field in dict(grid):
      raise GridError(f"--grid names {field} twice; list its values once.")
    typed = list(dict.fromkeys(_typed(field, value, fields[field]) for value in values.split(",")))
    grid.append((field, typed))
  return grid


def _applies(config: dict[str, Any], field: str) -> bool:
  return not field.startswith(tuple(fingerprint.inapplicable_prefixes(config)))


def _with(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
  changed = json.loads(json.dumps(config))
  for field, value in overrides.items():
    section = changed
    *path, name = field.split(".")
    for part in path:
      section = section[part]
    section[name] = value
  return changed


def _short(field: str) -> str:
  parts = field.split(".")
  return parts[-2] if parts[-1] == "name" else parts[-1]


def _label(field: str, varying: Sequence[str]) -> str:
  clashes = any(_short(other) == _short(field) for other in varying if other != field)
  return field if clashes else _short(field)


def value_text(value: Any) -> str:
  """A value as a name part and as a command-line override write it."""
  return str(value).lower() if isinstance(value, bool) else str(value)


def expand(config, grid: Sequence[tuple[str, list[Any]]]) -> list[PlannedRun]:
  """The study's runs: the grid's product, inapplicable fields dropped and duplicates removed."""
  base = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  combinations = []
  for values in itertools.product(*[values for _, values in grid]):
    chosen = dict(zip([field for field, _ in grid], values))
    applied = _with(base, chosen)
    overrides = {field: value for field, value in chosen.items() if _applies(applied, field)}
    if overrides not in combinations:
      combinations.append(overrides)
  varying = [field for field, _ in grid
             if len({value_text(run.get(field)) for run in combinations}) > 1]
  runs = []
  for overrides in combinations:
    parts = [f"{_label(field, varying)}-{value_text(overrides[field])}" for field in varying
             if field in overrides]
    runs.append(PlannedRun(_UNSAFE.sub("_", "_".join(parts)) or "run", overrides))
  return runs


def write_plan(root: str, config_spec: str, base_overrides: Sequence[str],
               grid: Sequence[tuple[str, list[Any]]], runs: Sequence[PlannedRun]) -> str:
  """Writes `ROOT/study.json`: the config, its overrides, the grid and every run's overrides."""
  path = os.path.join(root, PLAN_FILE)
  atomic_files.write_json_atomically(path, {
      "config": config_spec, "overrides": list(base_overrides),
      "grid": [[field, values] for field, values in grid],
      "runs": [{"name": run.name, "overrides": run.overrides} for run in runs]})
  return path


def read_plan(root: str) -> dict[str, Any]:
  """The study's plan (`ROOT/study.json`) as written by the sweep."""
  with open(os.path.join(root, PLAN_FILE)) as plan:
    return json.load(plan)


def _group_key(run: dict[str, Any]) -> tuple:
  return tuple(sorted((field, value_text(value)) for field, value in run["overrides"].items()
                      if field != SEED_FIELD))


def grouped_table(root: str, plan: dict[str, Any]) -> str:
  """Markdown: one row per setting of the swept fields other than the seed, with the mean and
  spread (sample standard deviation) over its seeds."""
  groups: dict[tuple, list[comparison.RunSummary]] = {}
  for run in plan["runs"]:
    groups.setdefault(_group_key(run), []).append(
        comparison.summarize_run(os.path.join(root, run["name"])))
  lines = ["| setting | runs | final accuracy (mean ± sd) | aggregated bits (mean) | "
           "broadcast bits (mean) |", "| --- | ---: | ---: | ---: | ---: |"]
  for key, summaries in groups.items():
    accuracies = [summary.final_accuracy for summary in summaries]
    spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    aggregated = statistics.mean(summary.aggregated_bits for summary in summaries)
    broadcast = statistics.mean(summary.broadcasted_bits for summary in summaries)
    setting = ", ".join(f"{field}={value}" for field, value in key) or "(all)"
    lines.append(f"| {setting} | {len(summaries)} | {statistics.mean(accuracies):.4f} ± "
                 f"{spread:.4f} | {units.format_bits(round(aggregated))} | "
                 f"{units.format_bits(round(broadcast))} |")
  return "\n".join(lines) + "\n"


def write_summary(root: str) -> list[str]:
  """Writes `ROOT/study_summary/`: `study.md` (the grouped table, then every run's row) and the
  comparison plots; returns the paths written."""
  plan = read_plan(root)
  out = os.path.join(root, SUMMARY_FOLDER)
  written = comparison.write_comparison([os.path.join(root, run["name"]) for run in plan["runs"]],
                                        out)
  with open(written[0]) as per_run:
    runs_table = per_run.read()
  study_path = os.path.join(out, "study.md")
  atomic_files.write_text_atomically(study_path, (
      f"# Study {root}\n\nGrouped over {SEED_FIELD}:\n\n{grouped_table(root, plan)}\n"
      f"Every run:\n\n{runs_table}"))
  return [study_path, *written]
