"""pytest set-up: absltest's temporary folders read absl flags, which pytest never parses."""

from absl import flags


def pytest_configure(config):
  del config
  flags.FLAGS.mark_as_parsed()
