"""Training and the trial loop: losses, augmentation, the trainer, folds, resume points, workers, run.
Imports sweep.core, sweep.search, sweep.nn, torch, model and data."""
