"""Tests for tff_resume.storage.checkpointing: atomic, checksummed versions, fallback and TFF's retention."""

import asyncio
import collections
import hashlib
import json
import os
import shutil

from absl.testing import absltest
import numpy as np
import tensorflow_federated as tff

from tff_resume.data import preprocessing
from tff_resume.data import synthetic
from tff_resume.learning import algorithms
from tff_resume.learning import models
from tff_resume.learning import sampling
from tff_resume.runtime import local_worker
from tff_resume.storage import checkpointing


def _state(value):
  return collections.OrderedDict(
      weights=[np.full((3, 2), value, np.float32), np.arange(4, dtype=np.int64) * value],
      round=int(value), loss=float(value) / 3, done=bool(value % 2), name=f"run-{value}",
      blob=b"\x01\x00\x00", scalar=np.float32(value))


def _listing(path):
  return {name: sorted(os.listdir(os.path.join(path, name))) for name in sorted(os.listdir(path))}


def _tree_bytes(path):
  return {name: open(os.path.join(path, name, file), "rb").read()
          for name in os.listdir(path) for file in os.listdir(os.path.join(path, name))}


class DurableProgramStateManagerTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = os.path.join(self.create_tempdir().full_path, "checkpoints")
    self.manager = checkpointing.DurableProgramStateManager(self.root, keep_total=0)

  def test_round_trip_keeps_every_leaf_kind_and_value(self):
    self.manager.save_version(_state(5), 5)
    restored = self.manager.load_version(5, _state(0))
    expected = _state(5)
    np.testing.assert_array_equal(restored["weights"][0], expected["weights"][0])
    np.testing.assert_array_equal(restored["weights"][1], expected["weights"][1])
    self.assertEqual(restored["weights"][1].dtype, np.int64)
    self.assertEqual([restored[k] for k in ("round", "loss", "done", "name", "blob")],
                     [5, 5 / 3, True, "run-5", b"\x01\x00\x00"])
    self.assertEqual([type(restored[k]) for k in ("round", "loss", "done", "name", "blob")],
                     [int, float, bool, str, bytes])
    self.assertEqual(restored["scalar"], np.float32(5))
    self.assertIsInstance(restored["scalar"], np.float32)

  def test_directory_listing_after_saves(self):
    for version in range(3):
      self.manager.save_version(_state(version), version)
    self.assertEqual(_listing(self.root), {f"version_{v}": ["MANIFEST.json", "state.npz"]
                                           for v in range(3)})
    self.assertEqual(asyncio.run(self.manager.get_versions()), [0, 1, 2])
    with self.assertRaises(tff.program.ProgramStateExistsError):
      self.manager.save_version(_state(9), 2)

  def test_load_latest_skips_uncommitted_version(self):
    self.manager.save_version(_state(1), 1)
    half_written = os.path.join(self.root, ".tmp-version_2-4242")
    os.makedirs(half_written)
    with open(os.path.join(half_written, "state.npz"), "wb") as partial:
      partial.write(b"PK\x03\x04 cut short")
    # A folder renamed into place without its manifest is not a version either.
    os.makedirs(os.path.join(self.root, "version_3"))
    self.assertEqual(self.manager.versions(), [1])
    state, version = asyncio.run(self.manager.load_latest(_state(0)))
    self.assertEqual((state["name"], version), ("run-1", 1))
    self.assertEqual(self.manager.remove_temporaries(), [half_written])
    self.assertEqual(sorted(os.listdir(self.root)), ["version_1", "version_3"])

  def test_corrupt_newest_version_falls_back_with_a_warning(self):
    for version in (1, 2, 3):
      self.manager.save_version(_state(version), version)
    state_path = os.path.join(self.root, "version_3", "state.npz")
    with open(state_path, "r+b") as state_file:
      state_file.seek(200)
      byte = state_file.read(1)
      state_file.seek(200)
      state_file.write(bytes([byte[0] ^ 0xFF]))
    with open(os.path.join(self.root, "version_2", "state.npz"), "r+b") as state_file:
      state_file.truncate(100)
    with self.assertLogs(level="WARNING") as logs:
      state, version = self.manager.load_latest_good(_state(0))
    self.assertEqual((state["name"], version), ("run-1", 1))
    self.assertIn("Skipping corrupt checkpoint version 3", logs.output[0])
    self.assertIn("version_3/state.npz does not match its SHA-256", logs.output[0])
    self.assertIn("Skipping corrupt checkpoint version 2", logs.output[1])
    self.assertEqual(self.manager.versions(), [1, 2, 3])

  def test_no_good_version_stops_without_touching_anything(self):
    self.manager.save_version(_state(1), 1)
    with open(os.path.join(self.root, "version_1", "MANIFEST.json"), "w") as manifest:
      manifest.write("{not json")
    before = _tree_bytes(self.root)
    with self.assertLogs(level="WARNING"):
      with self.assertRaisesRegex(checkpointing.NoGoodVersionError,
                                  r"versions \[1\] are all corrupt\); nothing was changed"):
        self.manager.load_latest_good(_state(0))
    self.assertEqual(_tree_bytes(self.root), before)

  def _manifest_names(self, manager, version, names):
    """Rewrites version `version`'s manifest to list `names`, each with the state file's checksum."""
    manifest_path = os.path.join(manager.version_path(version), "MANIFEST.json")
    with open(manifest_path) as manifest_file:
      manifest = json.load(manifest_file)
    entry = manifest["files"]["state.npz"]
    manifest["files"] = {name: entry for name in names}
    with open(manifest_path, "w") as manifest_file:
      json.dump(manifest, manifest_file)

  def test_a_version_naming_or_holding_anything_but_its_own_files_is_corrupt(self):
    """Names outside the version, links (even to identical bytes) and special files are never read:
    the newest version falls back to version 0 each time, at once (a FIFO or /dev/zero would hang)."""
    outside = self.create_tempdir().full_path
    for case in ("dot-dot name", "absolute name", "extra name", "linked state", "fifo state",
                 "device metadata", "linked manifest", "linked version"):
      with self.subTest(case):
        root = os.path.join(self.create_tempdir().full_path, "checkpoints")
        manager = checkpointing.DurableProgramStateManager(root, keep_total=0)
        manager.save_version(_state(0), 0, metadata={"ok": True})
        manager.save_version(_state(1), 1, metadata={"ok": True})
        version_1 = manager.version_path(1)
        state_path = os.path.join(version_1, "state.npz")
        if case == "dot-dot name":
          shutil.copy(state_path, os.path.join(outside, "copy.npz"))
          escape = f"../../../{os.path.basename(outside)}/copy.npz"
          self._manifest_names(manager, 1, ["state.npz", escape])
        elif case == "absolute name":
          self._manifest_names(manager, 1, ["state.npz", state_path])
        elif case == "extra name":
          self._manifest_names(manager, 1, ["state.npz", "MANIFEST.json"])
        elif case == "linked state":
          shutil.move(state_path, os.path.join(outside, "state.npz"))
          os.symlink(os.path.join(outside, "state.npz"), state_path)
        elif case == "fifo state":
          os.remove(state_path)
          os.mkfifo(state_path)
        elif case == "device metadata":
          os.remove(os.path.join(version_1, "metadata.json"))
          os.symlink("/dev/zero", os.path.join(version_1, "metadata.json"))
        elif case == "linked manifest":
          manifest_path = os.path.join(version_1, "MANIFEST.json")
          shutil.move(manifest_path, os.path.join(outside, "MANIFEST.json"))
          os.symlink(os.path.join(outside, "MANIFEST.json"), manifest_path)
        else:
          shutil.move(version_1, os.path.join(outside, "version_1"))
          os.symlink(os.path.join(outside, "version_1"), version_1)
        with self.assertLogs(level="WARNING") as logs:
          self.assertEqual(manager.latest_good_version(), 0)
        self.assertIn("Skipping corrupt checkpoint version 1", logs.output[0])
        with self.assertRaises(checkpointing.CorruptVersionError):
          manager.load_metadata(1)
        for name in os.listdir(outside):
          path = os.path.join(outside, name)
          shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)

  def test_empty_root_loads_nothing(self):
    self.assertEqual(asyncio.run(self.manager.load_latest(_state(0))), (None, 0))
    self.assertIsNone(asyncio.run(self.manager.get_versions()))


