"""Named parameter sets, each defined once in ``sweep/search/configs/NAME.json``.

- ``original``: the original coursework configuration (SegNet-VGG16 widths 64-512, Adam 1e-3,
  batch 10, plain cross-entropy, constant learning rate, no augmentation); enqueue it
  (``--enqueue original``) to measure a sweep against it. ``configs/original.json`` at the
  repository root is a link to the same file.
- ``small``: a tiny, fast configuration (depth 3, width 8) for smoke runs; tests and
  benchmarks extend it with overrides (``preset("small", lr=1e-2)``). It is the default
  (``DEFAULT_PRESET``): a new study without ``--enqueue`` runs it first.
- ``acdc``: a starting point for real volumes on a CPU budget (depth 4, width 16, two 3 x 3
  convolutions per stage, batch 8, cosine schedule, mostly soft-Dice loss, the nnU-Net
  augmentations at moderate strengths); the README's ACDC recipe enqueues it first, so the
  search starts from a configuration that trains well on 1,000+ slices of 192 x 192.
"""

from __future__ import annotations

import json
from importlib import resources
from types import MappingProxyType


def _load(name: str) -> MappingProxyType:
    text = resources.files("sweep.search").joinpath("configs", f"{name}.json").read_text()
    return MappingProxyType(json.loads(text))


PRESETS = {name: _load(name) for name in ("original", "small", "acdc")}
# What `run` enqueues first on a new study when --enqueue names nothing, so that `best` can say
# whether the search paid: `small`, cheap on any machine (about 2 s an epoch of the phantom on
# 2 busy CPU cores, where a random start-up draw took 499 s for its trial).
DEFAULT_PRESET = "small"
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
