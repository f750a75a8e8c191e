"""The built-in phantom: determinism, anatomy that matches its masks, and the dataset."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data import (
    Dataset,
    load_dataset,
    make_phantom,
    make_phantom_dataset,
    read_image,
    read_mask,
    write_mask,
)

BG, RV, MYO, LV = range(4)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return make_phantom_dataset(0)


@pytest.fixture(scope="module")
def phantom(dataset) -> tuple[np.ndarray, np.ndarray]:
    """All 200 slices of the default phantom, (200, 96, 96) images and masks."""
    ds = dataset
    return (np.concatenate([ds.train.images, ds.val.images, ds.test.images]),
            np.concatenate([ds.train.masks, ds.val.masks, ds.test.masks]))


def test_dataset(dataset):
    ds = dataset
    assert (len(ds.train), len(ds.val), len(ds.test)) == (100, 20, 80)
    assert ds.synthetic and ds.source == "phantom" and ds.layout == "phantom" and ds.split_seed == 0
    assert ds.test.masks is not None
    assert ds.describe() == "phantom (synthetic, seed 0): 100 train / 20 val / 80 test, 96x96"
    names = ds.train.names + ds.val.names + ds.test.names
    assert len(set(names)) == 200
    # Split members are the seeded permutation's, and each keeps its own slice.
    images, masks = make_phantom(3, 0)
    for split in (ds.train, ds.val, ds.test):
        for i, name in enumerate(split.names):
            if name in ("phantom000", "phantom001", "phantom002"):
                k = int(name[-3:])
                np.testing.assert_array_equal(split.images[i], images[k])
                np.testing.assert_array_equal(split.masks[i], masks[k])


def test_dataset_seed_changes_data_and_split(dataset):
    a, b = dataset, make_phantom_dataset(1)
    assert b.split_seed == 1 and a.fingerprint != b.fingerprint
    assert a.train.names != b.train.names


def test_shapes_and_ranges(phantom):
    images, masks = phantom
    assert images.shape == masks.shape == (200, 96, 96)
    assert images.dtype == np.float32 and masks.dtype == np.uint8
    assert images.min() >= 0 and images.max() <= 1
    assert set(np.unique(masks)) == {BG, RV, MYO, LV}
    # 8-bit quantised, so a PNG round trip is exact like for real data.
    np.testing.assert_array_equal(np.round(images * 255) / 255, images)


def test_deterministic_per_seed():
    a_img, a_mask = make_phantom(6, 3)
    b_img, b_mask = make_phantom(6, 3)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    c_img, c_mask = make_phantom(6, 4)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_mask, c_mask)
    # Slices differ from each other, and slice i does not depend on n.
    assert not np.array_equal(a_img[0], a_img[1])
    p_img, p_mask = make_phantom(2, 3)
    np.testing.assert_array_equal(p_img, a_img[:2])
    np.testing.assert_array_equal(p_mask, a_mask[:2])


def test_other_sizes():
    images, masks = make_phantom(3, 0, size=64)
    assert images.shape == masks.shape == (3, 64, 64)
    assert all(set(np.unique(m)) == {BG, RV, MYO, LV} for m in masks)


def test_class_proportions(phantom):
    _, masks = phantom
    frac = np.stack([(masks == c).mean(axis=(1, 2)) for c in range(4)], 1)  # (200, 4)
    fg = 1 - frac[:, BG]
    assert 0.08 < fg.mean() < 0.22, fg.mean()
    assert fg.min() > 0.03 and fg.max() < 0.35
    for c in (RV, MYO, LV):
        assert 0.02 < frac[:, c].mean() < 0.09, (c, frac[:, c].mean())
    # Every class in (nearly) every slice.
    assert (frac[:, 1:] > 0).all(axis=1).mean() >= 0.95


def _neighbours(mask: np.ndarray) -> list[np.ndarray]:
    """The 4 shifted copies of (H, W) mask (edges padded with background)."""
    p = np.pad(mask, 1)
    return [p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]]


def _rv_angles(masks: np.ndarray) -> np.ndarray:
    """Angle (degrees, counter-clockwise from +x, y up) from LV to RV centroid per mask."""
    angles = []
    for m in masks:
        ly, lx = np.argwhere(m == LV).mean(0)
        ry, rx = np.argwhere(m == RV).mean(0)
        angles.append(np.degrees(np.arctan2(ly - ry, rx - lx)))
    return np.array(angles)


def test_anatomy_is_consistent(phantom):
    _, masks = phantom
    for m in masks:
        lv_nb = np.stack([nb[m == LV] for nb in _neighbours(m)])
        # The myocardium encloses the LV: LV never touches background or RV.
        assert np.isin(lv_nb, (LV, MYO)).all()
        # The RV sits against the septum: it touches the myocardium.
        assert any((nb[m == RV] == MYO).any() for nb in _neighbours(m))


def test_rv_lies_where_it_does_in_the_coursework_data(phantom):
    # Measured on ../shared/data/cmri train+val (see RV_ANGLE_DEGREES): the RV centre is
    # above the LV's in every slice and to its right in 77 % of them, median angle 70.
    angles = _rv_angles(phantom[1])
    assert ((20 < angles) & (angles < 165)).all(), (angles.min(), angles.max())
    right = (np.abs(angles) < 90).mean()
    assert 0.65 < right < 0.9, right
    assert 55 < np.median(angles) < 85, np.median(angles)


def test_rv_angles_match_the_real_masks(phantom, cmri_path):
    real = load_dataset(str(cmri_path))
    masks = np.concatenate([real.train.masks, real.val.masks])
    masks = masks[[(m == RV).any() and (m == LV).any() for m in masks]]
    real_angles, ours = _rv_angles(masks), _rv_angles(phantom[1])
    for q in (25, 50, 75):
        assert abs(np.percentile(ours, q) - np.percentile(real_angles, q)) < 10, q


def test_image_contrast_matches_masks(phantom):
    images, masks = phantom
    lv = np.array([img[m == LV].mean() for img, m in zip(images, masks)])
    myo = np.array([img[m == MYO].mean() for img, m in zip(images, masks)])
    rv = np.array([img[m == RV].mean() for img, m in zip(images, masks)])
    # Blood is clearly brighter than muscle in every slice: learnable.
    assert (lv > myo + 0.2).all() and (rv > myo + 0.1).all()
    # But not a trivial threshold: background holds both dark (lung, air) and bright
    # (fat, aorta) structures, and the images are noisy.
    for img, m in zip(images[:50], masks[:50]):
        bg = img[m == BG]
        assert (bg < 0.1).mean() > 0.05 and (bg > lv.min()).mean() > 0.005
    bright_bg = np.mean([(img[m == BG] > 0.5).mean() for img, m in zip(images, masks)])
    assert bright_bg > 0.02
    lv_std = np.mean([img[m == LV].std() for img, m in zip(images, masks)])
    assert lv_std > 0.03


def test_png_round_trip(phantom, tmp_path):
    images, masks = phantom
    Image.fromarray((images[0] * 255).round().astype(np.uint8)).save(tmp_path / "p.png")
    write_mask(tmp_path / "p_mask.png", masks[0])
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), images[0])
    np.testing.assert_array_equal(read_mask(tmp_path / "p_mask.png"), masks[0])
