"""Config files: loading `configs/*.py` with a preset and overrides, without importing TensorFlow.

The runner reads `runtime.workers` from its command line with `command_line_field` before TensorFlow
starts threads, to decide whether to isolate its network (a run on remote workers needs the network).
"""

import importlib.util
import os
import sys
from typing import Any, Mapping, Sequence

import ml_collections


class ConfigError(ValueError):
  """A configuration value is invalid; the message names the field."""


def _load_config_module(path: str):
  """Imports a config file as a module; its folder's package (configs/) is importable meanwhile."""
  folder = os.path.dirname(os.path.abspath(path))
  root = os.path.dirname(folder) if os.path.isfile(os.path.join(folder, "__init__.py")) else folder
  spec = importlib.util.spec_from_file_location("tff_resume_config", path)
  module = importlib.util.module_from_spec(spec)
  added = root not in sys.path
  if added:
    sys.path.insert(0, root)
  try:
    spec.loader.exec_module(module)
  finally:
    if added:
      sys.path.remove(root)
  return module


def load_config(spec: str, overrides: Mapping[str, Any] | None = None
                ) -> ml_collections.ConfigDict:
  """Returns the config a `--config=FILE.py[:PRESET]` names, with `overrides` applied.

  Args:
    spec: a config file (`configs/demo.py`), optionally with a preset (`configs/demo.py:smoke`).
    overrides: {dotted field: value}, as `--config.training.total_rounds=4` would set them.

  Raises:
    ConfigError: the file is missing, is not a Python config, fails to load, names an unknown
      preset, or an override names an unknown field or has the wrong type.
  """
  path, _, preset = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path} not found; the configs are the files in configs/ "
                      "(e.g. configs/demo.py).")
  if not path.endswith(".py"):
    raise ConfigError(f"config file {path} is not a Python file: a config is a .py file whose "
                      "get_config() returns an ml_collections.ConfigDict (see configs/demo.py).")
  try:
    module = _load_config_module(path)
    config = module.get_config(preset) if preset else module.get_config()
  except Exception as error:  # pylint: disable=broad-except
    detail = f"{type(error).__name__}: {error}"
    if type(error) is ValueError:  # pylint: disable=unidiomatic-typecheck
      detail = str(error)  # The presets' own message names the presets.
    raise ConfigError(f"cannot load the config {spec}: {detail}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"the config {spec}: get_config() returned {type(config).__name__}, not an "
                      "ml_collections.ConfigDict.")
  config.lock()
  try:
    config.update_from_flattened_dict(dict(overrides or {}))
  except KeyError as error:
    raise ConfigError(f"unknown config field in the overrides: {error}") from None
  except (TypeError, ValueError) as error:
    raise ConfigError(f"config override: {error}") from None
  return config


def command_line_field(argv: Sequence[str], field: str) -> Any:
  """The value `--config=FILE [--config.FIELD=VALUE]` in `argv` give `field` (dotted), or None
  when it cannot be told without the flags parser (no --config, a file that fails to load)."""
  spec, override = None, None
  for index, arg in enumerate(argv):
    name, has_value, value = arg.partition("=")
    if not has_value and index + 1 < len(argv):
      value = argv[index + 1]
    if name == "--config":
      spec = value
    elif name == f"--config.{field}":
      override = value
  if override is not None:
    return override
  if spec is None:
    return None
  try:
    config = load_config(spec)
  except ConfigError:
    return None
  for part in field.split("."):
    if not isinstance(config, ml_collections.ConfigDict) or part not in config:
      return None
    config = config[part]
  return config
