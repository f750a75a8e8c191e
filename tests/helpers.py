"""Tiny PNG datasets written with Pillow, for the tests of several modules."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def write_png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    img.save(path, format="PNG")
    return path


def random_image(seed: int, shape=(16, 16)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def random_mask(seed: int, shape=(16, 16)) -> np.ndarray:
    return np.random.default_rng(seed + 1000).integers(0, 4, shape, dtype=np.uint8)


def write_split(folder: Path, names, masks=True, shape=(16, 16)) -> None:
    (folder / "image").mkdir(parents=True, exist_ok=True)
    for name in names:
        seed = zlib.crc32(name.encode())  # stable across runs, unlike hash()
        write_png(folder / "image" / f"{name}.png", random_image(seed, shape))
        if masks:
            write_png(folder / "mask" / f"{name}_mask.png", random_mask(seed, shape))


def write_coursework(root: Path, n=(4, 2, 3), test_masks=False) -> Path:
    for split, count in zip(("train", "val", "test"), n):
        write_split(root / split, [f"{split}{i:02d}" for i in range(count)],
                     masks=split != "test" or test_masks)
    return root


def one_error_line(capsys) -> str:
    """The one ``error: ...`` line a refused command printed on stderr, with no traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]
