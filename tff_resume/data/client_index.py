"""The index TFF's per-client query needs, checked and added to an EMNIST SQLite file.

TFF's `SqlClientData` reads a client's examples with

    SELECT serialized_example_proto FROM examples WHERE client_id = ? AND split_name = ?

and TFF's own writer (`sql_client_data_utils.save_to_sql_client_data`) creates no index, so every
client read scans the whole `examples` table: 0.85 s a client on a 2.3 GiB EMNIST-62 file, against
0.06 s with an index. `ensure_client_index` asks SQLite (`EXPLAIN QUERY PLAN` of that query) whether
an index serves it, and when none does adds `ADDED_INDEX` on `(client_id, split_name)` in one
transaction: a reader meanwhile sees the file without it or with all of it, and a kill halfway leaves a
journal that the next connection rolls back. Only the index is added; no row changes.
"""

import os
import sqlite3
import time
from typing import Callable

from tff_resume.runtime import fault_hooks

# The name of the index this module adds (LEAF imports carry their own, `examples_by_client`).
ADDED_INDEX = "tff_resume_examples_by_client"
BUSY_TIMEOUT_SECONDS = 60.0
_CLIENT_QUERY = ("SELECT serialized_example_proto FROM examples "
                 "WHERE client_id = ? AND split_name = ?")


def _writable(path: str) -> bool:
  """Whether SQLite can write `path`: the file, and its folder (for the journal)."""
  return os.access(path, os.W_OK) and os.access(os.path.dirname(path) or ".", os.W_OK)


def connect(path: str, busy_timeout: float = BUSY_TIMEOUT_SECONDS) -> sqlite3.Connection:
  """Opens `path` read-write where it can be written, so that the journal a writer killed halfway
  left is rolled back at the first read (a read-only connection cannot), else read-only; without
  Python's implicit transactions."""
  mode = "rw" if _writable(path) else "ro"
  return sqlite3.connect(f"file:{path}?mode={mode}", uri=True, timeout=busy_timeout,
                         isolation_level=None)


def query_plan(connection: sqlite3.Connection) -> str:
  """SQLite's plan for TFF's per-client query, e.g. `SEARCH examples USING INDEX ...`."""
  rows = connection.execute(f"EXPLAIN QUERY PLAN {_CLIENT_QUERY}", ("", "")).fetchall()
  return "; ".join(row[-1] for row in rows)


def _uses_index(plan: str) -> bool:
  return " USING INDEX " in plan or " USING COVERING INDEX " in plan


def has_client_index(path: str) -> bool:
  """Whether an index serves TFF's per-client query on `path`."""
  connection = connect(path)
  try:
    return _uses_index(query_plan(connection))
  finally:
    connection.close()


def added_index_bytes(path: str) -> int:
  """The bytes of `path` that `ADDED_INDEX` takes (0 without it): the file's size less these is its
  size as it was written, which a run's fingerprint keeps across the index being added."""
  connection = connect(path)
  try:
    row = connection.execute("SELECT sum(pgsize) FROM dbstat WHERE name = ? AND aggregate = 1",
                             (ADDED_INDEX,)).fetchone()
  finally:
    connection.close()
  return int(row[0] or 0)


def index_command(path: str) -> str:
  """The `tff-resume data index` command that adds the index to the file at `path`."""
  return f"tff-resume data index --cache_dir {os.path.dirname(path) or '.'}"


def add_client_index(path: str) -> bool:
  """Adds `ADDED_INDEX` to `path` in one transaction unless an index already serves TFF's query;
  returns whether it added it.

  Raises:
    sqlite3.OperationalError: the file cannot be written (read-only, busy past the timeout, full).
  """
  connection = connect(path)
  try:
    connection.execute("BEGIN IMMEDIATE")  # The write lock first: one adder at a time.
    try:
      if _uses_index(query_plan(connection)):
        connection.execute("ROLLBACK")
        return False
      fault_hooks.during_index(connection, path)
      connection.execute(f"CREATE INDEX {ADDED_INDEX} ON examples (client_id, split_name)")
      connection.execute("COMMIT")
    except BaseException:
      if connection.in_transaction:
        connection.execute("ROLLBACK")
      raise
    return True
  finally:
    connection.close()


def ensure_client_index(path: str, say: Callable[[str], None] = print) -> bool:
  """Adds the index TFF's per-client query needs when `path` lacks one, saying so in a line before
  and after; where the file cannot be written, says what to run instead and goes on without it.
  Returns whether an index serves the query now."""
  if has_client_index(path):
    return True
  name = os.path.basename(path)
  if not _writable(path):
    say(f"data: {path} has no index for TFF's per-client query, so each client read scans the "
        f"whole file, and it cannot be written here. Where it can, run: {index_command(path)}")
    return False
  say(f"data: {name} has no index for TFF's per-client query (TFF's writer adds none), so each "
      f"client read scans the whole file; adding {ADDED_INDEX} once (its rows are not changed)...")
  started = time.monotonic()
  try:
    add_client_index(path)
  except sqlite3.OperationalError as error:
    say(f"data: could not add the index to {path} ({error}); going on without it. To add it "
        f"later: {index_command(path)}")
    return False
  say(f"data: index added in {time.monotonic() - started:.1f} s "
      f"({added_index_bytes(path) / 2**20:.1f} MiB).")
  return True
