"""A durable `tff.program.ProgramStateManager`: atomic, checksummed versions with TFF's retention.

On disk, under `root_dir`:

    version_<N>/state.npz        every leaf of the state structure, in flattening order (uncompressed)
    version_<N>/metadata.json    optional JSON saved with the state (tff_resume keeps its run record here)
    version_<N>/MANIFEST.json    {"version": N, "leaf_kinds": [...], "files": {name: {"sha256", "bytes"}}}

Version N is the state after N rounds; version 0 the initial state. A version is written into
`.tmp-version_<N>-<pid>/`, each file flushed to disk, the manifest (with a SHA-256 of every file) written
last, and the folder renamed to `version_<N>`: a version is listed only when complete. Temporary
folders left by a killed process are removed by `remove_temporaries()`, called at start. `load` verifies every checksum;
`load_latest` falls back, with a warning naming it, from a corrupt newest version to the newest good
one, and raises `NoGoodVersionError` without touching anything when none is good. A run resuming
past corrupt versions sets them aside (`corrupt_version_<N>-<time>/`) so it can write them again.

Leaves may be numpy arrays and scalars, Python numbers, strings and bytes, None, and
`serializable.Serializable` objects (a `FederatedDataSourceIterator`, as `tff.learning.programs.
train_model` saves one with its state): stored as their `to_bytes()` and restored with the
`from_bytes` of the structure's leaf at that place.

Retention follows `tff.program.FileProgramStateManager`: `keep_total` (0 keeps all), `keep_first`,
`keep_every_k`; the newest version is never removed.
"""

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import time
from typing import Any

from absl import logging
import numpy as np
import tensorflow_federated as tff
# TFF's interface for `to_bytes`/`from_bytes` objects (a `FederatedDataSourceIterator` is one); 0.87
# exports it under no public name.
from tensorflow_federated.python.common_libs import serializable
import tree

from tff_resume.runtime import fault_hooks

_STATE_FILE = "state.npz"
_METADATA_FILE = "metadata.json"
_MANIFEST_FILE = "MANIFEST.json"
_VERSION_PATTERN = re.compile(r"^version_(\d+)$")
_TEMPORARY_PREFIX = ".tmp-version_"
_VERSION_FILES = frozenset({_STATE_FILE, _METADATA_FILE})  # What a manifest may name.
_PYTHON_KINDS = {bool: "bool", int: "int", float: "float", str: "str", bytes: "bytes"}


class CorruptVersionError(Exception):
  """A saved version is unreadable or does not match its checksums."""


class NoGoodVersionError(Exception):
  """Versions exist but none of them is readable and intact."""


# A version that is not on disk (never written, or removed by retention while it was being read).
VersionNotFoundError = tff.program.ProgramStateNotFoundError


class CheckpointWriteError(OSError):
  """A version could not be written (disk full, I/O error, read-only folder); nothing of it is left."""


