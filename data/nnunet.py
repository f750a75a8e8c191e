"""nnU-Net's raw dataset layout: ``imagesTr/``, ``labelsTr/``, ``imagesTs/``, ``labelsTs/``, ``dataset.json``.

``imagesTr/CASE_0000.nii.gz`` is the single input channel of case CASE and
``labelsTr/CASE.nii.gz`` its labels; ``imagesTs/`` is the test split, its ``labelsTs/``
optional (all or none); without test images, imagesTr is split 50/10/40 like a pool. ``dataset.json``'s ``labels`` must be our classes, in nnU-Net v2
form ``{"background": 0, "RV": 1, "MYO": 2, "LV": 3}`` or v1 form ``{"0": "background",
...}``, names matched case-insensitively (see CLASS_NAMES); anything else is an error
rather than a silent relabelling. Cases are split train/val by patient: ``--groups`` names
the patient in the case id, else every case is its own patient.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .cases import CaseFile
from .errors import DataError
from .groups import group_of
from .nifti import NIFTI_SUFFIXES, is_nifti, nifti_stem

#: Accepted names (lower case, "_" and "-" read as spaces) of our class ids.
CLASS_NAMES = {
    0: {"background", "bg", "clear label"},
    # nnU-Net's own ACDC conversion (Dataset027_ACDC) names them RV, MLV and LVC.
    1: {"rv", "rvc", "right ventricle", "rv cavity", "right ventricular cavity", "right ventricle cavity"},
    2: {"myo", "myocardium", "lvm", "mlv", "lv myo", "lv myocardium", "left ventricular myocardium",
        "left ventricle myocardium"},
    3: {"lv", "lvc", "left ventricle", "lv cavity", "lv blood pool", "left ventricular cavity", "left ventricle cavity"},
}
_CHANNEL = re.compile(r"^(.+)_(\d{4})$")


def is_nnunet(root: Path) -> bool:
    return (root / "imagesTr").is_dir()


def _canonical(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


def _label_ids(labels: dict, path: Path) -> dict[int, str]:
    """``labels`` of either nnU-Net version as {id: name}."""
    if not isinstance(labels, dict) or not labels:
        raise DataError(f"{path}: no 'labels' mapping")
    if all(str(k).strip().isdigit() for k in labels):  # v1: {"0": "background", ...}
        return {int(k): str(v) for k, v in labels.items()}
    # v2: {"background": 0, ...}; int() alone would take 1.5 as 1 and true as 1.
    ids = {name: v for name, v in labels.items()
           if (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and v.strip().isdigit())}
    if len(ids) != len(labels):  # v2 regions ([1, 2, 3]) or other values
        raise DataError(f"{path}: labels {labels} are not one integer id per class")
    return {int(v): str(k) for k, v in ids.items()}


def check_labels(path: Path) -> str:
    """Read ``dataset.json``; its labels must be ours. Returns its file ending (".nii.gz")."""
    if not path.is_file():
        raise DataError(f"{path}: missing; nnU-Net's layout needs dataset.json with the labels")
    try:
        meta = json.loads(path.read_text(encoding="utf-8-sig"))  # a BOM, as Windows editors write it, is no error
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    ids = _label_ids(meta.get("labels") if isinstance(meta, dict) else None, path)
    ours = "0 background, 1 RV, 2 myocardium, 3 LV"
    wrong = [f"{name!r} is {i}" for i, name in sorted(ids.items()) if _canonical(name) not in CLASS_NAMES.get(i, ())]
    if wrong or sorted(ids) != [0, 1, 2, 3]:
        detail = "; ".join(wrong) if wrong else f"ids {sorted(ids)}"
        raise DataError(f"{path}: labels do not map to ours ({ours}): {detail}")
    ending = str(meta.get("file_ending", ".nii.gz"))
    if ending.lower() not in (".nii.gz", ".nii"):
        raise DataError(f"{path}: file_ending {ending!r} is not NIfTI (.nii.gz or .nii)")
    return ending


def _part_cases(images: Path, labels: Path, ending: str, test: bool, pattern) -> list[CaseFile]:
    """The cases of imagesTr or imagesTs with their labels (required for training)."""
    files = sorted(p for p in images.iterdir() if is_nifti(p))
    if not files:
        raise DataError(f"{images}: no {ending} images")
    cases = []
    for path in files:
        match = _CHANNEL.match(nifti_stem(path))
        if match is None:
            raise DataError(f"{path}: not named CASE_0000{ending} (nnU-Net's case and channel)")
        if match.group(2) != "0000":
            raise DataError(f"{path}: input channel {match.group(2)}; SegNet takes one channel, _0000")
        case = match.group(1)
        label = labels / f"{case}{ending}"
        if not label.is_file():
            _check_ending(labels, case, ending)
            if not test:
                raise DataError(f"{label}: missing; every training case needs its label volume")
            label = None
        cases.append(CaseFile(case=case, patient=group_of(pattern, case, path), image=path, label=label, test=test))
    return cases


def _check_ending(labels: Path, case: str, ending: str) -> None:
    """A label written with the other NIfTI ending than dataset.json's ``file_ending``: say
    so, rather than call a file that is there missing."""
    for other in NIFTI_SUFFIXES:
        found = labels / f"{case}{other}"
        if other != ending and found.is_file():
            raise DataError(f"{found}: its ending is not dataset.json's file_ending {ending!r}; "
                            "rename the files or set file_ending to match them")


def nnunet_cases(root: Path, pattern) -> tuple[list[CaseFile], list[Path]]:
    """Every case under ``root`` and dataset.json; ``pattern`` is ``--groups`` compiled or None."""
    ending = check_labels(root / "dataset.json")
    cases = _part_cases(root / "imagesTr", root / "labelsTr", ending, False, pattern)
    # nnU-Net's own tools create an empty imagesTs/ for datasets without a test set.
    if (root / "imagesTs").is_dir() and any(is_nifti(p) for p in (root / "imagesTs").iterdir()):
        cases += _part_cases(root / "imagesTs", root / "labelsTs", ending, True, pattern)
    return cases, [root / "dataset.json"]
