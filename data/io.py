"""PNG reading and writing for images and masks, with checks that name the bad file.

Images are grey PNGs returned as float32 in [0, 1]; masks are PNGs whose pixel value is
the class id (0 background, 1 RV, 2 myocardium, 3 LV), the coursework encoding.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DataError
from .files import output_file

#: Number of classes; mask values must lie in 0..N_CLASSES-1.
N_CLASSES = 4


def png_files(folder: Path) -> list[Path]:
    """The ``.png`` files directly in ``folder``, sorted by name.

    The suffix is matched case-insensitively; hidden files (``.name``), sub-folders and
    other file types are skipped, so stray ``Thumbs.db`` or ``.DS_Store`` never break a load.
    """
    return sorted(
        p for p in Path(folder).iterdir()
        if p.suffix.lower() == ".png" and not p.name.startswith(".") and p.is_file()
    )


def _decode(path: Path) -> Image.Image:
    """Open and fully decode one PNG; any failure becomes a one-line DataError."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with Image.open(path) as img:
            # Pillow decodes lazily; load() is what exposes truncated or corrupt data.
            img.load()
            n_frames = getattr(img, "n_frames", 1)
            fmt = img.format
            decoded = img.copy()
    # Pillow reports corrupt files through many types (OSError, SyntaxError, ValueError,
    # EOFError, zlib errors, ...); all mean the same thing to the user.
    except Exception as err:  # noqa: BLE001
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: not a readable PNG image ({reason})") from None
    if fmt != "PNG":
        raise DataError(f"{path}: not a readable PNG image (the file is {fmt})")
    if n_frames != 1:
        raise DataError(f"{path}: animated PNG with {n_frames} frames, expected one 2-D image")
    return decoded


def _grey(img: Image.Image, path: Path, *, palette_is_index: bool) -> tuple[np.ndarray, int]:
    """Pixels of a decoded image as one 2-D integer array, and the value of full white.

    Accepts 8-bit ("L", "1"), 16-bit ("I;16*", and "I" which is how 16-bit PNGs may
    decode) and RGB whose three channels are equal. A palette ("P") image is read as its
    indices when ``palette_is_index`` (how many tools store label masks), otherwise
    through its palette, which must then be grey.
    """
    mode = img.mode
    if mode == "1":
        return np.asarray(img, dtype=np.uint8), 1
    if mode == "L":
        return np.asarray(img, dtype=np.uint8), 255
    if mode == "P" and palette_is_index:
        return np.asarray(img, dtype=np.uint8), 255
    if mode.startswith("I;16"):
        return np.asarray(img).astype(np.int32), 65535
    if mode == "I":
        arr = np.asarray(img, dtype=np.int32)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise DataError(f"{path}: integer image with values outside 0..65535")
        return arr, 65535
    if mode in ("RGB", "P"):
        rgb = np.asarray(img.convert("RGB"))
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return rgb[..., 0].copy(), 255
        raise DataError(f"{path}: colour image (mode {mode}), expected greyscale")
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        raise DataError(f"{path}: image with an alpha channel (mode {mode}), expected greyscale")
    raise DataError(f"{path}: colour image (mode {mode}), expected greyscale")


def _pixels(path: os.PathLike | str, *, palette_is_index: bool) -> tuple[np.ndarray, int]:
    path = Path(path)
    arr, white = _grey(_decode(path), path, palette_is_index=palette_is_index)
    if arr.ndim != 2 or 0 in arr.shape:
        raise DataError(f"{path}: expected a 2-D image, got shape {arr.shape}")
    return arr, white


def read_image(path: os.PathLike | str) -> np.ndarray:
    """Validate and load one grey PNG image.

    Returns (H, W) float32 in [0, 1]: 8-bit values / 255, 16-bit values / 65535.
    Raises DataError (naming ``path``) if it is unreadable, colour or not 2-D.
    """
    arr, white = _pixels(path, palette_is_index=False)
    return arr.astype(np.float32) / np.float32(white)


def read_mask(path: os.PathLike | str) -> np.ndarray:
    """Validate and load one mask PNG whose pixel values are class ids.

    Returns (H, W) uint8 with values in 0..3. Raises DataError (naming ``path`` and a few
    offending values) if it is unreadable, colour, not 2-D, or holds other values.
    """
    arr, _ = _pixels(path, palette_is_index=True)
    bad = np.unique(arr[(arr < 0) | (arr >= N_CLASSES)])
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:5]) + (", ..." if bad.size > 5 else "")
        raise DataError(
            f"{path}: mask values must be class ids 0..{N_CLASSES - 1}, found {shown}"
        )
    return arr.astype(np.uint8)


def write_mask(path: os.PathLike | str, mask: np.ndarray) -> None:
    """Write a (H, W) mask of integer class ids 0..3 as an 8-bit grey PNG.

    Pixel value = class id, the coursework encoding, so ``read_mask`` reads it back
    unchanged. Creates missing parent folders. Raises ValueError for a mask that is not
    2-D, not integer, or has values outside 0..3 (a caller bug, not bad input data).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"write_mask: expected a 2-D mask, got shape {mask.shape}")
    if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == np.bool_):
        raise ValueError(f"write_mask: mask must hold integer class ids, got {mask.dtype}")
    if mask.size and (mask.min() < 0 or mask.max() >= N_CLASSES):
        raise ValueError(f"write_mask: class ids must be in 0..{N_CLASSES - 1}, got {mask.min()}..{mask.max()}")
    with output_file(path) as tmp:
        Image.fromarray(mask.astype(np.uint8)).save(tmp, format="PNG")
