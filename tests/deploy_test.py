"""The deployment recipes in deploy/ agree with the code: ports, labels, paths, commands, exit
statuses, and every config field they set exists and validates."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile

from absl.testing import absltest
import portpicker
import yaml

from tff_resume.program import config_files
from tff_resume.program import status as status_lib
from tff_resume.runtime import signals
from tff_resume.runtime import workers
from tff_resume import cli

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_KUBERNETES = os.path.join(_REPO_ROOT, "deploy", "kubernetes")
_SLURM_SCRIPT = os.path.join(_REPO_ROOT, "deploy", "slurm", "study.sbatch")
_VENV = os.path.dirname(os.path.dirname(sys.executable))  # Holds bin/python and bin/tff-resume.
_SLURM_ROUNDS = 30


def _documents(name: str) -> dict[str, dict]:
  with open(os.path.join(_KUBERNETES, name)) as manifest:
    return {document["kind"]: document for document in yaml.safe_load_all(manifest)}


def _runner_config(arguments: list[str]):
  """Loads the config a runner command line names, with its overrides, as the runner would."""
  spec = next(arg.split("=", 1)[1] for arg in arguments if arg.startswith("--config="))
  overrides = dict(arg[len("--config."):].split("=", 1) for arg in arguments
                   if arg.startswith("--config."))
  config = config_files.load_config(os.path.join(_REPO_ROOT, spec))
  for field, text in overrides.items():  # Typed as absl's config flags would type them.
    section, name = field.split(".")
    current = config[section][name]
    config[section][name] = type(current)(text)
  return config


def _flag(arguments: list[str], name: str) -> str:
  return next(arg.split("=", 1)[1] for arg in arguments if arg.startswith(f"--{name}="))


class KubernetesTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    workers_manifest = _documents("workers.yaml")
    self.service, self.stateful_set = workers_manifest["Service"], workers_manifest["StatefulSet"]
    job_manifest = _documents("runner-job.yaml")
    self.job, self.claim = job_manifest["Job"], job_manifest["PersistentVolumeClaim"]
    self.policy = _documents("networkpolicy.yaml")["NetworkPolicy"]
    self.worker = self.stateful_set["spec"]["template"]["spec"]["containers"][0]
    self.runner = self.job["spec"]["template"]["spec"]["containers"][0]

  def test_worker_command_and_ports_agree(self):
    command = self.worker["command"]
    self.assertEqual(command[:2], ["tff-resume", "worker"])
    arguments = cli._build_parser().parse_args(command[1:])  # pylint: disable=protected-access
    self.assertEqual(arguments.command, "worker")
    port = arguments.port
    self.assertEqual([p["containerPort"] for p in self.worker["ports"]], [port])
    self.assertEqual([(p["port"], p["targetPort"]) for p in self.service["spec"]["ports"]],
                     [(port, port)])
    self.assertEqual(self.worker["readinessProbe"]["tcpSocket"]["port"], port)
    self.assertEqual([p["port"] for rule in self.policy["spec"]["ingress"] for p in rule["ports"]],
                     [port])
    self.assertEqual(arguments.host, f"$(POD_NAME).{self.service['metadata']['name']}")

  def test_headless_service_names_the_stateful_set_pods(self):
    self.assertEqual(self.service["spec"]["clusterIP"], "None")
    self.assertEqual(self.stateful_set["spec"]["serviceName"], self.service["metadata"]["name"])
    labels = self.stateful_set["spec"]["template"]["metadata"]["labels"]
    self.assertEqual(self.service["spec"]["selector"], labels)
    self.assertEqual(self.stateful_set["spec"]["selector"]["matchLabels"], labels)
    self.assertEqual(self.policy["spec"]["podSelector"]["matchLabels"], labels)

  def test_runner_names_every_worker_by_its_stable_name(self):
    command = self.runner["command"]
    self.assertEqual(command[:3], ["python", "-m", "experiments.run_emnist"])
    config = _runner_config(command[3:])
    addresses = workers.parse_workers(config.runtime.workers)
    name, service = self.stateful_set["metadata"]["name"], self.service["metadata"]["name"]
    port = self.service["spec"]["ports"][0]["port"]
    self.assertEqual(addresses, [f"{name}-{index}.{service}:{port}"
                                 for index in range(self.stateful_set["spec"]["replicas"])])
    self.assertGreaterEqual(config.runtime.num_subrounds, len(addresses))

  def test_runner_config_is_valid_and_writes_to_the_persistent_volume(self):
    from tff_resume.program import experiment  # pylint: disable=g-import-not-at-top

    command = self.runner["command"]
    config = _runner_config(command[3:])
    experiment.validate(config)
    mounts = {mount["name"]: mount["mountPath"] for mount in self.runner["volumeMounts"]}
    volumes = {volume["name"]: volume["persistentVolumeClaim"]["claimName"]
               for volume in self.job["spec"]["template"]["spec"]["volumes"]
               if "persistentVolumeClaim" in volume}
    root = _flag(command, "root_output_dir")
    runs_volume = next(name for name, path in mounts.items() if path == root)
    self.assertEqual(volumes[runs_volume], self.claim["metadata"]["name"])
    # Workers read EMNIST at the path the runner names: the same claim at the same mount path.
    worker_mounts = {mount["mountPath"]: mount["name"] for mount in self.worker["volumeMounts"]}
    worker_volumes = {volume["name"]: volume["persistentVolumeClaim"]["claimName"]
                      for volume in self.stateful_set["spec"]["template"]["spec"]["volumes"]
                      if "persistentVolumeClaim" in volume}
    data_volume = next(name for name, path in mounts.items() if path == config.data.cache_dir)
    self.assertEqual(worker_volumes[worker_mounts[config.data.cache_dir]], volumes[data_volume])

  def test_worker_and_runner_read_their_certificates_from_owner_only_secrets(self):
    def secret_mounted_at(pod_spec, container, path):
      name = next(mount["name"] for mount in container["volumeMounts"] if mount["mountPath"] == path)
      volume = next(volume for volume in pod_spec["volumes"] if volume["name"] == name)
      self.assertEqual(volume["secret"]["defaultMode"], 0o400)
      return volume["secret"]["secretName"]

    arguments = cli._build_parser().parse_args(self.worker["command"][1:])  # pylint: disable=protected-access
    self.assertFalse(arguments.insecure)
    worker_secret = secret_mounted_at(self.stateful_set["spec"]["template"]["spec"], self.worker,
                                      arguments.tls_dir)
    config = _runner_config(self.runner["command"][3:])
    runner_secret = secret_mounted_at(self.job["spec"]["template"]["spec"], self.runner,
                                      config.runtime.tls_dir)
    self.assertEqual((worker_secret, runner_secret), ("tff-tls-workers", "tff-tls-runner"))

  def test_job_requeues_on_exit_75_and_fails_on_bad_input(self):
    spec = self.job["spec"]
    self.assertEqual(spec["template"]["spec"]["restartPolicy"], "Never")
    self.assertEqual(spec["template"]["metadata"]["labels"],
                     self.policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"])
    by_action = {}
    for rule in spec["podFailurePolicy"]["rules"]:
      if "onExitCodes" in rule:
        self.assertEqual(rule["onExitCodes"]["containerName"], self.runner["name"])
        by_action.setdefault(rule["action"], []).extend(rule["onExitCodes"]["values"])
    self.assertEqual(by_action, {"Ignore": [signals.EXIT_CODE_INTERRUPTED], "FailJob": [2, 74]})


class SlurmTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    with open(_SLURM_SCRIPT) as script:
      self.text = script.read()

  def test_script_parses_and_asks_for_requeue_and_an_early_sigterm(self):
    subprocess.run(["bash", "-n", _SLURM_SCRIPT], check=True)
    options = re.findall(r"^#SBATCH (\S+)", self.text, re.MULTILINE)
    self.assertIn("--requeue", options)
    self.assertIn("--signal=B:TERM@120", options)
    self.assertIn(f"EXIT_REQUEUE={signals.EXIT_CODE_INTERRUPTED}\n", self.text)
    self.assertIn('scontrol requeue "$SLURM_JOB_ID"', self.text)

  def test_sigterm_requeues_and_the_requeued_job_resumes(self):
    """The script itself, with `srun` and `scontrol` stand-ins that run steps on this machine: the
    allocation is this machine twice (runner node, worker node) on a free port."""
    with tempfile.TemporaryDirectory() as scratch:
      bin_dir = os.path.join(scratch, "bin")
      os.mkdir(bin_dir)
      requeues = os.path.join(scratch, "requeues")
      _write_executable(os.path.join(bin_dir, "scontrol"), f"""#!/bin/bash
