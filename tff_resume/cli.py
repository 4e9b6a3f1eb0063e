"""The `tff-resume` command: run status, data import and inspection.

    tff-resume status RUN_DIR [--json] [--round N] [--client ID] [--coverage]
    tff-resume export RUN_DIR --out DIR [--version N]
    tff-resume data import-leaf --src LEAF_DIR --out CACHE_DIR
    tff-resume data index [--cache_dir CACHE_DIR]
    tff-resume data inspect --source {emnist,leaf,synthetic} [--split train|test] ...
    tff-resume certs --out DIR --workers HOST[,HOST...] [--days N]
    tff-resume worker --port PORT (--tls_dir DIR | --insecure) [--host HOST]

Errors a user can cause print one line and exit with status 2.
"""

import argparse
import contextlib
import getpass
import json
import os
import signal
import sys
import time

from tff_resume.runtime import certificates
from tff_resume.runtime import local_worker
from tff_resume.runtime import signals
from tff_resume.runtime import tls_worker
from tff_resume.runtime import worker_server

EXIT_USAGE_ERROR = 2


def _build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="tff-resume", description=__doc__.split("\n")[0])
  parser.add_argument("--verbose", action="store_true",
                      help="show TensorFlow's start-up messages and TFF's worker output")
  commands = parser.add_subparsers(dest="command", required=True)

  status = commands.add_parser("status", help="what a run has done: rounds, versions, metrics")
  status.add_argument("run_dir", help="the run's folder, ROOT_OUTPUT_DIR/EXPERIMENT_NAME")
  status.add_argument("--json", action="store_true", help="print one JSON object")
  status.add_argument("--round", type=int, dest="round_num",
                      help="also print the client ids sampled in this round")
  status.add_argument("--client", dest="client_id",
                      help="also print this client's participation: rounds and examples")
  status.add_argument("--coverage", action="store_true",
                      help="also print how many distinct clients took part, and how often")

  export = commands.add_parser(
      "export", help="write a version's global model as a Keras file, an .npz and metadata.json")
  export.add_argument("run_dir", help="the run's folder, ROOT_OUTPUT_DIR/EXPERIMENT_NAME")
  export.add_argument("--out", required=True, help="new (or empty) folder to write the export into")
  export.add_argument("--version", type=int, default=None,
                      help="the checkpoint version (= rounds done) to export; default the newest good")

  data = commands.add_parser("data", help="federated EMNIST data: import and inspect")
  data_commands = data.add_subparsers(dest="data_command", required=True)

  import_leaf = data_commands.add_parser(
      "import-leaf", help="convert LEAF FEMNIST JSON into TFF's EMNIST SQLite file")
  import_leaf.add_argument("--src", required=True,
                           help="LEAF's FEMNIST data folder (holding train/ and test/)")
  import_leaf.add_argument("--out", required=True,
                           help="folder to write emnist_all.sqlite into; use it as data.cache_dir")

  index = data_commands.add_parser(
      "index", help="add the index TFF's per-client query needs to an emnist_all.sqlite without one")
  index.add_argument("--cache_dir", default=None,
                     help="folder holding emnist_all.sqlite (default ~/.tff)")

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

  certs = commands.add_parser(
      "certs", help="make a study's CA and certificates for TLS workers (tff-resume worker "
      "--tls_dir, config runtime.tls_dir); keeps what is already there")
  certs.add_argument("--out", required=True, help="folder for the files (made 0700)")
  certs.add_argument("--workers", required=True,
                     help="worker hosts, comma-separated, as runtime.workers names them")
  certs.add_argument("--days", type=int, default=365, help="validity of new certificates")

  worker = commands.add_parser(
      "worker", help="serve TFF computations for runs on other machines (config runtime.workers)")
  worker.add_argument("--port", type=int, required=True, help="TCP port to serve on")
  worker.add_argument("--host", default=None,
                      help="the name or address runs reach this machine by (its certificate's "
                      "name with --tls_dir, printed in the log line); default the hostname")
  worker.add_argument("--tls_dir", default=None,
                      help="serve only through mutual TLS with the certificates `tff-resume certs` "
                      "wrote there (the CA and worker-HOST.pem/.key); TFF's worker itself runs "
                      "in a private network namespace")
  worker.add_argument("--insecure", action="store_true",
                      help="serve without TLS: TFF's worker on every interface, running any "
                      "computation from anyone who reaches the port (a private network only)")
  worker.add_argument("--max_concurrent_computation_calls", type=int, default=None,
                      help="limit on client computations run in parallel; default this "
                      "machine's CPU cores; -1 none")
  return parser


