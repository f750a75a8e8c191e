"""Named parameter sets, each defined once in ``sweep/configs/NAME.json``.

- ``original``: the original coursework configuration (SegNet-VGG16 widths 64-512, Adam 1e-3,
  batch 10, plain cross-entropy, constant learning rate, no augmentation); enqueue it
  (``--enqueue original``) to measure a sweep against it. ``configs/original.json`` at the
  repository root is a link to the same file.
- ``small``: a tiny, fast configuration (depth 3, width 8) for smoke runs; tests and
  benchmarks extend it with overrides (``preset("small", lr=1e-2)``).
"""

from __future__ import annotations

import json
from importlib import resources
from types import MappingProxyType


def _load(name: str) -> MappingProxyType:
    text = resources.files("sweep").joinpath("configs", f"{name}.json").read_text()
    return MappingProxyType(json.loads(text))


PRESETS = {name: _load(name) for name in ("original", "small")}
ORIGINAL = PRESETS["original"]
SMALL = PRESETS["small"]


def preset(name: str, **overrides) -> dict:
    """A copy of preset ``name`` with ``overrides`` applied (each must be a parameter it has)."""
    params = dict(PRESETS[name])
    unknown = set(overrides) - set(params)
    if unknown:
        raise KeyError(f"preset {name!r} has no parameter(s) {', '.join(sorted(unknown))}")
    params.update(overrides)
    return params
