"""The built-in synthetic short-axis cardiac MR phantom (``--data phantom``).

Each slice is drawn from its own seeded generator: an LV blood pool (bright, with a few
dark papillary muscles that belong to the LV class as in ACDC) inside a myocardium ring of
varying thickness, an RV crescent on the septal side (above the LV and mostly to its
right in the image, as measured on the coursework data: RV_ANGLE_DEGREES), pericardial
fat, and the surrounding anatomy: body outline with subcutaneous fat and chest-wall
muscle, dark lungs with bright vessels, liver, stomach and the descending aorta. Then partial-volume blur, a smooth multiplicative bias field,
Rician noise (magnitude of complex Gaussian), window to [0, 1] and 8-bit quantisation,
so a phantom image survives a PNG round trip exactly like a real one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dataset import Dataset, Split
from .split import split_indices

#: Generator seed of the phantom behind ``--data phantom``.
PHANTOM_SEED = 0
#: Slices in the phantom dataset (split 100/20/80).
PHANTOM_SLICES = 200


def make_phantom(n: int, seed: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` phantom slices.

    Returns images (n, size, size) float32 in [0, 1] (multiples of 1/255) and masks
    (n, size, size) uint8 with 0 background, 1 RV, 2 myocardium, 3 LV. The same seed
    gives identical arrays; slice i depends only on (seed, i), so a smaller ``n`` gives a
    prefix of a larger one.
    """
    images = np.empty((n, size, size), np.float32)
    masks = np.empty((n, size, size), np.uint8)
    # float64 throughout, though slower than float32: the 8-bit rounding at the end then
    # cannot flip on last-bit differences between CPUs' SIMD maths or NumPy versions, so
    # the phantom (and the fingerprint a study stores) is the same on every machine.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(n)):
        images[i], masks[i] = _slice(np.random.default_rng(child), xx, yy, size)
    return images, masks


def make_phantom_dataset(seed: int = PHANTOM_SEED) -> Dataset:
    """The phantom dataset: 200 slices split 100/20/80 by a permutation seeded by ``seed``.

    Unlike the coursework data, the test split has masks, so test Dice is reported.
    """
    images, masks = make_phantom(PHANTOM_SLICES, seed)
    names = tuple(f"phantom{i:03d}" for i in range(PHANTOM_SLICES))
    parts = [
        Split(images[idx], masks[idx], tuple(names[i] for i in idx))
        for idx in split_indices(PHANTOM_SLICES, seed)
    ]
    return Dataset("phantom", True, "phantom", *parts, split_seed=seed)


def _ellipse(xx, yy, cx, cy, a, b, angle=0.0) -> np.ndarray:
    """Level of the ellipse at (cx, cy) with semi-axes a, b rotated by ``angle`` (rad):
    < 1 inside. (H, W) float."""
    c, s = np.cos(angle), np.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return (u / a) ** 2 + (v / b) ** 2


