"""A private SLURM cluster for tests: one `slurmctld` and three `slurmd` (nodes n1-n3) on this host.

    with slurm_cluster.PrivateSlurm() as cluster:
      job_id = cluster.sbatch(["--nodes=3", "deploy/slurm/study.sbatch"], env=...)
      cluster.wait_for(job_id, "COMPLETED")

Everything lives in a temporary folder: its own munge key and `munged` on its own socket, its own
`slurm.conf` (given to every command as `SLURM_CONF`), state, spool, logs and pid files. Nothing in /etc
or /run is changed; the daemons listen on free loopback ports and run as root (which CI is). `stop()`
ends every daemon by its PID, and every process left of the cluster's jobs, whatever failed.

`missing()` says why a cluster cannot start here (no root, SLURM not installed and no apt to install
it); tests skip with that reason. `install()` installs Debian's `slurm-wlm` and `munge` with apt.
"""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import portpicker

NODES = ("n1", "n2", "n3")
_DAEMONS = ("slurmctld", "slurmd", "munged")


def missing() -> str | None:
  """Why a private cluster cannot run here, or None."""
  if os.geteuid() != 0:
    return "a private SLURM cluster needs root (its slurmd runs jobs as any user)"
  if all(shutil.which(daemon) or os.path.exists(f"/usr/sbin/{daemon}") for daemon in _DAEMONS):
    return None
  if shutil.which("apt-get") is None:
    return "SLURM (slurm-wlm, munge) is not installed and there is no apt-get to install it"
  return None


def install() -> None:
  """Installs Debian's slurm-wlm and munge when missing (about a minute)."""
  if all(os.path.exists(f"/usr/sbin/{daemon}") for daemon in _DAEMONS):
    return
  env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
  subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
  subprocess.run(["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"], check=True, env=env,
                 capture_output=True)


def _read_pid(path: str) -> int | None:
  try:
    with open(path) as pid_file:
      return int(pid_file.read().strip())
  except (OSError, ValueError):
    return None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  # A zombie child counts as ended.
  with contextlib.suppress(OSError):
    with open(f"/proc/{pid}/stat") as stat:
      return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
  return False


def command_line(pid: int) -> str:
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
      return cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
  except OSError:
    return ""


def _environ_of(pid: int) -> dict[str, str]:
  try:
    with open(f"/proc/{pid}/environ", "rb") as environ:
      entries = environ.read().split(b"\0")
  except OSError:
    return {}
  return dict(entry.decode(errors="replace").split("=", 1) for entry in entries if b"=" in entry)


