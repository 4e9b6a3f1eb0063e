"""Compares runs side by side: a Markdown table and plots of accuracy against rounds and bits.

    python -m experiments.compare runs/fedavg runs/compression --out runs/comparison

Writes OUT/comparison.md (final and best accuracy, total broadcast and aggregated bits, aggregated bits
relative to the first run, rounds, wall time), OUT/accuracy_vs_round.png and
OUT/accuracy_vs_aggregated_bits.png.
"""

import sys

from absl import app
from absl import flags

from tff_resume.analysis import comparison

_OUT = flags.DEFINE_string("out", None, "Folder to write the table and plots into.", required=True)


def main(argv):
  run_dirs = argv[1:]
  if not run_dirs:
    print("compare: error: name at least one run folder, e.g. runs/demo", file=sys.stderr)
    return 2
  try:
    written = comparison.write_comparison(run_dirs, _OUT.value)
  except comparison.RunNotFoundError as error:
    print(f"compare: error: {error}", file=sys.stderr)
    return 2
  with open(written[0]) as table:
    print(table.read(), end="")
  print("Wrote " + ", ".join(written))
  return 0


if __name__ == "__main__":
  app.run(main)