def _import_leaf(args) -> None:
  from tff_resume.data import leaf  # pylint: disable=g-import-not-at-top

  summary = leaf.import_leaf(args.src, args.out, progress=lambda line: print(line, flush=True))
  print(f"Wrote {summary.path}")
  for split_name in sorted(summary.clients):
    print(f"  {split_name}: {summary.clients[split_name]} clients, "
          f"{summary.examples[split_name]} examples")
  print(f"Load it with tff.simulation.datasets.emnist.load_data(cache_dir={args.out!r}).")


def _index(args) -> None:
  import sqlite3  # pylint: disable=g-import-not-at-top
  from tff_resume.data import client_index  # pylint: disable=g-import-not-at-top
  from tff_resume.data import emnist  # pylint: disable=g-import-not-at-top

  path = emnist.require_emnist_database(args.cache_dir)
  started = time.monotonic()
  try:
    added = client_index.add_client_index(path)
  except sqlite3.OperationalError as error:
    raise ValueError(f"cannot add the index to {path}: {error}. Run this where the file and its "
                     "folder can be written; the file is unchanged.") from None
  if added:
    print(f"Added {client_index.ADDED_INDEX} to {path} in {time.monotonic() - started:.1f} s "
          f"({client_index.added_index_bytes(path) / 2**20:.1f} MiB); its rows are unchanged.")
  else:
    print(f"{path} already has an index for TFF's per-client query; nothing to do.")
  connection = client_index.connect(path)
  try:
    print(f"TFF's per-client query: {client_index.query_plan(connection)}")
  finally:
    connection.close()


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


def _status(args) -> None:
  from tff_resume.analysis import status as status_lib  # pylint: disable=g-import-not-at-top
  from tff_resume.releases import units  # pylint: disable=g-import-not-at-top

  status = status_lib.run_status(args.run_dir, round_num=args.round_num, client_id=args.client_id,
                                 coverage=args.coverage)
  rounds_done, version = status["rounds_done"], status["newest_good_version"]
  if args.json:
    print(json.dumps(status, indent=2, sort_keys=True))
    return
  print(f"Run {args.run_dir}: {rounds_done} of {status['total_rounds']} rounds done"
        f"{' (complete)' if status['complete'] else ''}")
  print(f"  newest good version: {version}; versions on disk: {status['versions']}")
  print(f"  model weights SHA-256: {status['model_weights_sha256']}")
  last = status["last_metrics"]
  if "communication/aggregated_bits" in last:
    print(f"  bits since round 1: broadcast {last['communication/broadcasted_bits']} "
          f"({units.format_bits(last['communication/broadcasted_bits'])}), aggregated "
          f"{last['communication/aggregated_bits']} "
          f"({units.format_bits(last['communication/aggregated_bits'])})")
  if "privacy/epsilon" in last:
    print(f"  privacy spent: epsilon {last['privacy/epsilon']:.6g} at delta "
          f"{last['privacy/target_delta']:g} after {rounds_done} rounds")
  print("  resume log:")
  for start in status["resume_log"]:
    origin = ("fresh start" if start["resumed_from_version"] is None
              else f"resumed from version {start['resumed_from_version']}, "
                   f"{start['rounds_redone']} rounds redone")
    print(f"    {start['started_at']}  {origin}  (total_rounds {start['total_rounds']})")
  print(f"  last metrics (round {rounds_done}):")
  for name, value in status["last_metrics"].items():
    print(f"    {name}: {value:.6g}" if isinstance(value, float) else f"    {name}: {value}")
  if args.round_num is not None:
    print(f"  clients of round {args.round_num}: {' '.join(status['sampled_clients'])}")
  if args.client_id is not None:
    client = status["client"]
    print(f"  client {args.client_id}: {client['participations']} rounds, {client['examples']} "
          "examples per local epoch in all")
    for entry in client["rounds"]:
      print(f"    round {entry['round']}: {entry['examples']} examples")
  if args.coverage:
    summary = status["coverage"]
    print(f"  coverage: {summary['distinct_clients']} distinct clients in {summary['rounds']} "
          f"rounds ({summary['participations']} participations)")
    if summary["times_per_client"]:
      times = summary["times_per_client"]
      print(f"    rounds per client: min {times['min']}, median {times['median']:g}, "
            f"max {times['max']}")
      for count, clients in summary["clients_by_times"].items():
        print(f"    {clients} clients took part {count} time{'s' * (count != 1)}")


def _export(args) -> None:
  from tff_resume.analysis import global_model  # pylint: disable=g-import-not-at-top
  from tff_resume.storage import run_lock  # pylint: disable=g-import-not-at-top

  run_dir, out = os.path.realpath(args.run_dir), os.path.realpath(args.out)
  # Writing into the run folder: only while no runner writes there.
  into_run = os.path.commonpath([run_dir, out]) == run_dir
  with run_lock.RunLock(args.run_dir) if into_run else contextlib.nullcontext():
    metadata = global_model.export_model(args.run_dir, args.out, args.version)
  print(f"Exported round {metadata['round']} of {args.run_dir} to {args.out}: "
        f"{global_model.MODEL_FILE}, {global_model.WEIGHTS_FILE}, {global_model.METADATA_FILE} "
        f"(weights SHA-256 {metadata['model_weights_sha256'][:16]}...).")
  print(f"Open it with tf.keras.models.load_model({args.out + '/' + global_model.MODEL_FILE!r}); "
        f"warm-start a run with --config.model.initial_weights={args.out}")