class PrivateSlurm:
  """A one-host SLURM cluster in a temporary folder; a context manager (see the module docstring)."""

  def __init__(self, kill_wait_seconds: int = 30):
    self.kill_wait_seconds = kill_wait_seconds
    self.folder = ""
    self.env: dict[str, str] = {}
    self.node_ports: dict[str, int] = {}

  # Set-up and teardown.

  def __enter__(self) -> "PrivateSlurm":
    try:
      self.start()
    except BaseException:
      self.stop()
      raise
    return self

  def __exit__(self, *unused_exc) -> None:
    self.stop()

  def _path(self, *parts: str) -> str:
    return os.path.join(self.folder, *parts)

  def start(self) -> None:
    install()
    self.folder = tempfile.mkdtemp(prefix="tff-slurm-")
    os.chmod(self.folder, 0o755)  # munged checks that the folders above its socket are not writable by others.
    for sub in ("munge", "state", "spool", "logs"):
      os.makedirs(self._path(sub), mode=0o700)
    key = self._path("munge", "munge.key")
    with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400), "wb") as key_file:
      key_file.write(os.urandom(1024))
    socket_path = self._path("munge", "munge.socket")
    subprocess.run(["/usr/sbin/munged", "--force", f"--socket={socket_path}", f"--key-file={key}",
                    f"--pid-file={self._path('munge', 'munged.pid')}",
                    f"--log-file={self._path('logs', 'munged.log')}",
                    f"--seed-file={self._path('munge', 'munged.seed')}"], check=True,
                   capture_output=True, timeout=30)
    self._write_conf(socket_path)
    self.env = dict(os.environ, SLURM_CONF=self._path("slurm.conf"))
    subprocess.run(["/usr/sbin/slurmctld", "-f", self._path("slurm.conf")], check=True,
                   env=self.env, capture_output=True, timeout=60)
    for node in NODES:
      self.start_node(node)
    self.wait_until_idle()

  def _write_conf(self, munge_socket: str) -> None:
    host = socket.gethostname().split(".")[0]
    self.controller_port = portpicker.pick_unused_port()
    self.node_ports = {node: portpicker.pick_unused_port() for node in NODES}
    nodes = "\n".join(f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} CPUs=2 "
                      f"RealMemory=7000" for node, port in self.node_ports.items())
    text = f"""# A private test cluster (tests/slurm_cluster.py); everything in {self.folder}.
ClusterName=tfftest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={self.controller_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket},cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation={self._path('state')}
SlurmdSpoolDir={self._path('spool', '%n')}
SlurmctldPidFile={self._path('slurmctld.pid')}
SlurmdPidFile={self._path('slurmd-%n.pid')}
SlurmctldLogFile={self._path('logs', 'slurmctld.log')}
SlurmdLogFile={self._path('logs', 'slurmd-%n.log')}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
KillWait={self.kill_wait_seconds}
MinJobAge=3600
# A lost node's job is requeued by the batch script (study.sbatch) within about 20 s, well before
# the controller declares the node down and requeues it on its own.
SlurmdTimeout=120
InactiveLimit=0
{nodes}
PartitionName=main Nodes=n[1-3] Default=YES State=UP OverSubscribe=YES MaxTime=INFINITE
"""
    with open(self._path("slurm.conf"), "w") as conf:
      conf.write(text)

  def start_node(self, node: str, timeout_seconds: float = 60) -> None:
    """Starts (or restarts, after `kill_node`) the slurmd of `node`, and waits until it stays up.

    slurmd forks into the background before it binds its port: a start that finds the port held
    exits there, with status 0 for the command (seen here). It is started again until a slurmd of
    `node` has run for a second.
    """
    pid_file = self._path(f"slurmd-{node}.pid")
    deadline = time.monotonic() + timeout_seconds
    while True:
      subprocess.run(["/usr/sbin/slurmd", "-f", self._path("slurm.conf"), "-N", node], check=True,
                     env=self.env, capture_output=True, timeout=60)
      time.sleep(1.0)
      pid = _read_pid(pid_file)
      if pid and _alive(pid):
        return
      if time.monotonic() > deadline:
        raise RuntimeError(f"slurmd of {node} does not stay up; see {self._path('logs')}")

  def wait_until_idle(self, timeout_seconds: float = 60) -> None:
    deadline = time.monotonic() + timeout_seconds
    while True:
      states = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False).stdout.split()
      if states[1::2] == ["idle"] * len(NODES):
        return
      if time.monotonic() > deadline:
        raise RuntimeError(f"the private SLURM's nodes are not idle after {timeout_seconds} s: "
                           f"{states}; see {self._path('logs')}")
      time.sleep(0.5)

  def daemon_pids(self) -> dict[str, int]:
    """The PID of each daemon whose pid file names a live process."""
    files = {"munged": self._path("munge", "munged.pid"), "slurmctld": self._path("slurmctld.pid")}
    files.update({f"slurmd-{node}": self._path(f"slurmd-{node}.pid") for node in NODES})
    pids = {name: _read_pid(path) for name, path in files.items()}
    return {name: pid for name, pid in pids.items() if pid and _alive(pid)}

  def job_processes(self) -> list[int]:
    """Every live process of this cluster's jobs (slurmstepd and what it started): those whose
    environment names this cluster's slurm.conf or that are a slurmstepd; not the daemons."""
    daemons = set(self.daemon_pids().values())
    found = []
    for pid, command in _raw_command_lines():
      if pid in daemons or pid == os.getpid():
        continue
      if command.startswith((b"slurmctld", b"slurmd", b"munged")):
        continue  # A daemon or a daemon's helper (slurmscriptd), ended with its daemon.
      mine = _environ_of(pid).get("SLURM_CONF") == self.env.get("SLURM_CONF")
      if (mine or command.startswith(b"slurmstepd")) and _alive(pid):
        found.append(pid)
    return found

  def stop(self) -> None:
    """Ends every daemon by its PID and every process of the cluster's jobs, then removes the folder
    (kept when TFF_KEEP_SLURM is set, for a look at the logs)."""
    if not self.folder:
      return
    for pid in self.job_processes():
      with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for name, pid in self.daemon_pids().items():
      with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
      deadline = time.monotonic() + 10
      while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
      if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
          os.kill(pid, signal.SIGKILL)
      del name
    for pid in self.job_processes():  # Any step that slurmd started as it stopped.
      with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not os.environ.get("TFF_KEEP_SLURM"):
      shutil.rmtree(self.folder, ignore_errors=True)
    self.folder = ""

  # Using the cluster.

  def run(self, command: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Runs a SLURM client command (sbatch, scontrol, ...) against this cluster."""
    return subprocess.run(command, env=kwargs.pop("env", self.env), capture_output=True, text=True,
                          check=check, timeout=kwargs.pop("timeout", 60), **kwargs)

  def sbatch(self, arguments: list[str], env: dict[str, str] | None = None, cwd: str | None = None
             ) -> str:
    """Submits a batch job; returns its id."""
    job_env = dict(self.env, **(env or {}))
    out = self.run(["sbatch", "--parsable", *arguments], env=job_env, cwd=cwd).stdout
    return out.strip().split(";")[0]

  def job(self, job_id: str) -> dict[str, str]:
    """`scontrol show job`'s fields (JobState, Restarts, Reason, ...); {} once SLURM forgot it."""
    result = self.run(["scontrol", "show", "job", "-o", job_id], check=False)
    if result.returncode:
      return {}
    return dict(re.findall(r"(\w+)=(\S*)", result.stdout))

  def wait_for(self, job_id: str, states: tuple[str, ...], timeout_seconds: float,
               start_pending: bool = False) -> dict[str, str]:
    """Waits until the job is in one of `states`; returns its fields. A requeued job waits for its
    begin time (`cred_expire`, 10 s here, while its last start's processes end): with
    `start_pending`, it is told to start now (as an admin would on an idle cluster)."""
    deadline = time.monotonic() + timeout_seconds
    while True:
      fields = self.job(job_id)
      if fields.get("JobState") in states:
        return fields
      if start_pending and fields.get("JobState") == "PENDING" and fields.get("Reason") == "BeginTime":
        self.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=False)
      if time.monotonic() > deadline:
        raise AssertionError(f"job {job_id} is not {'/'.join(states)} after {timeout_seconds} s: "
                             f"{fields}; the daemons' logs end:\n{self.log_tail()}")
      time.sleep(0.5)

  def log_tail(self, lines: int = 40) -> str:
    """The last lines of slurmctld's log and of each slurmd's, but their harmless pmix errors."""
    tails = []
    for name in ["slurmctld", *(f"slurmd-{node}" for node in NODES)]:
      try:
        with open(self._path("logs", f"{name}.log"), errors="replace") as log:
          kept = [line for line in log if "pmix" not in line.lower()]
      except OSError:
        continue
      tails.append(f"--- {name}.log\n" + "".join(kept[-lines:]))
    return "\n".join(tails)

  def node_address(self, node: str) -> str:
    fields = dict(re.findall(r"(\w+)=(\S*)",
                             self.run(["scontrol", "show", "node", "-o", node]).stdout))
    return fields["NodeAddr"]

  def kill_node(self, node: str) -> list[str]:
    """A node's crash: SIGKILLs its slurmd and every process of the job steps it runs (each step's
    slurmstepd included). Returns the command lines of the step processes it killed."""
    victims = [pid for pid in self.job_processes()
               if _environ_of(pid).get("SLURMD_NODENAME") == node
               or _slurmstepd_node(pid) == node]
    killed = [command_line(pid) for pid in victims]
    for pid in self._slurmd_processes(node) + victims:
      with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return killed

  def _slurmd_processes(self, node: str) -> list[int]:
    """Every process running this cluster's slurmd for `node` (`slurmd -f CONF -N NODE`): the
    daemon and any copy of itself it forked."""
    conf, name = self._path("slurm.conf").encode(), node.encode()
    return [pid for pid, command in _raw_command_lines()
            if (arguments := command.split(b"\0"))[0].endswith(b"slurmd")
            and conf in arguments and name in arguments]


def _raw_command_lines():
  """(pid, the raw NUL-separated command line) of every process whose command line can be read."""
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
        yield int(entry), cmdline.read()
    except OSError:
      continue


def _slurmstepd_node(pid: int) -> str | None:
  """The node a `slurmstepd` process serves: it keeps its node's log (`logs/slurmd-NODE.log`) open.
  (Its working folder is no guide: every step of the private cluster runs in `logs/`.)"""
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
      if not cmdline.read().startswith(b"slurmstepd"):
        return None
    for descriptor in os.listdir(f"/proc/{pid}/fd"):
      match = re.search(r"/slurmd-(\w+)\.log$", os.readlink(f"/proc/{pid}/fd/{descriptor}"))
      if match:
        return match.group(1)
  except OSError:
    return None
  return None
