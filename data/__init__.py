"""Datasets for segnet-sweep: loading, validation, splitting, the phantoms, fingerprints,
and NIfTI volumes to slices and back.

Imports only numpy, Pillow and scipy (never optuna, torch, ``sweep`` or ``model``; nibabel
only inside the functions that read or write NIfTI), and does nothing at import time.
"""

from .dataset import Dataset, Split
from .errors import DataError
from .io import read_image, read_mask, write_mask
from .load import load_dataset
from .phantom import make_phantom, make_phantom_dataset
from .split import fold_indices, group_fold_indices, split_groups, split_indices
from .volume_phantom import write_acdc_phantom, write_nnunet_phantom
from .volumes import (
    SLICE_SIZE,
    TARGET_SPACING_MM,
    Volume,
    assemble,
    preprocess_volume,
    preprocessing,
    read_truth,
    volume_spacing,
    write_labels_nifti,
)

__all__ = [
    "SLICE_SIZE",
    "TARGET_SPACING_MM",
    "DataError",
    "Dataset",
    "Split",
    "Volume",
    "assemble",
    "fold_indices",
    "group_fold_indices",
    "load_dataset",
    "make_phantom",
    "make_phantom_dataset",
    "preprocess_volume",
    "preprocessing",
    "read_image",
    "read_mask",
    "read_truth",
    "split_groups",
    "split_indices",
    "volume_spacing",
    "write_acdc_phantom",
    "write_labels_nifti",
    "write_mask",
    "write_nnunet_phantom",
]
