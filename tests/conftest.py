"""pytest set-up: absltest's temporary folders read absl flags, which pytest never parses."""

import sys

from absl import flags


def pytest_configure(config):
  del config
  flags.FLAGS.mark_as_parsed()


def pytest_unconfigure(config):
  """Drops TFF's import-time context while modules are alive: its cleanup errors at interpreter exit."""
  del config
  if "tensorflow_federated" in sys.modules:
    from tff_resume.runtime import local_worker
    local_worker.install_guard_context()
