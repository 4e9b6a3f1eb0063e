"""Per-client participation records: which clients trained in which round, on how many examples.

One SQLite table, `participation(round, client_id, examples)`, primary key `(round, client_id)`. Rows
are appended a round at a time, in one transaction; a start first deletes the rows of rounds after
the version it resumes from, so rounds that are redone after a kill are never counted twice. There is
no index by client: keeping one made each round's insert cost grow with the rows already there (1.3
ms after 10 rounds of 50 clients, 3.0 ms after 10,000), while a query by client scans 500,000 rows in
about 35 ms. Files with the older index lose it when next opened for writing. `examples` is the
number of the client's examples it trained on in each local epoch
(after `client.max_examples_per_client`).
"""

import collections
import os
import sqlite3
import statistics
from typing import Any, Iterable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS participation (
  round INTEGER NOT NULL,
  client_id TEXT NOT NULL,
  examples INTEGER NOT NULL,
  PRIMARY KEY (round, client_id)
) WITHOUT ROWID;
DROP INDEX IF EXISTS participation_by_client;
"""


DatabaseError = sqlite3.DatabaseError  # The file is not an SQLite database (or is damaged).


def open_database(path: str, schema: str) -> sqlite3.Connection:
  """Opens (creating it and its folder when missing) the SQLite file `path` with the tables of
  `schema`; raises DatabaseError, closing it, when the file is not a database."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  # Written by the round commits' thread too (`training`), one thread at a time.
  connection = sqlite3.connect(path, check_same_thread=False)
  try:
    connection.executescript(schema)
  except sqlite3.DatabaseError:
    connection.close()
    raise
  return connection


class NoParticipationRecordsError(ValueError):
  """The run has no participation file (it was never started, or predates the records)."""


class ParticipationLog:
  """The participation table of one run, open for writing."""

  def __init__(self, path: str):
    self._connection = open_database(path, _SCHEMA)

  def keep_rounds_up_to(self, round_num: int) -> int:
    """Deletes the rows of rounds after `round_num` (redone on resume); returns how many."""
    with self._connection:
      return self._connection.execute("DELETE FROM participation WHERE round > ?",
                                      (round_num,)).rowcount

  def rounds_recorded(self) -> int:
    """Returns how many distinct rounds have rows."""
    return self._connection.execute("SELECT COUNT(DISTINCT round) FROM participation").fetchone()[0]

  def replace_all(self, rounds: Iterable[tuple[int, Iterable[tuple[str, int]]]]) -> None:
    """Replaces every row with `rounds`: [(round, [(client_id, examples), ...]), ...], in one
    transaction (rebuilding the table from a checkpoint's record)."""
    with self._connection:
      self._connection.execute("DELETE FROM participation")
      self._connection.executemany(
          "INSERT INTO participation (round, client_id, examples) VALUES (?, ?, ?)",
          [(round_num, client_id, int(examples)) for round_num, clients in rounds
           for client_id, examples in clients])

  def add_round(self, round_num: int, examples_by_client: Iterable[tuple[str, int]]) -> None:
    """Records one round's clients and example counts (replacing any earlier rows of the round)."""
    with self._connection:
      self._connection.execute("DELETE FROM participation WHERE round >= ?", (round_num,))
      self._connection.executemany(
          "INSERT INTO participation (round, client_id, examples) VALUES (?, ?, ?)",
          [(round_num, client_id, int(examples)) for client_id, examples in examples_by_client])

  def close(self) -> None:
    """Closes the participation database."""
    self._connection.close()


def _read_only(path: str) -> sqlite3.Connection:
  if not os.path.isfile(path):
    raise NoParticipationRecordsError(
        f"No participation records at {path}: the run has not completed a round with this version "
        "of tff_resume.")
  return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def client_participation(path: str, client_id: str, up_to_round: int) -> list[tuple[int, int]]:
  """Returns [(round, examples)] of `client_id` in rounds 1..`up_to_round`, by round."""
  connection = _read_only(path)
  try:
    return connection.execute(
        "SELECT round, examples FROM participation WHERE client_id = ? AND round <= ? "
        "ORDER BY round", (client_id, up_to_round)).fetchall()
  finally:
    connection.close()


def coverage(path: str, up_to_round: int) -> dict[str, Any]:
  """Returns how many distinct clients took part in rounds 1..`up_to_round`, and how often.

  Keys: rounds, participations, distinct_clients, times_per_client (min, median, max over the
  clients that took part), clients_by_times ({times: number of clients}).
  """
  connection = _read_only(path)
  try:
    counts = [count for (count,) in connection.execute(
        "SELECT COUNT(*) FROM participation WHERE round <= ? GROUP BY client_id", (up_to_round,))]
    rounds, = connection.execute("SELECT COUNT(DISTINCT round) FROM participation WHERE round <= ?",
                                 (up_to_round,)).fetchone()
  finally:
    connection.close()
  return {
      "rounds": rounds,
      "participations": sum(counts),
      "distinct_clients": len(counts),
      "times_per_client": ({"min": min(counts), "median": statistics.median(counts),
                            "max": max(counts)} if counts else None),
      "clients_by_times": dict(sorted(collections.Counter(counts).items())),
  }
