"""The `tff-resume` command: data import and inspection.

    tff-resume data import-leaf --src LEAF_DIR --out CACHE_DIR
    tff-resume data inspect --source {emnist,leaf,synthetic} [--split train|test] ...

Errors a user can cause print one line and exit with status 2.
"""

import argparse
import sys

from tff_resume import runtime

EXIT_USAGE_ERROR = 2


def _build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="tff-resume", description=__doc__.split("\n")[0])
  parser.add_argument("--verbose", action="store_true",
                      help="show TensorFlow's start-up messages and TFF's worker output")
  commands = parser.add_subparsers(dest="command", required=True)

  data = commands.add_parser("data", help="federated EMNIST data: import and inspect")
  data_commands = data.add_subparsers(dest="data_command", required=True)

  import_leaf = data_commands.add_parser(
      "import-leaf", help="convert LEAF FEMNIST JSON into TFF's EMNIST SQLite file")
  import_leaf.add_argument("--src", required=True,
                           help="LEAF's FEMNIST data folder (holding train/ and test/)")
  import_leaf.add_argument("--out", required=True,
                           help="folder to write emnist_all.sqlite into; use it as data.cache_dir")

  inspect = data_commands.add_parser("inspect", help="clients, examples per client, labels")
  inspect.add_argument("--source", choices=["emnist", "leaf", "synthetic"], required=True)
  inspect.add_argument("--split", choices=["train", "test"], default="train")
  inspect.add_argument("--cache_dir", default=None,
                       help="emnist: folder holding emnist_all.sqlite (default ~/.tff)")
  inspect.add_argument("--only_digits", action="store_true",
                       help="emnist, synthetic: the 10-class digits-only data")
  inspect.add_argument("--leaf_dir", help="leaf: LEAF's FEMNIST data folder")
  inspect.add_argument("--num_clients", type=int, default=100, help="synthetic: writers")
  inspect.add_argument("--seed", type=int, default=0, help="synthetic: seed")
  return parser


def _import_leaf(args) -> None:
  from tff_resume.data import leaf  # pylint: disable=g-import-not-at-top

  summary = leaf.import_leaf(args.src, args.out, progress=lambda line: print(line, flush=True))
  print(f"Wrote {summary.path}")
  for split_name in sorted(summary.clients):
    print(f"  {split_name}: {summary.clients[split_name]} clients, "
          f"{summary.examples[split_name]} examples")
  print(f"Load it with tff.simulation.datasets.emnist.load_data(cache_dir={args.out!r}).")


def _inspect(args) -> None:
  from tff_resume.data import emnist  # pylint: disable=g-import-not-at-top
  from tff_resume.data import inspection  # pylint: disable=g-import-not-at-top
  from tff_resume.data import synthetic  # pylint: disable=g-import-not-at-top

  if args.source == "emnist":
    path = emnist.require_emnist_database(args.cache_dir)
    split_name = f"{'digits_only' if args.only_digits else 'all'}_{args.split}"
    clients, title = inspection.labels_from_sqlite(path, split_name), f"{path} [{split_name}]"
  elif args.source == "leaf":
    if not args.leaf_dir:
      raise ValueError("--source=leaf needs --leaf_dir, LEAF's FEMNIST data folder.")
    clients = inspection.labels_from_leaf(args.leaf_dir, args.split)
    title = f"{args.leaf_dir} [{args.split}]"
  else:
    spec = synthetic.SyntheticSpec(num_clients=args.num_clients, only_digits=args.only_digits,
                                   seed=args.seed)
    clients = inspection.labels_from_arrays(synthetic.synthetic_arrays(spec, args.split))
    title = f"synthetic (seed {args.seed}) [{args.split}]"
  print(inspection.summarize(clients).format(title))


def main(argv: list[str] | None = None) -> int:
  """Runs the command line; returns the exit status."""
  args = _build_parser().parse_args(argv)
  runtime.quiet_tensorflow_logging(args.verbose)
  from tff_resume.data import emnist  # pylint: disable=g-import-not-at-top
  from tff_resume.data import leaf  # pylint: disable=g-import-not-at-top

  runtime.install_guard_context()
  handlers = {("data", "import-leaf"): _import_leaf, ("data", "inspect"): _inspect}
  try:
    handlers[(args.command, args.data_command)](args)
  except (emnist.DataNotFoundError, leaf.LeafFormatError, FileExistsError, ValueError) as error:
    print(f"tff-resume: error: {error}", file=sys.stderr)
    return EXIT_USAGE_ERROR
  return 0


if __name__ == "__main__":
  sys.exit(main())
