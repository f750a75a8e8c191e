"""NIfTI volumes: ACDC and nnU-Net readers, preprocessing and its inverse, the cache,
patient-wise splits and folds, bad input, the volume phantom and --groups on PNG folders."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from data import (
    SLICE_SIZE,
    TARGET_SPACING_MM,
    DataError,
    assemble,
    group_fold_indices,
    load_dataset,
    preprocess_volume,
    read_truth,
    split_groups,
    volume_spacing,
    write_acdc_phantom,
    write_labels_nifti,
    write_nnunet_phantom,
)
from data.split import fold_indices, split_indices
from data.volume_phantom import ACDC_GROUPS, make_volume_pair

ROOT = Path(__file__).resolve().parents[1]
BG, RV, MYO, LV = range(4)
SMALL = (60, 68)  # in-plane sizes for tests about errors: fast, anatomy irrelevant


@pytest.fixture(scope="module", autouse=True)
def module_cache(tmp_path_factory):
    """Every test caches into a temporary folder, never into the user's home."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEGNET_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory) -> Path:
    # 10 training patients, two per ACDC group, and 2 testing patients.
    return write_acdc_phantom(tmp_path_factory.mktemp("acdc"), 10, seed=1, n_test=2)


@pytest.fixture(scope="module")
def acdc(acdc_root):
    return load_dataset(str(acdc_root))


@pytest.fixture(scope="module")
def nnunet_root(tmp_path_factory) -> Path:
    return write_nnunet_phantom(tmp_path_factory.mktemp("nnunet"), 10, seed=2, n_test=2)


def _raises(match: str, fn, *args, **kw) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert match in msg, msg
    return msg


