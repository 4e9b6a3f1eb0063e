"""Checks that two run folders of the same config hold the same outcome; CI compares the runner as
`bazel run` starts it with the runner started by the venv's Python.

    .venv/bin/python .ci/same_outcome.py build/bazel-run/smoke build/venv-run/smoke

Compared: what `experiments.chaos.run_outcome` collects (the SHA-256 of the final model weights and of
every leaf of the newest checkpoint's state, the clients sampled in every round, `metrics.csv` without
its `time/` columns, the participation rows). Prints one line and exits 0 when all are equal; else
prints the first difference of each and exits 1.
"""

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import chaos  # pylint: disable=g-import-not-at-top,wrong-import-position


def first_difference(first: Any, second: Any, where: str) -> str:
  """`where` and the two values at the first place (dict key, list index) where they differ."""
  if isinstance(first, dict) and isinstance(second, dict):
    for key in sorted(first.keys() | second.keys(), key=str):
      if first.get(key) != second.get(key):
        return first_difference(first.get(key), second.get(key), f"{where}[{key!r}]")
  if isinstance(first, list) and isinstance(second, list):
    if len(first) != len(second):
      return f"{where}: {len(first)} items against {len(second)}"
    for index, (mine, theirs) in enumerate(zip(first, second)):
      if mine != theirs:
        return first_difference(mine, theirs, f"{where}[{index}]")
  return f"{where}: {first!r} against {second!r}"


def main(argv: list[str]) -> int:
  if len(argv) != 3:
    print("same_outcome: error: name two run folders, e.g. build/bazel-run/smoke "
          "build/venv-run/smoke", file=sys.stderr)
    return 2
  first, second = (chaos.run_outcome(run_dir) for run_dir in argv[1:])
  differences = [first_difference(first[key], second[key], key)
                 for key in first if first[key] != second[key]]
  for difference in differences:
    print(f"{argv[1]} and {argv[2]} differ: {difference}")
  if differences:
    return 1
  print(f"{argv[1]} and {argv[2]}: same outcome ({len(first['metrics_csv'])} rounds, weights "
        f"SHA-256 {first['model_weights_sha256'][:16]}...)")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
