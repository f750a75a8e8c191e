"""The search space: the one place that turns an Optuna trial into a trial's hyperparameters.

Ranges and why:
- ``lr`` 1e-4..1e-2, log: Adam-family optimisers on BatchNorm nets train in this band; below it
  a 50-epoch budget on ~60 slices does not converge, above it training often diverges.
- ``weight_decay`` 1e-6..1e-2, log (AdamW, decoupled): from negligible to strong regularisation,
  which matters with only tens of training slices.
- ``depth`` 3..5: at 96 px, 3 poolings give a 12 px bottleneck that still sees a whole ventricle
  with 3x3 kernels; 5 is the most 96 px allows (3 px) and is SegNet-VGG16's depth.
- ``base_width`` 8..64 (doubling per stage, capped at ``MAX_WIDTH``): 64 is SegNet-VGG16's;
  below 8 the myocardium ring is not represented well; the cap keeps the deep stages affordable.
- ``convs_shallow`` / ``convs_deep`` 1..3 conv blocks in stages 1-2 / 3 and deeper, which
  includes VGG16's 2-2-3-3-3.
- ``kernel_size`` 3 or 5.
- ``batch_size`` 4..16 (categorical, including the original's 10): with 60 slices, small
  batches give more steps per epoch; BatchNorm needs a few slices per batch.
- ``dice_weight`` 0..1: 0 is plain cross-entropy (the original), 1 is soft Dice only.
- ``class_weight_power`` 0..1: 0 is unweighted CE, 1 fully balanced.
- ``dropout`` 0..0.5 at the bottleneck, against overfitting on few slices.
- ``schedule`` constant (the original) or cosine with warm-up.
- ``aug_rotate`` 0..45 degrees: the RV's angle around the LV varies over about 100 degrees in
  the real slices (38-135 degrees, 5th-95th percentile), so rotations of that order are
  anatomy, not noise; the best trials of a 30-trial sweep sat at the top of the earlier
  0..20 range. Flips are ``aug_mirror`` below.
- ``aug_scale`` 0..0.25 (zoom), ``aug_translate`` 0..0.15 (of the field of view): hearts
  differ in size and position in the crop.
- ``aug_gamma`` 0..0.7 (|log gamma|; up to a factor 2 in gamma): the best trials sat at the
  top of the earlier 0..0.4 range. Brightness and contrast are not searched: the per-slice
  standardisation undoes them (``sweep/training/augment.py``).
- ``aug_elastic`` 0..6 px, ``aug_lowres`` 0..1 (down to half resolution), ``aug_blur``
  0..1 px, ``aug_noise`` 0..0.2 (of a slice's spread): nnU-Net's 2-D ranges in this
  project's units; 0 switches each off, so the search can find that one does not help.

``run --space local`` (``local_space``) searches only a neighbourhood of the enqueued default, for
budgets of a few dozen trials, where the full space's 21 dimensions leave TPE a random search:
lr within a decade centred on the default's, weight decay a decade either side, the loss
weighting over its whole range, each augmentation the default uses from off to twice its
strength (mirroring kept), one stage more or fewer, half or twice the width; the rest as the
default's. Every local range lies inside the full one, so a local trial is a configuration of
the full space and ``SPACE_VERSION`` (the full space's) is unchanged; a study records which
space it searched and its centre (``StudyKey.SPACE``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna

from sweep.search.config import TrainConfig

if TYPE_CHECKING:
    from model import SegNetConfig

SPACE_VERSION = 3  # bump whenever a range or parameter changes: studies record it
MAX_WIDTH = 512  # filter cap of the deep stages, as in SegNet-VGG16
BATCH_SIZES = (4, 8, 10, 16)
WIDTHS = (8, 16, 32, 64)
# Sides of a range beyond which no value is meaningful, so that the report's edge warnings do not
# suggest them: a 1x1 kernel sees no neighbourhood, 96 px allow at most 5 poolings, a stage needs a conv.
# Parameters added after version 1, and the value that means "off": a finished trial of an older
# study (which lacks them) stands for its configuration with them off.
ADDED_OFF = {"aug_translate": 0.0, "aug_elastic": 0.0, "aug_lowres": 0.0, "aug_blur": 0.0, "aug_noise": 0.0,
             "aug_mirror": 0.0}
EDGE_LIMITS = {"kernel_size": ("lower",), "depth": ("upper",), "convs_shallow": ("lower",), "convs_deep": ("lower",)}


@dataclass(frozen=True)
class Int:
    low: int
    high: int

    def draw(self, trial: optuna.Trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high)


@dataclass(frozen=True)
class Float:
    low: float
    high: float
    log: bool = False

    def draw(self, trial: optuna.Trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log)


@dataclass(frozen=True)
class Choice:
    values: tuple

    def draw(self, trial: optuna.Trial, name: str):
        return trial.suggest_categorical(name, self.values)


# The full space, in the order trials draw it (a seeded sampler draws the same trials as before the table).
FULL: dict[str, Int | Float | Choice] = {
    "depth": Int(3, 5), "convs_shallow": Int(1, 3), "convs_deep": Int(1, 3), "base_width": Choice(WIDTHS),
    "kernel_size": Choice((3, 5)), "dropout": Float(0.0, 0.5),
    "lr": Float(1e-4, 1e-2, log=True), "weight_decay": Float(1e-6, 1e-2, log=True), "batch_size": Choice(BATCH_SIZES),
    "schedule": Choice(("constant", "cosine")), "dice_weight": Float(0.0, 1.0), "class_weight_power": Float(0.0, 1.0),
    "aug_rotate": Float(0.0, 45.0), "aug_scale": Float(0.0, 0.25), "aug_gamma": Float(0.0, 0.7),
    "aug_translate": Float(0.0, 0.15), "aug_elastic": Float(0.0, 6.0), "aug_lowres": Float(0.0, 1.0),
    "aug_blur": Float(0.0, 1.0), "aug_noise": Float(0.0, 0.2), "aug_mirror": Float(0.0, 0.5),
}
MODEL_PARAMS = ("depth", "convs_shallow", "convs_deep", "base_width", "kernel_size", "dropout")
SPACES = ("full", "local")  # run --space: the whole space, or a neighbourhood of the enqueued default
LOCAL_LR_FACTOR = 10 ** 0.5  # lr within a decade, centred on the default's
LOCAL_DECAY_FACTOR = 10.0  # weight decay within a decade either side
LOCAL_AUG_FACTOR = 2.0  # each augmentation the default uses, from off to twice its strength
LOCAL_WIDTH_FACTOR = 2  # base width halved or doubled
LOCAL_DEPTH_STEP = 1  # one stage fewer or more
LOCAL_FREE = ("dice_weight", "class_weight_power")  # the loss weighting, over its whole range
LOCAL_KEPT = ("aug_mirror",)  # augmentations kept at the default's (mirroring cost 0.015 on ACDC, docs/RESULTS.md)


def local_space(centre: dict) -> dict[str, Int | Float | Choice]:
    """The neighbourhood of ``centre`` (a configuration of the full space) that ``run --space local``
    searches, in the full space's order: lr, weight decay, the loss weighting and the strengths of the
    augmentations the default uses; the architecture only one stage deeper or shallower and half or
    twice as wide; the rest fixed at the default's. Every range lies inside the full space's."""
    c = {**ADDED_OFF, **centre}
    out = {name: _fixed(spec, c[name]) for name, spec in FULL.items()}
    out["lr"] = _band(FULL["lr"], c["lr"], LOCAL_LR_FACTOR)
    out["weight_decay"] = _band(FULL["weight_decay"], c["weight_decay"], LOCAL_DECAY_FACTOR)
    out.update({name: FULL[name] for name in LOCAL_FREE})
    for name in FULL:
        if name.startswith("aug_") and name not in LOCAL_KEPT and c[name]:
            out[name] = Float(0.0, min(FULL[name].high, LOCAL_AUG_FACTOR * c[name]))
    depth = FULL["depth"]
    out["depth"] = Int(max(depth.low, c["depth"] - LOCAL_DEPTH_STEP), min(depth.high, c["depth"] + LOCAL_DEPTH_STEP))
    w = c["base_width"]
    out["base_width"] = Choice(tuple(x for x in WIDTHS if w / LOCAL_WIDTH_FACTOR <= x <= w * LOCAL_WIDTH_FACTOR))
    return out


def _fixed(spec: Int | Float | Choice, value) -> Int | Float | Choice:
    if isinstance(spec, Choice):
        return Choice((value,))
    return type(spec)(value, value) if isinstance(spec, Int) else Float(float(value), float(value), spec.log)


def _band(spec: Float, centre: float, factor: float) -> Float:
    return Float(max(spec.low, centre / factor), min(spec.high, centre * factor), spec.log)


def space_ranges(space: dict | None) -> dict[str, Int | Float | Choice]:
    """The ranges of a study's recorded space (``StudyKey.SPACE``: ``{"name", "centre"}``; None: full)."""
    if not space or space.get("name", "full") == "full":
        return FULL
    return local_space(space["centre"])