def _save(path: Path, arr: np.ndarray, affine=None) -> Path:
    affine = np.diag([1.5, 1.5, 10.0, 1.0]) if affine is None else affine
    img = nib.Nifti1Image(arr, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def _dice(a: np.ndarray, b: np.ndarray, c: int) -> float:
    return 2 * ((a == c) & (b == c)).sum() / ((a == c).sum() + (b == c).sum())


# --- readers -----------------------------------------------------------------------------

def test_acdc_release_layout(acdc, acdc_root):
    assert acdc.layout == "acdc" and not acdc.synthetic and acdc.split_seed == 0
    assert acdc.source == str(acdc_root.resolve())
    assert len(acdc.volumes) == 24  # 12 patients x ED and ES
    patients = acdc.split_patients()
    assert patients["test"] == ["patient011", "patient012"]  # testing/ is the test split
    assert (len(patients["train"]), len(patients["val"])) == (8, 2)
    # Stratified by ACDC group: the two val patients come from two different groups.
    assert len({acdc.volumes[f"{p}_frame01"].group for p in patients["val"]}) == 2
    for split in acdc.splits().values():
        assert split.images.shape[1:] == (SLICE_SIZE, SLICE_SIZE) and split.images.dtype == np.float32
        assert 0 <= split.images.min() and split.images.max() <= 1
        assert split.masks is not None and split.masks.dtype == np.uint8
        assert set(np.unique(split.masks)) <= {BG, RV, MYO, LV}
    assert "patients" in acdc.describe() and "24 volumes" in acdc.describe()


def test_acdc_slices_carry_patient_phase_and_index(acdc, acdc_root):
    split = acdc.train
    for name, group, (case, z) in zip(split.names, split.groups, split.slices):
        volume = acdc.volumes[case]
        assert name == f"{case}_slice{z:02d}" and group == volume.patient == case.split("_")[0]
        assert 0 <= z < volume.n_slices
    # Every slice of every train volume, in order.
    cases = Counter(case for case, _ in split.slices)
    assert all(acdc.volumes[c].n_slices == n for c, n in cases.items())
    by_case = split.case_indices()
    assert by_case.keys() == cases.keys()
    for case, idx in by_case.items():
        assert [split.slices[i] for i in idx] == [(case, z) for z in range(acdc.volumes[case].n_slices)]
    # The stacked slices of a volume assemble onto its grid.
    case, idx = next(iter(by_case.items()))
    assert assemble(acdc.volumes[case], split.masks[idx]).shape == acdc.volumes[case].shape
    # ED / ES and the rest of Info.cfg.
    info_lines = (acdc_root / "training" / "patient003" / "Info.cfg").read_text().splitlines()
    info = dict(line.split(": ") for line in info_lines)
    ed, es = acdc.volumes["patient003_frame01"], acdc.volumes[f"patient003_frame{int(info['ES']):02d}"]
    assert (ed.phase, es.phase) == ("ED", "ES")
    assert ed.group == info["Group"] and ed.height == float(info["Height"]) and ed.weight == float(info["Weight"])
    assert Path(ed.image_path).name == "patient003_frame01.nii.gz" and ed.label_path.endswith("_gt.nii.gz")


def test_acdc_folder_of_patients_is_split_three_ways(acdc_root, tmp_path):
    shutil.copytree(acdc_root / "training", tmp_path / "patients")  # a folder of patients, not a release's part
    ds = load_dataset(str(tmp_path / "patients"), seed=3)
    patients = ds.split_patients()
    assert [len(patients[k]) for k in ("train", "val", "test")] == [5, 1, 4]
    assert ds.test.masks is not None and ds.split_seed == 3


@pytest.mark.parametrize("part", ["training", "testing"])
def test_a_release_part_given_as_data_is_refused_with_the_folder_to_use(acdc_root, part):
    with pytest.raises(DataError, match=rf"{part}/ folder of an ACDC release; point --data at {re.escape(str(acdc_root))}"):
        load_dataset(str(acdc_root / part))


def test_acdc_test_labels_optional(tmp_path):
    root = write_acdc_phantom(tmp_path, 3, n_test=1, size_range=SMALL, test_labels=False)
    ds = load_dataset(str(root))
    assert ds.test.masks is None and len(ds.test) > 0
    assert all(v.label_path is None for v in ds.volumes.values() if v.patient == "patient004")


def test_nnunet_layout(nnunet_root):
    ds = load_dataset(str(nnunet_root))
    assert ds.layout == "nnunet" and len(ds.volumes) == 12
    # Without --groups every case is its own patient.
    assert ds.split_patients()["test"] == sorted(c for c in ds.volumes if c.startswith("patient006_"))
    assert all(v.phase is None for v in ds.volumes.values())
    grouped = load_dataset(str(nnunet_root), groups=r"(patient\d+)")
    patients = grouped.split_patients()
    assert patients["test"] == ["patient006"]
    assert sorted(patients["train"] + patients["val"]) == [f"patient{i:03d}" for i in range(1, 6)]
    # Arrays do not depend on grouping; only who went where does.
    assert set(grouped.volumes) == set(ds.volumes)


@pytest.mark.parametrize("labels", [
    {"0": "Background", "1": "right_ventricle", "2": "Myocardium", "3": "Left Ventricle"},  # v1
    {"background": 0, "RV": 1, "MLV": 2, "LVC": 3},  # nnU-Net's own Dataset027_ACDC
])
def test_nnunet_labels_by_other_names(nnunet_root, tmp_path, labels):
    meta = json.loads((nnunet_root / "dataset.json").read_text())
    meta["labels"] = labels
    (nnunet_root / "dataset.json").write_text(json.dumps(meta))
    try:
        assert load_dataset(str(nnunet_root)).layout == "nnunet"
    finally:
        meta["labels"] = {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
        (nnunet_root / "dataset.json").write_text(json.dumps(meta))


# --- preprocessing and its inverse ---------------------------------------------------------

def test_round_trip_gives_back_the_labels(acdc, acdc_root):
    for case in ("patient001_frame01", "patient007_frame01"):
        volume = acdc.volumes[case]
        images, masks, _ = preprocess_volume(volume.image_path, volume.label_path)
        assert images.shape == masks.shape == (volume.n_slices, SLICE_SIZE, SLICE_SIZE)
        truth = read_truth(volume)
        back = assemble(volume, masks)
        source = nib.load(volume.image_path)
        assert back.shape == truth.shape == source.shape and back.dtype == np.uint8
        np.testing.assert_allclose(volume.affine, source.affine)
        # 1.4-1.6 mm to 1.5625 mm and back: nearest neighbour moves a few rim voxels.
        assert (back != truth).mean() < 0.005
        assert min(_dice(back, truth, c) for c in (RV, MYO, LV)) > 0.97


def test_round_trip_is_exact_at_the_target_spacing_and_crops_outside(tmp_path):
    # A 400 mm field of view at the target spacing: resampling is the identity, and the
    # centre crop keeps the heart (near the centre) while cutting the rim.
    sp = (TARGET_SPACING_MM, TARGET_SPACING_MM, 8.0)
    pair = make_volume_pair(5, "DCM", (256, 240), 9, sp)
    image, labels = pair["ED"]
    _save(tmp_path / "i.nii.gz", image, pair["affine"])
    _save(tmp_path / "l.nii.gz", labels, pair["affine"])
    _, masks, volume = preprocess_volume(tmp_path / "i.nii.gz", tmp_path / "l.nii.gz")
    assert volume.crop == ((256 - SLICE_SIZE) // 2, (240 - SLICE_SIZE) // 2)
    np.testing.assert_array_equal(assemble(volume, masks), labels)
    # Voxels outside the crop come back as background whatever the slices say.
    full = assemble(volume, np.full(masks.shape, LV, np.uint8))
    c0, c1 = volume.crop
    assert (full[c0 : c0 + SLICE_SIZE, c1 : c1 + SLICE_SIZE] == LV).all()
    assert full.sum() == LV * SLICE_SIZE * SLICE_SIZE * 9


def test_padding_is_zero_and_images_normalised(tmp_path):
    pair = make_volume_pair(6, "NOR", (80, 90), 8, (1.5, 1.5, 10.0))
    images, _, volume = preprocess_volume(_save(tmp_path / "x_0000.nii.gz", pair["ED"][0], pair["affine"]))
    assert volume.case == "x" and volume.phase is None and volume.label_path is None
    assert volume.crop[0] < 0 and volume.crop[1] < 0  # smaller than the crop: padded
    assert (images[:, : -volume.crop[0] - 1] == 0).all() and (images[:, :, : -volume.crop[1] - 1] == 0).all()
    lo, hi = volume.intensity_range
    assert 0 <= lo < hi and images.max() == 1.0


def test_write_labels_nifti_overlays_the_source(acdc, tmp_path):
    volume = acdc.volumes["patient002_frame01"]
    truth = read_truth(volume)
    out = tmp_path / "deep" / "pred.nii.gz"
    write_labels_nifti(out, truth, volume)
    written, source = nib.load(str(out)), nib.load(volume.image_path)
    assert written.shape == source.shape and written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    for code in ("qform_code", "sform_code"):
        assert written.header[code] == source.header[code]
    np.testing.assert_allclose(written.get_qform(), source.get_qform(), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(written.dataobj), truth)
    assert volume_spacing(volume) == pytest.approx(tuple(source.header.get_zooms()[:3]))
    with pytest.raises(ValueError):
        write_labels_nifti(tmp_path / "bad.nii.gz", truth[:-1], volume)


@pytest.mark.parametrize("extra", [(1,), (1, 1)])
def test_trailing_singleton_fourth_axis_is_squeezed(tmp_path, extra):
    pair = make_volume_pair(7, "HCM", (64, 64), 8)
    path = _save(tmp_path / "v.nii.gz", pair["ED"][0].reshape(64, 64, 8, *extra), pair["affine"])
    images, _, volume = preprocess_volume(path)
    assert volume.shape == (64, 64, 8) and images.shape == (8, SLICE_SIZE, SLICE_SIZE)


@pytest.mark.parametrize("arr_shape, zooms", [((64, 48), (2.0, 1.0)), ((64, 48, 1), (2.0, 1.0, 0.8))])
def test_a_single_slice_is_one_slice_whatever_its_pixel_size(tmp_path, arr_shape, zooms):
    """A 2-D file (thickness unknown) or a thin single slice with non-square pixels: one
    slice of the whole image, not one slice per row across its thickest in-plane axis."""
    image = np.arange(np.prod(arr_shape), dtype=np.int16).reshape(arr_shape)
    path = _save(tmp_path / "one.nii.gz", image, np.diag([*zooms, 1.0][:3] + [1.0]))
    images, _, volume = preprocess_volume(path)
    assert volume.slice_axis == 2 and images.shape == (1, SLICE_SIZE, SLICE_SIZE)
    assert assemble(volume, np.zeros(images.shape, np.uint8)).shape == (64, 48, 1)


# --- patient-wise splits and folds -------------------------------------------------------

def _no_shared_groups(groups, parts) -> None:
    owners = [{groups[i] for i in part} for part in parts]
    for a in range(len(owners)):
        for b in range(a + 1, len(owners)):
            assert not owners[a] & owners[b]
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(groups)))


def test_no_patient_in_two_splits_or_folds(acdc, nnunet_root):
    grouped = load_dataset(str(nnunet_root), groups=r"(patient\d+)")
    for ds in (acdc, grouped):
        parts = ds.split_patients()
        train, val, test = (set(parts[k]) for k in ("train", "val", "test"))
        assert not train & val and not test & (train | val)
        pool = list(ds.train.groups) + list(ds.val.groups)
        for k in (2, 3, 5):
            folds = group_fold_indices(pool, k, seed=0)
            assert len(folds) == k and all(len(f) for f in folds)
            _no_shared_groups(pool, folds)


def test_split_groups_and_folds_properties():
    # 200 items of 30 patients (6 or 7 each, shuffled), 6 patients in each of 5 strata.
    groups = [f"p{i % 30:02d}" for i in np.random.default_rng(0).permutation(200)]
    strata = [ACDC_GROUPS[int(g[1:]) % 5] for g in groups]
    for seed in range(3):
        parts = split_groups(groups, seed, strata=strata)
        _no_shared_groups(groups, parts)
        assert [len({groups[i] for i in p}) for p in parts] == [15, 3, 12]  # 50/10/40 of 30 patients
        folds = group_fold_indices(groups, 5, seed, strata=strata)
        _no_shared_groups(groups, folds)
        # Each fold holds 6 patients, and every group's 6 patients spread over the folds.
        assert [len({groups[i] for i in f}) for f in folds] == [6] * 5
        assert all({strata[i] for i in f} == set(ACDC_GROUPS) for f in folds)
        sizes = [len(f) for f in folds]
        assert max(sizes) - min(sizes) <= 7  # one patient at most
    # One item per group: exactly the ungrouped split and folds (studies keep theirs).
    names = [f"s{i}" for i in range(37)]
    for a, b in zip(split_groups(names, 4), split_indices(37, 4)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(group_fold_indices(names, 4, 2), fold_indices(37, 4, 2)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="groups cannot make"):
        group_fold_indices(["a", "a", "b"], 3)
    with pytest.raises(ValueError, match="strata"):
        split_groups(["a", "a", "b", "c"], 0, strata=["x", "y", "x", "x"])


# --- the cache ---------------------------------------------------------------------------

def test_cache_hit_opens_no_nifti(tmp_path, monkeypatch):
    root = write_acdc_phantom(tmp_path / "data", 3, n_test=1, size_range=SMALL)
    monkeypatch.setenv("SEGNET_CACHE_DIR", str(tmp_path / "cache"))
    before = sorted(p for p in root.rglob("*"))
    opened = []
    real_load = nib.load
    monkeypatch.setattr(nib, "load", lambda *a, **k: opened.append(a[0]) or real_load(*a, **k))
    first = load_dataset(str(root))
    assert opened
    assert sorted(p.suffix for p in (tmp_path / "cache" / "preprocessed").iterdir()) == [".json", ".npz"]
    assert sorted(p for p in root.rglob("*")) == before  # nothing written into the data folder

    opened.clear()
    second = load_dataset(str(root))
    assert opened == []
    assert second.fingerprint == first.fingerprint and second.split_patients() == first.split_patients()
    np.testing.assert_array_equal(second.test.images, first.test.images)
    assert second.volumes.keys() == first.volumes.keys()
    v1, v2 = first.volumes["patient001_frame01"], second.volumes["patient001_frame01"]
    assert v1.to_dict() == v2.to_dict()
    # Touching one file is a miss: the volumes are read again.
    label = root / "training" / "patient002" / "patient002_frame01_gt.nii.gz"
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))
    assert load_dataset(str(root)).fingerprint == first.fingerprint and opened


