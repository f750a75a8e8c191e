"""Loading, validation, splitting, fingerprints and mask I/O of the data package."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data import (
    DataError,
    Dataset,
    Split,
    load_dataset,
    read_image,
    read_mask,
    split_indices,
    write_mask,
)
from tests.helpers import (
    random_image,
    random_mask,
    write_coursework,
    write_png,
    write_split,
)

ROOT = Path(__file__).resolve().parents[1]
CMRI = ROOT / ".." / "shared" / "data" / "cmri"


def _raises(match: str, source, **kw) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(str(source), **kw)
    msg = str(info.value)
    assert "\n" not in msg
    assert match in msg, msg
    return msg


# --- the real coursework data -----------------------------------------------------------

@pytest.fixture(scope="module")
def cmri() -> Dataset:
    if not (CMRI / "train").is_dir():
        pytest.skip(f"real data not found at {CMRI}")
    return load_dataset(str(CMRI))


def test_real_coursework_data(cmri):
    assert (len(cmri.train), len(cmri.val), len(cmri.test)) == (60, 12, 48)
    assert cmri.layout == "coursework" and not cmri.synthetic and cmri.split_seed is None
    assert cmri.source == str(CMRI.resolve()) and Path(cmri.source).is_absolute()
    assert cmri.test.masks is None
    for split in (cmri.train, cmri.val, cmri.test):
        assert split.images.shape[1:] == (96, 96) and split.images.dtype == np.float32
        assert 0.0 <= split.images.min() and split.images.max() <= 1.0
        assert list(split.names) == sorted(split.names)
    for split in (cmri.train, cmri.val):
        assert split.masks.dtype == np.uint8 and split.masks.shape == split.images.shape
        assert set(np.unique(split.masks)) == {0, 1, 2, 3}
    assert cmri.describe() == f"{cmri.source} (coursework): 60 train / 12 val / 48 test (no test masks), 96x96"
    # Images are the 8-bit PNG values / 255, in the order of the names.
    first = CMRI / "train" / "image" / f"{cmri.train.names[0]}.png"
    np.testing.assert_array_equal(cmri.train.images[0] * 255, np.asarray(Image.open(first), np.float32))


def test_real_data_relative_path_resolves(cmri, monkeypatch):
    monkeypatch.chdir(ROOT)
    ds = load_dataset("../shared/data/cmri")
    assert ds.source == cmri.source and ds.fingerprint == cmri.fingerprint


# --- sources and layouts ----------------------------------------------------------------

def test_phantom_source_ignores_seed_and_is_stable_across_processes():
    # Another process computes the default phantom's fingerprint while this one loads it
    # with a different sweep seed: same data, same hash.
    code = "from data import load_dataset; print(load_dataset('phantom').fingerprint)"
    other = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    ds = load_dataset("phantom", seed=5)
    assert ds.synthetic and ds.source == "phantom" and ds.layout == "phantom" and ds.split_seed == 0
    out, _ = other.communicate(timeout=60)
    assert other.returncode == 0
    assert out.strip() == ds.fingerprint


def test_unknown_source_names_the_flag(tmp_path):
    msg = _raises("--data: 'foo' is neither 'phantom' nor an existing folder", "foo")
    assert msg == "--data: 'foo' is neither 'phantom' nor an existing folder"
    f = tmp_path / "file.txt"
    f.write_text("x")
    _raises(f"--data: '{f}' is a file", f)


def test_empty_source():
    _raises("--data: empty value", "")


def test_unknown_layout(tmp_path):
    (tmp_path / "images").mkdir()
    msg = _raises(str(tmp_path), tmp_path)
    assert "train/ and val/" in msg and "image/ and mask/" in msg


def test_coursework_needs_train_and_val(tmp_path):
    write_split(tmp_path / "train", ["a", "b"])
    _raises(f"{tmp_path}: coursework layout needs train/ and val/, val/ is missing", tmp_path)


def test_empty_split(tmp_path):
    root = write_coursework(tmp_path)
    for p in (root / "val" / "image").iterdir():
        p.unlink()
    (root / "val" / "image" / "notes.txt").write_text("not an image")
    _raises(f"{root / 'val' / 'image'}: no .png images", root)


def test_split_without_image_folder(tmp_path):
    root = write_coursework(tmp_path)
    (root / "train" / "image").rename(root / "train" / "images")
    _raises(f"{root / 'train'}: no image/ folder", root)


def test_train_without_mask_folder(tmp_path):
    root = write_coursework(tmp_path)
    for p in (root / "train" / "mask").iterdir():
        p.unlink()
    (root / "train" / "mask").rmdir()
    _raises(f"{root / 'train' / 'mask'}: missing", root)


def test_image_without_mask(tmp_path):
    root = write_coursework(tmp_path)
    (root / "train" / "mask" / "train02_mask.png").unlink()
    msg = _raises(f"{root / 'train' / 'image' / 'train02.png'}: no mask", root)
    assert str(root / "train" / "mask" / "train02_mask.png") in msg


def test_orphan_masks_and_other_files_are_ignored(tmp_path):
    root = write_coursework(tmp_path)
    write_png(root / "train" / "mask" / "ghost_mask.png", random_mask(0))
    (root / "train" / "image" / "readme.txt").write_text("hi")
    (root / "train" / "image" / ".hidden.png").write_bytes(b"junk")
    (root / "train" / "image" / "sub.png").mkdir()
    ds = load_dataset(str(root))
    assert ds.train.names == ("train00", "train01", "train02", "train03")


def test_test_split_masks_optional(tmp_path):
    root = write_coursework(tmp_path)
    assert load_dataset(str(root)).test.masks is None  # no mask/ folder
    (root / "test" / "mask").mkdir()
    assert load_dataset(str(root)).test.masks is None  # empty mask/ folder
    write_split(root / "test", ["test00", "test01", "test02"])
    ds = load_dataset(str(root))
    assert ds.test.masks.shape == (3, 16, 16)
    assert "(no test masks)" not in ds.describe()


def test_test_split_partial_masks(tmp_path):
    root = write_coursework(tmp_path, test_masks=True)
    (root / "test" / "mask" / "test01_mask.png").unlink()
    (root / "test" / "mask" / "test02_mask.png").unlink()
    _raises(f"{root / 'test' / 'image' / 'test01.png'}: no mask", root)


def test_missing_test_folder_is_an_empty_split(tmp_path):
    root = tmp_path
    write_split(root / "train", ["a", "b"])
    write_split(root / "val", ["c"])
    ds = load_dataset(str(root))
    assert len(ds.test) == 0 and ds.test.masks is None and ds.test.images.shape == (0, 16, 16)
    assert ds.describe().endswith("2 train / 1 val / 0 test (no test masks), 16x16")


# --- file-level validation --------------------------------------------------------------

@pytest.fixture
def root(tmp_path) -> Path:
    return write_coursework(tmp_path)


def test_not_a_png(root):
    bad = root / "train" / "image" / "train01.png"
    bad.write_bytes(b"this is not an image at all")
    _raises(f"{bad}: not a readable PNG image (", root)


def test_truncated_png(root):
    bad = root / "val" / "image" / "val01.png"
    write_png(bad, np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    bad.write_bytes(bad.read_bytes()[:300])
    _raises(f"{bad}: not a readable PNG image (", root)


def test_jpeg_named_png(root):
    bad = root / "train" / "image" / "train00.png"
    Image.fromarray(random_image(0)).save(bad, format="JPEG")
    _raises(f"{bad}: not a readable PNG image (the file is JPEG)", root)


def test_colour_image(root):
    bad = root / "train" / "image" / "train01.png"
    rgb = np.stack([random_image(1), random_image(2), random_image(3)], -1)
    write_png(bad, rgb)
    _raises(f"{bad}: colour image (mode RGB), expected greyscale", root)


def test_grey_rgb_image_is_accepted(tmp_path):
    grey = random_image(1)
    path = write_png(tmp_path / "g.png", np.stack([grey] * 3, -1))
    np.testing.assert_array_equal(read_image(path), grey / np.float32(255))


def test_alpha_image(root):
    bad = root / "train" / "image" / "train01.png"
    write_png(bad, random_image(1), mode="LA")
    _raises(f"{bad}: image with an alpha channel (mode LA)", root)


def test_colour_palette_image(root):
    bad = root / "train" / "image" / "train01.png"
    rgb = np.stack([random_image(1), random_image(2), random_image(3)], -1)
    Image.fromarray(rgb).quantize(16).save(bad)
    _raises(f"{bad}: colour image (mode P)", root)


def test_animated_png(root):
    bad = root / "train" / "image" / "train01.png"
    frames = [Image.fromarray(random_image(i)) for i in range(2)]
    frames[0].save(bad, save_all=True, append_images=frames[1:])
    _raises(f"{bad}: animated PNG with 2 frames", root)


def test_16bit_image_scaled(tmp_path):
    arr = np.array([[0, 1000], [32768, 65535]], np.uint16)
    path = write_png(tmp_path / "x16.png", arr)
    assert Image.open(path).mode.startswith("I")
    out = read_image(path)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, arr / 65535.0, rtol=1e-6)


def test_8bit_image_values(tmp_path):
    arr = np.array([[0, 1], [128, 255]], np.uint8)
    out = read_image(write_png(tmp_path / "x.png", arr))
    assert out.dtype == np.float32 and out.shape == (2, 2)
    np.testing.assert_array_equal(out, arr.astype(np.float32) / 255)


def test_images_of_different_sizes(root):
    bad = root / "val" / "image" / "val01.png"
    write_png(bad, random_image(5, (16, 20)))
    msg = _raises(f"{bad}: image is 16x20 but ", root)
    assert str(root / "train" / "image" / "train00.png") in msg and "is 16x16" in msg


def test_mask_shape_differs_from_image(root):
    bad = root / "train" / "mask" / "train03_mask.png"
    write_png(bad, random_mask(3, (16, 12)))
    msg = _raises(f"{bad}: mask is 16x12 but its image ", root)
    assert str(root / "train" / "image" / "train03.png") in msg


def test_mask_values_out_of_range(root):
    bad = root / "val" / "mask" / "val00_mask.png"
    m = random_mask(0)
    m[0, :3] = [4, 255, 85]
    write_png(bad, m)
    _raises(f"{bad}: mask values must be class ids 0..3, found 4, 85, 255", root)


def test_colour_mask(root):
    bad = root / "train" / "mask" / "train00_mask.png"
    write_png(bad, np.stack([random_mask(0), random_mask(1), random_mask(2)], -1))
    _raises(f"{bad}: colour image (mode RGB)", root)


def test_palette_mask_reads_indices(tmp_path):
    m = random_mask(0)
    img = Image.fromarray(m).convert("P")  # indices equal the grey values here
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 744)
    path = tmp_path / "p_mask.png"
    img.save(path)
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(read_mask(path), m)


def test_missing_file():
    with pytest.raises(DataError, match="nowhere.png: file not found"):
        read_image("/nonexistent/nowhere.png")


# --- pool layout and splitting ----------------------------------------------------------

def _pool(root: Path, n: int, mask_suffix="_mask") -> Path:
    for i in range(n):
        write_png(root / "image" / f"s{i:03d}.png", random_image(i))
        write_png(root / "mask" / f"s{i:03d}{mask_suffix}.png", random_mask(i))
    return root


def test_pool_layout_split_is_seeded_and_recorded(tmp_path):
    root = _pool(tmp_path, 20)
    ds = load_dataset(str(root))
    assert ds.layout == "pool" and ds.split_seed == 0 and not ds.synthetic
    assert (len(ds.train), len(ds.val), len(ds.test)) == (10, 2, 8)
    assert ds.test.masks is not None
    names = ds.train.names + ds.val.names + ds.test.names
    assert sorted(names) == [f"s{i:03d}" for i in range(20)]
    train, val, test = split_indices(20, 0)
    assert ds.val.names == tuple(f"s{i:03d}" for i in val)
    # Images and masks stay paired with their names through the split.
    k = int(test[0])
    np.testing.assert_array_equal(ds.test.masks[0], random_mask(k))
    np.testing.assert_array_equal(ds.test.images[0], random_image(k) / np.float32(255))
    again = load_dataset(str(root))
    assert again.train.names == ds.train.names and again.fingerprint == ds.fingerprint
    other = load_dataset(str(root), seed=1)
    assert other.split_seed == 1 and other.train.names != ds.train.names
    assert "(pool, split seed 1): 10 train / 2 val / 8 test, 16x16" in other.describe()


def test_pool_accepts_masks_named_like_images(tmp_path):
    ds = load_dataset(str(_pool(tmp_path, 5, mask_suffix="")))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (3, 1, 1)


def test_pool_too_small(tmp_path):
    _raises(f"{tmp_path / 'image'}: pool layout needs at least 3 images", _pool(tmp_path, 2))


def test_pool_image_without_mask(tmp_path):
    root = _pool(tmp_path, 6)
    (root / "mask" / "s004_mask.png").unlink()
    _raises(f"{root / 'image' / 's004.png'}: no mask", root)


@pytest.mark.parametrize("n, sizes", [(200, (100, 20, 80)), (120, (60, 12, 48)), (20, (10, 2, 8)), (3, (1, 1, 1))])
def test_split_sizes(n, sizes):
    assert tuple(len(p) for p in split_indices(n, 0)) == sizes


def test_split_partition_deterministic_nonempty():
    for n in range(3, 40):
        for seed in (0, 1):
            parts = split_indices(n, seed)
            assert all(len(p) > 0 for p in parts)
            assert sorted(np.concatenate(parts).tolist()) == list(range(n))
            for a, b in zip(parts, split_indices(n, seed)):
                np.testing.assert_array_equal(a, b)
    assert not np.array_equal(split_indices(100, 0)[0], split_indices(100, 1)[0])


def test_split_bad_arguments():
    with pytest.raises(ValueError, match="n >= 3"):
        split_indices(2, 0)
    with pytest.raises(ValueError, match="fractions"):
        split_indices(10, 0, (0.5, 0.5, 0.0))


# --- Split / Dataset / fingerprint ------------------------------------------------------

def test_split_checks_its_arrays():
    imgs = np.zeros((2, 4, 4), np.float32)
    assert len(Split(imgs, np.zeros((2, 4, 4), np.uint8), ("a", "b"))) == 2
    with pytest.raises(ValueError):
        Split(imgs, np.zeros((2, 4, 5), np.uint8), ("a", "b"))
    with pytest.raises(ValueError):
        Split(imgs, None, ("a",))
    with pytest.raises(ValueError):
        Split(imgs.astype(np.float64), None, ("a", "b"))


def test_fingerprint_tracks_train_and_val_data(root):
    fp = load_dataset(str(root)).fingerprint
    assert re.fullmatch(r"[0-9a-f]{16}", fp)
    assert load_dataset(str(root)).fingerprint == fp
    # Test data is not part of it (held-back masks may arrive later).
    write_split(root / "test", ["test00", "test01", "test02"])
    assert load_dataset(str(root)).fingerprint == fp
    # One train pixel changes it.
    path = root / "train" / "image" / "train01.png"
    arr = np.asarray(Image.open(path)).copy()
    arr[3, 3] ^= 1
    write_png(path, arr)
    fp_pixel = load_dataset(str(root)).fingerprint
    assert fp_pixel != fp
    # One val label changes it.
    path = root / "val" / "mask" / "val00_mask.png"
    m = np.asarray(Image.open(path)).copy()
    m[0, 0] = (m[0, 0] + 1) % 4
    write_png(path, m)
    assert load_dataset(str(root)).fingerprint not in (fp, fp_pixel)


def test_import_has_no_heavy_or_upward_dependencies():
    code = (
        "import sys, data; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'optuna', 'sweep', 'model'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- mask writing -----------------------------------------------------------------------

def test_write_read_mask_round_trip(tmp_path):
    m = random_mask(7, (20, 24)).astype(np.int64)
    path = tmp_path / "out" / "deep" / "x_mask.png"
    write_mask(path, m)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "L"
        np.testing.assert_array_equal(np.asarray(img), m)  # pixel value = class id
    back = read_mask(path)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, m)


@pytest.mark.parametrize(
    "bad", [np.full((4, 4), 4), np.full((4, 4), -1), np.zeros((4, 4), np.float32), np.zeros((2, 4, 4), np.uint8)]
)
def test_write_mask_rejects_bad_masks(tmp_path, bad):
    with pytest.raises(ValueError):
        write_mask(tmp_path / "m.png", bad)
    assert not (tmp_path / "m.png").exists()