def suggest(trial: optuna.Trial, epochs: int, space: dict | None = None) -> tuple[SegNetConfig, TrainConfig]:
    """Sample (or, for a FixedTrial, read back) a trial's hyperparameters, from the full space or
    the study's recorded ``space`` (``space_ranges``)."""
    # Imported here, so that reading this module's constants (the report's edge warnings) loads no torch.
    from model import SegNetConfig

    v = {name: spec.draw(trial, name) for name, spec in space_ranges(space).items()}
    model_cfg = SegNetConfig(
        depth=v["depth"],
        base_width=v["base_width"],
        max_width=MAX_WIDTH,
        convs_per_stage=tuple(v["convs_shallow"] if i < 2 else v["convs_deep"] for i in range(v["depth"])),
        kernel_size=v["kernel_size"],
        dropout=v["dropout"],
    )
    train_cfg = TrainConfig(**{k: x for k, x in v.items() if k not in MODEL_PARAMS}, epochs=epochs)
    return model_cfg, train_cfg


def configs_from_params(params: dict, epochs: int) -> tuple[SegNetConfig, TrainConfig]:
    """The configs a finished trial's params stand for (used by ``best`` and checks of --enqueue);
    parameters an older study's trials lack are off (``ADDED_OFF``)."""
    return suggest(optuna.trial.FixedTrial({**ADDED_OFF, **params}), epochs)


