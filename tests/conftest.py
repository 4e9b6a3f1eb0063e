"""pytest set-up: absltest's temporary folders read absl flags, which pytest never parses; the
slowest test files are collected first, so `make test`'s workers (pytest-xdist, one file at a time)
do not end with one long file running alone."""

import os
import sys

from absl import flags

# The longest files, longest first (about 1.5-4 minutes each in the suite run of 2026-12-07); the
# rest keep their order. tff_program, tls_workers and client_index, late in the alphabet, ran last.
_SLOW_FILES = ("reproducible_aggregators_test.py", "workers_test.py", "faults_test.py",
               "quickstart_test.py", "global_model_test.py", "tff_program_test.py",
               "resume_test.py", "sweep_test.py", "tls_workers_test.py", "client_index_test.py",
               "benchmark_test.py", "run_test.py", "run_emnist_test.py")


def pytest_configure(config):
  del config
  flags.FLAGS.mark_as_parsed()


def pytest_unconfigure(config):
  """Drops TFF's import-time context while modules are alive: its cleanup errors at interpreter exit."""
  del config
  if "tensorflow_federated" in sys.modules:
    from tff_resume.runtime import local_worker
    local_worker.install_guard_context()


def pytest_collection_modifyitems(session, config, items):
  """Puts the tests of _SLOW_FILES first, in that order."""
  del session, config

  def rank(item):
    name = os.path.basename(str(item.fspath))
    return _SLOW_FILES.index(name) if name in _SLOW_FILES else len(_SLOW_FILES)

  items.sort(key=rank)  # Stable: tests keep their order within a file.
