"""NIfTI volumes to 2-D training slices and back: one documented preprocessing.

Each volume ``(X, Y, Z)`` (file voxel order, see ``nifti.py``) becomes ``Z`` slices
``(SLICE_SIZE, SLICE_SIZE)``, slice ``z`` being ``volume[:, :, z]`` with rows along X. Z is
the through-plane axis: the voxel axis with clearly the thickest voxels, wherever a writer
put it (``through_plane_axis``; the third one, as ACDC and nnU-Net write it, where no axis
stands out), moved last before anything else and back in ``assemble``:

1. in-plane resampling to ``TARGET_SPACING_MM`` (linear for images, nearest for labels),
   the through-plane axis untouched (5-10 mm ACDC slices are far too thick to resample);
2. per-volume intensity normalisation: clip to the volume's 0.5 / 99.5 percentiles and
   scale to float32 [0, 1] in 16-bit steps (the trainer then standardises each slice, as
   for PNGs);
3. a centre crop or zero pad of the resampled plane to ``SLICE_SIZE`` (divisible by 32,
   SegNet's depth-5 downsampling). The centre of the image, not of the heart: it needs no
   label, so labelled and unseen volumes get the same crop (a label-driven crop would be
   one thing in training and another at inference), and short-axis stacks are planned
   with the heart near the centre of the field of view.

docs/VOLUMES.md gives the reasoning for the constants and the measurement behind them. A
``Volume`` records everything needed to map a prediction back (``assemble``).

The mapping (per in-plane axis a, with ``q = TARGET_SPACING_MM / spacing[a]``, input
voxels per output pixel): output pixel ``v`` of the crop is resampled-grid pixel
``u = v + crop[a]``, whose centre lies at input coordinate ``x = (u + 0.5) * q - 0.5``
(pixel centres aligned, edges at -0.5). ``assemble`` inverts it by nearest neighbour.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from .errors import DataError
from .nifti import nifti_stem, read_image_volume, read_label_volume, write_labels

#: In-plane voxel size (mm) of every preprocessed slice: 400 mm / 256, a common ACDC
#: spacing in the middle of its 0.7-1.9 mm range, so most volumes change little.
TARGET_SPACING_MM = 1.5625
#: Side (pixels) of every preprocessed slice: 300 mm of field of view, room for a 100-130
#: mm heart up to 80 mm off the image centre (docs/VOLUMES.md); 6 x 32 for SegNet's depth 5.
SLICE_SIZE = 192
#: Percentiles of each volume's intensities mapped to 0 and 1 (and clipped): robust to
#: the few very bright voxels (fat, flow artefacts) that would compress the heart's range.
CLIP_PERCENTILES = (0.5, 99.5)
#: The most a volume's in-plane resampled grid may hold, in float32 bytes (``check_resampled_size``):
#: an ACDC volume's is about 3 MB; a voxel size off by 1000 gives hundreds of GiB.
MAX_RESAMPLED_BYTES = 2 * 2**30
#: Intensities are quantised to 16 bits, exactly as ``read_image`` reads a 16-bit PNG:
#: far finer than MR noise, and the cache then holds 2 bytes per pixel, not 4.
INTENSITY_LEVELS = 65535
#: Bumped whenever the arrays this module produces change, so caches of old ones are not used.
PREPROCESSING_VERSION = 2


def preprocessing() -> dict:
    """The preprocessing constants as one JSON-able dict (for caches and model files)."""
    return {
        "kind": "volumes", "version": PREPROCESSING_VERSION, "target_spacing_mm": TARGET_SPACING_MM,
        "slice_size": SLICE_SIZE, "clip_percentiles": list(CLIP_PERCENTILES), "slice_axis": "thickest voxel axis, else the third",
        "intensity_levels": INTENSITY_LEVELS,
    }


@dataclass(frozen=True, eq=False)  # holds an array: compare fields, not objects
class Volume:
    """One NIfTI volume: who it is, its grid, and how its slices were made.

    case:            case id ("patient001_frame01"; nnU-Net: the file name without _0000).
    patient:         the patient (group) no split divides.
    phase:           "ED", "ES" or None (unknown / not a cardiac phase).
    image_path:      absolute path of the source image.
    label_path:      absolute path of its label volume, or None.
    shape:           (X, Y, Z) voxel grid of the source (2-D files: Z = 1).
    affine:          (4, 4) float64 voxel-to-world (mm) matrix of the source.
    spacing:         (sx, sy, sz) voxel size in mm along the three array axes.
    target_spacing:  in-plane mm of the preprocessed slices.
    resampled_shape: (X', Y') in-plane grid after resampling, before crop / pad.
    crop:            (c0, c1) origin of the crop in the resampled grid; negative = padded.
    size:            (H, W) of each preprocessed slice.
    intensity_range: (lo, hi) source intensities mapped to 0 and 1.
    group, height, weight: ACDC's pathology group, height (cm), weight (kg), where known.
    """

    case: str
    patient: str
    phase: str | None
    image_path: str
    label_path: str | None
    shape: tuple[int, int, int]
    affine: np.ndarray
    spacing: tuple[float, float, float]
    target_spacing: float
    resampled_shape: tuple[int, int]
    crop: tuple[int, int]
    size: tuple[int, int]
    intensity_range: tuple[float, float]
    group: str | None = None
    height: float | None = None
    weight: float | None = None
    slice_axis: int = 2  # the voxel axis slices are cut across (``through_plane_axis``)

    @property
    def plane_shape(self) -> tuple[int, int, int]:
        """The source shape with the slice axis moved last: (in-plane, in-plane, slices)."""
        return _moved(self.shape, self.slice_axis)

    @property
    def plane_spacing(self) -> tuple[float, float, float]:
        """``spacing`` in the order of ``plane_shape``."""
        return _moved(self.spacing, self.slice_axis)

    @property
    def n_slices(self) -> int:
        """The number of slices along the slice axis."""
        return self.shape[self.slice_axis]

    def to_dict(self) -> dict:
        """JSON-able fields (tuples as lists, the affine as nested lists)."""
        out = asdict(self)
        out["affine"] = np.asarray(self.affine, np.float64).tolist()
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Volume:
        """Inverse of ``to_dict``."""
        tuples = {"shape", "spacing", "resampled_shape", "crop", "size", "intensity_range"}
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        for key in tuples:
            kw[key] = tuple(kw[key])
        kw["affine"] = np.asarray(kw["affine"], np.float64)
        return cls(**kw)


def _moved(values: tuple, axis: int) -> tuple:
    """``values`` (one per voxel axis) with entry ``axis`` moved last."""
    return tuple(v for i, v in enumerate(values) if i != axis) + (values[axis],)


def through_plane_axis(spacing: tuple[float, float, float], shape: tuple[int, int, int] | None = None) -> int:
    """The voxel axis slices are cut across: the one whose voxels are clearly the thickest
    (a short-axis stack's 5-10 mm against 1-2 mm in-plane), whichever position a writer put
    it in; the third axis, as in ACDC and nnU-Net files, where no axis stands out.

    A single slice (one axis of ``shape`` has one voxel, the others more) is cut across
    that axis whatever its spacing: a 2-D file's thickness is unknown (read as 1 mm), and
    cutting 2.0 x 1.0 mm pixels across their 2 mm axis would give rows, not an image.
    """
    if shape is not None:
        single = [i for i, n in enumerate(shape) if n == 1]
        if len(single) == 1:
            return single[0]
    thickest = int(np.argmax(spacing))
    others = [s for i, s in enumerate(spacing) if i != thickest]
    return thickest if spacing[thickest] > 1.5 * max(others) else 2


def case_id(image_path: os.PathLike | str) -> str:
    """Case id of an image file: its name without ``.nii.gz`` and nnU-Net's ``_0000``."""
    stem = nifti_stem(image_path)
    return stem[:-5] if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit() else stem


def quantise(images: np.ndarray) -> np.ndarray:
    """Float [0, 1] -> the nearest of INTENSITY_LEVELS + 1 levels, float32, any shape.

    ``to_levels`` of the result gives its uint16 levels back exactly, so a cache can
    store 2 bytes per pixel and return bit-identical arrays (and fingerprints).
    """
    return from_levels(to_levels(images))


def to_levels(images: np.ndarray) -> np.ndarray:
    """Float [0, 1] (any shape) -> uint16 levels 0..INTENSITY_LEVELS."""
    return np.round(np.asarray(images, np.float64) * INTENSITY_LEVELS).astype(np.uint16)


def from_levels(levels: np.ndarray) -> np.ndarray:
    """uint16 levels -> float32 in [0, 1], the expression ``read_image`` uses for 16-bit PNGs."""
    return levels.astype(np.float32) / np.float32(INTENSITY_LEVELS)


def _spacing(img, path: Path) -> tuple[float, float, float]:
    """(sx, sy, sz) mm from the header; a 2-D file's unknown thickness reads as 1 mm."""
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    zooms += [1.0] * (3 - len(zooms))
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise DataError(f"{path}: voxel size {tuple(zooms)} mm is not positive")
    return tuple(zooms)


def _plane_geometry(shape: tuple[int, int, int], spacing, target: float, size: int):
    """Resampled in-plane shape (X', Y') and the centre-crop origin (c0, c1)."""
    resampled = tuple(max(1, round(n * s / target)) for n, s in zip(shape[:2], spacing[:2]))
    # Floor division: an odd surplus (or deficit) goes to the far edge, the same every time.
    crop = tuple((n - size) // 2 for n in resampled)
    return resampled, crop


def check_resampled_size(path: Path, shape: tuple[int, int, int], spacing, resampled: tuple[int, int],
                         target: float) -> None:
    """Refuse, in one line naming the file, a volume whose header's voxel size would resample it
    to a grid of more than ``MAX_RESAMPLED_BYTES`` (float32), before anything of that size exists.

    A voxel size off by a factor of 1000 (metres or micrometres written as millimetres) turns a
    256 x 256 plane into a grid of 163,840 x 163,840 pixels: hundreds of GiB of memory for any
    resampler that builds it, and an image of a few pixels even where none is built.
    """
    n = resampled[0] * resampled[1] * shape[2]
    if n * 4 > MAX_RESAMPLED_BYTES:
        raise DataError(
            f"{path}: voxel size {spacing[0]:g} x {spacing[1]:g} mm resamples its {shape[0]} x {shape[1]} plane to "
            f"{resampled[0]} x {resampled[1]} pixels of {target:g} mm ({n * 4 / 2**30:,.0f} GiB for {shape[2]} "
            f"slice(s), over the {MAX_RESAMPLED_BYTES // 2**30} GiB limit); check the header's voxel size (pixdim)")


def _resample(vol: np.ndarray, volume: Volume, order: int) -> np.ndarray:
    """(X, Y, Z) source voxels -> (H, W, Z) crop of the resampled grid; 0 outside it.

    One affine_transform does resampling and crop/pad: output (v0, v1, z) samples input
    ((v + c + 0.5) * q - 0.5) per in-plane axis, z unchanged (module docstring). Edges
    repeat the border voxel (mode "nearest") so interpolation does not fade the image's
    rim towards 0; the padding outside the resampled grid is then set to 0 explicitly.
    """
    from scipy import ndimage

    q = [volume.target_spacing / s for s in volume.plane_spacing[:2]]
    offset = [(c + 0.5) * qa - 0.5 for c, qa in zip(volume.crop, q)] + [0.0]
    out = ndimage.affine_transform(
        vol, np.array([q[0], q[1], 1.0]), offset=offset,
        output_shape=(*volume.size, vol.shape[2]), order=order, mode="nearest",
    )
    inside = [
        (np.arange(n) + c >= 0) & (np.arange(n) + c < r)
        for n, c, r in zip(volume.size, volume.crop, volume.resampled_shape)
    ]
    out[~inside[0]] = 0
    out[:, ~inside[1]] = 0
    return out


def _normalise(vol: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Percentile window of the whole volume: (X, Y, Z) float32 [0, 1] and (lo, hi)."""
    lo, hi = (float(v) for v in np.percentile(vol, CLIP_PERCENTILES))
    if hi <= lo:  # a constant volume: anything finite; it carries no signal anyway
        hi = lo + 1.0
    scaled = (vol - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(scaled, 0, 1).astype(np.float32), (lo, hi)


def preprocess_volume(
    image_path: os.PathLike | str,
    label_path: os.PathLike | str | None = None,
    *,
    target_spacing: float = TARGET_SPACING_MM,
    size: int = SLICE_SIZE,
) -> tuple[np.ndarray, np.ndarray | None, Volume]:
    """Read, check and preprocess one NIfTI volume (and its labels) into slices.

    Returns images (Z, size, size) float32 in [0, 1], masks (Z, size, size) uint8 class
    ids or None without ``label_path``, and the Volume (case = file name without
    ``.nii.gz`` / ``_0000``; patient = case; phase None: loaders fill those in).
    Raises DataError naming the file for a truncated or non-3-D file, a label volume on
    another grid, or labels that are not class ids 0..3. Works on unseen volumes too.
    """
    image_path = Path(image_path).resolve()
    vol, img = read_image_volume(image_path)
    labels = None
    if label_path is not None:
        label_path = Path(label_path).resolve()
        labels = read_label_volume(label_path, img, image_path)
    spacing = _spacing(img, image_path)
    axis = through_plane_axis(spacing, vol.shape)
    resampled, crop = _plane_geometry(_moved(vol.shape, axis), _moved(spacing, axis), target_spacing, size)
    check_resampled_size(image_path, _moved(vol.shape, axis), _moved(spacing, axis), resampled, target_spacing)
    normalised, window = _normalise(np.moveaxis(vol, axis, 2))
    volume = Volume(
        case=case_id(image_path), patient=case_id(image_path), phase=None,
        image_path=str(image_path), label_path=None if label_path is None else str(label_path),
        shape=tuple(int(n) for n in vol.shape), affine=np.asarray(img.affine, np.float64), spacing=spacing,
        target_spacing=float(target_spacing), resampled_shape=resampled, crop=crop, size=(size, size),
        intensity_range=window, slice_axis=axis,
    )
    images = quantise(np.clip(_resample(normalised, volume, order=1), 0, 1)).transpose(2, 0, 1)
    masks = None if labels is None else _resample(np.moveaxis(labels, axis, 2), volume, order=0).transpose(2, 0, 1)
    images = np.ascontiguousarray(images, np.float32)
    return images, None if masks is None else np.ascontiguousarray(masks), volume


def _back_indices(n_out: int, volume: Volume, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """For each source index along in-plane ``axis``: its nearest crop pixel, and whether
    that pixel lies in the crop (else the source voxel was cut off). Both (n_out,)."""
    q = volume.target_spacing / volume.plane_spacing[axis]
    u = (np.arange(n_out) + 0.5) / q - 0.5  # source voxel centres in resampled-grid pixels
    # A rim voxel may fall a fraction past the rounded resampled grid: it takes the edge pixel.
    r = np.clip(np.floor(u + 0.5).astype(np.int64), 0, volume.resampled_shape[axis] - 1) - volume.crop[axis]
    inside = (r >= 0) & (r < volume.size[axis])
    return np.clip(r, 0, volume.size[axis] - 1), inside


def assemble(volume: Volume, slice_masks: np.ndarray) -> np.ndarray:
    """Class-id slices in preprocessed space back onto the source grid.

    slice_masks: (Z, H, W) integer class ids, one per slice of ``volume`` in slice order.
    Returns (X, Y, Z) uint8 = ``volume.shape``: each source voxel takes the class of its
    nearest preprocessed pixel (undoing crop/pad and resampling); voxels outside the crop
    are background. ``write_labels_nifti`` writes it on the source's grid.
    """
    slice_masks = np.asarray(slice_masks)
    expected = (volume.n_slices, *volume.size)
    if slice_masks.shape != expected:
        raise ValueError(f"assemble: {volume.case} needs slices {expected}, got {slice_masks.shape}")
    rows, row_in = _back_indices(volume.plane_shape[0], volume, 0)
    cols, col_in = _back_indices(volume.plane_shape[1], volume, 1)
    out = slice_masks[:, rows][:, :, cols].transpose(1, 2, 0).astype(np.uint8)
    out[~row_in] = 0
    out[:, ~col_in] = 0
    return np.ascontiguousarray(np.moveaxis(out, 2, volume.slice_axis))


def read_truth(volume: Volume) -> np.ndarray | None:
    """The ground-truth labels on the source grid: (X, Y, Z) uint8, or None without a
    label file. Raises DataError naming the file if it no longer reads or fits."""
    if volume.label_path is None:
        return None
    labels = read_label_volume(volume.label_path)
    if labels.shape != volume.shape:
        raise DataError(f"{volume.label_path}: label volume is {labels.shape}, expected {volume.shape} like its image")
    return labels


def write_labels_nifti(path: os.PathLike | str, labels: np.ndarray, volume: Volume) -> None:
    """Write (X, Y, Z) class ids (``volume.shape``) as a uint8 NIfTI with the source
    image's affine and header, qform and sform kept, so viewers overlay it on the image."""
    labels = np.asarray(labels)
    if labels.shape != volume.shape:
        raise ValueError(f"write_labels_nifti: {volume.case} labels must be {volume.shape}, got {labels.shape}")
    integer = np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_
    if not integer or (labels.size and (labels.min() < 0 or labels.max() > 3)):
        raise ValueError("write_labels_nifti: labels must be integer class ids 0..3")
    write_labels(path, labels, volume.affine, volume.image_path)


def volume_spacing(volume: Volume) -> tuple[float, float, float]:
    """(sx, sy, sz) voxel size in mm along the axes of ``assemble``'s and ``read_truth``'s
    arrays (the source grid), for surface distances and volumes in ml."""
    return tuple(float(s) for s in volume.spacing)
