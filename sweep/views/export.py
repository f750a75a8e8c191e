"""`python -m sweep export --csv FILE`: one row per trial, for spreadsheets and pandas."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from data.files import output_file
from sweep.core.errors import UsageError
from sweep.core.outputs import refuse_outputs
from sweep.core.records import DICE_KEYS, Evaluation, TrialKey, attempt, root_trial_number
from sweep.core.study import open_study_readonly

DROPPED = (f"user_attrs_{TrialKey.HISTORY}",)  # per-epoch lists: bulky, and unreadable in a cell
# Always present and first, even where no trial has set them yet (e.g. fail_reason), so that a
# script reading the CSV does not depend on what happened in the study.
# "trial" is the number a user knows a trial by: an interrupted trial's retries keep it ("attempt" 2, 3, ...).
FIRST = (
    "number", "trial", "attempt", "state", *DICE_KEYS, "dice_fg", "dice_mean4",
    TrialKey.BEST_EPOCH, TrialKey.EPOCHS_RUN, TrialKey.SECONDS, TrialKey.N_PARAMS, TrialKey.FAIL_REASON, TrialKey.PRUNED_AT,
)


def export_csv(storage_url: str, study_name: str, path: str | Path) -> int:
    """Write the study's trials to ``path``; returns the number of rows."""
    study = open_study_readonly(storage_url, study_name)
    refuse_outputs(f"--csv {path}", [path, cases_path(path)], storage=storage_url, study=study)
    frame = study.trials_dataframe()
    # System attrs are Optuna's bookkeeping (artifact ids, retry links, enqueued params).
    frame = frame.drop(columns=[c for c in frame.columns if c in DROPPED or c.startswith("system_attrs_")])
    # User attrs go by their own names (dice_rv, best_epoch, ...); params keep their prefix so that
    # a parameter can never clash with an attribute. The value column is Optuna's ("value_val_dice_fg").
    frame = frame.rename(columns=lambda c: c.removeprefix("user_attrs_"))
    chain = {t.number: (root_trial_number(t), attempt(t)) for t in study.get_trials(deepcopy=False)}
    numbers = frame["number"] if "number" in frame else []
    frame["trial"] = [chain[n][0] for n in numbers]
    frame["attempt"] = [chain[n][1] for n in numbers]
    values = [c for c in frame.columns if c == "value" or c.startswith("value_")] or ["value"]
    params = sorted(c for c in frame.columns if c.startswith("params_"))
    first = [*FIRST[:4], *values, *FIRST[4:]]
    rest = [c for c in frame.columns if c not in first and c not in params]
    frame = frame.reindex(columns=first + params + rest)
    _write(frame, path)
    return len(frame)


def cases_path(path: str | Path) -> Path:
    """Where the evaluation's per-patient rows go: beside the trials, ``NAME_cases.csv``."""
    path = Path(path)
    return path.with_name(f"{path.stem}_cases{path.suffix or '.csv'}")


def export_cases(storage_url: str, study_name: str, path: str | Path) -> int:
    """One row per evaluated test volume (case, patient, phase, Dice, HD95, ASSD per structure),
    where the study's evaluation was on volume data; returns the rows written (0: no file)."""
    study = open_study_readonly(storage_url, study_name)
    evaluation = Evaluation.of_study(study)
    cases = ((evaluation and evaluation.volumes) or {}).get("cases") or []
    if cases:
        _write(pd.DataFrame(cases), cases_path(path))
    return len(cases)


def _write(frame: pd.DataFrame, path: str | Path) -> None:
    try:
        with output_file(path) as tmp:
            frame.to_csv(tmp, index=False)
    except OSError as err:
        raise UsageError(f"--csv {path}: cannot write ({err.strerror or err})") from None
