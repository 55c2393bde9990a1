"""Training on Dask, fairly scheduled: job specs and states (pure), the recipes, the rank
side (context, DDP bootstrap, data, checkpoints), and the runner that drives Dask.
See docs/training.md."""
