"""The fingerprint of a run: every configuration field that changes the math.

A run can be resumed only with the same fingerprint. It covers the data (source, digits-only, the
synthetic set's parameters, and the size in bytes of the EMNIST file as written, without the index
a start may add), the model (with the SHA-256 of a
warm start's source), the algorithm, the client and server optimizers, the aggregator, the clients
per round, the seed and `runtime.num_subrounds` (how a round's aggregate is summed; the workers it
runs on are not part of it). Fields that do not change the math (`training.total_rounds`, `checkpoint.*`,
`data.cache_dir` itself, `aggregator.dp.target_delta` (what the privacy report is computed at), the
settings of the data source, server optimizers and aggregators not chosen, and `aggregator.seed`
for an aggregator that draws nothing) may change between starts. Fields added with a default that reproduces the runs before them
(`algorithm.*` for FedAvg, `server.optimizer` for SGD, `model.initial_weights` unset,
`model.compute_dtype` float32) are left out,
so those runs keep their fingerprints and can still be resumed.
"""

import os
from typing import Any, Mapping

from tff_resume.analysis import global_model
from tff_resume.data import client_index
from tff_resume.data import emnist

MATH_SECTIONS = ("algorithm", "data", "model", "client", "server", "aggregator")
MATH_TRAINING_FIELDS = ("clients_per_round", "seed")
_ABSENT = "(absent)"
# Fields left out of a fingerprint at these values, so runs from before the field keep their
# fingerprints; a difference shows the value rather than "(absent)".
_LEFT_OUT_DEFAULTS = {"model.compute_dtype": "float32", "server.optimizer": "sgd"}


class FingerprintMismatchError(ValueError):
  """The configuration changes the math of the run being resumed."""


class UnseededRunError(FingerprintMismatchError):
  """The run was started before its aggregator's random draws were seeded (`aggregator.seed`)."""


def _randomized(config: Mapping[str, Any]) -> bool:
  aggregator = config["aggregator"]
  quantize = aggregator.get("quantize", {})
  return aggregator["name"] in ("compression", "dp") or (
      aggregator["name"] == "quantize"
      and bool(quantize.get("stochastic", True) or quantize.get("hadamard", False)))


def _flatten(prefix: str, value: Any, into: dict[str, Any]) -> None:
  if isinstance(value, Mapping):
    for key in sorted(value):
      _flatten(f"{prefix}.{key}", value[key], into)
  else:
    into[prefix] = value


def flatten_config(config: Mapping[str, Any]) -> dict[str, Any]:
  """Returns every field of `config` (a dict or ConfigDict) as {dotted field: value}."""
  fields: dict[str, Any] = {}
  for section, value in (config.to_dict() if hasattr(config, "to_dict") else config).items():
    _flatten(section, value, fields)
  return fields


def compute_fingerprint(config: Mapping[str, Any]) -> dict[str, Any]:
  """Returns {dotted field: value} of every math-changing field of `config` (a dict or ConfigDict).

  Raises:
    emnist.DataNotFoundError: the EMNIST file named by the config is missing.
  """
  all_fields = flatten_config(config)
  fields = {name: value for name, value in all_fields.items()
            if name.split(".")[0] in MATH_SECTIONS
            or name in {f"training.{field}" for field in MATH_TRAINING_FIELDS}}
  del fields["data.cache_dir"]
  fields.pop("aggregator.dp.target_delta", None)
  if fields.get("model.initial_weights"):
    fields["model.initial_weights_sha256"] = global_model.source_sha256(
        fields["model.initial_weights"])
  elif "model.initial_weights" in fields:
    del fields["model.initial_weights"]  # Not set: fingerprints stay those of runs before the field.
  subrounds = (config.get("runtime") or {}).get("num_subrounds", 0)
  if subrounds:  # 0 (not split) is how every run before the field ran.
    fields["runtime.num_subrounds"] = subrounds
  if config["data"]["source"] == "emnist":
    path = emnist.require_emnist_database(config["data"]["cache_dir"] or None)
    # As the file was written: the index a start adds (`client_index`) does not change the run.
    fields["data.file_bytes"] = os.path.getsize(path) - client_index.added_index_bytes(path)
  unused = inapplicable_prefixes(config)
  for field, default in _LEFT_OUT_DEFAULTS.items():
    if fields.get(field) == default:
      del fields[field]
  if config["algorithm"]["name"] == "fedavg":
    unused.append("algorithm.")  # FedAvg runs keep the fingerprints they had, too.
  return {k: v for k, v in fields.items() if not k.startswith(tuple(unused))}


def inapplicable_prefixes(config: Mapping[str, Any]) -> list[str]:
  """Dotted prefixes of the fields `config`'s choices make unused: the settings of the data source,
  aggregator, server optimizer and algorithm not chosen."""
  unused = [] if config["data"]["source"] == "synthetic" else ["data.synthetic."]
  unused += [f"aggregator.{name}." for name in ("quantize", "dp")
             if config["aggregator"]["name"] != name]
  if not _randomized(config):
    unused.append("aggregator.seed")
  optimizer = config["server"]["optimizer"]
  unused += [f"server.{name}." for name in ("adam", "adagrad", "yogi") if name != optimizer]
  if optimizer != "sgd":
    unused.append("server.momentum")
  if config["algorithm"]["name"] != "fedprox":
    unused.append("algorithm.proximal_strength")
  return unused


def differences(saved: Mapping[str, Any],
                current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
  """Returns (field, saved value, current value) for every field that differs, sorted by field.

  A field present on one side only shows as "(absent)" on the other, or as its value where it is
  left out at a default (`model.compute_dtype` float32, `server.optimizer` sgd).
  """
  fields = sorted(set(saved) | set(current))
  changed = []
  for field in fields:
    missing = _LEFT_OUT_DEFAULTS.get(field, _ABSENT)
    if saved.get(field, missing) != current.get(field, missing):
      changed.append((field, saved.get(field, missing), current.get(field, missing)))
  return changed


def check_resumable(saved: Mapping[str, Any], current: Mapping[str, Any], run_dir: str) -> None:
  """Raises FingerprintMismatchError listing each differing field, if there is one."""
  changed = differences(saved, current)
  if not changed:
    return
  if [field for field, _, _ in changed] == ["aggregator.seed"] and "aggregator.seed" not in saved:
    raise UnseededRunError(
        f"{run_dir} was started before the aggregator's random draws were seeded "
        f"(aggregator.seed): its {saved.get('aggregator.name')!r} rounds cannot be continued bit "
        "for bit, so it is not resumed; nothing was changed. To continue from its weights, start a "
        f"new run from them: --experiment_name=NEW --config.model.initial_weights={run_dir}")
  lines = [f"  {field}: saved {old!r}, now {new!r}" for field, old, new in changed]
  raise FingerprintMismatchError(
      f"The configuration does not match the run in {run_dir}, which cannot be resumed with it:\n"
      + "\n".join(lines) + "\nTo start a fresh run instead, choose another --experiment_name "
      "(or move that folder away); to resume this one, use its saved values.")
