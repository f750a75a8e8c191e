"""The training loss: a mix of weighted cross-entropy and soft Dice over the foreground classes."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def class_weights(masks: torch.Tensor, power: float, num_classes: int = 4) -> torch.Tensor:
    """Cross-entropy weights ``(1 / frequency) ** power``, scaled so the mean pixel weight is 1.

    ``power`` 0 gives plain cross-entropy; 1 fully balances the classes (background is ~90 % of a
    cardiac slice, so 1 over-weights the thin myocardium and tends to thicken it).
    """
    counts = torch.bincount(masks.reshape(-1).long(), minlength=num_classes).double()
    freq = (counts / counts.sum()).clamp(min=1e-6)
    weights = freq.pow(-power)
    weights = weights / (weights * freq).sum()
    return weights.float().to(masks.device)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """``1 - mean soft Dice`` of the foreground classes over the whole batch.

    logits ``(B, C, H, W)``, target ``(B, H, W)`` class ids. Counts are summed over the batch
    (like the evaluation's stack Dice), so slices without some class do not produce 0/0.
    """
    probs = logits.float().softmax(dim=1)[:, 1:]
    onehot = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].float()
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    total = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    return 1 - ((2 * inter + eps) / (total + eps)).mean()


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None, dice_weight: float
) -> torch.Tensor:
    """``(1 - dice_weight) * CE + dice_weight * soft Dice``."""
    loss = logits.new_zeros((), dtype=torch.float32)
    if dice_weight < 1:
        ce = F.cross_entropy(logits.float(), target.long(), weight=weights)
        loss = loss + (1 - dice_weight) * ce
    if dice_weight > 0:
        loss = loss + dice_weight * soft_dice_loss(logits, target)
    return loss
