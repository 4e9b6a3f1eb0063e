"""Keeps the local TFF worker unreachable from the network: the program and its worker get a private
network namespace.

TFF 0.87's `worker_binary` listens on all interfaces (it has only `--port`: no bind address, no TLS,
no authentication), and whoever reaches its port can run any TensorFlow computation as the user
running it. `isolate()` moves this process, before it starts any thread, into a new user namespace
(unprivileged, mapping the user to itself) and a new network namespace whose only interface is its
own loopback, which it brings up. The worker started later inherits that namespace: it listens on a
loopback no other process on the machine shares, and the runner reaches it as before. The program
loses the network (a local simulation needs none); files, signals, locks and process ids are
unchanged.

`TFF_RESUME_NETWORK_ISOLATION`: `auto` (default) isolates, and when the kernel refuses (user
namespaces disabled, a seccomp filter, AppArmor) goes on unisolated after a loud warning; `require`
stops instead (exit status 2 in the runner); `off` does not isolate, silently.
"""

import ctypes
import errno
import fcntl
import os
import socket
import struct
import sys

ENVIRONMENT_VARIABLE = "TFF_RESUME_NETWORK_ISOLATION"
MODES = ("auto", "require", "off")
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: the name, then ifr_flags in a 24-byte union.
# Set for the process that re-executes itself after a half-done isolation, so it does not retry.
_RETRIED = "TFF_RESUME_NETWORK_ISOLATION_FAILED"


class IsolationError(OSError):
  """The kernel refused a private network namespace and isolation is required."""


def mode() -> str:
  """The isolation mode chosen by TFF_RESUME_NETWORK_ISOLATION (`auto` when unset); raises
  IsolationError for another value."""
  value = os.environ.get(ENVIRONMENT_VARIABLE, "auto") or "auto"
  if value not in MODES:
    raise IsolationError(errno.EINVAL, f"{ENVIRONMENT_VARIABLE}={value!r}: use one of "
                         f"{', '.join(MODES)}.")
  return value


def _write(path: str, text: str) -> None:
  with open(path, "w") as proc_file:
    proc_file.write(text)


def _enter_namespaces() -> None:
  libc = ctypes.CDLL(None, use_errno=True)
  uid, gid = os.getuid(), os.getgid()
  flags = _CLONE_NEWNET if uid == 0 else _CLONE_NEWUSER | _CLONE_NEWNET
  if libc.unshare(flags) != 0:
    raise OSError(ctypes.get_errno(), f"unshare: {os.strerror(ctypes.get_errno())}")
  if uid != 0:  # The same user and group inside; setgroups must be denied to map the group.
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")
  with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
    name, flags, = _IFREQ.unpack(fcntl.ioctl(probe, _SIOCGIFFLAGS, _IFREQ.pack(b"lo", 0)))
    fcntl.ioctl(probe, _SIOCSIFFLAGS, _IFREQ.pack(name, flags | _IFF_UP))


def isolated() -> bool:
  """Whether this process is in a network namespace of its own whose only interface is loopback."""
  return sorted(name for _, name in socket.if_nameindex()) == ["lo"]


def isolate() -> bool:
  """Puts this process (and every child it starts later) in a private network namespace.

  Call it first thing, before any thread exists (importing TensorFlow starts threads). Returns True
  when isolated; False in mode `off`, or in mode `auto` after printing a warning when the kernel
  refused. A failure after the namespaces were entered (loopback left down) re-executes the program
  unisolated, with the warning.

  Raises:
    IsolationError: mode `require` and the kernel refused, or an unknown mode.
  """
  chosen = mode()
  if chosen == "off" or isolated():
    return chosen != "off"
  problem = os.environ.pop(_RETRIED, None)
  if problem is None:
    try:
      _enter_namespaces()
      return True
    except OSError as error:
      problem = f"{error.strerror or error}"
      if _left_host_network():
        # Namespaces entered, loopback down: nothing could reach the worker. Start afresh outside.
        os.environ[_RETRIED] = problem
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
  warn_unisolated(problem)
  return False


_warned = []


_KERNEL_ADVICE = ("Allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, or "
                  "the container's seccomp/AppArmor profile), or run on a firewalled machine")


def warn_unisolated(problem: str, advice: str = _KERNEL_ADVICE) -> None:
  """Warns once per process, on stderr, that the worker about to start is reachable from the network
  (mode `auto`); says nothing in mode `off`.

  Raises:
    IsolationError: mode `require`.
  """
  chosen = mode()
  if chosen == "require":
    raise IsolationError(errno.EPERM, f"cannot give the TFF worker a private network namespace "
                         f"({problem}), and {ENVIRONMENT_VARIABLE}=require.")
  if chosen == "off" or _warned:
    return
  _warned.append(problem)
  print(f"WARNING: the TFF worker could not be isolated from the network ({problem}): it listens on "
        "all interfaces, and anyone who can reach this machine on its port can run code as you "
        f"while this program runs. {advice}; {ENVIRONMENT_VARIABLE}=off hides this warning.",
        file=sys.stderr, flush=True)


def _left_host_network() -> bool:
  """Whether this process is no longer in the network namespace of its parent."""
  try:
    return os.readlink("/proc/self/ns/net") != os.readlink(f"/proc/{os.getppid()}/ns/net")
  except OSError:
    return False
