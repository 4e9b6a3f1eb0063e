"""The history of a run: the clients and metrics of every round, appended as rounds complete.

One SQLite file, `RUN_DIR/checkpoints/history.sqlite`, with two tables:

    rounds(round, clients, metrics, chain)   one row per completed round
    starts(started_at, resumed_from_version, rounds_redone, total_rounds)   one row per start

`clients` is the JSON list of the round's client ids in sampled order and `metrics` the JSON object of
its metrics in the order they were produced. `chain` links the rows: chain(0) is 64 zeros and
chain(r) = SHA-256(chain(r-1), clients(r), metrics(r)), so chain(N) is a hash of the whole history up
to round N. A checkpoint version N keeps chain(N) in its record instead of a copy of the history.

A start restores the history of the version it resumes from (`restore`): it reads rows 1..N,
recomputes the chain and refuses (HistoryMismatchError, nothing changed) unless it ends at the
version's chain(N): a torn, truncated, reordered or edited history is found, not trusted. It then
deletes the rows of rounds after N (done by an earlier start after its last checkpoint, redone now).
Appending a round is one small transaction whatever the rounds done, so a round's cost does not grow
with the length of the run.
"""

import datetime
import hashlib
import json
import os
import sqlite3
from typing import Any, Iterable, Iterator

from tff_resume.storage import participation

GENESIS = "0" * 64  # chain(0): the hash of an empty history.
FILE_NAME = "history.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds (
  round INTEGER PRIMARY KEY,
  clients TEXT NOT NULL,
  metrics TEXT NOT NULL,
  chain TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS starts (
  id INTEGER PRIMARY KEY,
  started_at TEXT NOT NULL,
  resumed_from_version INTEGER,
  rounds_redone INTEGER NOT NULL,
  total_rounds INTEGER NOT NULL
);
"""

DatabaseError = sqlite3.DatabaseError  # The file is not an SQLite database (or is damaged).


class HistoryMismatchError(Exception):
  """The history on disk is not the one a checkpoint version was saved with (torn, truncated or
  edited); nothing was changed."""


def next_chain(previous: str, clients_json: str, metrics_json: str) -> str:
  """chain(r) from chain(r-1) and round r's stored JSON texts."""
  digest = hashlib.sha256(previous.encode("ascii"))
  for text in (clients_json, metrics_json):
    encoded = text.encode("utf-8")
    digest.update(len(encoded).to_bytes(8, "little"))  # Lengths keep the fields apart.
    digest.update(encoded)
  return digest.hexdigest()


def encode_round(client_ids: Iterable[str], metrics: dict[str, Any]) -> tuple[str, str]:
  """The stored JSON texts of a round's clients and metrics (floats round-trip exactly)."""
  return json.dumps(list(client_ids)), json.dumps(metrics)


def chain_of(rounds: Iterable[tuple[Iterable[str], dict[str, Any]]]) -> str:
  """chain(N) of rounds 1..N given as (client ids, metrics)."""
  chain = GENESIS
  for client_ids, metrics in rounds:
    chain = next_chain(chain, *encode_round(client_ids, metrics))
  return chain


def path_in(checkpoints_dir: str) -> str:
  """The history file's path in a run's checkpoints folder."""
  return os.path.join(checkpoints_dir, FILE_NAME)


