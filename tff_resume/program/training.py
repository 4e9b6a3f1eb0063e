"""The training loop: rounds of a TFF learning process with a checkpoint after every round.

`train` takes only ready-made objects and functions and never reads a flag or a config. After each
round it commits the round: it records the sampled clients and metrics
(`bookkeeping.Bookkeeping.record_round`: history, release managers, participation) and, every
`rounds_per_checkpoint` rounds (and at the last round, and when a stop is requested), saves the server
state with the run record as one atomic checkpoint version (version N = the state after N rounds),
then reports the round (`on_round`).

Round N's commit runs in a background thread while round N+1 trains (TFF's worker, another process,
does the work of a round; this process mostly waits for it), in the order above, with at most one
commit in flight: round N+1's metrics are taken, and round N+2 starts, only once commit N is done.
A round is done when its commit is: its line is printed and its version listed only then. A failed
commit (a full disk) is raised as soon as the round in flight returns, and nothing later is written.
The last round, and a round after which a stop was requested, are committed before `train` returns;
however `train` ends, no commit is still running when it does.
"""

import concurrent.futures
import dataclasses
import time
from typing import Any, Callable

import numpy as np

from tff_resume.analysis import global_model
from tff_resume.learning import accounting
from tff_resume.learning import privacy_accounting
from tff_resume.releases import bookkeeping


@dataclasses.dataclass(frozen=True)
class RoundResult:
  """What one round produced, for progress reports."""
  round_num: int
  total_rounds: int
  metrics: dict[str, Any]
  round_seconds: float
  checkpoint_seconds: float | None


def flatten_metrics(metrics: Any, prefix: str = "") -> dict[str, Any]:
  """Returns TFF's nested metrics as {'client_work/train/loss': float, ...} of Python numbers."""
  flat = {}
  for key, value in metrics.items():
    name = f"{prefix}{key}"
    if hasattr(value, "items"):
      flat.update(flatten_metrics(value, f"{name}/"))
    elif np.ndim(value) == 0:
      flat[name] = value.item() if isinstance(value, np.generic) else value
  return flat


def global_model_weights(process, state):
  """Returns the state's `tff.learning.models.ModelWeights`.

  Read straight from the state when it holds them (every `tff.learning` algorithm state does): the
  same arrays as `process.get_model_weights(state)`, which is a TFF computation costing a round trip
  to the worker (about 90 ms for the CNN here, every round).
  """
  weights = getattr(state, "global_model_weights", None)
  return process.get_model_weights(state) if weights is None else weights


def model_weights_sha256(process, state) -> str:
  """SHA-256 over the raw bytes of the model's trainable then non-trainable weights, in order."""
  weights = global_model_weights(process, state)
  return global_model.weights_sha256(list(weights.trainable) + list(weights.non_trainable))


def communication_metrics(cost: accounting.CommunicationCost, num_clients: int,
                          previous: dict[str, Any] | None) -> dict[str, int]:
  """Returns a round's broadcast and aggregated bits, per round and cumulative since round 1."""
  broadcasted = cost.broadcasted_bits_per_client * num_clients
  aggregated = cost.aggregated_bits_per_client * num_clients
  previous = previous or {}
  return {
      "communication/broadcasted_bits_per_round": broadcasted,
      "communication/aggregated_bits_per_round": aggregated,
      "communication/broadcasted_bits":
          previous.get("communication/broadcasted_bits", 0) + broadcasted,
      "communication/aggregated_bits":
          previous.get("communication/aggregated_bits", 0) + aggregated,
  }


# Eager ops that register a function in TensorFlow's context each time a dataset is built with `map`;
# TF 2.14 keeps about 80 KB per registration until the function is removed.
_DATASET_OP_FUNCTIONS = ("__wrapped__MapDataset", "__wrapped__ParallelMapDataset")


def release_dataset_functions() -> None:
  """Removes the eager op functions that building `map`ped datasets left in TensorFlow's context.

  Every round builds its clients' datasets anew, and each build leaves one (the runner's memory grew
  by about 0.16 MB per round of 2 clients, without end). TensorFlow registers them again when the
  next dataset is built, so removing them changes nothing else.
  """
  from tensorflow.python.eager import context  # pylint: disable=g-import-not-at-top

  eager = context.context()
  for name in eager.list_function_names():
    if name.startswith(_DATASET_OP_FUNCTIONS):
      eager.remove_function(name)


