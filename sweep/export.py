"""`python -m sweep export --csv FILE`: one row per trial, for spreadsheets and pandas."""

from __future__ import annotations

from pathlib import Path

from sweep.best import open_study_readonly
from sweep.errors import UsageError

DROPPED = ("user_attrs_history",)  # per-epoch lists: bulky, and unreadable in a cell
# Always present and first, even where no trial has set them yet (e.g. fail_reason), so that a
# script reading the CSV does not depend on what happened in the study.
FIRST = (
    "number", "state", "dice_bg", "dice_rv", "dice_myo", "dice_lv", "dice_fg", "dice_mean4",
    "best_epoch", "epochs_run", "seconds", "n_params", "fail_reason", "pruned_at_epoch",
)


def export_csv(storage_url: str, study_name: str, path: str | Path) -> int:
    """Write the study's trials to ``path``; returns the number of rows."""
    study = open_study_readonly(storage_url, study_name)
    frame = study.trials_dataframe()
    # System attrs are Optuna's bookkeeping (artifact ids, retry links, enqueued params).
    frame = frame.drop(columns=[c for c in frame.columns if c in DROPPED or c.startswith("system_attrs_")])
    # User attrs go by their own names (dice_rv, best_epoch, ...); params keep their prefix so that
    # a parameter can never clash with an attribute. The value column is Optuna's ("value_val_dice_fg").
    frame = frame.rename(columns=lambda c: c.removeprefix("user_attrs_"))
    values = [c for c in frame.columns if c == "value" or c.startswith("value_")] or ["value"]
    params = sorted(c for c in frame.columns if c.startswith("params_"))
    first = [FIRST[0], FIRST[1], *values, *FIRST[2:]]
    rest = [c for c in frame.columns if c not in first and c not in params]
    frame = frame.reindex(columns=first + params + rest)
    try:
        frame.to_csv(path, index=False)
    except OSError as err:
        raise UsageError(f"--csv {path}: cannot write ({err.strerror or err})") from None
    return len(frame)
