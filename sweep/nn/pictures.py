"""Pictures of predictions: image, ground truth and prediction overlays in one PNG (Pillow + numpy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data.files import output_file

# Okabe-Ito colours: distinct for colour-blind readers too. Background (0) stays transparent.
CLASS_COLOURS = {1: (230, 159, 0), 2: (0, 158, 115), 3: (86, 180, 233)}
CLASS_LABELS = {1: "RV", 2: "Myo", 3: "LV"}
ALPHA = 0.5  # strong enough to read the class, weak enough to see the anatomy below
SCALE = 2  # 96 px slices are too small to read at 1:1
GAP = 4  # px between tiles
LABEL_WIDTH = 96  # px of row labels on the left
FOOTER = 24  # px for the colour legend


def overlay_png(
    images: np.ndarray,
    truth: np.ndarray | None,
    pred: np.ndarray,
    path: str | Path,
    max_slices: int = 6,
) -> None:
    """Write a grid: one column per slice, rows image / ground truth / prediction.

    ``images`` is ``(N, H, W)`` float in [0, 1]; ``truth`` (or None where there are no masks) and
    ``pred`` are ``(N, H, W)`` class ids 0..3. At most ``max_slices`` slices, evenly spaced over
    N so that the picture covers base to apex rather than N neighbours.
    """
    images = np.asarray(images, dtype=np.float32)
    pred = np.asarray(pred)
    if images.ndim != 3 or pred.shape != images.shape or (truth is not None and np.shape(truth) != images.shape):
        raise ValueError(f"expected (N, H, W) arrays of one shape, got {images.shape}, {np.shape(truth)}, {pred.shape}")
    picks = np.unique(np.linspace(0, len(images) - 1, min(max_slices, len(images))).round().astype(int))
    rows = [("image", None)] + ([("ground truth", truth)] if truth is not None else []) + [("prediction", pred)]

    h, w = (s * SCALE for s in images.shape[1:])
    font = ImageFont.load_default(size=14)
    canvas = Image.new(
        "RGB",
        (LABEL_WIDTH + len(picks) * (w + GAP), len(rows) * (h + GAP) + FOOTER),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    for r, (label, masks) in enumerate(rows):
        y = r * (h + GAP)
        draw.text((6, y + h // 2 - 6), label, fill="black", font=font)
        for c, i in enumerate(picks):
            tile = _tile(images[i], None if masks is None else np.asarray(masks[i]))
            canvas.paste(tile.resize((w, h), Image.NEAREST), (LABEL_WIDTH + c * (w + GAP), y))
    _legend(draw, font, y=len(rows) * (h + GAP) + 4)
    with output_file(path) as tmp:
        canvas.save(tmp, format="PNG")


def _tile(image: np.ndarray, mask: np.ndarray | None) -> Image.Image:
    grey = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    if mask is not None:
        for cls, colour in CLASS_COLOURS.items():
            hit = mask == cls
            rgb[hit] = (1 - ALPHA) * rgb[hit] + ALPHA * np.array(colour, dtype=np.float32)
    return Image.fromarray(rgb.round().astype(np.uint8), "RGB")


def _legend(draw: ImageDraw.ImageDraw, font, y: int) -> None:
    x = LABEL_WIDTH
    for cls, colour in CLASS_COLOURS.items():
        draw.rectangle((x, y, x + 14, y + 14), fill=colour)
        draw.text((x + 20, y + 1), CLASS_LABELS[cls], fill="black", font=font)
        x += 80
