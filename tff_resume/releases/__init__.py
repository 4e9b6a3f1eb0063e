"""What a run releases each round: `release_managers` (TensorBoard and CSV as
`tff.program.ReleaseManager`s), `metrics_release` (the writers under them), `bookkeeping` (a round's
logs, brought up to date at each start) and `units`."""
