"""Faults at any instant: two runners on one folder, signals in start-up and during a save, a full
disk, damaged side files, bad experiment names, and the chaos test with a fault at each start-up phase
and save. Real runner subprocesses throughout."""

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile

from absl.testing import absltest

from experiments import chaos
from experiments import tensorboard_server
from tff_resume.releases import metrics_release
from tff_resume.runtime import fault_hooks
from tff_resume.storage import paths
from tff_resume.storage import run_lock

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ROUNDS = 20
_ENV = dict(os.environ, PYTHONPATH=_REPO_ROOT)
_ROOT = None  # Holds `straight`, the chaos soak's uninterrupted run, shared by every test here.


def setUpModule():
  global _ROOT
  _ROOT = tempfile.mkdtemp()
  status, _, stderr = _run(_command(_ROOT, "straight"))
  assert status == 0, stderr


def tearDownModule():
  shutil.rmtree(_ROOT, ignore_errors=True)


def _command(root, name, rounds=_ROUNDS, *extra):
  return chaos.runner_command(root, name, rounds) + list(extra)


def _run(command, env=None):
  result = subprocess.run(command, cwd=_REPO_ROOT, env=env or _ENV, capture_output=True, text=True,
                          timeout=300, check=False)
  return result.returncode, result.stdout, result.stderr


def _without_evaluation(rows):
  return [{k: v for k, v in row.items() if not k.startswith("evaluation/")} for row in rows]


def _snapshot(path):
  files = {}
  for folder, _, names in os.walk(path):
    for file_name in names:
      with open(os.path.join(folder, file_name), "rb") as data:
        files[os.path.relpath(os.path.join(folder, file_name), path)] = data.read()
  return files


class RunLockTest(absltest.TestCase):

  def test_second_holder_is_refused_with_the_holders_pid_until_it_is_killed(self):
    run_dir = os.path.join(self.create_tempdir().full_path, "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tff_resume.storage import run_lock; "
         f"run_lock.RunLock({run_dir!r}).acquire(); print('locked', flush=True); time.sleep(60)"],
        cwd=_REPO_ROOT, env=_ENV, stdout=subprocess.PIPE, text=True)
    try:
      self.assertEqual(holder.stdout.readline(), "locked\n")
      with self.assertRaisesRegex(run_lock.RunLockedError,
                                  f"in use by another process \\(PID {holder.pid} on "):
        run_lock.RunLock(run_dir).acquire()
    finally:
      holder.kill()
      holder.wait()
    with run_lock.RunLock(run_dir) as lock:  # The kernel released the SIGKILLed holder's lock.
      self.assertIn(f"PID {os.getpid()} on ", lock.holder())
    self.assertEqual(os.listdir(run_dir), [run_lock.LOCK_FILE])


class ExperimentNameTest(absltest.TestCase):

  def test_only_one_plain_folder_name_is_accepted(self):
    paths.check_experiment_name("demo_compressed-2")
    for name in ("", ".", "..", "../escape", "/tmp/abs", "a/b", "x\0y"):
      with self.assertRaises(paths.InvalidExperimentNameError, msg=name):
        paths.check_experiment_name(name)

  def test_runner_refuses_a_name_outside_the_root_and_writes_nothing(self):
    parent = self.create_tempdir().full_path
    root = os.path.join(parent, "root")
    status, stdout, stderr = _run(_command(root, "../escape"))
    self.assertEqual((status, stdout), (2, ""))
    self.assertEqual(stderr.strip().splitlines(), [
        "run_emnist: error: --experiment_name must be one folder name under --root_output_dir "
        "(no '/', not '.' or '..', not empty), got '../escape'; e.g. "
        "--experiment_name=demo_compressed."])
    self.assertEqual(os.listdir(parent), [])


