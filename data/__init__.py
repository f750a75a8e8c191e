"""Datasets for segnet-sweep: loading, validation, splitting, the phantom, fingerprints.

Imports only numpy and Pillow (never optuna, torch, ``sweep`` or ``model``), and does
nothing at import time.
"""

from .dataset import Dataset, Split
from .errors import DataError
from .io import read_image, read_mask, write_mask
from .load import load_dataset
from .phantom import make_phantom, make_phantom_dataset
from .split import fold_indices, split_indices

__all__ = [
    "DataError",
    "Dataset",
    "Split",
    "load_dataset",
    "make_phantom",
    "make_phantom_dataset",
    "read_image",
    "read_mask",
    "fold_indices",
    "split_indices",
    "write_mask",
]
