"""Synthetic short-axis cine volumes in the ACDC and nnU-Net raw layouts, for tests.

Each patient is a stack of short-axis slices from base (z = 0) to apex, anisotropic like
ACDC (about 1.5 x 1.5 mm in-plane, 10 mm between slices), with an end-diastolic (ED) and
an end-systolic (ES) frame: at ES the LV cavity is smaller and its wall thicker (the
myocardium keeps its area, as muscle keeps its volume), and the RV crescent contracts
too. ACDC's five pathology groups change the heart: DCM a large, weakly contracting LV;
HCM a thick wall; MINF a weak contraction; RV a large RV; NOR normal. Around the heart:
body tissue, dark lungs, a bias field and Rician noise. In-plane size, slice count,
heart position and the affine's orientation vary a little per patient.

Arrays are ``(X, Y, Z)`` in file voxel order; images are int16 like scanner data, labels
uint8 class ids 0 background, 1 RV, 2 myocardium, 3 LV. Everything is seeded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

#: ACDC's pathology groups (``Group:`` in Info.cfg), cycled over patients so that every
#: group is represented in even small phantoms.
ACDC_GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")
#: (LV ED radius mm, wall ED mm, cavity area kept at ES, RV size) per group.
_GROUP_HEART = {
    "NOR": (24.0, 8.0, 0.40, 1.0),
    "DCM": (32.0, 6.5, 0.75, 1.0),
    "HCM": (21.0, 14.0, 0.30, 0.9),
    "MINF": (27.0, 7.0, 0.65, 1.0),
    "RV": (23.0, 8.0, 0.42, 1.5),
}
#: nnU-Net v2 ``labels`` of the written dataset.json: our classes.
NNUNET_LABELS = {"background": 0, "RV": 1, "MYO": 2, "LV": 3}


def _anatomy(rng: np.random.Generator, group: str, n_slices: int) -> dict:
    """Per-patient heart in mm: radii, wall, contraction, RV, offset from the FOV centre."""
    r_lv, wall, kept, rv = _GROUP_HEART[group]
    scale = rng.uniform(0.9, 1.1)
    return {
        "r_lv": r_lv * scale, "wall": wall * rng.uniform(0.9, 1.1), "kept": kept * rng.uniform(0.9, 1.1),
        "rv": rv * rng.uniform(0.9, 1.1), "rv_angle": np.deg2rad(rng.uniform(50, 100)),
        "centre": rng.uniform(-15, 15, 2), "n_slices": n_slices,
    }


def _heart_slice(a: dict, t: float, phase: str, di: np.ndarray, dj: np.ndarray) -> np.ndarray:
    """Labels of one slice at relative depth ``t`` (0 base .. 1 apex). (X, Y) uint8.

    di, dj: (X, Y) mm offsets of each voxel from the LV centre along rows and columns.
    """
    taper = np.sqrt(max(0.0, 1 - (t / 1.08) ** 2))  # an ellipsoidal LV narrowing to the apex
    r_ed, wall_ed = a["r_lv"] * taper, a["wall"] * (0.8 + 0.2 * taper)
    if phase == "ED":
        r, wall, rv_scale = r_ed, wall_ed, 1.0
    else:  # the cavity keeps part of its area; the myocardium keeps all of its area
        r = r_ed * np.sqrt(a["kept"])
        wall = np.sqrt(r**2 + (r_ed + wall_ed) ** 2 - r_ed**2) - r
        rv_scale = 0.75
    rho = np.hypot(di, dj)
    labels = np.zeros(di.shape, np.uint8)
    if t < 0.85:  # the RV ends above the LV apex
        d = (r_ed + wall_ed) * 0.9
        ci, cj = -d * np.sin(a["rv_angle"]), d * np.cos(a["rv_angle"])  # up (negative rows) and right
        semi = (r_ed + wall_ed) * a["rv"] * rv_scale * (1 - 0.6 * t)
        rv = ((di - ci) / (0.7 * semi)) ** 2 + ((dj - cj) / (1.3 * semi)) ** 2 < 1
        labels[rv] = 1
    labels[rho < r + wall] = 2
    labels[rho < r] = 3
    return labels


def _image(labels: np.ndarray, rng: np.random.Generator, xi: np.ndarray, xj: np.ndarray, sp) -> np.ndarray:
    """Scanner-like int16 intensities for a (X, Y, Z) label volume."""
    from scipy import ndimage

    extent_i, extent_j = np.abs(xi).max(), np.abs(xj).max()
    body = (xi / (0.85 * extent_i)) ** 2 + (xj / (0.95 * extent_j)) ** 2 < 1
    lungs = (((xi + 5) / 45) ** 2 + ((np.abs(xj) - 0.55 * extent_j) / 28) ** 2 < 1) & body
    plane = np.where(body, 220.0, 5.0) * np.where(lungs, 0.15, 1.0)
    img = np.repeat(plane[:, :, None], labels.shape[2], axis=2)
    tissue = {1: 520.0, 2: 140.0, 3: 600.0}
    for c, value in tissue.items():
        img[labels == c] = value * rng.uniform(0.9, 1.1)
    # Partial volume within each slice (never across the 10 mm gaps between slices).
    img = ndimage.gaussian_filter(img, sigma=(0.8 / sp[0] * 1.5, 0.8 / sp[1] * 1.5, 0))
    bias = np.exp(0.25 * (xi / extent_i) * rng.uniform(-1, 1) + 0.25 * (xj / extent_j) * rng.uniform(-1, 1))
    img *= bias[:, :, None]
    noise = rng.normal(0, 18, (2, *img.shape))
    img = np.hypot(img + noise[0], noise[1])  # Rician, as magnitude images are
    return np.round(img).astype(np.int16)


def _affine(rng: np.random.Generator, spacing, shape) -> np.ndarray:
    """(4, 4) voxel-to-world: the grid turned by a few degrees about each axis, centred
    near the scanner's origin."""
    angles = np.deg2rad(rng.uniform(-12, 12, 3))
    rot = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        r = np.eye(3)
        i, j = [k for k in range(3) if k != axis]
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rot = rot @ r
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing)
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + rng.uniform(-20, 20, 3)
    return affine


