"""segnet-sweep: Optuna hyperparameter sweeps of SegNet on cardiac MR slices."""

__version__ = "0.1.0"