def test_one_variable_names_the_cache_and_its_former_name_still_works_with_a_warning(tmp_path, monkeypatch, capsys):
    from data import cache
    from sweep.core.artifacts import cache_folder

    monkeypatch.setattr(cache, "_warned_old_env", False)
    monkeypatch.delenv("SEGNET_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == cache_folder() == tmp_path / "xdg" / "segnet-sweep"
    monkeypatch.setenv("SEGNET_CACHE", str(tmp_path / "old"))
    assert cache.cache_dir() == cache_folder() == tmp_path / "old"
    err = capsys.readouterr().err
    assert err == "warning: SEGNET_CACHE is deprecated; set SEGNET_CACHE_DIR instead\n"  # once
    monkeypatch.setenv("SEGNET_CACHE_DIR", str(tmp_path / "new"))
    assert cache.cache_dir() == cache_folder() == tmp_path / "new"


def test_the_cache_keeps_the_recently_used_entries_within_its_limit(tmp_path, monkeypatch):
    from data import cache

    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "preprocessed"
    root = write_acdc_phantom(tmp_path / "data", 3, n_test=1, size_range=SMALL)
    load_dataset(str(root))
    (real,) = [p.stem for p in folder.glob("*.json")]
    entry_bytes = sum(p.stat().st_size for p in folder.iterdir())
    now = time.time()
    old, mid = "0" * 32, "1" * 32
    for age, key in ((3000, old), (2000, mid)):  # two older entries of the same size
        for suffix in (".json", ".npz"):
            (folder / f"{key}{suffix}").write_bytes(b"x" * ((folder / f"{real}{suffix}").stat().st_size))
            os.utime(folder / f"{key}{suffix}", (now - age, now - age))
    dead, live = f".{'d' * 32}.npz.77.tmp", f".{'e' * 32}.npz.78.tmp"
    (folder / dead).write_bytes(b"half")  # a writer killed two days ago
    os.utime(folder / dead, (now - 2 * 86400, now - 2 * 86400))
    (folder / live).write_bytes(b"half")  # a writer at work now
    os.utime(folder / f"{real}.json", (now - 4000, now - 4000))
    load_dataset(str(root))  # a hit makes the real entry the most recently used
    assert (folder / f"{real}.json").stat().st_mtime > now - 60
    assert cache.prune(folder, limit=int(2.5 * entry_bytes)) == [old]
    assert sorted(p.name for p in folder.iterdir()) == sorted([live, f"{real}.json", f"{real}.npz", f"{mid}.json", f"{mid}.npz"])
    assert cache.prune(folder, keep=mid, limit=0) == [real]  # never the entry just written
    monkeypatch.setenv(cache.CACHE_MAX_ENV, "0.000001")  # 1 kB: each save keeps its own entry only
    assert load_dataset(str(root)).volumes
    assert sorted(p.suffix for p in folder.iterdir() if not p.name.startswith(".")) == [".json", ".npz"]


# --- bad input ---------------------------------------------------------------------------

@pytest.fixture
def small_acdc(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SEGNET_CACHE_DIR", str(tmp_path / "cache"))
    return write_acdc_phantom(tmp_path / "acdc", 3, n_test=0, size_range=SMALL)


def _frame(root: Path, patient: int = 2, gt: bool = False) -> Path:
    return root / "training" / f"patient{patient:03d}" / f"patient{patient:03d}_frame01{'_gt' if gt else ''}.nii.gz"


def test_truncated_nifti(small_acdc):
    bad = _frame(small_acdc)
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    _raises(f"{bad}: not a readable NIfTI file", load_dataset, str(small_acdc))
    _raises(f"{bad}: not a readable NIfTI file", preprocess_volume, bad)


def test_label_on_another_grid(small_acdc):
    bad = _frame(small_acdc, gt=True)
    img = nib.load(str(bad))
    labels = np.asarray(img.dataobj)
    _save(bad, labels[:-2], img.affine)
    msg = _raises(f"{bad}: label volume is", load_dataset, str(small_acdc))
    assert str(_frame(small_acdc)) in msg
    shifted = img.affine.copy()
    shifted[0, 3] += 3.0
    _save(bad, labels, shifted)
    _raises(f"{bad}: label affine differs", load_dataset, str(small_acdc))


@pytest.mark.parametrize("value, problem", [(0.5, "non-integer"), (4, "found 4"), (-1, "found -1")])
def test_bad_label_values(small_acdc, value, problem):
    bad = _frame(small_acdc, gt=True)
    img = nib.load(str(bad))
    labels = np.asarray(img.dataobj).astype(np.float32)
    labels[0, 0, 0] = value
    _save(bad, labels, img.affine)
    _raises(f"{bad}: label values must be", load_dataset, str(small_acdc))
    _raises(problem, load_dataset, str(small_acdc))


def test_four_d_image(small_acdc):
    bad = _frame(small_acdc)
    img = nib.load(str(bad))
    _save(bad, np.stack([np.asarray(img.dataobj)] * 2, -1), img.affine)
    _raises(f"{bad}: 4-D NIfTI of shape", load_dataset, str(small_acdc))


def test_colour_complex_or_overflowing_voxels_are_one_line_errors(tmp_path):
    """RGB voxels, complex voxels (nibabel would keep only their real part) and values
    beyond float32: each a one-line DataError naming the file, with no warning before it."""
    import warnings

    from data.nifti import read_label_volume

    rgb = np.zeros((8, 8, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    cases = {
        "rgb": (nib.Nifti1Image(rgb, np.eye(4)), "R/G/B colour voxels"),
        "complex": (nib.Nifti1Image(np.ones((8, 8, 2), np.complex64), np.eye(4)), "complex voxels (complex64)"),
        "huge": (nib.Nifti1Image(np.full((8, 8, 2), 1e300), np.eye(4)), "image holds NaN or infinite values"),
    }
    for name, (img, problem) in cases.items():
        path = tmp_path / f"{name}.nii.gz"
        nib.save(img, str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _raises(f"{path}: {problem}", preprocess_volume, path)
            _raises(f"{path}: ", read_label_volume, path)


def test_cine_4d_file_is_ignored(small_acdc):
    folder = small_acdc / "training" / "patient001"
    _save(folder / "patient001_4d.nii.gz", np.zeros((4, 4, 2, 3), np.int16))
    assert "patient001_4d" not in load_dataset(str(small_acdc)).volumes


def test_info_cfg_missing_or_incomplete(small_acdc):
    info = small_acdc / "training" / "patient003" / "Info.cfg"
    text = info.read_text()
    info.write_text("\n".join(line for line in text.splitlines() if not line.startswith("ES")))
    _raises(f"{info}: no 'ES:' line", load_dataset, str(small_acdc))
    info.unlink()
    _raises(f"{info}: missing", load_dataset, str(small_acdc))


@pytest.mark.parametrize("es", ["inf", "12.5", "-1", "1e400"])
def test_info_cfg_frame_must_be_a_whole_number(tmp_path, es):
    from data.acdc import read_info

    info = tmp_path / "Info.cfg"
    info.write_text(f"ED: 1\nES: {es}\n")
    _raises(f"{info}: ES: '{es}' is not a frame number", read_info, info)
    info.write_text("ED: 1.0\nES: 12\n")
    assert (read_info(info)["ed"], read_info(info)["es"]) == (1, 12)


def test_info_cfg_and_dataset_json_saved_with_a_bom_are_read(tmp_path):
    """Windows editors (Notepad) start UTF-8 files with a byte-order mark."""
    from data.acdc import read_info
    from data.nnunet import check_labels

    info = tmp_path / "Info.cfg"
    info.write_bytes(b"\xef\xbb\xbfED: 1\r\nES: 12\r\n")
    assert (read_info(info)["ed"], read_info(info)["es"]) == (1, 12)
    meta = tmp_path / "dataset.json"
    meta.write_bytes(b"\xef\xbb\xbf" + json.dumps({"labels": {"background": 0, "RV": 1, "MYO": 2, "LV": 3}}).encode())
    assert check_labels(meta) == ".nii.gz"


def test_training_patient_without_gt(small_acdc):
    gt = _frame(small_acdc, patient=1, gt=True)
    gt.unlink()
    _raises(f"{gt}: missing", load_dataset, str(small_acdc))


def test_unknown_layout_mentions_volumes(tmp_path):
    (tmp_path / "stuff").mkdir()
    msg = _raises(str(tmp_path), load_dataset, str(tmp_path))
    assert "ACDC" in msg and "nnU-Net" in msg


@pytest.fixture
def small_nnunet(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SEGNET_CACHE_DIR", str(tmp_path / "cache"))
    return write_nnunet_phantom(tmp_path / "nn", 4, n_test=0, size_range=SMALL)


@pytest.mark.parametrize("labels, problem", [
    ({"background": 0, "LV": 1, "MYO": 2, "RV": 3}, "'LV' is 1"),
    ({"background": 0, "RV": 1, "MYO": 2}, "ids [0, 1, 2]"),
    ({"background": 0, "RV": 1, "MYO": 2, "LV": 3, "aorta": 4}, "'aorta' is 4"),
    ({"background": 0, "heart": [1, 2, 3], "RV": 1, "MYO": 2, "LV": 3}, "not one integer id"),
    ({"background": 0, "RV": 1.5, "MYO": 2, "LV": 3}, "not one integer id"),
    ({"background": False, "RV": True, "MYO": 2, "LV": 3}, "not one integer id"),
])
def test_dataset_json_labels_must_be_ours(small_nnunet, labels, problem):
    path = small_nnunet / "dataset.json"
    meta = json.loads(path.read_text())
    meta["labels"] = labels
    path.write_text(json.dumps(meta))
    _raises(f"{path}: ", load_dataset, str(small_nnunet))
    _raises(problem, load_dataset, str(small_nnunet))


def test_nnunet_missing_label_and_extra_channel(small_nnunet):
    image = next((small_nnunet / "imagesTr").iterdir())
    extra = image.with_name(image.name.replace("_0000", "_0001"))
    extra.write_bytes(image.read_bytes())
    _raises(f"{extra}: input channel 0001", load_dataset, str(small_nnunet))
    extra.unlink()
    label = small_nnunet / "labelsTr" / image.name.replace("_0000", "")
    label.unlink()
    _raises(f"{label}: missing", load_dataset, str(small_nnunet))
    (small_nnunet / "dataset.json").unlink()
    _raises(f"{small_nnunet / 'dataset.json'}: missing", load_dataset, str(small_nnunet))


def test_nnunet_file_ending_other_than_the_labels(small_nnunet):
    """dataset.json says .nii, the files are .nii.gz: the label is there, so not "missing"."""
    path = small_nnunet / "dataset.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, "file_ending": ".nii"}))
    label = min((small_nnunet / "labelsTr").iterdir())
    msg = _raises(f"{label}: its ending is not dataset.json's file_ending '.nii'", load_dataset, str(small_nnunet))
    assert "missing" not in msg


# --- --groups on PNG folders -----------------------------------------------------------

def _png_pool(root: Path, names) -> Path:
    rng = np.random.default_rng(0)
    for name in names:
        for sub, suffix, hi in (("image", "", 256), ("mask", "_mask", 4)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, hi, (8, 8), dtype=np.uint8)).save(root / sub / f"{name}{suffix}.png")
    return root


def test_groups_regex_on_png_pool(tmp_path):
    names = [f"patient{p:02d}_slice{s}" for p in range(10) for s in range(3)]
    root = _png_pool(tmp_path / "pool", names)
    ds = load_dataset(str(root), groups=r"^(patient\d+)_")
    assert all(g == n.split("_")[0] for n, g in zip(ds.train.names, ds.train.groups))
    parts = ds.split_patients()
    assert [len(parts[k]) for k in ("train", "val", "test")] == [5, 1, 4]
    assert not set(parts["train"]) & set(parts["val"]) and not set(parts["val"]) & set(parts["test"])
    assert len(ds.train) == 15 and ds.train.slices is None and ds.volumes == {}
    # Without --groups: slices are their own patients, and the split is the old one.
    plain = load_dataset(str(root))
    assert plain.train.groups == plain.train.names
    assert plain.train.names == tuple(names[i] for i in split_indices(30, 0)[0])


def test_groups_regex_on_coursework_keeps_its_splits(tmp_path):
    for split, names in (("train", ["cmr101", "cmr102", "cmr201"]), ("val", ["cmr301"])):
        _png_pool(tmp_path / split, names)
    ds = load_dataset(str(tmp_path), groups=r"cmr(\d)")
    assert ds.train.names == ("cmr101", "cmr102", "cmr201") and ds.train.groups == ("1", "1", "2")
    assert ds.split_patients() == {"train": ["1", "2"], "val": ["3"], "test": []}


def test_groups_regex_errors(tmp_path):
    root = _png_pool(tmp_path / "pool", ["patient01_a", "patient02_b", "other", "patient03_c"])
    _raises(f"{root / 'image' / 'other.png'}: --groups", load_dataset, str(root), groups=r"^(patient\d+)_")
    _raises("--groups: '(unclosed' is not a valid regular expression", load_dataset, str(root), groups="(unclosed")
    _raises("has no capture group", load_dataset, str(root), groups=r"patient\d+")


# --- the volume phantom -----------------------------------------------------------------

def test_volume_phantom_contracts_and_varies():
    pair = make_volume_pair(0, "NOR", (128, 120), 10)
    (ed_img, ed), (_, es) = pair["ED"], pair["ES"]
    assert ed.shape == es.shape == ed_img.shape == (128, 120, 10) and ed_img.dtype == np.int16
    assert (es == LV).sum() < 0.6 * (ed == LV).sum()  # the LV empties
    assert abs((es == MYO).sum() / (ed == MYO).sum() - 1) < 0.15  # the muscle stays
    assert (es == RV).sum() < (ed == RV).sum()
    # Base to apex: the LV narrows; the RV is gone at the apex.
    lv_area = (ed == LV).sum(axis=(0, 1))
    assert lv_area[0] > lv_area[-1] > 0 and (ed[:, :, -1] == RV).sum() == 0
    # Blood bright, muscle dark.
    assert ed_img[ed == LV].mean() > 2 * ed_img[ed == MYO].mean()
    other = make_volume_pair(1, "NOR", (128, 120), 10)
    assert not np.allclose(other["affine"], pair["affine"])


def test_import_stays_light():
    heavy = "{'nibabel', 'torch', 'optuna', 'sweep', 'model'}"
    code = f"import sys, data; print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_stack_written_slice_axis_first_is_cut_across_its_thick_axis(tmp_path):
    """Another writer may put the 10 mm axis first: slices are still cut across it, and
    predictions map back onto that file's own grid."""
    import nibabel as nib

    from data import assemble, preprocess_volume, read_truth, write_labels_nifti
    from data.volume_phantom import make_volume_pair

    pair = make_volume_pair(5, "NOR", (120, 136), 9, (1.5, 1.5, 10.0))
    image, labels = pair["ED"]
    perm = (2, 0, 1)  # (X, Y, Z) -> (Z, X, Y)
    affine = pair["affine"][:, list(perm) + [3]]  # voxel axes permuted, world unchanged
    for name, arr in (("img", image), ("gt", labels)):
        nib.save(nib.Nifti1Image(np.transpose(arr, perm), affine), tmp_path / f"{name}.nii.gz")

    images, masks, volume = preprocess_volume(tmp_path / "img.nii.gz", tmp_path / "gt.nii.gz")
    assert volume.slice_axis == 0 and images.shape[0] == 9 and masks.shape[0] == 9
    reference, ref_masks, _ = preprocess_volume(*_write_pair(tmp_path / "ref", image, labels, pair["affine"]))
    np.testing.assert_array_equal(masks, ref_masks)
    np.testing.assert_allclose(images, reference, atol=1e-4)

    back = assemble(volume, masks)
    truth = read_truth(volume)
    assert back.shape == truth.shape == (9, 120, 136)
    assert np.mean(back == truth) > 0.999
    write_labels_nifti(tmp_path / "pred.nii.gz", back, volume)
    np.testing.assert_allclose(nib.load(tmp_path / "pred.nii.gz").affine, affine, atol=1e-5)


def _write_pair(folder, image, labels, affine):
    import nibabel as nib

    folder.mkdir()
    nib.save(nib.Nifti1Image(image, affine), folder / "img.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), folder / "gt.nii.gz")
    return folder / "img.nii.gz", folder / "gt.nii.gz"
