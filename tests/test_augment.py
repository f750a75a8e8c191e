"""Training-time augmentation: each one does what it says, masks follow images, off means off."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sweep.training.augment import augment
from sweep.training.train import TrainConfig

OFF = TrainConfig()
NEW = {"aug_translate": 0.1, "aug_elastic": 4.0, "aug_lowres": 1.0, "aug_blur": 1.0, "aug_noise": 0.2}


def _square(n=6, size=32):
    """Bright squares on a dark field, with a mask of the square: where image and mask must agree."""
    images = torch.full((n, 1, size, size), 0.1)
    masks = torch.zeros((n, size, size), dtype=torch.long)
    images[:, :, 10:22, 10:22] = 0.9
    masks[:, 10:22, 10:22] = 3
    return images, masks


def _run(cfg, seed=0):
    images, masks = _square()
    return augment(images, masks, cfg, torch.Generator().manual_seed(seed))


def test_off_is_the_identity_and_draws_nothing():
    images, masks = _square()
    gen = torch.Generator().manual_seed(3)
    out_images, out_masks = augment(images, masks, OFF, gen)
    assert torch.equal(out_images, images) and torch.equal(out_masks, masks)
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(3).get_state())


def test_older_augmentations_draw_as_before_when_the_new_ones_are_off():
    """A version-1 configuration (rotation, zoom, gamma only) trains exactly as it did."""
    cfg = replace(OFF, aug_rotate=10.0, aug_scale=0.1, aug_gamma=0.3)
    gen = torch.Generator().manual_seed(5)
    u = torch.rand(6, 2, generator=gen)  # what the affine drew
    g = torch.rand(6, 1, generator=gen)  # what gamma drew
    after = gen.get_state()
    gen2 = torch.Generator().manual_seed(5)
    augment(*_square(), cfg, gen2)
    assert torch.equal(gen2.get_state(), after) and u.shape == (6, 2) and g.shape == (6, 1)


@pytest.mark.parametrize("name", sorted(NEW))
def test_each_new_augmentation_changes_images_and_keeps_masks_valid(name):
    images, masks = _run(replace(OFF, **{name: NEW[name]}))
    before, _ = _square()
    assert torch.isfinite(images).all()
    assert not torch.equal(images, before)
    assert masks.dtype == torch.long and set(masks.unique().tolist()) <= {0, 3}


@pytest.mark.parametrize("name", ["aug_translate", "aug_elastic"])
def test_spatial_augmentations_move_mask_and_image_together(name):
    images, masks = _run(replace(OFF, **{name: NEW[name]}), seed=1)
    bright = images[:, 0] > 0.5
    agree = (bright == (masks == 3)).float().mean()
    assert agree > 0.97  # only interpolated edge pixels may disagree
    assert not torch.equal(masks, _square()[1])  # and they did move


def test_intensity_augmentations_leave_masks_alone():
    _, masks = _run(replace(OFF, aug_lowres=1.0, aug_blur=1.0, aug_noise=0.2, aug_gamma=0.5))
    assert torch.equal(masks, _square()[1])


def test_blur_smooths_and_noise_roughens():
    before, _ = _square()
    blurred, _ = _run(replace(OFF, aug_blur=1.0))
    noisy, _ = _run(replace(OFF, aug_noise=0.2))
    edge = lambda x: ((x[..., 1:] - x[..., :-1]) ** 2).mean()  # noqa: E731 (blur keeps a step's total variation)
    assert edge(blurred) < edge(before) < edge(noisy)