class RunnerFaultsTest(absltest.TestCase):
  """Faults on copies of the straight run of `_ROUNDS` rounds (5 versions kept)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = _ROOT
    cls.straight = chaos.run_outcome(os.path.join(cls.root, "straight"))

  def _copy_without_newest_version(self, name):
    """A copy of the straight run that must redo its last round."""
    run_dir = os.path.join(self.root, name)
    shutil.copytree(os.path.join(self.root, "straight"), run_dir)
    shutil.rmtree(os.path.join(run_dir, "checkpoints", f"version_{_ROUNDS}"))
    return run_dir

  def test_second_start_while_the_folder_is_locked_is_refused_and_changes_nothing(self):
    run_dir = self._copy_without_newest_version("locked")
    with run_lock.RunLock(run_dir):
      before = _snapshot(run_dir)
      status, stdout, stderr = _run(_command(self.root, "locked"))
    self.assertEqual((status, stdout), (75, ""))
    self.assertEqual(len(stderr.strip().splitlines()), 1, stderr)
    self.assertRegex(stderr, f"^run_emnist: {run_dir} is in use by another process "
                             f"\\(PID {os.getpid()} on .+, started .+\\); nothing was changed.")
    self.assertEqual(_snapshot(run_dir), before)

  def test_sigterm_during_start_up_exits_75_and_writes_nothing(self):
    runner = subprocess.Popen(_command(self.root, "early"), cwd=_REPO_ROOT, env=_ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
      stdout, stderr = runner.communicate(timeout=1.0)
    except subprocess.TimeoutExpired:
      runner.send_signal(signal.SIGTERM)  # TensorFlow is still being imported.
      stdout, stderr = runner.communicate(timeout=120)
    self.assertEqual((runner.returncode, stdout), (75, ""), stderr)
    self.assertEqual(stderr.strip().splitlines()[-1],
                     "Stopped by SIGTERM during start-up, before training; nothing was lost. Run "
                     "the same command again to resume. Exit status 75.")
    self.assertNotIn("Traceback", stderr)
    self.assertFalse(os.path.exists(os.path.join(self.root, "early")))

  def test_a_second_sigint_during_a_save_stops_at_once_leaving_only_good_versions(self):
    # The save of version 2 pauses (fault hook) so that both signals land inside it.
    runner = subprocess.Popen(_command(self.root, "twice"), cwd=_REPO_ROOT,
                              env=dict(_ENV, TFF_RESUME_FAULT="phases,pause-during-save:2"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_lines = []
    for line in runner.stderr:  # Signals sent together reach Python's handler once: wait for it.
      first_lines.append(line)
      if line.strip() == fault_hooks.marker("saving version 2"):
        runner.send_signal(signal.SIGINT)
      if "SIGINT received: stopping at the next safe point" in line:
        runner.send_signal(signal.SIGINT)
        break
    stdout, stderr = runner.communicate(timeout=120)
    stderr = "".join(first_lines) + stderr
    self.assertEqual(runner.returncode, 75, stderr)
    self.assertEqual(stderr.strip().splitlines()[-1],
                     "SIGINT received again: stopping now (the last saved version is intact). "
                     "Exit status 75.")
    self.assertNotIn("Traceback", stderr)
    self.assertNotIn("Done:", stdout)
    checkpoints = os.path.join(self.root, "twice", "checkpoints")
    # Version 2's unfinished folder was removed; the versions left are whole.
    self.assertEqual(sorted(os.listdir(checkpoints)), ["history.sqlite", "version_0", "version_1"])
    status, stdout, stderr = _run(_command(self.root, "twice"))
    self.assertEqual(status, 0, stderr)
    self.assertNotIn("corrupt", stderr)
    self.assertIn(f"Resuming {os.path.join(self.root, 'twice')} from version 1 ", stdout)
    self.assertEqual(chaos.run_outcome(os.path.join(self.root, "twice")), self.straight)

  def _full_disk(self):
    """A 16 MiB tmpfs of its own (as root), or None where mounting is not allowed."""
    mount_point = tempfile.mkdtemp()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", mount_point],
                             capture_output=True, check=False).returncode == 0
    if not mounted:
      os.rmdir(mount_point)
      return None
    self.addCleanup(os.rmdir, mount_point)
    self.addCleanup(subprocess.run, ["umount", mount_point], check=True)
    return mount_point

  def test_disk_full_keeps_the_last_version_and_resumes_identically_rebuilding_lost_rows(self):
    mount_point = self._full_disk()
    root = mount_point or os.path.join(self.root, "disk")
    keep_all = "--config.checkpoint.keep_total=0"
    status, _, stderr = _run(_command(root, "full", 2, keep_all))
    self.assertEqual(status, 0, stderr)
    if mount_point:
      # Fill the file system up to a few pages: start-up fits, a later round's writes do not.
      filler = os.path.join(mount_point, "filler")
      free = os.statvfs(mount_point)
      with open(filler, "wb") as filling:
        filling.write(b"\0" * (free.f_bavail * free.f_frsize - 48 * 1024))
      env = _ENV
    else:
      env = dict(_ENV, TFF_RESUME_FAULT="disk-full-during-save:3")
    status, stdout, stderr = _run(_command(root, "full", _ROUNDS, keep_all), env=env)
    self.assertEqual(status, 74, stderr)
    self.assertNotIn("Traceback", stderr)
    last_line = stderr.strip().splitlines()[-1]
    self.assertRegex(last_line, "^run_emnist: error: .*(No space left on device|disk is full)")
    self.assertIn("the last saved checkpoint is intact. Free space (or fix the folder), then run the "
                  "same command again. Exit status 74.", last_line)
    run_dir = os.path.join(root, "full")
    listing = os.listdir(os.path.join(run_dir, "checkpoints"))
    self.assertIn("history.sqlite", listing)
    versions = sorted(int(name.split("_")[1]) for name in listing if name != "history.sqlite")
    self.assertEqual(versions, list(range(len(versions))))
    self.assertBetween(len(versions), 3, _ROUNDS)  # It stopped in round 3 or later.
    self.assertEqual(chaos.leftovers(run_dir), [])
    if mount_point:
      os.remove(filler)
    # Rows a person deleted meanwhile are rebuilt from the checkpoint too.
    connection = sqlite3.connect(os.path.join(run_dir, "results", "participation.sqlite"))
    with connection:
      connection.execute("DELETE FROM participation WHERE round = 2")
    connection.close()
    status, stdout, stderr = _run(_command(root, "full", _ROUNDS, keep_all))
    self.assertEqual(status, 0, stderr)
    self.assertIn(f"lacks some of the {len(versions) - 1} rounds of the checkpoint: rebuilding it "
                  "from the history", stderr)
    outcome = chaos.run_outcome(run_dir)
    rows, straight_rows = outcome.pop("metrics_csv"), self.straight["metrics_csv"]
    # The 2-round start evaluated its last round, which a straight run does not; every other value
    # (the final evaluation included) is the straight run's.
    self.assertEqual(_without_evaluation(rows[1:2]), _without_evaluation(straight_rows[1:2]))
    self.assertEqual(rows[:1] + rows[2:], straight_rows[:1] + straight_rows[2:])
    self.assertIn("evaluation/sparse_categorical_accuracy", rows[-1])
    self.assertEqual(outcome, {k: v for k, v in self.straight.items() if k != "metrics_csv"})

  def test_damaged_side_files_are_set_aside_and_rebuilt_from_the_checkpoint(self):
    run_dir = self._copy_without_newest_version("damaged")
    for name in ("progress.json", "results/participation.sqlite", "results/metrics.csv"):
      with open(os.path.join(run_dir, name), "wb") as damaged:
        damaged.write(b"\x00not what it should be\xff")
    events = metrics_release.event_files(run_dir)
    with open(events[-1], "r+b") as event_file:
      event_file.seek(40)
      event_file.write(b"\xff" * 8)
    status, stdout, stderr = _run(_command(self.root, "damaged"))
    self.assertEqual(status, 0, stderr)
    self.assertNotIn("Traceback", stderr)
    self.assertIn("Resuming", stdout)
    for name in ("progress.json", "results/participation.sqlite"):
      self.assertIn(f"{os.path.join(run_dir, name)} is damaged", stderr)
    self.assertIn(f"TensorBoard event file {events[-1]} is damaged", stderr)
    self.assertEqual(chaos.run_outcome(run_dir), self.straight)
    self.assertLen([name for name in os.listdir(run_dir)
                    if name.startswith("progress.json.damaged-")], 1)
    self.assertLen([name for name in os.listdir(os.path.join(run_dir, "results"))
                    if ".damaged-" in name], 1)
    self.assertLen([name for name in os.listdir(run_dir) if "damaged-events" in name], 1)
    server = tensorboard_server.TensorBoardServer(self.root)
    try:
      server.wait_for(lambda s: {"straight", "damaged"} <= set(s.get("data/plugin/scalars/tags")),
                      "both runs")
      damaged, straight = (chaos.tensorboard_points(server, run) for run in ("damaged", "straight"))
    finally:
      server.stop()
    # The rebuilt rounds have no checkpoint time (the record does not keep it); the rest is equal.
    self.assertEqual(damaged.pop("time/checkpoint_seconds"), [_ROUNDS])
    straight.pop("time/checkpoint_seconds")
    self.assertEqual(damaged, straight)


class ChaosTest(absltest.TestCase):

  def test_faults_at_each_phase_and_save_end_identical_with_nothing_left(self):
    fault = chaos.Fault
    planned = [
        fault("sigterm", "data", delay=0.02),  # Data loading: nothing is written yet.
        fault("sigterm", "save", step=0, delay=0.2),  # The version-0 save.
        fault("sigkill", "saved", step=2),  # Right after the second round of this start is saved.
        fault("sigkill_group", "save", step=1, delay=0.3),  # While version 4 is being written.
        fault("sigint", "tracing", delay=1.0),
        fault("second_start", "saved", step=1),  # The first is held with the lock (SIGSTOP).
    ]
    report = chaos.chaos(_ROOT, faults=len(planned), seed=0, rounds=_ROUNDS,
                         compare_tensorboard=chaos.served_points(_ROOT), planned=planned)
    self.assertEqual(report.problems, [])
    hits = report.hits
    self.assertEqual([hit.status for hit in hits], [75, 75, -signal.SIGKILL, -signal.SIGKILL, 75, 0])
    self.assertTrue(all(hit.landed for hit in hits))
    # (newest version when the fault landed, once the start ended, the next start resumed from)
    self.assertEqual([(hit.saved_before, hit.saved_after, hit.resumed_from) for hit in hits[:5]],
                     [(None, None, None), (None, 0, 0), (2, 2, 2), (3, 3, 3), (3, 3, 3)])
    self.assertEqual([hit.in_save for hit in hits], [False, True, False, True, False, False])
    stopped = ("Stopped by {} during start-up, before training; nothing was lost. Run the same "
               "command again to resume. Exit status 75.")
    self.assertEqual([hits[i].output.strip().splitlines()[-1] for i in (0, 1, 4)],
                     [stopped.format("SIGTERM"), stopped.format("SIGTERM"), stopped.format("SIGINT")])
    self.assertEqual((hits[5].second_status, hits[5].live_lock), (75, True))
    self.assertEqual(report.summary(),
                     "faults 6, runs identical 1 of 1, leaked processes 0, hit a run with saved "
                     "rounds 4, a save in progress 2, a live lock 1")


if __name__ == "__main__":
  absltest.main()
