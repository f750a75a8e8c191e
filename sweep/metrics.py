"""Dice as DESIGN.md defines it: pixel counts summed over all images of a split ("stack" Dice)."""

from __future__ import annotations

import torch

CLASS_NAMES = ("bg", "rv", "myo", "lv")  # class ids 0..3
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
