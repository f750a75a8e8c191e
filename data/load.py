"""``load_dataset``: the ``--data`` argument to a validated Dataset.

Folder layouts (see docs/FORMATS.md, "Data read"):

- coursework: ``train/``, ``val/`` and optionally ``test/``, each ``image/NAME.png`` and
  ``mask/NAME_mask.png``. Train and val need every mask. Test masks are optional: a test
  split whose ``mask/`` is missing or holds no .png has masks None; otherwise every test
  image needs its mask. A missing ``test/`` gives an empty test split (no masks); an
  existing but empty one is an error, as for any split.
- pool: ``image/`` and ``mask/``, one labelled pool, split 50/10/40 by ``split_indices``
  (with ``groups``, by ``split_groups``: no patient in two splits).
- acdc, nnunet: NIfTI volumes (``acdc.py``, ``nnunet.py``), cut into preprocessed slices
  (``volumes.py``), cached (``cache.py``) and split by patient (``cases.py``).

In both, the mask of NAME is ``mask/NAME_mask.png`` or else ``mask/NAME.png``. Masks with
no image are ignored (an image without its mask is the error that matters, and it names
the mask file it looked for). Non-.png and hidden files are ignored. Every file is read
and checked before anything is returned; the first problem raises DataError.

``groups`` (``--groups REGEX``) names each PNG's patient by the regex's first capture on
its file stem (nnU-Net: on the case id); ACDC's patients are its folders, so there it is
not used. Without it every slice (case) is its own patient.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .acdc import acdc_cases, is_acdc
from .cases import volume_dataset
from .dataset import Dataset, Split
from .errors import DataError
from .groups import compile_groups, group_of
from .io import png_files, read_image, read_mask
from .nnunet import is_nnunet, nnunet_cases
from .phantom import PHANTOM_SEED, make_phantom_dataset
from .split import split_groups, split_indices


def load_dataset(source: str | os.PathLike = "phantom", seed: int = 0, groups: str | None = None) -> Dataset:
    """Load and validate the dataset named by ``--data``.

    ``"phantom"`` is always the built-in phantom with its fixed seed (0), whatever
    ``seed`` is, so the phantom and its fingerprint do not change with the sweep seed.
    ``seed`` is the split seed of a pool folder and of volume layouts. Any other value
    must be an existing folder (``~`` is expanded) in the coursework, pool, ACDC or
    nnU-Net layout; the dataset's ``source`` is then its absolute resolved path.
    ``groups``: the ``--groups`` regex (module docstring).
    """
    pattern = compile_groups(groups)
    if str(source) == "phantom":
        return make_phantom_dataset(PHANTOM_SEED)
    if not str(source).strip():
        # Path("") is the working directory; an empty --data is a mistake, not a request for it.
        raise DataError("--data: empty value, expected 'phantom' or a folder")
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"--data: {str(source)!r} is neither 'phantom' nor an existing folder")
    if not path.is_dir():
        raise DataError(f"--data: {str(source)!r} is a file, expected 'phantom' or a folder")
    root = path.resolve()
    has = {name: (root / name).is_dir() for name in ("train", "val", "image", "mask")}
    if has["train"] or has["val"]:
        if not (has["train"] and has["val"]):
            missing = "val/" if has["train"] else "train/"
            raise DataError(f"{root}: coursework layout needs train/ and val/, {missing} is missing")
        return _load_coursework(root, pattern)
    if has["image"] and has["mask"]:
        return _load_pool(root, seed, pattern)
    if is_nnunet(root):
        cases, extra = nnunet_cases(root, pattern)
        return volume_dataset(root, "nnunet", cases, seed, extra)
    if is_acdc(root):
        cases, extra = acdc_cases(root)
        return volume_dataset(root, "acdc", cases, seed, extra)
    raise DataError(
        f"{root}: unknown layout, expected train/ and val/ subfolders (coursework), "
        "image/ and mask/ subfolders (pool), training/ or patientNNN/ folders (ACDC) "
        "or imagesTr/ (nnU-Net)"
    )


class _SizeCheck:
    """Remembers the first image's size so a different one names both files."""

    def __init__(self) -> None:
        self.first: tuple[Path, tuple[int, ...]] | None = None

    def __call__(self, path: Path, shape: tuple[int, ...]) -> None:
        if self.first is None:
            self.first = (path, shape)
        elif shape != self.first[1]:
            ref, ref_shape = self.first
            raise DataError(f"{path}: image is {_hw(shape)} but {ref} is {_hw(ref_shape)}; all images must be one size")


def _hw(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _read_folder(folder: Path, masks: str, sizes: _SizeCheck, pattern: re.Pattern | None = None) -> Split:
    """Read ``folder/image`` and its masks in ``folder/mask``.

    masks: "required" (every image needs a mask) or "optional" (none, or all).
    """
    image_dir, mask_dir = folder / "image", folder / "mask"
    if not image_dir.is_dir():
        raise DataError(f"{folder}: no image/ folder")
    image_paths = png_files(image_dir)
    if not image_paths:
        raise DataError(f"{image_dir}: no .png images")
    mask_files = {p.stem: p for p in png_files(mask_dir)} if mask_dir.is_dir() else {}
    if masks == "required" and not mask_dir.is_dir():
        raise DataError(f"{mask_dir}: missing; every image in {folder.name}/ needs a mask")
    with_masks = masks == "required" or bool(mask_files)

    images, labels = [], []
    for image_path in image_paths:
        image = read_image(image_path)
        sizes(image_path, image.shape)
        images.append(image)
        if not with_masks:
            continue
        name = image_path.stem
        mask_path = mask_files.get(f"{name}_mask") or mask_files.get(name)
        if mask_path is None:
            raise DataError(f"{image_path}: no mask, expected {mask_dir / (name + '_mask.png')}")
        mask = read_mask(mask_path)
        if mask.shape != image.shape:
            raise DataError(f"{mask_path}: mask is {_hw(mask.shape)} but its image {image_path} is {_hw(image.shape)}")
        labels.append(mask)
    return Split(
        images=np.stack(images),
        masks=np.stack(labels) if with_masks else None,
        names=tuple(p.stem for p in image_paths),
        groups=tuple(group_of(pattern, p.stem, p) for p in image_paths),
    )


def _load_coursework(root: Path, pattern: re.Pattern | None) -> Dataset:
    sizes = _SizeCheck()
    train = _read_folder(root / "train", "required", sizes, pattern)
    val = _read_folder(root / "val", "required", sizes, pattern)
    test_dir = root / "test"
    if test_dir.is_dir():
        test = _read_folder(test_dir, "optional", sizes, pattern)
    else:
        test = Split.empty(train.images.shape[1:])
    return Dataset(str(root), False, "coursework", train, val, test, split_seed=None)


def _load_pool(root: Path, seed: int, pattern: re.Pattern | None) -> Dataset:
    pool = _read_folder(root, "required", _SizeCheck(), pattern)
    n = len(set(pool.groups))
    if n < 3:
        unit = "patients" if pattern is not None else "images"
        raise DataError(f"{root / 'image'}: pool layout needs at least 3 {unit} to split train/val/test, found {n}")
    # Without --groups, split_indices exactly as before grouping existed: studies store
    # the fingerprint of these splits.
    split = split_indices(len(pool), seed) if pattern is None else split_groups(pool.groups, seed)
    parts = [
        Split(pool.images[idx], pool.masks[idx], tuple(pool.names[i] for i in idx), tuple(pool.groups[i] for i in idx))
        for idx in split
    ]
    return Dataset(str(root), False, "pool", *parts, split_seed=seed)
