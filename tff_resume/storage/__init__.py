"""What a run keeps on disk and how: `checkpointing.DurableProgramStateManager` (checksummed versions,
a `tff.program.ProgramStateManager`), the hash-chained `history`, `participation`, the `run_record`,
the `run_lock`, `atomic_files` and the run folder's `paths`."""
