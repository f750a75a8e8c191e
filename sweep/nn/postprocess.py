"""Optional inference refinements, each switched on only where it helps on validation.

- Test-time augmentation by small rotations (never flips: the RV lies on a known side of a
  short-axis slice, and the model never saw mirrored hearts).
- Keeping the largest connected component of each class: a heart has one LV cavity, one
  myocardium and one RV on a slice, so stray islands are false positives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from sweep.core.records import VAL_DICE_FG
from sweep.nn.metrics import dice_scores
from sweep.nn.runtime import predict_logits

TTA_ANGLES = (-10.0, 0.0, 10.0)  # degrees, within the augmentation range the sweep searches


def _rotate(x: torch.Tensor, degrees: float, mode: str = "bilinear") -> torch.Tensor:
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], device=x.device)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)


def predict_probs(model, images: torch.Tensor, bf16: bool, tta: bool = False) -> torch.Tensor:
    """Class probabilities ``(N, C, H, W)`` for images ``(N, 1, H, W)``; averaged over rotations with ``tta``."""
    if not tta:
        return predict_logits(model, images, bf16).softmax(1)
    total = 0
    for angle in TTA_ANGLES:
        probs = predict_logits(model, _rotate(images, angle), bf16).softmax(1)
        total = total + (_rotate(probs, -angle) if angle else probs)
    return total / len(TTA_ANGLES)


def keep_largest_component(masks: np.ndarray, classes=(1, 2, 3)) -> np.ndarray:
    """For each slice and class, relabel all but the largest 8-connected island as background."""
    out = masks.copy()
    structure = np.ones((3, 3), bool)
    for i in range(out.shape[0]):
        for c in classes:
            labels, n = ndimage.label(out[i] == c, structure=structure)
            if n > 1:
                sizes = np.bincount(labels.ravel())[1:]
                out[i][(labels > 0) & (labels != 1 + int(np.argmax(sizes)))] = 0
    return out


def apply_postprocessing(probs: torch.Tensor, post: dict) -> np.ndarray:
    """Class-id masks ``(N, H, W)`` uint8 from probabilities ``(N, C, H, W)``, cleaned if ``post`` says so."""
    masks = probs.argmax(1).numpy().astype(np.uint8)
    return keep_largest_component(masks) if post["largest_component"] else masks


@dataclass
class Probs:
    """Class probabilities ``(N, C, H, W)`` of the same slices, without and with rotation TTA."""

    plain: torch.Tensor
    tta: torch.Tensor

    def of(self, tta: bool) -> torch.Tensor:
        return self.tta if tta else self.plain

    @classmethod
    def mean(cls, items: list[Probs]) -> Probs:
        """The ensemble of several models' probabilities."""
        return cls(torch.stack([p.plain for p in items]).mean(0), torch.stack([p.tta for p in items]).mean(0))


def choose_postprocessing(probs: Probs, masks: np.ndarray) -> dict:
    """Keep each refinement only if it raises the ensemble's held-out ``dice_fg`` (ties: off).

    ``probs`` are the ensemble's probabilities of the held-out slices; ``masks`` their ground
    truth ``(N, H, W)``.
    """
    truth = torch.as_tensor(masks)
    scores = {}
    for tta in (False, True):
        for lcc in (False, True):
            pred = apply_postprocessing(probs.of(tta), {"tta": tta, "largest_component": lcc})
            scores[(tta, lcc)] = dice_scores(torch.as_tensor(pred), truth)["dice_fg"]
    tta, lcc = max(scores, key=lambda k: (round(scores[k], 6), -sum(k)))
    val_scores = {f"tta={a},lcc={b}".lower(): round(v, 5) for (a, b), v in scores.items()}
    return {"tta": tta, "largest_component": lcc, VAL_DICE_FG: val_scores}
