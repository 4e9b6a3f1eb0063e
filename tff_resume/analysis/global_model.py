"""The trained global model outside its run: export it, and warm-start a new run from it.

An export is a folder of three files:

* `model.keras`: the Keras model with the global weights, for `tf.keras.models.load_model` (plain
  TensorFlow; tff_resume is not needed to open it);
* `weights.npz`: the weight arrays in the model's order (`model.get_weights()`), keys `w000`, `w001`...;
* `metadata.json`: the round, the run's config and fingerprint, cumulative bits, the last training and
  evaluation metrics, TF/TFF versions, the weights' names and shapes, and their SHA-256 (trainable then
  non-trainable weights, as the run record computes it).

A warm start (`model.initial_weights`) reads an export folder or a run folder (its newest good
version) and checks every array's shape against the model first.
"""

import datetime
import hashlib
import os
import shutil
from typing import Any

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_resume.learning import models
from tff_resume.releases import bookkeeping
from tff_resume.storage import atomic_files
from tff_resume.storage import checkpointing
from tff_resume.storage import paths as paths_lib

MODEL_FILE = "model.keras"
WEIGHTS_FILE = "weights.npz"
METADATA_FILE = "metadata.json"


class ModelSourceError(ValueError):
  """A run, version or export cannot serve as a model source; the message says why and what to do."""


def weights_sha256(arrays) -> str:
  """SHA-256 over the raw bytes of `arrays` in order (the run record's `model_weights_sha256` when
  given the trainable, then the non-trainable weights)."""
  digest = hashlib.sha256()
  for array in arrays:
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()


def _num_classes(config: dict[str, Any]) -> int:
  return 10 if config["data"]["only_digits"] else 62


def _ordered_variables(model: tf.keras.Model) -> list[tf.Variable]:
  """The model's variables in TFF's `ModelWeights` order: trainable, then non-trainable."""
  return list(model.trainable_variables) + list(model.non_trainable_variables)


def assign_weights(model: tf.keras.Model, arrays) -> None:
  """Assigns `arrays` to `model`'s variables in TFF's `ModelWeights` order (trainable, then
  non-trainable, as `list(weights.trainable) + list(weights.non_trainable)`); a count that differs
  raises ValueError (check the shapes first where the arrays come from a file: `_check_shapes`)."""
  for variable, array in zip(_ordered_variables(model), arrays, strict=True):
    variable.assign(array)


def _check_shapes(variables, arrays, source: str) -> None:
  if len(arrays) != len(variables):
    raise ModelSourceError(
        f"{source} holds {len(arrays)} weight arrays but the model has {len(variables)} variables; "
        "is it the same model (model.name, data.only_digits)?")
  for variable, array in zip(variables, arrays):
    if tuple(variable.shape) != tuple(np.shape(array)):
      raise ModelSourceError(
          f"{source}: variable {variable.name} has shape {tuple(variable.shape)} in the model but "
          f"{tuple(np.shape(array))} in the source; is it the same model (model.name, "
          "data.only_digits)?")


def load_run_version(run_dir: str, version: int | None = None):
  """Returns (version, record, config, Keras model holding that version's global weights).

  Raises:
    ModelSourceError: not a run folder, no such version, or weights that do not fit the model.
    checkpointing.CorruptVersionError: the version's files fail their checksums.
  """
  paths = paths_lib.RunPaths.from_run_dir(run_dir)
  if not os.path.isfile(paths.config_json) or not os.path.isdir(paths.checkpoints):
    raise ModelSourceError(
        f"{run_dir} is not a run folder (expected config.json and checkpoints/ in it).")
  manager = checkpointing.DurableProgramStateManager(paths.checkpoints)
  if version is None:
    version = manager.latest_good_version()
  if version is None or version not in manager.versions():
    raise ModelSourceError(
        f"{run_dir} has no checkpoint version {version}; it has {manager.versions()}.")
  record = manager.load_metadata(version)
  config = atomic_files.read_json(paths.config_json)
  _check_config_matches_record(config, record, paths.config_json, version)
  model = models.create_keras_model(config["model"]["name"], _num_classes(config),
                                    config["training"]["seed"])
  variables = _ordered_variables(model)
  arrays = manager.load_leaves(version)[:len(variables)]
  source = f"{run_dir} version {version}"
  _check_shapes(variables, arrays, source)
  if weights_sha256(arrays) != record["model_weights_sha256"]:
    raise ModelSourceError(
        f"{source}: the weights read do not match the SHA-256 in its run record; was config.json "
        "replaced by another run's?")
  assign_weights(model, arrays)
  return version, record, config, model


def _check_config_matches_record(config: dict[str, Any], record: dict[str, Any], config_path: str,
                                 version: int) -> None:
  """Refuses a config.json that disagrees with the checkpoint's record on what builds the model: its
  `model.name` may name code to import (`module:function`), so it is used only where the record,
  checksummed with the state, agrees."""
  fingerprint = record.get("fingerprint", {})
  try:
    used = {"model.name": config["model"]["name"], "data.only_digits": config["data"]["only_digits"],
            "training.seed": config["training"]["seed"]}
  except (KeyError, TypeError) as error:
    raise ModelSourceError(f"{config_path} lacks {error}; it is not a run's config.") from None
  for field, value in used.items():
    if fingerprint.get(field) != value:
      raise ModelSourceError(
          f"{config_path} does not match checkpoint version {version}: {field} is {value!r} there "
          f"and {fingerprint.get(field)!r} in the version's record; it is not trusted to build the "
          "model. Restore the run's own config.json.")