class RunHistory:
  """The history file of one run (see the module docstring)."""

  def __init__(self, path: str, read_only: bool = False):
    self._path = path
    if read_only:
      if not os.path.isfile(path):
        raise HistoryMismatchError(f"{path} is missing: the run's history of rounds is gone.")
      self._connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    else:
      self._connection = participation.open_database(path, _SCHEMA)
    self._last_round = None  # Known after `restore` or `replace_all`.
    self._last_chain = None

  def close(self) -> None:
    """Closes the history's SQLite connection."""
    self._connection.close()

  def _rows(self, first: int, last: int) -> Iterator[tuple[int, str, str, str]]:
    return self._connection.execute(
        "SELECT round, clients, metrics, chain FROM rounds WHERE round BETWEEN ? AND ? "
        "ORDER BY round", (first, last))

  def verify(self, rounds_done: int, expected_chain: str) -> None:
    """Checks that rows 1..`rounds_done` exist and hash to `expected_chain`.

    Raises:
      HistoryMismatchError: a round is missing, a row was changed, or the rows are another run's.
    """
    chain, expected_round = GENESIS, 1
    for round_num, clients_json, metrics_json, stored_chain in self._rows(1, rounds_done):
      if round_num != expected_round:
        break
      chain = next_chain(chain, clients_json, metrics_json)
      if chain != stored_chain:
        raise HistoryMismatchError(
            f"{self._path}: round {round_num}'s row was changed after it was written (its hash "
            "chain breaks there).")
      expected_round += 1
    if expected_round <= rounds_done:
      raise HistoryMismatchError(
          f"{self._path} lacks round {expected_round} (the checkpoint holds {rounds_done} rounds): "
          "the history was truncated or rows were deleted.")
    if chain != expected_chain:
      raise HistoryMismatchError(
          f"{self._path}: rounds 1..{rounds_done} are not the ones the checkpoint was saved with "
          "(their hash differs from the one in the checkpoint's record).")
    self._last_round, self._last_chain = rounds_done, chain

  def restore(self, rounds_done: int, expected_chain: str) -> int:
    """Verifies rows 1..`rounds_done` (see `verify`), then deletes later rows; returns how many.

    Raises:
      HistoryMismatchError: as `verify`; nothing was deleted.
    """
    self.verify(rounds_done, expected_chain)
    with self._connection:
      return self._connection.execute("DELETE FROM rounds WHERE round > ?",
                                      (rounds_done,)).rowcount

  def replace_all(self, rounds: list[tuple[list[str], dict[str, Any]]]) -> str:
    """Replaces every row with `rounds` (round r is `rounds[r - 1]`: client ids, metrics), in one
    transaction; returns their chain. Used to move a run of the older layout, whose checkpoints
    held the whole history, to this file."""
    chain, rows = GENESIS, []
    for round_num, (client_ids, metrics) in enumerate(rounds, start=1):
      clients_json, metrics_json = encode_round(client_ids, metrics)
      chain = next_chain(chain, clients_json, metrics_json)
      rows.append((round_num, clients_json, metrics_json, chain))
    with self._connection:
      self._connection.execute("DELETE FROM rounds")
      self._connection.executemany(
          "INSERT INTO rounds (round, clients, metrics, chain) VALUES (?, ?, ?, ?)", rows)
    self._last_round, self._last_chain = len(rounds), chain
    return chain

  def append(self, round_num: int, client_ids: Iterable[str], metrics: dict[str, Any]) -> str:
    """Appends round `round_num` (the one after the last) in one transaction; returns its chain."""
    if self._last_round is None or round_num != self._last_round + 1:
      raise ValueError(f"round {round_num} does not follow the history's last round "
                       f"{self._last_round}; call restore() first.")
    clients_json, metrics_json = encode_round(client_ids, metrics)
    chain = next_chain(self._last_chain, clients_json, metrics_json)
    with self._connection:
      self._connection.execute(
          "INSERT OR REPLACE INTO rounds (round, clients, metrics, chain) VALUES (?, ?, ?, ?)",
          (round_num, clients_json, metrics_json, chain))
    self._last_round, self._last_chain = round_num, chain
    return chain

  def clients(self, round_num: int) -> list[str]:
    """The client ids of round `round_num`, in sampled order."""
    row = self._connection.execute("SELECT clients FROM rounds WHERE round = ?",
                                   (round_num,)).fetchone()
    if row is None:
      raise HistoryMismatchError(f"{self._path} has no round {round_num}.")
    return json.loads(row[0])

  def rounds(self, up_to_round: int) -> Iterator[tuple[int, list[str], dict[str, Any]]]:
    """Yields (round, client ids, metrics) of rounds 1..`up_to_round`, in order."""
    for round_num, clients_json, metrics_json, _ in self._rows(1, up_to_round):
      yield round_num, json.loads(clients_json), json.loads(metrics_json)

  def metrics(self, up_to_round: int) -> Iterator[dict[str, Any]]:
    """Yields the metrics of rounds 1..`up_to_round`, in order."""
    for _, _, metrics in self.rounds(up_to_round):
      yield metrics

  def last_with(self, prefix: str, up_to_round: int) -> tuple[int, dict[str, Any]] | None:
    """(round, metrics named `prefix`...) of the last round <= `up_to_round` that has any."""
    pattern = prefix.replace("\\", "\\\\").replace('"', '\\"')
    for round_num, metrics_json in self._connection.execute(
        "SELECT round, metrics FROM rounds WHERE round <= ? AND instr(metrics, ?) > 0 "
        "ORDER BY round DESC", (up_to_round, f'"{pattern}')):
      named = {name: value for name, value in json.loads(metrics_json).items()
               if name.startswith(prefix)}
      if named:
        return round_num, named
    return None

  def log_start(self, resumed_from_version: int | None, rounds_redone: int,
                total_rounds: int) -> None:
    """Appends one entry to the start log (every start is logged, saved or not)."""
    self.add_starts([{
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "resumed_from_version": resumed_from_version, "rounds_redone": rounds_redone,
        "total_rounds": total_rounds}])

  def add_starts(self, entries: Iterable[dict[str, Any]]) -> None:
    """Appends start-log entries (dicts as `starts` returns; also those of the older layout)."""
    with self._connection:
      self._connection.executemany(
          "INSERT INTO starts (started_at, resumed_from_version, rounds_redone, total_rounds) "
          "VALUES (:started_at, :resumed_from_version, :rounds_redone, :total_rounds)",
          list(entries))

  def starts(self) -> list[dict[str, Any]]:
    """The start log, oldest first: started_at, resumed_from_version (None: fresh), rounds_redone,
    total_rounds."""
    return [{"started_at": started_at, "resumed_from_version": version, "rounds_redone": redone,
             "total_rounds": total} for started_at, version, redone, total in
            self._connection.execute("SELECT started_at, resumed_from_version, rounds_redone, "
                                     "total_rounds FROM starts ORDER BY id")]