def make_volume_pair(
    seed: int,
    group: str = "NOR",
    shape: tuple[int, int] = (128, 128),
    n_slices: int = 10,
    spacing: tuple[float, float, float] = (1.5, 1.5, 10.0),
    heart_offset_mm: tuple[float, float] | None = None,
) -> dict:
    """One synthetic patient: ``{"ED": (image, labels), "ES": (image, labels), "affine": A}``.

    image (X, Y, Z) int16, labels (X, Y, Z) uint8 with X, Y = ``shape`` and Z =
    ``n_slices``; affine (4, 4) float64 with voxel size ``spacing`` mm. The LV axis lies
    ``heart_offset_mm`` (rows, columns) from the centre of the field of view; by default
    a random offset of up to 15 mm per axis.
    """
    rng = np.random.default_rng(seed)
    a = _anatomy(rng, group, n_slices)
    if heart_offset_mm is not None:
        a["centre"] = np.asarray(heart_offset_mm, np.float64)
    xi = (np.arange(shape[0]) - (shape[0] - 1) / 2)[:, None] * spacing[0] + np.zeros(shape)
    xj = (np.arange(shape[1]) - (shape[1] - 1) / 2)[None, :] * spacing[1] + np.zeros(shape)
    out: dict = {"affine": _affine(rng, spacing, (*shape, n_slices))}
    for phase in ("ED", "ES"):
        di, dj = xi - a["centre"][0], xj - a["centre"][1]
        depths = [k / max(1, n_slices - 1) for k in range(n_slices)]
        labels = np.stack([_heart_slice(a, t, phase, di, dj) for t in depths], axis=2)
        out[phase] = (_image(labels, rng, xi, xj, spacing), labels)
    return out


def _save(path: Path, arr: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(arr, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def _patient_params(seed: int, index: int, size_range, spacing) -> dict:
    """Per-patient size, slice count and spacing, varying a little around the defaults."""
    rng = np.random.default_rng([seed, index, 7])
    lo, hi = size_range
    jitter = rng.uniform(0.92, 1.08)
    return {
        "group": ACDC_GROUPS[index % len(ACDC_GROUPS)],
        "shape": (int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))),
        "n_slices": int(rng.integers(8, 13)),
        "spacing": (spacing[0] * jitter, spacing[1] * jitter, spacing[2]),
        "es_frame": int(rng.integers(9, 16)), "n_frames": int(rng.integers(20, 31)),
        "height": round(float(rng.uniform(150, 195)), 1), "weight": round(float(rng.uniform(50, 110)), 1),
    }


