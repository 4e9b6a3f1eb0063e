"""Reading runs back: `status` (`tff-resume status`), `comparison` (runs side by side), `study`
(a sweep's summary) and `global_model` (a run's model weights, export and loading)."""