def params_problem(params: dict, epochs: int) -> str | None:
    """Why ``params`` is not a configuration of this space (missing, unknown or invalid
    parameters, in this tool's words: Optuna's FixedTrial would name one missing parameter at a
    time, and ignore unknown ones), or None."""
    missing = [name for name in FULL if name not in params]
    unknown = sorted(set(params) - set(FULL))
    if missing or unknown:
        parts = [f"missing {len(missing)} of its {len(FULL)} parameters: {', '.join(missing)}"] if missing else []
        parts += [f"unknown parameter(s) {', '.join(unknown)}"] if unknown else []
        return "; ".join(parts)
    bad = [problem for name, spec in FULL.items() if (problem := _value_problem(name, spec, params[name]))]
    if bad:
        return "; ".join(bad)
    trial = optuna.trial.FixedTrial(params)
    try:
        with warnings.catch_warnings():
            # FixedTrial only warns about a value outside its range (lr 5), and Optuna would run it as given.
            warnings.simplefilter("error", UserWarning)
            suggest(trial, epochs)
    except (ValueError, KeyError, TypeError, UserWarning) as err:
        return str(err) or type(err).__name__
    unknown = sorted(set(params) - set(trial.params))
    if unknown:
        return f"unknown parameter(s) {', '.join(unknown)}; the space has {', '.join(sorted(trial.params))}"
    return None


def _value_problem(name: str, spec: Int | Float | Choice, value) -> str | None:
    """Why ``value`` is not one of ``spec``'s, or None."""
    if isinstance(spec, Choice):
        return None if value in spec.values and not isinstance(value, bool) else \
            f"{name} {value!r} is not one of {', '.join(map(str, spec.values))}"
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(spec, Int) and not (number and float(value).is_integer()):
        return f"{name} {value!r} is not a whole number"
    if not number:
        return f"{name} {value!r} is not a number"
    if not spec.low <= value <= spec.high:
        return f"{name} {value:g} is outside {spec.low:g}..{spec.high:g}"
    return None
