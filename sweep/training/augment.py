"""Training-time augmentation, on the training device, one random draw per slice.

Spatial (image bilinear, mask nearest, through one sampling grid): rotation, zoom and
translation (one affine), and an elastic deformation (a smooth random displacement field).
Intensity: gamma, low-resolution simulation, Gaussian blur and Gaussian noise, the
augmentations that make 2-D cardiac segmenters generalise across scanners (nnU-Net's set).
Brightness and contrast are left out on purpose: every slice is standardised to zero mean
and unit variance before the network sees it, which undoes any global brightness or
contrast change (only non-linear changes such as gamma survive it).

Mirroring (flips and the swap of the two in-plane axes) comes first, for data whose stacks
come in several in-plane orientations.

Every magnitude is a hyperparameter of ``TrainConfig`` and 0 switches it off; the random
draws of an augmentation that is off are skipped, so configurations without the newer
augmentations train exactly as before they existed.
"""

from __future__ import annotations

import math
import torch
from torch.nn import functional as F

from sweep.search.config import TrainConfig

ELASTIC_GRID = 4  # control points per side of the random displacement field: smooth, heart-sized folds
LOWRES_PROBABILITY = 0.5  # of a slice being simulated at lower resolution, when aug_lowres > 0


def augment(
    images: torch.Tensor, masks: torch.Tensor, cfg: TrainConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment images ``(N, 1, H, W)`` in [0, 1] and masks ``(N, H, W)`` class ids."""
    if cfg.aug_mirror > 0:
        images, masks = _mirror(images, masks, cfg.aug_mirror, generator)
    grid = _sampling_grid(images, cfg, generator)
    if grid is not None:
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
        masks = (
            F.grid_sample(masks[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
            .squeeze(1)
            .long()
        )
    return _intensity(images, cfg, generator), masks


def _mirror(images: torch.Tensor, masks: torch.Tensor, p: float, generator: torch.Generator):
    """Flip the rows, flip the columns and swap the two axes of each slice, each with probability
    ``p`` (at 0.5 all eight orientations are equally likely): real short-axis stacks come in
    several in-plane orientations (ACDC's 216 x 256 and 256 x 216 volumes put the RV on
    different sides of the LV, docs/VOLUMES.md), and the file's affine does not say which.
    The swap is skipped for non-square slices, which it would not keep in one batch."""
    n, _, h, w = images.shape
    draws = torch.rand(n, 3, device=images.device, generator=generator) < p
    masks = masks[:, None]
    ops = [lambda t: t.flip(2), lambda t: t.flip(3)] + ([lambda t: t.transpose(2, 3)] if h == w else [])
    for column, op in enumerate(ops):
        pick = draws[:, column].view(n, 1, 1, 1)
        images, masks = torch.where(pick, op(images), images), torch.where(pick, op(masks), masks)
    return images, masks[:, 0]


def _uniform(n: int, columns: int, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``(n, columns)`` uniform in [-1, 1)."""
    return torch.rand(n, columns, device=images.device, generator=generator) * 2 - 1


def _sampling_grid(images: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor | None:
    """The ``(N, H, W, 2)`` grid of every spatial augmentation that is on, or None."""
    n = images.shape[0]
    affine = cfg.aug_rotate > 0 or cfg.aug_scale > 0 or cfg.aug_translate > 0
    if not affine and cfg.aug_elastic <= 0:
        return None
    theta = torch.eye(2, 3, device=images.device).expand(n, 2, 3)
    if cfg.aug_rotate > 0 or cfg.aug_scale > 0:
        u = _uniform(n, 2, images, generator)
        angle = u[:, 0] * math.radians(cfg.aug_rotate)
        scale = 1 + u[:, 1] * cfg.aug_scale
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        zero = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    if cfg.aug_translate > 0:  # a fraction of the field of view; grid coordinates span 2 per side
        shift = _uniform(n, 2, images, generator) * (2 * cfg.aug_translate)
        theta = torch.cat([theta[:, :, :2], theta[:, :, 2:] + shift[:, :, None]], 2)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    if cfg.aug_elastic > 0:
        grid = grid + _elastic_field(images, cfg.aug_elastic, generator)
    return grid


def _elastic_field(images: torch.Tensor, pixels: float, generator: torch.Generator) -> torch.Tensor:
    """A smooth random displacement ``(N, H, W, 2)`` in grid units, up to ``pixels`` at its control points."""
    n, _, h, w = images.shape
    coarse = _uniform(n, 2 * ELASTIC_GRID * ELASTIC_GRID, images, generator).view(n, 2, ELASTIC_GRID, ELASTIC_GRID)
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
    per_pixel = torch.tensor([2.0 / w, 2.0 / h], device=images.device).view(1, 2, 1, 1)  # grid x is width
    return (field * pixels * per_pixel).permute(0, 2, 3, 1)


def _intensity(images: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    n = images.shape[0]
    if cfg.aug_gamma > 0:
        log_gamma = _uniform(n, 1, images, generator).view(n, 1, 1, 1) * cfg.aug_gamma
        images = images.clamp(min=0).pow(log_gamma.exp())
    if cfg.aug_lowres > 0:
        images = _low_resolution(images, cfg.aug_lowres, generator)
    if cfg.aug_blur > 0:
        sigma = (_uniform(n, 1, images, generator).view(n) + 1) / 2 * cfg.aug_blur
        images = _gaussian_blur(images, sigma, cfg.aug_blur)
    if cfg.aug_noise > 0:  # in units of each slice's own spread, as the standardisation will see it
        level = (_uniform(n, 1, images, generator).view(n, 1, 1, 1) + 1) / 2 * cfg.aug_noise
        spread = images.std(dim=(1, 2, 3), keepdim=True)
        noise = torch.randn(images.shape, device=images.device, generator=generator)
        images = images + noise * level * spread
    return images


def _low_resolution(images: torch.Tensor, max_loss: float, generator: torch.Generator) -> torch.Tensor:
    """A random half of the slices as a coarser acquisition would look: down-sampled by
    ``1 + max_loss`` and back up (bilinear), blended with the original by a random weight per
    slice, which stands in for the factors in between. Sizes come from the config, so nothing
    waits for the device."""
    n, _, h, w = images.shape
    factor = 1 + max_loss
    small = F.interpolate(images, size=(max(1, round(h / factor)), max(1, round(w / factor))), mode="bilinear",
                          align_corners=False, antialias=True)
    coarse = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    u = (_uniform(n, 2, images, generator) + 1) / 2
    weight = torch.where(u[:, :1] < LOWRES_PROBABILITY, u[:, 1:], torch.zeros_like(u[:, 1:])).view(n, 1, 1, 1)
    return images + weight * (coarse - images)


def _gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with a per-slice ``sigma`` ``(N,)`` <= ``max_sigma`` pixels (0: unchanged);
    the kernel is sized from ``max_sigma``, so nothing waits for the device."""
    n, _, h, w = images.shape
    radius = max(1, math.ceil(3 * max_sigma))
    taps = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (taps[None] / sigma.clamp(min=1e-3)[:, None]) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)  # (N, K); sigma ~0 gives a delta
    x = F.pad(images.view(1, n, h, w), (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(n, 1, 1, -1), groups=n)
    x = F.conv2d(x, kernel.view(n, 1, -1, 1), groups=n)
    return x.view(n, 1, h, w)
