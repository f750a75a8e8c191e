"""Which slices train and which select: the val split, or ``--cv K`` folds over train+val.

Search (``run``) and retraining (``best --evaluate``) both take their folds from
``selection_folds``, so the two can never disagree on what a trial's value means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from data import Dataset
from data.split import group_fold_indices, split_groups
from sweep.core.errors import UsageError
from sweep.nn.runtime import DeviceSplit, Fold

CV_SEED = 0  # fold assignment: fixed, so that studies with different --seed compare on the same folds
HOLDOUT_SEED = 0  # which train patients the estimate holds out: fixed, so reruns estimate on the same slices


def pool_names(data: Dataset) -> list[str]:
    """Train then val slice names: the labelled pool that --cv splits into folds."""
    return list(data.train.names) + list(data.val.names)


def pool_groups(data: Dataset) -> list[str]:
    """The patient of each pool slice (the slice itself where patients are unknown)."""
    return list(data.train.groups) + list(data.val.groups)


def cv_folds(data: Dataset, k: int) -> list[np.ndarray]:
    """Indices into the pool (train then val) of each of ``k`` folds; no patient in two folds."""
    groups = pool_groups(data)
    n_groups = len(set(groups))
    if k > n_groups:
        unit = "patients" if n_groups < len(groups) else "slices"
        raise UsageError(f"--cv {k}: only {n_groups} labelled train+val {unit} to split into folds")
    return group_fold_indices(groups, k, CV_SEED)


def device_folds(data: Dataset, folds_idx: list[np.ndarray], device: torch.device) -> list[Fold]:
    """(train, held-out) device splits of each fold: every pool slice is held out exactly once."""
    images = np.concatenate([data.train.images, data.val.images])
    masks = np.concatenate([data.train.masks, data.val.masks])
    folds = []
    for held in folds_idx:
        rest = np.setdiff1d(np.arange(len(images)), held)
        folds.append((DeviceSplit.from_arrays(images[rest], masks[rest], device),
                      DeviceSplit.from_arrays(images[held], masks[held], device)))
    return folds


@dataclass
class Selection:
    """The folds a trial trains and is scored on.

    ``held_out[i]`` indexes ``masks`` (the selection slices: val, or the whole pool with --cv)
    with the slices fold i is scored on; every selection slice is held out exactly once.
    """

    folds: list[Fold]
    held_out: list[np.ndarray]
    masks: np.ndarray  # (N, H, W) class ids of the selection slices


def selection_folds(data: Dataset, cv: int, device: torch.device, recorded: list[list[str]] | None = None) -> Selection:
    """Train on train and select on val (``cv`` 0), or K folds over train+val.

    ``recorded`` are a study's folds by slice name (``best`` retrains on the search's folds even
    if the fold rule has changed since).
    """
    if not cv:
        folds = [(DeviceSplit.from_arrays(data.train.images, data.train.masks, device),
                  DeviceSplit.from_arrays(data.val.images, data.val.masks, device))]
        return Selection(folds, [np.arange(len(data.val))], data.val.masks)
    if recorded is not None:
        index = {name: i for i, name in enumerate(pool_names(data))}
        folds_idx = [np.array([index[name] for name in fold]) for fold in recorded]
    else:
        folds_idx = cv_folds(data, cv)
    masks = np.concatenate([data.train.masks, data.val.masks])
    return Selection(device_folds(data, folds_idx, device), folds_idx, masks)


def estimate_holdout(data: Dataset, fraction: float) -> np.ndarray | None:
    """Indices into train of the slices ``best --evaluate`` scores its estimate on: ``fraction``
    of the train patients (at least one, never all), chosen by a fixed seed; None for 0.

    The estimate's retrainings never train on them, and the search selected on val, so neither
    training nor selection saw them.
    """
    if not fraction:
        return None
    try:
        _, held = split_groups(list(data.train.groups), HOLDOUT_SEED, (1.0 - fraction, fraction))
    except ValueError:
        raise UsageError(f"--holdout {fraction}: {len(set(data.train.groups))} train patients are too few to hold "
                         "any out; pass --holdout 0") from None
    return held


def without_holdout(selection: Selection, data: Dataset, held: np.ndarray, device: torch.device) -> tuple[Selection, DeviceSplit]:
    """The val selection with ``held`` taken out of train, and ``held`` as a split of its own."""
    (_, val), = selection.folds
    rest = np.setdiff1d(np.arange(len(data.train)), held)
    train = DeviceSplit.from_arrays(data.train.images[rest], data.train.masks[rest], device)
    hold = DeviceSplit.from_arrays(data.train.images[held], data.train.masks[held], device)
    return Selection([(train, val)], selection.held_out, selection.masks), hold


def refit_without_holdout(data: Dataset, held: np.ndarray, device: torch.device) -> DeviceSplit:
    """Train + val with ``held`` taken out: what the estimate's refit trains on, as the shipped
    refit trains on all of train + val."""
    rest = np.setdiff1d(np.arange(len(data.train)), held)
    return DeviceSplit.from_arrays(np.concatenate([data.train.images[rest], data.val.images]),
                                   np.concatenate([data.train.masks[rest], data.val.masks]), device)
