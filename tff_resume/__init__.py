"""tff_resume: federated-learning experiments on TensorFlow Federated that survive interruption.

The Python API (see docs/python-api.md):

    import tff_resume
    config = tff_resume.load_config("configs/demo.py:smoke", {"training.total_rounds": 4})
    run = tff_resume.Run(config, root_output_dir="runs/nb", experiment_name="demo")
    metrics = run.train()    # trains or resumes in this process
    run.status()             # what `tff-resume status --json` prints

    source = tff_resume.SeededClientsDataSource("train", my_client_data, seed=0)
    loop = tff_resume.ResumableLoop(my_process, source, run_dir="runs/mine", clients_per_round=10)
    loop.train(total_rounds=100)

In a TFF program (`tff.learning.programs.train_model`, experiments/tff_program.py):
`program_state_manager=tff_resume.DurableProgramStateManager(DIR)` and
`train_data_source=tff_resume.SeededClientsDataSource("train", client_data, seed)`.

Names are imported on first use, so `import tff_resume` stays cheap (and TensorFlow is not imported
before a command-line program has set up its signals and network isolation).
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_config": "tff_resume.program.run",
    "Run": "tff_resume.program.run",
    "ConfigError": "tff_resume.program.run",
    "ResumableLoop": "tff_resume.program.loop",
    "run_status": "tff_resume.analysis.status",
    "Interrupted": "tff_resume.runtime.signals",
    # TFF's program API (`tff.learning.programs.train_model`): its state manager and data source.
    "DurableProgramStateManager": "tff_resume.storage.checkpointing",
    "SeededClientsDataSource": "tff_resume.program.federated_data",
    "TensorBoardReleaseManager": "tff_resume.releases.release_managers",
    "CsvReleaseManager": "tff_resume.releases.release_managers",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'tff_resume' has no attribute {name!r}")
  return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__():
  return sorted(set(globals()) | set(_EXPORTS))