class RetentionTest(absltest.TestCase):

  def _versions_after_saving(self, count, **retention):
    root = self.create_tempdir().full_path
    manager = checkpointing.DurableProgramStateManager(root, **retention)
    for version in range(count):
      manager.save_version(_state(version), version)
    return sorted(os.listdir(root), key=lambda name: int(name.split("_")[1]))

  def test_keep_total_keeps_first_and_newest(self):
    self.assertEqual(self._versions_after_saving(7, keep_total=3, keep_first=True),
                     ["version_0", "version_5", "version_6"])

  def test_keep_total_without_first(self):
    self.assertEqual(self._versions_after_saving(7, keep_total=2, keep_first=False),
                     ["version_5", "version_6"])

  def test_keep_every_k_keeps_multiples_and_newest(self):
    self.assertEqual(self._versions_after_saving(8, keep_total=0, keep_first=False,
                                                 keep_every_k=3),
                     ["version_0", "version_3", "version_6", "version_7"])

  def test_matches_tffs_file_program_state_manager(self):
    root = self.create_tempdir().full_path
    tff_manager = tff.program.FileProgramStateManager(root, keep_total=2, keep_every_k=2)
    for version in range(6):
      asyncio.run(tff_manager.save(_state(version), version))
    tff_versions = asyncio.run(tff_manager.get_versions())
    ours = self._versions_after_saving(6, keep_total=2, keep_every_k=2)
    self.assertEqual([f"version_{v}" for v in tff_versions], ours)
    self.assertEqual(ours, ["version_0", "version_5"])


