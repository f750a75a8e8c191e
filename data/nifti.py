"""NIfTI reading and writing with checks that name the bad file.

Why nibabel: it is pure Python (no compiled toolkit to install next to torch), reads and
writes ``.nii`` and ``.nii.gz`` with the voxel-to-world affine and the full header
(qform and sform, units, descriptions), and is the reader the field's own tools build on:
the files nnU-Net users have (``imagesTr/CASE_0000.nii.gz``, ACDC's ``patientNNN_frameMM``)
are plain NIfTI-1 that it opens as they are, and a label volume written from a copy of its
image's header overlays that image in ITK-SNAP or 3D Slicer. SimpleITK would also do, but
is a large binary wheel and reorders axes to (z, y, x). nibabel is imported inside the
functions, so ``import data`` stays light for users of PNG slices.

Arrays here are in the file's voxel order ``(X, Y, Z)`` (nibabel's ``(i, j, k)``), never
reoriented: a prediction then maps back onto the file exactly.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .files import output_file
from .io import N_CLASSES

#: Largest difference (mm) between a label's and its image's affine entries that still
#: counts as the same grid: float32 header round-off, not a different geometry.
AFFINE_TOLERANCE_MM = 1e-3

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def nifti_stem(path: os.PathLike | str) -> str:
    """File name without ``.nii.gz`` / ``.nii`` ("patient001_frame01.nii.gz" -> "patient001_frame01")."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def is_nifti(path: Path) -> bool:
    """A visible regular file whose name ends in ``.nii.gz`` or ``.nii`` (any case)."""
    return path.name.lower().endswith(NIFTI_SUFFIXES) and not path.name.startswith(".") and path.is_file()


def _reason(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err).strip() else type(err).__name__


@contextmanager
def _quiet_nibabel():
    """nibabel's header fixes unlogged (nibabel's own LoggingOutputSuppressor leaves its logger
    without a handler, and Python's last-resort handler then prints them anyway)."""
    logger = logging.getLogger("nibabel.global")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_header(path: Path) -> Any:
    """Open one NIfTI and read its header (not its voxels): a nibabel image object.

    Raises DataError naming ``path`` if it is missing or not NIfTI.
    """
    import nibabel as nib

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        # Quiet: nibabel logs what it "fixes" in a header (a pixdim of 0 read as 1 mm), on the
        # terminal, each time it opens the file; _check_voxel_size refuses such a file instead.
        with _quiet_nibabel():
            img = nib.load(str(path))
    # nibabel reports bad files as ImageFileError, gzip errors, OSError, EOFError, ...
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{path}: not a readable NIfTI file ({_reason(err)})") from None
    _check_voxel_size(img, path)
    return img


def _check_voxel_size(img: Any, path: Path) -> None:
    """Refuse a header whose voxel size (pixdim[1..3], mm) along a stored axis is 0, negative, NaN
    or infinite: nibabel reads 0 as 1 mm and a negative size as its absolute value, so the volume
    would be resampled at a scale nobody measured. The sform, where the header has one, can say
    what was meant; it is named in the line, for the header to be fixed (not guessed here: a
    header that is wrong in one field may be wrong in another)."""
    import nibabel as nib

    try:
        with nib.openers.ImageOpener(str(path)) as f:  # the header as stored, before nibabel's fixes
            raw = type(img.header).from_fileobj(f, check=False)
    except Exception:  # noqa: BLE001  (it read a moment ago; the voxels' read then names the file)
        return
    axes = max(1, min(int(raw["dim"][0]), 3))  # a 2-D file has no slice thickness (read as 1 mm)
    pixdim = [float(v) for v in raw["pixdim"][1 : 1 + axes]]
    bad = [i + 1 for i, v in enumerate(pixdim) if not (np.isfinite(v) and v > 0)]
    if not bad:
        return
    shown = ", ".join(f"pixdim[{i}] = {pixdim[i - 1]:g}" for i in bad)
    hint = ""
    matrix, code = img.header.get_sform(coded=True)
    if code > 0 and np.isfinite(matrix).all():
        sizes = np.linalg.norm(np.asarray(matrix)[:3, :axes], axis=0)
        if (sizes > 0).all():
            hint = f"; its sform says {' x '.join(f'{v:.4g}' for v in sizes)} mm"
    raise DataError(f"{path}: voxel size {shown} mm in the header, not a size; fix the header's pixdim{hint}")


