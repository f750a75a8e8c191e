"""`python -m sweep best`: the best trial as the study recorded it (read-only; nothing trains)."""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from sweep.core import records as rec
from sweep.core import study as st
from sweep.core.errors import UsageError
from sweep.core.records import StudyKey, TrialKey


@dataclass
class BestOptions:
    evaluate: bool = False
    seeds: int = 3  # a 4-model ensemble scored ~0.03 higher held-out dice_fg than one model (docs/RESULTS.md)
    data: str | None = None  # None: the data source recorded on the study
    out: str = "best"
    json: bool = False
    storage: str = st.DEFAULT_STORAGE
    study: str = st.DEFAULT_STUDY
    device: str = "auto"
    progress: bool = True
    refit: bool = True  # ship each seed retrained on train+val for its best epoch count (docs/RESULTS.md)
    top: int = 1  # ensemble the best K trials' configurations (each times --seeds)
    holdout: float = 0.2  # share of train patients the estimate's twins never train on (0: estimate on val)
    epochs: int | None = None  # epoch budget of the retrainings (None: each trial's own, as searched)

    def check(self) -> None:
        if self.seeds <= 0:
            raise UsageError(f"--seeds must be a positive integer, got {self.seeds}")
        if self.top <= 0:
            raise UsageError(f"--top must be a positive integer, got {self.top}")
        if self.epochs is not None and self.epochs <= 0:
            raise UsageError(f"--epochs must be a positive integer, got {self.epochs}")
        if not 0.0 <= self.holdout < 1.0:
            raise UsageError(f"--holdout must be a fraction in [0, 1), got {self.holdout}")


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
    }
