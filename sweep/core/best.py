"""`python -m sweep best`: the best trial as the study recorded it (read-only; nothing trains)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

import optuna

from sweep.core import records as rec
from sweep.core.errors import UsageError
from sweep.core import flags
from sweep.core.flags import device_flag, flag, json_flag, storage_flag, study_flag
from sweep.core.records import StudyKey, TrialKey
from sweep.core.study import command_line, display_url


@dataclass
class BestOptions:
    """``best``'s flags (``sweep.core.flags``), in the order ``best --help`` shows them."""

    evaluate: bool = flag(False, "retrain the best trial, evaluate it on the test split, write masks, summary.json "
                                 "and model.pt", action="store_true")
    # A 4-model ensemble scored ~0.03 higher held-out dice_fg than one model (docs/RESULTS.md).
    seeds: int = flag(3, "retrainings with seeds 0..K-1, ensembled for the masks (default %(default)s)")
    data: str | None = flag(None, "data folder (default: the one recorded on the study)")
    out: str = flag("best", "folder for predicted test masks, summary.json and model.pt (default %(default)s)")
    top: int = flag(1, "ensemble the best K trials' configurations, each retrained --seeds times (default %(default)s)",
                    metavar="K")
    refit: bool = flag(True, "ship each seed retrained on train+val for its best epoch count; --no-refit ships the "
                             "models trained on train with the checkpoint chosen on val (default: refit)",
                       action=argparse.BooleanOptionalAction)  # docs/RESULTS.md
    holdout: float = flag(0.2, "share of train patients held out of the estimate's retrainings, so that the estimate "
                               "is scored on slices that neither trained nor selected them; 0 scores it on val, which "
                               "also selected the trial (default %(default)s)", metavar="F")
    epochs: int | None = flag(None, "epoch budget of the retrainings (default: each trial's own): a search run at a "
                                    "lower budget, its pick trained longer to ship", metavar="E")
    json: bool = json_flag()
    device: str = device_flag("auto, cpu, cuda or cuda:K for the retrainings (default %(default)s)")
    progress: bool = flag(True, "no progress bar", resume=False, flag="--quiet", action="store_false")
    storage: str = storage_flag()
    study: str = study_flag()

    def check(self) -> None:
        if self.seeds <= 0:
            raise UsageError(f"--seeds must be a positive integer, got {self.seeds}")
        if self.top <= 0:
            raise UsageError(f"--top must be a positive integer, got {self.top}")
        if self.epochs is not None and self.epochs <= 0:
            raise UsageError(f"--epochs must be a positive integer, got {self.epochs}")
        if not 0.0 <= self.holdout < 1.0:
            raise UsageError(f"--holdout must be a fraction in [0, 1), got {self.holdout}")


def evaluate_command(opts: BestOptions) -> str:
    """The ``best --evaluate`` command line of ``opts``, as summary.json and the report's "Reproduce"
    give it: every flag that is not its default (and ``--seeds``, ``--out``), from the options
    themselves, so that no flag that changes the result is left out; the storage URL without its
    password."""
    shown = replace(opts, evaluate=True, storage=display_url(opts.storage))
    return command_line("best", *flags.option_flags(shown, always=("evaluate", "seeds", "out")))


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    try:
        return study.best_trial
    except ValueError:
        raise UsageError(f"--study {study.study_name!r}: no complete trial yet") from None


def describe_best(study: optuna.Study) -> dict:
    trial = best_trial(study)
    return {
        "study": study.study_name,
        "trial": trial.number,
        "params": trial.params,
        rec.VAL_DICE_FG: trial.value,
        "val": rec.class_dice(trial.user_attrs),
        "best_epoch": trial.user_attrs.get(TrialKey.BEST_EPOCH),
        "epochs": trial.user_attrs.get(TrialKey.EPOCH_BUDGET, study.user_attrs.get(StudyKey.EPOCHS)),
        "cv": rec.study_cv(study),
        "search": rec.search_gain(study),
    }