def train(*, process, state, book: bookkeeping.Bookkeeping, total_rounds: int,
          rounds_per_checkpoint: int, communication: accounting.CommunicationCost | None,
          evaluate: Callable[[Any], dict[str, Any]] | None, rounds_per_eval: int,
          select_clients: Callable[[int], list[str]],
          client_datasets: Callable[[int, list[str]], list], should_stop: Callable[[], bool],
          on_round: Callable[[RoundResult], None],
          weights_sha256: Callable[[Any], str] | None = None,
          privacy: privacy_accounting.PrivacyAccountant | None = None) -> tuple[Any, bool]:
  """Runs rounds `book.record.rounds_done + 1` .. `total_rounds`.

  Args:
    process: a `tff.learning.templates.LearningProcess`, or an iterative process whose `next`
      returns (state, metrics).
    state: its state after `book.record.rounds_done` rounds.
    book: the run's bookkeeping: each round is recorded there, then checkpointed.
    total_rounds: the last round to run.
    rounds_per_checkpoint: save every this many rounds (and always after the last round).
    communication: the per-client bits of a round, for the communication metrics (None: none).
    evaluate: state -> evaluation metrics; run every `rounds_per_eval` rounds (0: never before the
      last) and after the last round. None: no evaluation.
    select_clients: round -> client ids.
    client_datasets: (round, client ids) -> the clients' preprocessed datasets.
    should_stop: polled after each round; when true, the round is saved and the loop stops.
    on_round: called after each round.
    weights_sha256: state -> the SHA-256 kept in the record; default `model_weights_sha256`.
    privacy: the DP accountant: adds `privacy/epsilon` after each round (None: not private).

  Returns:
    (state, stopped): the final state, and whether a stop request ended the loop early.
  """
  record = book.record
  weights_sha256 = weights_sha256 or (lambda state: model_weights_sha256(process, state))

  def commit(round_num: int, client_ids: list[str], metrics: dict[str, Any], state: Any,
             checkpoint: bool, round_seconds: float) -> None:
    book.record_round(round_num, client_ids, metrics)
    checkpoint_seconds = None
    if checkpoint:
      checkpoint_started = time.perf_counter()
      bookkeeping.save_checkpoint(book.manager, state, record, weights_sha256(state))
      checkpoint_seconds = time.perf_counter() - checkpoint_started
    on_round(RoundResult(round_num, total_rounds, metrics, round_seconds, checkpoint_seconds))

  committer = _Committer()
  upcoming = _UpcomingRound(select_clients, client_datasets)
  try:
    for round_num in range(record.rounds_done + 1, total_rounds + 1):
      started = time.perf_counter()
      client_ids, datasets = upcoming.take(round_num)
      if round_num < total_rounds:
        upcoming.start(round_num + 1)  # Built while this round trains.
      state, round_metrics = next_state_and_metrics(process.next(state, datasets))
      upcoming.wait()  # No dataset is being built while their op functions are released.
      release_dataset_functions()
      round_seconds = time.perf_counter() - started
      committer.wait()  # The previous round is committed: its metrics are the record's last.
      metrics = flatten_metrics(round_metrics)
      if communication is not None:
        metrics.update(communication_metrics(communication, len(client_ids), record.last_metrics))
      if privacy is not None:
        metrics.update(privacy_accounting.privacy_metrics(privacy, round_num))
      metrics["time/round_seconds"] = round_seconds
      if evaluate is not None and (
          round_num == total_rounds or (rounds_per_eval and round_num % rounds_per_eval == 0)):
        evaluation_started = time.perf_counter()
        metrics.update(evaluate(state))
        metrics["time/evaluation_seconds"] = time.perf_counter() - evaluation_started
      stopping = should_stop()
      last = round_num == total_rounds or stopping
      arguments = (round_num, client_ids, metrics, state,
                   round_num % rounds_per_checkpoint == 0 or last, round_seconds)
      if last:
        commit(*arguments)
        return state, stopping and round_num < total_rounds
      committer.submit(lambda arguments=arguments: commit(*arguments))
  finally:
    upcoming.close()
    committer.close()
  return state, False


class _UpcomingRound:
  """Samples the next round's clients and builds their datasets in a background thread while the
  current round trains (both are pure functions of the round number, so nothing changes but when
  they are computed); a round whose build was not started is built when taken."""

  def __init__(self, select_clients: Callable[[int], list[str]],
               client_datasets: Callable[[int, list[str]], list]):
    self._select_clients, self._client_datasets = select_clients, client_datasets
    self._executor = concurrent.futures.ThreadPoolExecutor(1, "datasets")
    self._pending: tuple[int, concurrent.futures.Future] | None = None

  def _build(self, round_num: int) -> tuple[list[str], list]:
    client_ids = self._select_clients(round_num)
    return client_ids, self._client_datasets(round_num, client_ids)

  def start(self, round_num: int) -> None:
    self._pending = (round_num, self._executor.submit(self._build, round_num))

  def take(self, round_num: int) -> tuple[list[str], list]:
    """(client ids, datasets) of `round_num`; raises what building them raised."""
    pending, self._pending = self._pending, None
    if pending is not None and pending[0] == round_num:
      return pending[1].result()
    return self._build(round_num)

  def wait(self) -> None:
    """Returns once no build is in flight (an error stays for `take`)."""
    if self._pending is not None:
      concurrent.futures.wait([self._pending[1]])

  def close(self) -> None:
    self._executor.shutdown(wait=True)


class _Committer:
  """Runs round commits in one background thread, one at a time."""

  def __init__(self):
    self._executor = concurrent.futures.ThreadPoolExecutor(1, "commit")
    self._pending: concurrent.futures.Future | None = None

  def wait(self) -> None:
    """Returns once the commit in flight is done; raises its error if it failed."""
    pending, self._pending = self._pending, None
    if pending is not None:
      pending.result()

  def submit(self, commit: Callable[[], None]) -> None:
    self.wait()
    self._pending = self._executor.submit(commit)

  def close(self) -> None:
    """Waits for the commit in flight, if any (an error of its own is dropped: `train` is raising
    another)."""
    self._executor.shutdown(wait=True)


def next_state_and_metrics(output: Any) -> tuple[Any, Any]:
  """(state, metrics) of what `next` returned: a `LearningProcessOutput`, or a (state, metrics) pair."""
  if hasattr(output, "state") and hasattr(output, "metrics"):
    return output.state, output.metrics
  state, metrics = output
  return state, metrics
