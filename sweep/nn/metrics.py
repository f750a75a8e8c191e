"""Dice as docs/FORMATS.md defines it: pixel counts summed over all images of a split ("stack" Dice)."""

from __future__ import annotations

import numpy as np
import torch

from sweep.core.records import CLASS_NAMES

FOREGROUND = (1, 2, 3)


def dice_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int = 4) -> torch.Tensor:
    """Per-class counts ``(3, C)``: intersection, predicted and true pixels.

    ``pred`` and ``target`` hold class ids, any matching shape. Counts are summed so that they can
    be accumulated over batches and turned into Dice once.
    """
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    inter = torch.bincount(target[pred == target], minlength=num_classes)
    n_pred = torch.bincount(pred, minlength=num_classes)
    n_true = torch.bincount(target, minlength=num_classes)
    return torch.stack([inter, n_pred, n_true])[:, :num_classes]


def dice_from_counts(counts: torch.Tensor) -> dict[str, float]:
    """Per-class Dice plus ``dice_fg`` (mean of RV, Myo, LV) and ``dice_mean4``.

    A class that is absent from both prediction and ground truth scores 1.0.
    """
    inter, n_pred, n_true = counts.double().cpu()
    denom = n_pred + n_true
    dice = torch.where(denom > 0, 2 * inter / denom.clamp(min=1), torch.ones_like(denom))
    out = {f"dice_{name}": float(d) for name, d in zip(CLASS_NAMES, dice)}
    out["dice_fg"] = float(dice[list(FOREGROUND)].mean())
    out["dice_mean4"] = float(dice.mean())
    return out


def dice_scores(pred: torch.Tensor, target: torch.Tensor, num_classes: int = 4) -> dict[str, float]:
    return dice_from_counts(dice_counts(pred, target, num_classes))


def per_image_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int = 4) -> torch.Tensor:
    """Dice counts of each image, ``(N, 3, C)``; their sum over images gives the split's counts."""
    return torch.stack([dice_counts(p, t, num_classes) for p, t in zip(pred, target)])


def bootstrap_dice_fg(counts: torch.Tensor, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the split's ``dice_fg`` when its images are resampled with replacement.

    ``counts`` are per-image counts ``(N, 3, C)``; each resample sums them like the stack Dice does.
    """
    idx = np.random.default_rng(seed).integers(0, counts.shape[0], size=(n_boot, counts.shape[0]))
    return _interval(_resampled_fg(counts, idx), level)


def bootstrap_dice_fg_gain(counts: torch.Tensor, base: torch.Tensor, n_boot: int = 2000, seed: int = 0,
                           level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``dice_fg(counts) - dice_fg(base)``, two predictions of the same images
    (per-image counts ``(N, 3, C)`` each), the images resampled together (a paired bootstrap)."""
    idx = np.random.default_rng(seed).integers(0, counts.shape[0], size=(n_boot, counts.shape[0]))
    return _interval(_resampled_fg(counts, idx) - _resampled_fg(base, idx), level)


def _resampled_fg(counts: torch.Tensor, idx: np.ndarray) -> np.ndarray:
    """The stack ``dice_fg`` of each resample ``idx`` (B, N) of per-image counts."""
    c = counts.double().numpy()
    inter, n_pred, n_true = np.moveaxis(c[idx].sum(axis=1), 1, 0)  # each (B, C)
    denom = n_pred + n_true
    dice = np.where(denom > 0, 2 * inter / np.maximum(denom, 1), 1.0)
    return dice[:, list(FOREGROUND)].mean(axis=1)


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))