def _worker(args) -> int:
  if bool(args.tls_dir) == args.insecure:
    print("tff-resume worker: error: give --tls_dir DIR (certificates from `tff-resume certs --out "
          "DIR --workers HOST,...`) to serve through mutual TLS, or --insecure to serve TFF's "
          "worker unauthenticated on every interface (not both).", file=sys.stderr)
    return EXIT_USAGE_ERROR
  try:
    if args.tls_dir:
      return tls_worker.serve(args.port, args.tls_dir, args.host,
                              args.max_concurrent_computation_calls, args.verbose)
    worker_server.check_port(args.port)
    print("tff-resume worker: --insecure: TFF's worker listens on every interface without TLS or "
          "authentication, and anyone who reaches this port can run any TensorFlow computation as "
          f"{getpass.getuser()} on this machine. Use it only on a network nobody else reaches.",
          file=sys.stderr, flush=True)
    return worker_server.serve(args.port, args.host, args.max_concurrent_computation_calls,
                               args.verbose)
  except (ValueError, local_worker.WorkerStartError) as error:  # CertificateError is a ValueError.
    print(f"tff-resume worker: error: {error}", file=sys.stderr)
    return EXIT_USAGE_ERROR


def _certs(args) -> int:
  hosts = [host.strip() for host in args.workers.split(",") if host.strip()]
  try:
    made = certificates.make_certificates(args.out, hosts, args.days)
  except ValueError as error:
    print(f"tff-resume certs: error: {error}", file=sys.stderr)
    return EXIT_USAGE_ERROR
  for certificate in made:
    print(f"{'made' if certificate.new else 'kept'} {certificate.path} ({certificate.subject}), "
          f"expires {certificate.not_valid_after:%Y-%m-%d %H:%M} UTC")
  print(f"Workers: tff-resume worker --port PORT --tls_dir {args.out} --host HOST. Runs: "
        f"--config.runtime.tls_dir={args.out} (ca.pem, runner.pem, runner.key suffice there).")
  return 0


def main(argv: list[str] | None = None) -> int:
  """Runs the command line; returns the exit status."""
  args = _build_parser().parse_args(argv)
  if args.command == "worker":  # Without TensorFlow: a worker node starts in a second.
    return _worker(args)
  if args.command == "certs":
    return _certs(args)
  local_worker.quiet_tensorflow_logging(args.verbose)
  from tff_resume.data import emnist  # pylint: disable=g-import-not-at-top
  from tff_resume.data import leaf  # pylint: disable=g-import-not-at-top

  local_worker.install_guard_context()
  from tff_resume.storage import checkpointing  # pylint: disable=g-import-not-at-top
  from tff_resume.storage import history  # pylint: disable=g-import-not-at-top
  from tff_resume.storage import participation  # pylint: disable=g-import-not-at-top
  from tff_resume.storage import run_lock  # pylint: disable=g-import-not-at-top

  handlers = {("data", "import-leaf"): _import_leaf, ("data", "inspect"): _inspect,
              ("data", "index"): _index,
              ("status", None): _status, ("export", None): _export}
  try:
    handlers[(args.command, getattr(args, "data_command", None))](args)
    sys.stdout.flush()  # A closed pipe shows here, not at interpreter exit.
  except (emnist.DataNotFoundError, emnist.NotEmnistError, leaf.LeafFormatError, FileExistsError,
          ValueError, checkpointing.NoGoodVersionError, checkpointing.CorruptVersionError,
          checkpointing.VersionNotFoundError, participation.DatabaseError,
          history.HistoryMismatchError) as error:
    print(f"tff-resume: error: {error}", file=sys.stderr)
    return EXIT_USAGE_ERROR
  except run_lock.RunLockedError as error:
    print(f"tff-resume: {error}", file=sys.stderr)
    return signals.EXIT_CODE_INTERRUPTED
  except BrokenPipeError:  # Whoever read stdout stopped (`| head`): end quietly, as Unix tools do.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # No error at Python's exit.
    return 128 + signal.SIGPIPE
  except OSError as error:  # E.g. an --out where nothing can be written.
    where = f"{error.filename}: " if error.filename else ""
    print(f"tff-resume: error: cannot write {where}{error.strerror or error}; choose another "
          "folder. Nothing was written.", file=sys.stderr)
    return EXIT_USAGE_ERROR
  return 0


if __name__ == "__main__":
  sys.exit(main())