def grid_shape(img: Any, path: Path) -> tuple[int, int, int]:
    """The 3-D voxel grid ``(X, Y, Z)`` of a NIfTI image.

    A 2-D image is one slice ``(X, Y, 1)``; axes beyond the third of length 1 (how some
    converters store one frame, ``(X, Y, Z, 1)``, or ITK a one-component image,
    ``(X, Y, Z, 1, 1)``) are squeezed; any other shape is a DataError, e.g. the 4-D cine
    ``_4d.nii.gz`` given where one frame is expected.
    """
    shape = tuple(int(n) for n in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3 or 0 in shape:
        raise DataError(f"{path}: {len(shape)}-D NIfTI of shape {shape}, expected one 3-D volume (X, Y, Z)")
    return shape


def _check_voxel_type(img: Any, path: Path) -> None:
    """One real number per voxel: nibabel would read RGB voxels as an opaque error and
    complex ones as their real part (not the magnitude an MR image shows), silently."""
    stored = np.dtype(img.get_data_dtype())
    if stored.fields is not None:
        raise DataError(f"{path}: {'/'.join(stored.names)} colour voxels, expected one grey value per voxel")
    if stored.kind == "c":
        raise DataError(f"{path}: complex voxels ({stored}), expected a real-valued (magnitude) image")


def _voxels(img: Any, path: Path, dtype: type | None) -> np.ndarray:
    """Decode the voxels; a truncated or corrupt file becomes a DataError. (X, Y, Z)."""
    _check_voxel_type(img, path)
    try:
        # Values beyond float32 become inf without numpy's warning: the caller's check
        # names the file instead (one line, not a RuntimeWarning first).
        with np.errstate(over="ignore", invalid="ignore"):
            arr = img.get_fdata(dtype=dtype) if dtype is not None else np.asanyarray(img.dataobj)
    except Exception as err:  # noqa: BLE001  (gzip, zlib, EOF and OS errors alike)
        raise DataError(f"{path}: not a readable NIfTI file ({_reason(err)})") from None
    return np.asarray(arr).reshape(grid_shape(img, path))


def read_image_volume(path: os.PathLike | str) -> tuple[np.ndarray, Any]:
    """Read one image volume: ``(X, Y, Z)`` float32 voxels and the nibabel image (header,
    affine). Raises DataError naming ``path`` if unreadable, not 3-D or not finite."""
    path = Path(path)
    img = load_header(path)
    grid_shape(img, path)  # the shape error before decoding a large file
    arr = _voxels(img, path, np.float32)
    if not np.isfinite(arr).all():
        raise DataError(f"{path}: image holds NaN or infinite values (or values beyond float32)")
    return arr, img


def check_same_grid(label: Any, label_path: Path, image: Any, image_path: Path) -> None:
    """A label volume must lie on its image's grid: same 3-D shape and affine."""
    lshape, ishape = grid_shape(label, label_path), grid_shape(image, image_path)
    if lshape != ishape:
        raise DataError(f"{label_path}: label volume is {lshape} but its image {image_path} is {ishape}")
    if not np.allclose(label.affine, image.affine, rtol=0, atol=AFFINE_TOLERANCE_MM):
        worst = float(np.abs(np.asarray(label.affine) - np.asarray(image.affine)).max())
        raise DataError(
            f"{label_path}: label affine differs from its image {image_path}'s by up to {worst:.3g} mm; "
            "not the same voxel grid"
        )


def read_label_volume(path: os.PathLike | str, image: Any = None, image_path: Path | None = None) -> np.ndarray:
    """Read one label volume: ``(X, Y, Z)`` uint8 class ids 0..3.

    With ``image`` (its image's nibabel object) the grids must match first. Raises
    DataError naming ``path`` for an unreadable file, another grid, non-integer values
    (an image passed as labels, or interpolated labels) or values outside 0..3.
    """
    path = Path(path)
    img = load_header(path)
    if image is not None:
        check_same_grid(img, path, image, image_path)
    arr = _voxels(img, path, None)
    integral = np.issubdtype(arr.dtype, np.integer) or (np.isfinite(arr).all() and np.array_equal(arr, np.round(arr)))
    if not integral:
        raise DataError(f"{path}: label values must be integer class ids 0..{N_CLASSES - 1}, found non-integer values")
    bad = np.unique(arr[(arr < 0) | (arr >= N_CLASSES)])
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad[:5].astype(float)) + (", ..." if bad.size > 5 else "")
        raise DataError(f"{path}: label values must be class ids 0..{N_CLASSES - 1}, found {shown}")
    return arr.astype(np.uint8)


def write_labels(
    path: os.PathLike | str, labels: np.ndarray, affine: np.ndarray, source: os.PathLike | str | None
) -> None:
    """Write ``(X, Y, Z)`` class ids as a uint8 NIfTI on the grid ``affine``.

    The header is a copy of ``source``'s (when it still reads) with its qform and sform and
    their codes, so viewers place the labels exactly on the image; data type uint8 and no
    intensity scaling. Creates missing parent folders.
    """
    import nibabel as nib

    labels = np.asarray(labels)
    header = None
    if source is not None and Path(source).is_file():
        try:
            with _quiet_nibabel():
                header = nib.load(str(source)).header.copy()
        except Exception:  # noqa: BLE001  (the affine alone still places the labels)
            header = None
    img = nib.Nifti1Image(labels.astype(np.uint8), np.asarray(affine, np.float64), header=header)
    if header is not None:
        # Exactly the source's qform and sform, codes included (0 stays 0), so every
        # viewer resolves the labels' grid the way it resolves the image's.
        for getter, setter in ((header.get_qform, img.set_qform), (header.get_sform, img.set_sform)):
            matrix, code = getter(coded=True)
            setter(matrix, code=int(code))
    else:
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"], img.header["cal_max"] = 0, N_CLASSES - 1
    with output_file(path) as tmp:
        nib.save(img, str(tmp))
