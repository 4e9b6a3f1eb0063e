"""The deployment recipes in deploy/ agree with the code: ports, labels, paths, commands, exit
statuses, and every config field they set exists and validates."""

import os
import re
import subprocess

from absl.testing import absltest
import yaml

from tff_resume.program import config_files
from tff_resume.runtime import signals
from tff_resume.runtime import workers
from tff_resume import cli

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_KUBERNETES = os.path.join(_REPO_ROOT, "deploy", "kubernetes")
_SLURM_SCRIPT = os.path.join(_REPO_ROOT, "deploy", "slurm", "study.sbatch")


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
    with open(os.path.join(os.path.dirname(_SLURM_SCRIPT), "requeue.sh")) as shared:
      requeue = shared.read()
    subprocess.run(["bash", "-n", os.path.join(os.path.dirname(_SLURM_SCRIPT), "requeue.sh")],
                   check=True)
    self.assertIn(f"EXIT_REQUEUE={signals.EXIT_CODE_INTERRUPTED}\n", requeue)
    self.assertIn('scontrol requeue "$SLURM_JOB_ID"', requeue)
    self.assertIn('source "${SLURM_SUBMIT_DIR:-.}/deploy/slurm/requeue.sh"', self.text)


if __name__ == "__main__":
  absltest.main()
