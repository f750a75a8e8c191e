"""The search: the hyperparameter space, presets, samplers and pruners, run options, TrainConfig.
Imports sweep.core and Optuna; no torch (model only inside configs_from_params)."""