def _open_own_file(path: str, mode: str = "rb"):
  """Opens a version's file for reading: a regular file, not a symbolic link (which could lead out
  of the run folder), a FIFO or a device (which could block or never end).

  Raises:
    CorruptVersionError: it is a link or not a regular file; nothing was read.
    OSError: it cannot be opened.
  """
  try:
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
  except OSError as error:
    if error.errno == errno.ELOOP:
      raise CorruptVersionError(f"{path} is a symbolic link; a version's files must be its own."
                                ) from None
    raise
  if not stat.S_ISREG(os.fstat(descriptor).st_mode):
    os.close(descriptor)
    raise CorruptVersionError(f"{path} is not a regular file.")
  return os.fdopen(descriptor, mode)


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with _open_own_file(path) as data:
    for block in iter(lambda: data.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _fsync_directory(path: str) -> None:
  directory = os.open(path, os.O_RDONLY)
  try:
    os.fsync(directory)
  finally:
    os.close(directory)


def _leaf_kind(leaf: Any) -> str:
  """How a leaf is restored: as a Python value, a numpy scalar, None, a `serializable.Serializable`
  or an array."""
  if isinstance(leaf, np.generic):
    return "numpy_scalar"
  if leaf is None:
    return "none"
  if isinstance(leaf, serializable.Serializable):
    return "serializable"
  return _PYTHON_KINDS.get(type(leaf), "array")


def _leaf_to_array(leaf: Any) -> np.ndarray:
  # Bytes as uint8: numpy's bytes dtype would drop trailing zero bytes.
  if isinstance(leaf, serializable.Serializable):
    leaf = leaf.to_bytes()
  if leaf is None:
    return np.zeros((0,), np.uint8)
  return np.frombuffer(leaf, np.uint8) if isinstance(leaf, bytes) else np.asarray(leaf)


def _array_to_leaf(kind: str, array: np.ndarray, like: Any = None) -> Any:
  """The leaf `array` holds; `like` is the structure's leaf at its place (a Serializable's class)."""
  if kind == "array":
    return array
  if kind == "numpy_scalar":
    return array[()]
  if kind == "bytes":
    return array.tobytes()
  if kind == "none":
    return None
  if kind == "serializable":
    if like is None:  # No structure given: the bytes as saved.
      return array.tobytes()
    if not isinstance(like, serializable.Serializable):
      raise TypeError(f"a saved Serializable where the structure holds {type(like).__name__}")
    return type(like).from_bytes(array.tobytes())
  return array.item()


class DurableProgramStateManager(tff.program.ProgramStateManager):
  """Saves and loads program state as atomic, checksummed versions (see the module docstring)."""

  def __init__(self, root_dir: str, keep_total: int = 5, keep_first: bool = True,
               keep_every_k: int = 1):
    if keep_every_k < 1:
      raise ValueError(f"keep_every_k must be at least 1, got {keep_every_k}.")
    self._root_dir = root_dir
    self._keep_total = keep_total
    self._keep_first = keep_first
    self._keep_every_k = keep_every_k
    # Manifests already verified by this manager: a resume reads the same version up to three times.
    self._verified_manifests: dict[int, dict[str, Any]] = {}

  @property
  def root_dir(self) -> str:
    return self._root_dir

  def version_path(self, version: int) -> str:
    """The folder of version `version` (whether or not it exists)."""
    return os.path.join(self._root_dir, f"version_{version}")

  def remove_temporaries(self) -> list[str]:
    """Removes unfinished versions (left by a killed process, or this one's own when a second
    signal stops it in a save); returns their paths. Call at start."""
    if not os.path.isdir(self._root_dir):
      return []
    stale = sorted(os.path.join(self._root_dir, name) for name in os.listdir(self._root_dir)
                   if name.startswith(_TEMPORARY_PREFIX))
    for path in stale:
      if not path.endswith(f"-{os.getpid()}"):
        logging.warning("Removing an unfinished checkpoint left by an interrupted run: %s", path)
      shutil.rmtree(path)
    return stale

  def set_aside(self, version: int) -> str:
    """Renames a (corrupt) version to `corrupt_version_<N>-<time>`, kept for inspection but no longer
    listed, so the run can write that version again. Returns the new path."""
    new_path = os.path.join(self._root_dir, f"corrupt_version_{version}-{int(time.time())}")
    os.rename(self.version_path(version), new_path)
    self._verified_manifests.pop(version, None)
    logging.warning("Set aside corrupt checkpoint version %d as %s", version, new_path)
    return new_path

  def _version_folders(self, complete: bool) -> list[int]:
    """The N of the `version_<N>` folders with (`complete`) or without a manifest, oldest first."""
    if not os.path.isdir(self._root_dir):
      return []
    found = []
    for name in os.listdir(self._root_dir):
      match = _VERSION_PATTERN.match(name)
      if match and os.path.isfile(os.path.join(self._root_dir, name, _MANIFEST_FILE)) == complete:
        found.append(int(match.group(1)))
    return sorted(found)

  def versions(self) -> list[int]:
    """Returns the complete versions on disk, oldest first."""
    return self._version_folders(complete=True)

  def unfinished_versions(self) -> list[int]:
    """Returns the `version_<N>` folders without a manifest (emptied or damaged by hand: a version
    this manager writes is renamed into place only when complete), oldest first. They are not
    versions, but would block writing version N again; a resuming run sets them aside."""
    return self._version_folders(complete=False)

  async def get_versions(self) -> list[int] | None:
    """`tff.program.ProgramStateManager`'s: the saved versions, oldest first; None when none is."""
    return self.versions() or None

  def verified_manifest(self, version: int) -> dict[str, Any]:
    """Returns the manifest of `version` after checking the SHA-256 of each of its files.

    Raises:
      tff.program.ProgramStateNotFoundError: no such version.
      CorruptVersionError: it is unreadable or a checksum does not match.
    """
    path = self.version_path(version)
    manifest_path = os.path.join(path, _MANIFEST_FILE)
    if not os.path.isfile(manifest_path):
      raise tff.program.ProgramStateNotFoundError(version)
    if version in self._verified_manifests:
      return self._verified_manifests[version]
    if os.path.islink(path):
      raise CorruptVersionError(f"{path} is a symbolic link; a version's files must be its own.")
    try:
      with _open_own_file(manifest_path, "r") as manifest_file:
        manifest = json.load(manifest_file)
      names = set(manifest["files"])
      if _STATE_FILE not in names or not names <= _VERSION_FILES:
        raise CorruptVersionError(
            f"{manifest_path} names {sorted(names)}; a version holds {_STATE_FILE} and optionally "
            f"{_METADATA_FILE}, nothing else.")
      for name, expected in manifest["files"].items():
        if _sha256(os.path.join(path, name)) != expected["sha256"]:
          raise CorruptVersionError(f"{os.path.join(path, name)} does not match its SHA-256.")
    except (OSError, ValueError, KeyError, TypeError) as error:
      raise CorruptVersionError(f"{path} is unreadable: {error}") from None
    self._verified_manifests[version] = manifest
    return manifest

  def load_metadata(self, version: int) -> dict[str, Any] | None:
    """Returns the metadata saved with `version` (None if none was), after verifying the version."""
    manifest = self.verified_manifest(version)
    if _METADATA_FILE not in manifest["files"]:
      return None
    with _open_own_file(os.path.join(self.version_path(version), _METADATA_FILE),
                        "r") as metadata_file:
      return json.load(metadata_file)

  def latest_good_version(self) -> int | None:
    """Returns the newest intact version, warning about each corrupt newer one; None when none exist.

    Raises:
      NoGoodVersionError: versions exist but every one is corrupt; nothing was changed.
    """
    versions = self.versions()
    for version in reversed(versions):
      try:
        self.verified_manifest(version)
        return version
      except CorruptVersionError as error:
        logging.warning("Skipping corrupt checkpoint version %d: %s", version, error)
    if versions:
      raise NoGoodVersionError(
          f"No intact checkpoint in {self._root_dir} (versions {versions} are all corrupt); "
          "nothing was changed. Move the folder away to start a fresh run.")
    return None

  def load_leaves(self, version: int, structure: Any = None) -> list[Any]:
    """Returns the leaves of version `version` in `tree.flatten` order, after verifying checksums;
    a `Serializable` leaf restored by the class of `structure`'s leaf there (its bytes without one).

    A `tff.learning` algorithm state starts with its global model weights: trainable, then
    non-trainable.

    Raises:
      tff.program.ProgramStateNotFoundError: no such version.
      CorruptVersionError: it is unreadable or a checksum does not match.
    """
    stored = self._stored_leaves(version)
    likes = [None] * len(stored) if structure is None else tree.flatten(structure)
    if len(likes) != len(stored):
      raise CorruptVersionError(f"{self.version_path(version)} does not have the expected "
                                f"structure: {len(stored)} leaves, {len(likes)} expected")
    try:
      return [_array_to_leaf(kind, array, like) for (kind, array), like in zip(stored, likes)]
    except (TypeError, ValueError) as error:
      raise CorruptVersionError(f"{self.version_path(version)} does not have the expected "
                                f"structure: {error}") from None

  def _stored_leaves(self, version: int) -> list[tuple[str, np.ndarray]]:
    """(kind, array) of every leaf of `version`, after verifying checksums."""
    manifest = self.verified_manifest(version)
    path = self.version_path(version)
    try:
      with _open_own_file(os.path.join(path, _STATE_FILE)) as state_file, \
          np.load(state_file, allow_pickle=False) as arrays:
        leaves = [arrays[f"leaf_{index}"] for index in range(len(manifest["leaf_kinds"]))]
    except (OSError, ValueError, KeyError) as error:
      raise CorruptVersionError(f"{path} is unreadable: {error}") from None
    return list(zip(manifest["leaf_kinds"], leaves))

  def load_version(self, version: int, structure: Any) -> Any:
    """Returns version `version` shaped like `structure`, after verifying its checksums.

    Raises:
      tff.program.ProgramStateNotFoundError: no such version.
      CorruptVersionError: it is unreadable or a checksum does not match.
    """
    leaves = self.load_leaves(version, structure)
    path = self.version_path(version)
    try:
      return tree.unflatten_as(structure, leaves)
    except (ValueError, TypeError) as error:
      raise CorruptVersionError(f"{path} does not have the expected structure: {error}") from None

  async def load(self, version: int, structure: Any) -> Any:
    """`tff.program.ProgramStateManager`'s: `load_version(version, structure)`."""
    return self.load_version(version, structure)

  def load_latest_good(self, structure: Any) -> tuple[Any, int]:
    """Returns (state, version) of the newest intact version, or (None, 0) when there is none.

    Raises:
      NoGoodVersionError: versions exist but every one is corrupt; nothing was changed.
    """
    version = self.latest_good_version()
    if version is None:
      return None, 0
    return self.load_version(version, structure), version

  async def load_latest(self, structure: Any) -> tuple[Any, int]:
    """TFF's interface (a program resumes from what it returns): the newest intact version; the
    corrupt versions newer than it are set aside, so the program can save them again."""
    state, version = self.load_latest_good(structure)
    for newer in self.versions():
      if newer > version:
        self.set_aside(newer)
    return state, version

  def save_version(self, program_state: Any, version: int,
                   metadata: dict[str, Any] | None = None) -> None:
    """Writes `program_state` (and `metadata`) as version `version` atomically, then applies retention.

    Raises:
      tff.program.ProgramStateExistsError: the version exists already.
      CheckpointWriteError: writing failed (e.g. the disk is full); the unfinished version was
        removed and every older version is intact.
    """
    final_path = self.version_path(version)
    if os.path.exists(final_path):
      raise tff.program.ProgramStateExistsError(version=version, path=self._root_dir)
    temporary_path = os.path.join(self._root_dir, f"{_TEMPORARY_PREFIX}{version}-{os.getpid()}")
    try:
      os.makedirs(self._root_dir, exist_ok=True)
      os.makedirs(temporary_path)
      self._write_files(temporary_path, program_state, version, metadata)
      _fsync_directory(temporary_path)
      os.rename(temporary_path, final_path)
      _fsync_directory(self._root_dir)
    except BaseException as error:
      shutil.rmtree(temporary_path, ignore_errors=True)
      if isinstance(error, OSError):
        raise CheckpointWriteError(
            error.errno, f"cannot save checkpoint version {version} in {self._root_dir}: "
            f"{error.strerror or error}") from None
      raise
    self._apply_retention()

  def _write_files(self, folder: str, program_state: Any, version: int,
                   metadata: dict[str, Any] | None) -> None:
    """Writes the state, metadata and (last) the manifest of `version` into `folder`."""
    leaves = tree.flatten(program_state)
    with open(os.path.join(folder, _STATE_FILE), "wb") as state_file:
      np.savez(state_file,
               **{f"leaf_{index}": _leaf_to_array(leaf) for index, leaf in enumerate(leaves)})
      state_file.flush()
      os.fsync(state_file.fileno())
    if metadata is not None:
      with open(os.path.join(folder, _METADATA_FILE), "w") as metadata_file:
        json.dump(metadata, metadata_file)
        metadata_file.flush()
        os.fsync(metadata_file.fileno())
    fault_hooks.during_save(version)  # Test hooks (TFF_RESUME_FAULT); nothing when unset.
    manifest = {
        "version": version,
        "leaf_kinds": [_leaf_kind(leaf) for leaf in leaves],
        "files": {name: {"sha256": _sha256(os.path.join(folder, name)),
                         "bytes": os.path.getsize(os.path.join(folder, name))}
                  for name in sorted(os.listdir(folder))},
    }
    with open(os.path.join(folder, _MANIFEST_FILE), "w") as manifest_file:
      json.dump(manifest, manifest_file, indent=1)
      manifest_file.flush()
      os.fsync(manifest_file.fileno())

  async def save(self, program_state: Any, version: int) -> None:
    """`tff.program.ProgramStateManager`'s: `save_version(program_state, version)`."""
    self.save_version(program_state, version)

  def _apply_retention(self) -> None:
    versions = self.versions()
    keep = [version for index, version in enumerate(versions)
            if version % self._keep_every_k == 0 or index == len(versions) - 1
            or (self._keep_first and index == 0)]
    if self._keep_total > 0 and len(keep) > self._keep_total:
      start = 1 if self._keep_first else 0
      del keep[start:len(keep) - (self._keep_total - start)]
    for version in versions:
      if version not in keep:
        shutil.rmtree(self.version_path(version))
        self._verified_manifests.pop(version, None)