def _patient_pair(seed: int, number: int, p: dict) -> dict:
    """``make_volume_pair`` of patient ``number``: the same in both layouts."""
    pair_seed = int(np.random.default_rng([seed, number]).integers(2**31))
    return make_volume_pair(pair_seed, p["group"], p["shape"], p["n_slices"], p["spacing"])


def _write_acdc_patient(folder: Path, number: int, seed: int, size_range, spacing, labels: bool) -> None:
    p = _patient_params(seed, number, size_range, spacing)
    pair = _patient_pair(seed, number, p)
    name = f"patient{number:03d}"
    for frame, phase in ((1, "ED"), (p["es_frame"], "ES")):
        image, label = pair[phase]
        _save(folder / name / f"{name}_frame{frame:02d}.nii.gz", image, pair["affine"])
        if labels:
            _save(folder / name / f"{name}_frame{frame:02d}_gt.nii.gz", label, pair["affine"])
    (folder / name / "Info.cfg").write_text(
        f"ED: 1\nES: {p['es_frame']}\nGroup: {p['group']}\nHeight: {p['height']}\n"
        f"NbFrame: {p['n_frames']}\nWeight: {p['weight']}\n"
    )


def write_acdc_phantom(
    root: os.PathLike | str,
    n_patients: int,
    seed: int = 0,
    n_test: int = 2,
    spacing: tuple[float, float, float] = (1.5, 1.5, 10.0),
    size_range: tuple[int, int] = (112, 144),
    test_labels: bool = True,
) -> Path:
    """Write a phantom in ACDC's release layout and return ``root``.

    ``root/training/patientNNN/`` for NNN = 1..n_patients and ``root/testing/patientNNN/``
    for the next ``n_test`` (no testing/ when 0), each with ``patientNNN_frame01.nii.gz``
    (ED), ``patientNNN_frameMM.nii.gz`` (ES), their ``_gt`` labels (in testing/ only with
    ``test_labels``) and ``Info.cfg`` (ED, ES, Group, Height, NbFrame, Weight). Groups
    cycle through ACDC_GROUPS. In-plane size is drawn from ``size_range`` per axis.
    """
    root = Path(root)
    for number in range(1, n_patients + n_test + 1):
        split = "training" if number <= n_patients else "testing"
        labels = split == "training" or test_labels
        _write_acdc_patient(root / split, number, seed, size_range, spacing, labels)
    return root


def write_nnunet_phantom(
    root: os.PathLike | str,
    n_cases: int,
    seed: int = 0,
    n_test: int = 2,
    spacing: tuple[float, float, float] = (1.5, 1.5, 10.0),
    size_range: tuple[int, int] = (112, 144),
    test_labels: bool = True,
) -> Path:
    """Write a phantom in nnU-Net's raw layout and return ``root``.

    ``imagesTr/CASE_0000.nii.gz`` and ``labelsTr/CASE.nii.gz`` for ``n_cases`` cases,
    ``imagesTs/`` (and ``labelsTs/`` with ``test_labels``) for ``n_test`` more, and a v2
    ``dataset.json`` with labels NNUNET_LABELS. Cases are named like nnU-Net's ACDC
    conversion, ``patientNNN_frameMM``: ED and ES of one patient are two cases, so
    ``--groups 'patient(\\d+)'`` groups them.
    """
    root = Path(root)
    n_train_patients = (n_cases + 1) // 2
    todo = [("Tr", k // 2 + 1, k % 2) for k in range(n_cases)]
    todo += [("Ts", n_train_patients + k // 2 + 1, k % 2) for k in range(n_test)]
    for part, number, phase_index in todo:
        p = _patient_params(seed, number, size_range, spacing)
        pair = _patient_pair(seed, number, p)
        case = f"patient{number:03d}_frame{(1, p['es_frame'])[phase_index]:02d}"
        image, label = pair[("ED", "ES")[phase_index]]
        _save(root / f"images{part}" / f"{case}_0000.nii.gz", image, pair["affine"])
        if part == "Tr" or test_labels:
            _save(root / f"labels{part}" / f"{case}.nii.gz", label, pair["affine"])
    dataset = {
        "name": "SegnetSweepPhantom", "channel_names": {"0": "cineMRI"}, "labels": NNUNET_LABELS,
        "numTraining": n_cases, "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return root