class ServesTffProgramLogicTest(absltest.TestCase):
  """The manager plugs into TFF's own `tff.simulation.run_training_process`."""

  def test_run_training_process_saves_and_resumes_from_our_manager(self):
    worker = local_worker.start_local_execution_context()
    self.addCleanup(worker.stop)
    # run_training_process calls asyncio.get_event_loop(), which asyncio.run() elsewhere unsets.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    self.addCleanup(loop.close)
    spec = preprocessing.PreprocessSpec(batch_size=10, flatten=True)
    train, _ = synthetic.load_synthetic(synthetic.SyntheticSpec(num_clients=6))
    process = algorithms.build_algorithm(
        models.build_model_fn("linear", 10, 0, preprocessing.element_spec(spec)),
        client_learning_rate=0.1, server=algorithms.ServerOptimizerSpec(learning_rate=1.0))

    def select(round_num):
      return [preprocessing.preprocess_for_training(train.create_tf_dataset_for_client(c), spec,
                                                    seed=0, round_num=round_num, client_id=c)
              for c in sampling.sample_clients(train.client_ids, 3, 0, round_num)]

    def weights_sha256(state):
      return hashlib.sha256(b"".join(np.asarray(a).tobytes()
                                     for a in state.global_model_weights.trainable)).hexdigest()

    straight = tff.simulation.run_training_process(process, select, total_rounds=3)
    root = os.path.join(self.create_tempdir().full_path, "checkpoints")
    tff.simulation.run_training_process(
        process, select, total_rounds=2,
        program_state_manager=checkpointing.DurableProgramStateManager(root))
    self.assertEqual(sorted(os.listdir(root)), ["version_0", "version_1", "version_2"])
    resumed = tff.simulation.run_training_process(
        process, select, total_rounds=3,
        program_state_manager=checkpointing.DurableProgramStateManager(root))
    self.assertEqual(sorted(os.listdir(root)),
                     ["version_0", "version_1", "version_2", "version_3"])
    self.assertEqual(weights_sha256(resumed), weights_sha256(straight))


if __name__ == "__main__":
  absltest.main()
