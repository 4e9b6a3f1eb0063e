"""The learning side: algorithms and server optimizers, aggregators, communication accounting,
models and client sampling."""
