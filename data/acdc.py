"""The ACDC layout: patient folders of ED/ES frames, their ``_gt`` labels and ``Info.cfg``.

``ROOT`` is either ACDC's release folder, holding ``training/`` (labelled: split train and
val by patient) and optionally ``testing/`` (the test split; its ``_gt`` files optional,
all or none), or a folder holding ``patientNNN/`` folders directly (all labelled, split
train/val/test by patient). In a patient folder, ``patientNNN_frameMM.nii.gz`` is one
frame and ``patientNNN_frameMM_gt.nii.gz`` its labels; the cine ``patientNNN_4d.nii.gz``
is ignored. ``Info.cfg`` holds ``Key: value`` lines; ``ED`` and ``ES`` (frame numbers) are
required and tag the frames; ``Group``, ``Height`` and ``Weight`` are kept where present
(ACDC's original testing release has no Group).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from .cases import CaseFile
from .errors import DataError
from .nifti import NIFTI_SUFFIXES, is_nifti, nifti_stem

PATIENT_DIR = re.compile(r"^patient\d+$")
_FRAME = re.compile(r"^(patient\d+)_frame(\d+)$")


def is_acdc(root: Path) -> bool:
    """An ACDC release folder (``training/``) or a folder of ``patientNNN/`` folders."""
    return (root / "training").is_dir() or bool(patient_dirs(root))


def patient_dirs(folder: Path) -> list[Path]:
    """The ``patientNNN`` sub-folders of ``folder``, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and PATIENT_DIR.match(p.name)) if folder.is_dir() else []


def read_info(path: Path) -> dict:
    """Parse one ``Info.cfg``: {"ed": int, "es": int, "group", "height", "weight"}
    (the last three None where absent). DataError naming ``path`` when it is missing, has
    no ED or ES line, or a value does not parse."""
    if not path.is_file():
        raise DataError(f"{path}: missing; every ACDC patient folder needs Info.cfg with its ED and ES frames")
    fields = {}
    for line in path.read_text(encoding="utf-8-sig", errors="replace").splitlines():  # utf-8-sig: a BOM is no error
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip()
    info: dict = {}
    for key in ("ed", "es"):
        if key not in fields:
            raise DataError(f"{path}: no '{key.upper()}:' line; Info.cfg must name the ED and ES frames")
        info[key] = _frame_number(fields[key], key, path)
    info["group"] = fields.get("group") or None
    for key in ("height", "weight"):
        try:
            info[key] = float(fields[key]) if fields.get(key) else None
        except ValueError:
            raise DataError(f"{path}: {key.capitalize()}: {fields[key]!r} is not a number") from None
    return info


def _frame_number(text: str, key: str, path: Path) -> int:
    """A whole frame number ("12", or "12.0" as some exports write it); "12.5", "inf" and
    "-1" are errors, never rounded or truncated into another frame."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value.is_integer() and value >= 0):
        raise DataError(f"{path}: {key.upper()}: {text!r} is not a frame number")
    return int(value)


def _label_of(image: Path) -> Path | None:
    """``..._frameMM_gt.nii.gz`` (or ``.nii``) next to ``image``, if present."""
    for suffix in NIFTI_SUFFIXES:
        candidate = image.with_name(f"{nifti_stem(image)}_gt{suffix}")
        if candidate.is_file():
            return candidate
    return None


def _patient_cases(folder: Path, labels_required: bool, test: bool) -> list[CaseFile]:
    """The frames of one patient folder, tagged ED / ES from its Info.cfg."""
    info_path = folder / "Info.cfg"
    info = read_info(info_path)
    frames = {}
    for path in sorted(folder.iterdir()):
        match = _FRAME.match(nifti_stem(path)) if is_nifti(path) else None
        if match and match.group(1) == folder.name:
            frames[int(match.group(2))] = path
    if not frames:
        raise DataError(f"{folder}: no {folder.name}_frameMM.nii.gz frames")
    for key in ("ed", "es"):
        if info[key] not in frames:
            expected = folder / f"{folder.name}_frame{info[key]:02d}.nii.gz"
            raise DataError(f"{expected}: missing; {info_path} names frame {info[key]} as {key.upper()}")
    cases = []
    for number, image in sorted(frames.items()):
        label = _label_of(image)
        if label is None and labels_required:
            expected = image.with_name(f"{nifti_stem(image)}_gt.nii.gz")
            raise DataError(f"{expected}: missing; every frame of a labelled ACDC patient needs its _gt label volume")
        phase = "ED" if number == info["ed"] else "ES" if number == info["es"] else None
        cases.append(CaseFile(
            case=nifti_stem(image), patient=folder.name, image=image, label=label, test=test, phase=phase,
            group=info["group"], height=info["height"], weight=info["weight"],
        ))
    return cases


def _folder_cases(folder: Path, labels_required: bool, test: bool) -> list[CaseFile]:
    dirs = patient_dirs(folder)
    if not dirs:
        raise DataError(f"{folder}: no patientNNN folders")
    return [c for d in dirs for c in _patient_cases(d, labels_required, test)]


def _refuse_release_part(root: Path) -> None:
    """``--data`` at a release's ``training/`` or ``testing/`` is almost surely a slip: the test
    split would be cut from the training patients (or the unlabelled patients asked for labels)."""
    parent = root.parent
    if root.name in ("training", "testing") and (parent / "training").is_dir() and (parent / "testing").is_dir():
        raise DataError(f"--data {root}: this is the {root.name}/ folder of an ACDC release; point --data at "
                        f"{parent}, which holds training/ (train and val) and testing/ (the test split)")


def acdc_cases(root: Path) -> tuple[list[CaseFile], list[Path]]:
    """Every case under ``root`` and the Info.cfg files that tagged them."""
    if (root / "training").is_dir():
        cases = _folder_cases(root / "training", labels_required=True, test=False)
        if (root / "testing").is_dir():
            cases += _folder_cases(root / "testing", labels_required=False, test=True)
    else:
        _refuse_release_part(root)
        cases = _folder_cases(root, labels_required=True, test=False)
    infos = sorted({c.image.parent / "Info.cfg" for c in cases})
    return cases, infos