if [ "$1 $2" = "show hostnames" ]; then printf 'localhost\\n127.0.0.1\\n'; exit 0; fi
if [ "$1" = requeue ]; then echo "requeue $2" >> {requeues}; exit 0; fi
exit 1
""")
      # srun NODE-OPTIONS... COMMAND: runs COMMAND here (the worker node is this machine).
      _write_executable(os.path.join(bin_dir, "srun"), """#!/bin/bash
while [ "${1#--}" != "$1" ]; do shift; done
exec "$@"
""")
      env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="42",
                 SLURM_JOB_NODELIST="node[1-2]", CONFIG="configs/demo.py:smoke",
                 ROOT_OUTPUT_DIR=scratch, EXPERIMENT="slurm", VENV=_VENV,
                 TFF_WORKER_PORT=str(portpicker.pick_unused_port()), PYTHONPATH=_REPO_ROOT,
                 SLURMD_NODENAME="127.0.0.1")  # The worker task's node, as srun sets it.
      command = ["bash", _SLURM_SCRIPT, "--config.model.name=linear",
                 f"--config.training.total_rounds={_SLURM_ROUNDS}"]
      job = subprocess.Popen(command, cwd=_REPO_ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
      try:
        for line in job.stdout:
          if line.startswith("round    2/"):
            job.send_signal(signal.SIGTERM)  # As --signal=B:TERM@120: to the batch script only.
            break
        stdout, stderr = job.communicate(timeout=120)
      finally:  # Whatever failed, nothing of the job is left (its worker_binary dies with its parent).
        with contextlib.suppress(ProcessLookupError):
          os.killpg(job.pid, signal.SIGKILL)
      self.assertEqual(job.returncode, signals.EXIT_CODE_INTERRUPTED, stderr)
      with open(requeues) as requeued:
        self.assertEqual(requeued.read(), "requeue 42\n")
      self.assertIn("tff-resume worker: stopped by SIGTERM; relayed ", stdout)
      run_dir = os.path.join(scratch, "slurm")
      stopped_at = status_lib.run_status(run_dir)["rounds_done"]
      self.assertLess(stopped_at, _SLURM_ROUNDS)
      self.assertIn(f"Stopped by SIGTERM after round {stopped_at} (saved).", stdout)
      requeued_job = subprocess.run(command, cwd=_REPO_ROOT, env=env, capture_output=True,
                                    text=True, timeout=300, check=False)
      self.assertEqual(requeued_job.returncode, 0, requeued_job.stderr)
      self.assertIn(f"Resuming {run_dir} from version {stopped_at} (0 rounds to redo)",
                    requeued_job.stdout)
      status = status_lib.run_status(run_dir)
      self.assertEqual(status["rounds_done"], _SLURM_ROUNDS)
      with open(requeues) as requeued:
        self.assertEqual(requeued.read(), "requeue 42\n")  # Not again: it completed.
      with open(os.path.join(run_dir, "config.json")) as config_json:
        runtime = json.load(config_json)["runtime"]
      self.assertEqual((runtime["workers"], runtime["num_subrounds"]),
                       (f"127.0.0.1:{env['TFF_WORKER_PORT']}", 1))


def _write_executable(path: str, text: str) -> None:
  with open(path, "w") as script:
    script.write(text)
  os.chmod(path, 0o755)


if __name__ == "__main__":
  absltest.main()