def _smooth_noise(rng, size: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Two independent zero-mean, unit-std random fields with structures ~``scale``
    pixels, each (H, W): the real and imaginary parts of one filtered complex noise."""
    freq = np.fft.fftfreq(size)
    lowpass = np.exp(-(freq[:, None] ** 2 + freq[None, :] ** 2) * (np.pi * scale) ** 2)
    white = rng.standard_normal((2, size, size))
    field = np.fft.ifft2(np.fft.fft2(white[0] + 1j * white[1]) * lowpass)
    return tuple((f - f.mean()) / (f.std() + 1e-12) for f in (field.real, field.imag))


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflected edges (partial-volume effect). (H, W)."""
    taps = np.arange(-3, 4)
    k = np.exp(-0.5 * (taps / sigma) ** 2)
    k /= k.sum()
    for axis in (0, 1):
        padded = np.pad(img, [(3, 3) if a == axis else (0, 0) for a in (0, 1)], mode="reflect")
        img = sum(w * np.take(padded, np.arange(t + 3, t + 3 + img.shape[axis]), axis=axis) for t, w in zip(taps, k))
    return img


def _radius(theta, r0: float, harmonics) -> np.ndarray:
    """r0 * (1 + sum a * cos(k * theta - phase)) for (k, a, phase) in harmonics."""
    return r0 * (1 + sum(a * np.cos(k * theta - p) for k, a, p in harmonics))


@dataclass
class _Heart:
    """Where the heart of one slice is: centre (cx, cy), LV polar coordinates, masks
    (H, W) bool of LV cavity, epicardium (LV + myocardium), RV cavity and RV outer wall,
    and the RV ellipse (centre, semi-axes, angle) that later bands are drawn around."""

    cx: float
    cy: float
    rho: np.ndarray
    theta: np.ndarray
    r_lv: float
    lv_shape: list
    epi_r: np.ndarray
    r_epi: float
    lv: np.ndarray
    epi: np.ndarray
    rv: np.ndarray
    rv_outer: np.ndarray
    rv_ellipse: tuple[float, float, float, float, float]
    rv_wall_w: float


#: Where the RV lies: the angle (degrees, counter-clockwise from the image's +x axis, y up)
#: from the LV centre to the RV centre, as quantiles. Measured on the 71 train+val masks of
#: ../shared/data/cmri with both RV and LV (centroid to centroid): min 29, 5 % 38, 10 % 46,
#: 25 % 56, median 70, 75 % 87, 90 % 129, 95 % 135, max 155; right of the LV in 77 % of
#: slices, above it in all. The phantom draws the angle by inverting this distribution.
RV_ANGLE_QUANTILES = (0.0, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 1.0)
RV_ANGLE_DEGREES = (29.0, 38.0, 46.0, 56.0, 70.0, 87.0, 129.0, 135.0, 155.0)


def _heart(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, size: int, s: float) -> _Heart:
    """Draw the heart's geometry: LV, myocardium of varying thickness, RV crescent."""
    u = rng.uniform
    # Polar coordinates around the LV centre (y up).
    cx, cy = size / 2 + u(-8, 8) * s, size / 2 + u(-7, 7) * s
    dx, dy = xx - cx, cy - yy
    rho, theta = np.hypot(dx, dy), np.arctan2(dy, dx)
    r_lv = u(9, 15) * s
    lv_shape = [(2, u(0, 0.12), u(0, 2 * np.pi)), (3, u(0, 0.05), u(0, 2 * np.pi))]
    lv_r = _radius(theta, r_lv, lv_shape)
    # The free wall is thicker than the septum in some hearts, thinner in others.
    thick = u(3.5, 6.5) * s
    wall = _radius(theta, thick, [(1, u(0.1, 0.35), u(0, 2 * np.pi)), (2, u(0, 0.12), u(0, 2 * np.pi))])
    epi_r = lv_r + wall
    r_epi = r_lv + thick

    # RV: an ellipse centred towards the septum, minus the LV: a crescent.
    alpha = np.deg2rad(np.interp(u(0, 1), RV_ANGLE_QUANTILES, RV_ANGLE_DEGREES))
    d = r_epi * u(0.55, 0.8)
    rv_cx, rv_cy = cx + d * np.cos(alpha), cy - d * np.sin(alpha)
    rv_a, rv_b = r_epi * u(0.75, 1.0), r_epi * u(1.15, 1.5)
    epi = rho < epi_r
    rv = (_ellipse(xx, yy, rv_cx, rv_cy, rv_a, rv_b, -alpha) < 1) & ~epi
    rv_wall_w = u(1.2, 2.2) * s
    rv_outer = _ellipse(xx, yy, rv_cx, rv_cy, rv_a + rv_wall_w, rv_b + rv_wall_w, -alpha) < 1
    return _Heart(cx, cy, rho, theta, r_lv, lv_shape, epi_r, r_epi, rho < lv_r, epi, rv, rv_outer,
                  (rv_cx, rv_cy, rv_a, rv_b, -alpha), rv_wall_w)


def _body(rng: np.random.Generator, xx, yy, size: int, s: float, h: _Heart):
    """Body outline, subcutaneous fat, chest wall and unlabelled clutter.

    Returns the (H, W) float image so far, the (H, W) bool inside of the chest wall, and
    the blood texture field for later.
    """
    u = rng.uniform
    # The body is larger than the field of view, as in the coursework crops: its
    # anterior edge (subcutaneous fat, chest-wall muscle) shows at the top of some slices.
    img = np.zeros((size, size))
    # The heart lies just behind the anterior chest wall: place the body's top edge a
    # few pixels above the top of the RV, wherever that falls in the field of view.
    ba, bb, btilt = u(62, 85) * s, u(48, 62) * s, u(-0.15, 0.15)
    bx, by = h.cx + u(-10, 10) * s, h.cy - 1.9 * h.r_epi - u(10, 22) * s + bb
    fat_w, muscle_w = u(2, 5) * s, u(3, 7) * s
    img[_ellipse(xx, yy, bx, by, ba, bb, btilt) < 1] = u(0.65, 0.9)  # subcutaneous fat
    img[_ellipse(xx, yy, bx, by, ba - fat_w, bb - fat_w, btilt) < 1] = u(0.25, 0.4)  # chest wall
    inner = _ellipse(xx, yy, bx, by, ba - fat_w - muscle_w, bb - fat_w - muscle_w, btilt) < 1
    img[inner] = u(0.25, 0.45)  # mediastinum and other soft tissue
    # Unlabelled clutter (vessels, fat, muscle) so that "bright" does not mean "blood".
    for _ in range(rng.integers(3, 8)):
        blob = _ellipse(xx, yy, u(0, size), u(0, size), u(2, 7) * s, u(2, 7) * s, u(0, np.pi)) < 1
        img[blob & inner] = u(0.1, 0.85)
    tissue_texture, blood_texture = _smooth_noise(rng, size, 2.5 * s)
    img *= 1 + 0.15 * tissue_texture
    return img, inner, blood_texture


def _organs(rng: np.random.Generator, img: np.ndarray, xx, yy, size: int, s: float, h: _Heart, inner) -> None:
    """Paint liver, stomach, lungs with their vessels and the descending aorta into ``img``."""
    u = rng.uniform
    cx, cy = h.cx, h.cy
    liver = _ellipse(xx, yy, cx - u(8, 26) * s, cy + u(26, 40) * s, u(22, 32) * s, u(12, 20) * s, u(-0.5, 0.2)) < 1
    img[liver & inner] = u(0.35, 0.55)
    if u() < 0.6:
        stomach = _ellipse(xx, yy, cx + u(18, 32) * s, cy + u(18, 32) * s, u(8, 14) * s, u(6, 11) * s, u(0, np.pi)) < 1
        img[stomach & inner] = u(0.4, 0.75)
    lung_level = np.minimum(
        _ellipse(xx, yy, cx - u(16, 26) * s, cy + u(-8, 6) * s, u(12, 20) * s, u(20, 30) * s, u(-0.4, 0.4)),
        _ellipse(xx, yy, cx + u(18, 28) * s, cy + u(-2, 10) * s, u(10, 18) * s, u(18, 26) * s, u(-0.4, 0.4)),
    )
    lungs = (lung_level < 1) & inner & ~liver
    img[lungs] = u(0.02, 0.08)
    # Pulmonary vessels: bright single pixels that the blur turns into the small dots
    # seen in real lungs.
    vessels = lungs & (rng.random((size, size)) < u(0.003, 0.012))
    img[vessels] = u(0.6, 1.0)
    aorta = _ellipse(xx, yy, cx + u(-2, 12) * s, cy + h.r_epi + u(7, 14) * s, *(2 * [u(3.5, 5.5) * s])) < 1
    img[aorta] = u(0.75, 0.95)


def _paint_heart(rng: np.random.Generator, img: np.ndarray, xx, yy, s: float, h: _Heart, blood_texture) -> None:
    """Paint pericardial fat, RV wall and cavity, myocardium, LV blood and papillary muscles."""
    u = rng.uniform
    blood = u(0.65, 0.9)
    myo = u(0.15, 0.28)
    # Pericardial fat: a thin bright band around part of the heart outline.
    fat_w = u(1, 2.5) * s
    rv_cx, rv_cy, rv_a, rv_b, rv_angle = h.rv_ellipse
    grown = _ellipse(xx, yy, rv_cx, rv_cy, rv_a + h.rv_wall_w + fat_w, rv_b + h.rv_wall_w + fat_w, rv_angle) < 1
    fat_band = (h.rho < h.epi_r + fat_w) | grown
    heart = h.epi | h.rv_outer
    img[fat_band & ~heart & (np.cos(h.theta - u(0, 2 * np.pi)) > u(-0.2, 0.6))] = u(0.55, 0.85)
    img[h.rv_outer & ~h.epi] = myo * u(1.0, 1.4)  # RV free wall: thin, labelled background
    img[h.rv] = blood * u(0.75, 1.0)
    img[h.epi] = myo
    img[h.lv] = blood
    for _ in range(rng.integers(1, 4)):  # papillary muscles: dark, but LV class (ACDC)
        phi, rp = u(0, 2 * np.pi), u(1.2, 2.4) * s
        at = _radius(phi, h.r_lv, h.lv_shape) - 1.1 * rp
        img[(np.hypot(xx - h.cx - at * np.cos(phi), yy - h.cy + at * np.sin(phi)) < rp) & h.lv] = myo * u(1.0, 1.5)
    # Blood signal is not flat: slow flow and trabeculae make it mottled.
    pool = h.lv | h.rv
    img[pool] *= 1 + 0.06 * blood_texture[pool]


def _acquire(rng: np.random.Generator, img: np.ndarray, xx, yy, size: int, s: float) -> np.ndarray:
    """Partial volume, coil bias, Rician noise, 8-bit window: the (H, W) float32 image."""
    u = rng.uniform
    img = _blur(img, u(0.5, 0.9) * s)
    nx, ny = (xx / size - 0.5) * 2, (yy / size - 0.5) * 2
    c = rng.uniform(-0.35, 0.35, 5)
    img *= np.exp(c[0] * nx + c[1] * ny + c[2] * nx * nx + c[3] * ny * ny + c[4] * nx * ny)
    sigma = u(0.015, 0.045)
    noise = sigma * rng.standard_normal((2, size, size))
    img = np.hypot(img + noise[0], noise[1])
    # Window like the coursework PNGs: a few of the brightest pixels saturate.
    img = np.clip(img / np.percentile(img, u(98.5, 99.8)), 0, 1)
    # The same expression as read_image, so a PNG round trip is bit-exact.
    return np.round(img * 255).astype(np.float32) / np.float32(255)


def _slice(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One slice: (size, size) float32 image in [0, 1] and uint8 mask.

    Painted back to front (body, organs, heart), then acquired; one generator in a fixed
    order of draws, so a slice depends only on its seed.
    """
    s = size / 96.0  # every length is in pixels of a 96 x 96 slice
    h = _heart(rng, xx, yy, size, s)
    img, inner, blood_texture = _body(rng, xx, yy, size, s, h)
    _organs(rng, img, xx, yy, size, s, h, inner)
    _paint_heart(rng, img, xx, yy, s, h, blood_texture)
    image = _acquire(rng, img, xx, yy, size, s)
    mask = np.zeros((size, size), np.uint8)
    mask[h.rv] = 1
    mask[h.epi & ~h.lv] = 2
    mask[h.lv] = 3
    return image, mask
