"""Samplers and pruners by name: the one table that ``--sampler`` / ``--pruner`` and their checks read.

A new sampler or pruner is one entry here (plus its tests); the CLI's choices and the option
checks follow from the keys.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna


TPE_STARTUP = 10  # Optuna's default: random trials before TPE models the study
FEW_STARTUP = 5  # `tpe-5`: for a search of a few dozen trials, where 10 random ones are a third of it
HALVING_RUNGS = 3  # `halving`: rungs at E/9, E/3 and E epochs (reduction factor 3), E the epoch budget
HALVING_FACTOR = 3


def _tpe(seed: int, startup: int = TPE_STARTUP) -> optuna.samplers.BaseSampler:
    # constant_liar: trials running in other workers count as mediocre, so parallel workers
    # do not all sample the same region.
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, n_startup_trials=startup)


def _median(epochs: int) -> optuna.pruners.BasePruner:
    # Early epochs of a segmentation net are noisy: judge no trial before a fifth of its budget.
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, epochs // 5))


def _halving(epochs: int) -> optuna.pruners.BasePruner:
    """Successive halving with rungs fixed by the budget: a third of the trials that reach a rung go on."""
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, epochs // HALVING_FACTOR ** (HALVING_RUNGS - 1)),
                                                  reduction_factor=HALVING_FACTOR)


def _hyperband(epochs: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.HyperbandPruner(min_resource=max(1, epochs // 10), max_resource=epochs)


SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe,
    "tpe-5": lambda seed: _tpe(seed, FEW_STARTUP),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
}
PRUNERS: dict[str, Callable[[int], optuna.pruners.BasePruner]] = {
    "median": _median,
    "hyperband": _hyperband,
    "halving": _halving,
    "none": lambda epochs: optuna.pruners.NopPruner(),
}


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    return SAMPLERS[name](seed)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """The pruner ``name`` sized for trials of ``epochs`` epochs."""
    return PRUNERS[name](epochs)