def export_model(run_dir: str, out_dir: str, version: int | None = None) -> dict[str, Any]:
  """Exports a version's global model (default: the newest good one) to `out_dir`; returns metadata.

  The folder is written beside `out_dir` (first, so an unwritable place fails before any work) and
  renamed into place when complete; a failed export leaves nothing.

  Raises:
    ModelSourceError: `out_dir` exists and is not empty, or the run or version cannot be read.
    OSError: `out_dir` cannot be written.
  """
  if os.path.isdir(out_dir) and os.listdir(out_dir) or os.path.isfile(out_dir):
    raise ModelSourceError(f"{out_dir} exists and is not empty; choose a new --out folder.")
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  temporary = os.path.join(parent, f".{os.path.basename(os.path.abspath(out_dir))}.tmp-{os.getpid()}")
  shutil.rmtree(temporary, ignore_errors=True)
  os.makedirs(temporary)
  try:
    metadata = _write_export(run_dir, temporary, version)
    if os.path.isdir(out_dir):
      os.rmdir(out_dir)  # Empty, checked above.
    os.rename(temporary, out_dir)
  finally:
    shutil.rmtree(temporary, ignore_errors=True)
  return metadata


def _write_export(run_dir: str, folder: str, version: int | None) -> dict[str, Any]:
  """Writes the export of `version` of `run_dir` into `folder`; returns its metadata."""
  version, record, config, model = load_run_version(run_dir, version)
  with bookkeeping.VersionHistory(paths_lib.RunPaths.from_run_dir(run_dir).checkpoints,
                                  record) as recorded:
    last = recorded.record.last_metrics
    last_train = recorded.last_with("client_work/train/")
    last_evaluation = recorded.last_with("evaluation/")
  weights = model.get_weights()
  metadata = {
      "round": version,
      "run_dir": os.path.abspath(run_dir),
      "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "config": config,
      "fingerprint": record["fingerprint"],
      "communication": {name: last[name] for name in (
          "communication/broadcasted_bits", "communication/aggregated_bits") if name in last},
      "last_train_metrics": last_train,
      "last_evaluation_metrics": last_evaluation,
      "library_versions": {"tensorflow": tf.__version__,
                           "tensorflow_federated": tff.__version__},
      "model_weights_sha256": record["model_weights_sha256"],
      "weights": [{"key": f"w{index:03d}", "name": variable.name, "shape": list(array.shape),
                   "dtype": str(array.dtype)}
                  for index, (variable, array) in enumerate(zip(model.weights, weights))],
  }
  model.save(os.path.join(folder, MODEL_FILE))
  with open(os.path.join(folder, WEIGHTS_FILE), "wb") as weights_file:
    np.savez(weights_file, **{f"w{index:03d}": array for index, array in enumerate(weights)})
  atomic_files.write_json_atomically(os.path.join(folder, METADATA_FILE), metadata)
  return metadata


def _is_export(path: str) -> bool:
  return os.path.isfile(os.path.join(path, WEIGHTS_FILE))


def source_sha256(path: str) -> str:
  """The identity of a warm-start source, for the fingerprint: the SHA-256 of an export's
  weights.npz, or the model weights' SHA-256 of a run folder's newest good version.

  Raises:
    ModelSourceError: `path` is neither an export nor a run folder.
  """
  if _is_export(path):
    digest = hashlib.sha256()
    with open(os.path.join(path, WEIGHTS_FILE), "rb") as weights_file:
      for block in iter(lambda: weights_file.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()
  paths = paths_lib.RunPaths.from_run_dir(path)
  if not os.path.isdir(paths.checkpoints):
    raise ModelSourceError(
        f"{path} is neither an export (no {WEIGHTS_FILE}; make one with "
        "tff-resume export) nor a run folder (no checkpoints/).")
  manager = checkpointing.DurableProgramStateManager(paths.checkpoints)
  version = manager.latest_good_version()
  if version is None:
    raise ModelSourceError(f"the run {path} has no checkpoint yet.")
  return manager.load_metadata(version)["model_weights_sha256"]


def load_initial_weights(path: str, model_name: str, num_classes: int, seed: int):
  """Returns the weights of an export or a run folder as `tff.learning.models.ModelWeights`, after
  checking them against the model that `model_name` builds.

  Raises:
    ModelSourceError: the source is missing, unreadable, or does not fit the model (the message names
      the variable and both shapes).
  """
  model = models.create_keras_model(model_name, num_classes, seed)
  if _is_export(path):
    source = os.path.join(path, WEIGHTS_FILE)
    with np.load(source, allow_pickle=False) as arrays:
      keys = sorted(arrays.files)
      _check_shapes(model.weights, [arrays[key] for key in keys], source)
      model.set_weights([arrays[key] for key in keys])
  else:
    source_sha256(path)  # Explains a path that is neither kind.
    _, _, _, source_model = load_run_version(path)
    arrays = [variable.numpy() for variable in _ordered_variables(source_model)]
    _check_shapes(_ordered_variables(model), arrays, path)
    assign_weights(model, arrays)
  return tff.learning.models.ModelWeights(
      trainable=[variable.numpy() for variable in model.trainable_variables],
      non_trainable=[variable.numpy() for variable in model.non_trainable_variables])
