"""The run lifecycle: `loop.ResumableLoop` (any TFF process, durably), `run.Run` (the EMNIST
experiment from a config), `training` (one start's rounds), `experiment` (what a config builds),
`fingerprint`, `config_files`, `federated_data` (the seeded `tff.program.FederatedDataSource`)."""
