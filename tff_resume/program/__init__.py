"""The run lifecycle: `loop.ResumableLoop` (any TFF process, durably), `run.Run` (the EMNIST
experiment from a config), `status.run_status`."""
