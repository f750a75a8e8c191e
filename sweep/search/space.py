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
"""

from __future__ import annotations

import warnings
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


def suggest(trial: optuna.Trial, epochs: int) -> tuple[SegNetConfig, TrainConfig]:
    """Sample (or, for a FixedTrial, read back) a trial's hyperparameters."""
    # Imported here, so that reading this module's constants (the report's edge warnings) loads no torch.
    from model import SegNetConfig

    depth = trial.suggest_int("depth", 3, 5)
    convs_shallow = trial.suggest_int("convs_shallow", 1, 3)
    convs_deep = trial.suggest_int("convs_deep", 1, 3)
    model_cfg = SegNetConfig(
        depth=depth,
        base_width=trial.suggest_categorical("base_width", WIDTHS),
        max_width=MAX_WIDTH,
        convs_per_stage=tuple(convs_shallow if i < 2 else convs_deep for i in range(depth)),
        kernel_size=trial.suggest_categorical("kernel_size", (3, 5)),
        dropout=trial.suggest_float("dropout", 0.0, 0.5),
    )
    train_cfg = TrainConfig(
        lr=trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        weight_decay=trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
        batch_size=trial.suggest_categorical("batch_size", BATCH_SIZES),
        schedule=trial.suggest_categorical("schedule", ("constant", "cosine")),
        dice_weight=trial.suggest_float("dice_weight", 0.0, 1.0),
        class_weight_power=trial.suggest_float("class_weight_power", 0.0, 1.0),
        aug_rotate=trial.suggest_float("aug_rotate", 0.0, 45.0),
        aug_scale=trial.suggest_float("aug_scale", 0.0, 0.25),
        aug_gamma=trial.suggest_float("aug_gamma", 0.0, 0.7),
        aug_translate=trial.suggest_float("aug_translate", 0.0, 0.15),
        aug_elastic=trial.suggest_float("aug_elastic", 0.0, 6.0),
        aug_lowres=trial.suggest_float("aug_lowres", 0.0, 1.0),
        aug_blur=trial.suggest_float("aug_blur", 0.0, 1.0),
        aug_noise=trial.suggest_float("aug_noise", 0.0, 0.2),
        aug_mirror=trial.suggest_float("aug_mirror", 0.0, 0.5),
        epochs=epochs,
    )
    return model_cfg, train_cfg


def configs_from_params(params: dict, epochs: int) -> tuple[SegNetConfig, TrainConfig]:
    """The configs a finished trial's params stand for (used by ``best`` and checks of --enqueue);
    parameters an older study's trials lack are off (``ADDED_OFF``)."""
    return suggest(optuna.trial.FixedTrial({**ADDED_OFF, **params}), epochs)


def params_problem(params: dict, epochs: int) -> str | None:
    """Why ``params`` is not a configuration of this space (a missing, unknown or invalid
    parameter), or None. FixedTrial alone would ignore unknown names."""
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
