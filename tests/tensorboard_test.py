"""TensorBoard as a user opens it: the real `tensorboard` binary over a study root, read over HTTP.

The root holds two runner runs, `mean` (uncompressed, straight) and `compressed` (the compression
aggregator, SIGKILLed while saving version 3 after evaluating round 3, then resumed with evaluation
only at the end), plus event files written by `TensorBoardRoundWriter` directly (a restart that drops
sparse tags, and a damaged file). Both of TensorBoard's loaders are started over it: the default (Rust
data server) and the Python one (`--load_fast=false`).
"""

import concurrent.futures
import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from absl.testing import absltest
import numpy as np

from experiments import tensorboard_server
from tff_resume.releases import metrics_release
from tff_resume.releases import units

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ROUNDS = 4
_SMALL = [
    "--config=configs/demo.py:smoke", "--config.model.name=linear",
    f"--config.training.total_rounds={_ROUNDS}", "--config.training.clients_per_round=3",
    "--config.checkpoint.keep_total=0",
]
_LOADERS = {"default": (), "python": ("--load_fast=false",)}


def _run(root, name, *extra, env=None):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.run_emnist", f"--root_output_dir={root}",
       f"--experiment_name={name}", *_SMALL, *extra],
      cwd=_REPO_ROOT, env=dict(os.environ, PYTHONPATH=_REPO_ROOT, **(env or {})),
      capture_output=True, text=True, timeout=300, check=False)
  return result.returncode, result.stderr


def _csv_rows(root, name):
  with open(os.path.join(root, name, "results", "metrics.csv"), newline="") as csv_file:
    return list(csv.DictReader(csv_file))


def _as_float32(text: str) -> float:
  return float(np.float32(float(text)))


def _write_synthetic_runs(root):
  """Event files written by the writer itself: a restart at round 3 whose first start had a sparse
  tag at round 3, and a run whose file was damaged after round 2 and then restarted at round 3."""
  restart = os.path.join(root, "writer_restart")
  first = metrics_release.TensorBoardRoundWriter(restart)
  first.start(1)
  for round_num in (1, 2, 3, 4):
    first.write_round(round_num, {"loss": round_num * 1.5, "name": "not a number"})
  first.write_round(3, {"time/checkpoint_seconds": 0.25})
  first.close()
  metrics_release.prepare_logdir(restart, 3)
  second = metrics_release.TensorBoardRoundWriter(restart)
  second.start(3)
  for round_num in (3, 4, 5):
    second.write_round(round_num, {"loss": round_num * 0.5, "communication/aggregated_bits": 2 ** 40})
  second.close()

  damaged = os.path.join(root, "writer_damaged")
  first = metrics_release.TensorBoardRoundWriter(damaged)
  first.start(1)
  for round_num in (1, 2):
    first.write_round(round_num, {"loss": float(round_num)})
  first.close()
  with open(metrics_release.event_files(damaged)[0], "ab") as event_file:
    event_file.write(b"\x07" * 23)  # A torn record: a length and half a checksum.
  assert not metrics_release.prepare_logdir(damaged, 3)
  second = metrics_release.TensorBoardRoundWriter(damaged)
  second.start(1)
  for round_num in (1, 2):  # Rewritten from the checkpoint, as the runner does.
    second.write_round(round_num, {"loss": round_num + 0.5})
  second.write_round(3, {"loss": 3.0})
  second.close()


class TensorBoardServedTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # Two runners at once, on two cores.
      mean = pool.submit(_run, cls.root, "mean")
      status, stderr = _run(cls.root, "compressed", "--config.aggregator.name=compression",
                            "--config.evaluation.rounds_per_eval=3",
                            env={"TFF_RESUME_FAULT": "kill-during-save:3"})
      assert status == -signal.SIGKILL, stderr
      status, stderr = mean.result()
      assert status == 0, stderr
    # Events of the killed start are moved where runs before this layout kept them (logdir/): the
    # resume must adopt them as well.
    legacy = os.path.join(cls.root, "compressed", metrics_release.LEGACY_LOGDIR)
    os.makedirs(legacy)
    for path in metrics_release.event_files(os.path.join(cls.root, "compressed")):
      shutil.move(path, legacy)
    status, stderr = _run(cls.root, "compressed", "--config.aggregator.name=compression")
    assert status == 0, stderr
    _write_synthetic_runs(cls.root)
    cls.servers = {name: tensorboard_server.TensorBoardServer(cls.root, *flags)
                   for name, flags in _LOADERS.items()}
    cls.csv = {name: _csv_rows(cls.root, name) for name in ("mean", "compressed")}

  @classmethod
  def tearDownClass(cls):
    groups = [server.process.pid for server in cls.servers.values()]
    for server in cls.servers.values():
      server.stop()
    for group in groups:
      assert not tensorboard_server.processes_in_group(group), f"tensorboard group {group} left"
    shutil.rmtree(cls.root)
    super().tearDownClass()

  def _points(self, server, run, tag):
    return server.get("data/plugin/scalars/scalars", run=run, tag=tag)

  def _wait_for_all_tags(self, server):
    def loaded(s):
      tags = s.get("data/plugin/scalars/tags")
      return tags if all(len(tags.get(run, {})) >= 3 for run in self.csv) else None
    return server.wait_for(loaded, "the runs' scalars")

  def test_runs_are_named_by_experiment_with_one_folder_each(self):
    for loader, server in self.servers.items():
      self._wait_for_all_tags(server)
      self.assertEqual(sorted(server.get("data/runs")),
                       ["compressed", "mean", "writer_damaged", "writer_restart"], loader)
    listing = sorted(name for name in os.listdir(os.path.join(self.root, "compressed"))
                     if metrics_release.EVENT_FILE_MARKER not in name)
    self.assertEqual(listing, ["checkpoints", "config.json", "progress.json", "results", "run.lock"])
    self.assertLen(metrics_release.event_files(os.path.join(self.root, "compressed")), 2)

  def test_every_metric_one_point_per_round_equal_to_the_csv(self):
    for loader, server in self.servers.items():
      tags = self._wait_for_all_tags(server)
      for run, rows in self.csv.items():
        columns = [column for column in rows[0] if column != "round"]
        bit_columns = [c for c in columns if c.startswith("communication/")]
        expected_tags = set(columns) | {c.replace("_bits", "_mibit") for c in bit_columns} | {
            "time/checkpoint_seconds"}
        self.assertEqual(set(tags[run]), expected_tags, (loader, run))
        for column in columns:
          expected = [(int(row["round"]), _as_float32(row[column])) for row in rows
                      if row[column] != ""]
          points = [(step, value) for _, step, value in self._points(server, run, column)]
          self.assertEqual(points, expected, (loader, run, column))
        for column in bit_columns:
          mibit = [(int(row["round"]), float(np.float32(int(row[column]) / units.MEBIBIT)))
                   for row in rows]
          points = [(step, value) for _, step, value in
                    self._points(server, run, column.replace("_bits", "_mibit"))]
          self.assertEqual(points, mibit, (loader, run, column))
        self.assertEqual(
            [step for _, step, _ in self._points(server, run, "time/checkpoint_seconds")],
            list(range(1, _ROUNDS + 1)), (loader, run))

  def test_resumed_run_shows_no_point_of_the_killed_start(self):
    compressed = self.csv["compressed"]
    # The killed start evaluated round 3; the resumed one evaluates only after round 4.
    self.assertEqual([row["round"] for row in compressed if row["evaluation/loss"]], ["4"])
    self.assertEqual([row["round"] for row in compressed], ["1", "2", "3", "4"])
    for loader, server in self.servers.items():
      self._wait_for_all_tags(server)
      for tag in ("evaluation/sparse_categorical_accuracy", "evaluation/loss",
                  "time/evaluation_seconds"):
        self.assertEqual([step for _, step, _ in self._points(server, "compressed", tag)], [4],
                         (loader, tag))

  def test_writer_restart_and_damaged_file(self):
    for loader, server in self.servers.items():
      server.wait_for(lambda s: len(s.get("data/plugin/scalars/tags").get("writer_damaged", {})),
                      "writer_damaged")
      restart = {tag: [(step, value) for _, step, value in self._points(server, "writer_restart",
                                                                       tag)]
                 for tag in server.get("data/plugin/scalars/tags")["writer_restart"]}
      self.assertEqual(restart, {
          "loss": [(1, 1.5), (2, 3.0), (3, 1.5), (4, 2.0), (5, 2.5)],
          "communication/aggregated_bits": [(3, 2.0 ** 40), (4, 2.0 ** 40), (5, 2.0 ** 40)],
          "communication/aggregated_mibit": [(3, 2.0 ** 20), (4, 2.0 ** 20), (5, 2.0 ** 20)],
      }, loader)
      self.assertEqual([(step, value) for _, step, value in
                        self._points(server, "writer_damaged", "loss")],
                       [(1, 1.5), (2, 2.5), (3, 3.0)], loader)

  def test_hparams_table_lists_each_run_with_its_final_metrics(self):
    groups_request = {
        "experimentName": "", "startIndex": 0, "sliceSize": 100, "colParams": [],
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                            "STATUS_RUNNING"]}
    for loader, server in self.servers.items():
      self._wait_for_all_tags(server)
      experiment = server.post("data/plugin/hparams/experiment", {"experimentName": ""})
      self.assertEqual([info["name"]["tag"] for info in experiment["metricInfos"]],
                       list(metrics_release.HPARAMS_METRICS), loader)
      self.assertIn("aggregator.name", [info["name"] for info in experiment["hparamInfos"]])
      groups = server.wait_for(
          lambda s: s.post("data/plugin/hparams/session_groups", groups_request)["sessionGroups"],
          "HParams sessions")
      sessions = {group["sessions"][0]["name"]: group for group in groups}
      self.assertEqual(sorted(sessions), ["compressed", "mean"], loader)
      for run, aggregator in (("mean", "mean"), ("compressed", "compression")):
        self.assertEqual(sessions[run]["hparams"]["aggregator.name"], aggregator)
        self.assertEqual(sessions[run]["hparams"]["training.clients_per_round"], 3)
        final = {value["name"]["tag"]: (value["trainingStep"], value["value"])
                 for value in sessions[run]["metricValues"]}
        last = self.csv[run][-1]
        self.assertEqual(final["evaluation/sparse_categorical_accuracy"],
                         (_ROUNDS, _as_float32(last["evaluation/sparse_categorical_accuracy"])))
        self.assertEqual(final["communication/aggregated_mibit"],
                         (_ROUNDS, float(np.float32(int(last["communication/aggregated_bits"])
                                                    / units.MEBIBIT))), (loader, run))


if __name__ == "__main__":
  absltest.main()
