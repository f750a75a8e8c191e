"""Markdown notes for optuna-dashboard (``optuna_dashboard.save_note(trial, text)``)."""

from __future__ import annotations

from collections.abc import Mapping

from sweep.core.records import TrialKey

ROWS = (
    ("dice_bg", "background"),
    ("dice_rv", "RV"),
    ("dice_myo", "myocardium"),
    ("dice_lv", "LV"),
    ("dice_fg", "**foreground (objective)**"),
    ("dice_mean4", "mean of 4 (seed's figure)"),
)


def dice_table_markdown(trial_or_attrs) -> str:
    """A Markdown table of a trial's per-class validation Dice at its best epoch.

    Takes an ``optuna.Trial``, a ``FrozenTrial`` or their ``user_attrs`` dict; missing values show
    as a dash, so a pruned or failed trial still gets a table.
    """
    attrs = trial_or_attrs if isinstance(trial_or_attrs, Mapping) else trial_or_attrs.user_attrs
    epoch, run = attrs.get(TrialKey.BEST_EPOCH), attrs.get(TrialKey.EPOCHS_RUN)
    title = "Validation Dice"
    if epoch is not None:
        title += f" at epoch {epoch}" + (f" of {run} run" if run is not None else "")
    lines = [f"**{title}**", "", "| class | Dice |", "|---|---:|"]
    for key, label in ROWS:
        value = attrs.get(key)
        lines.append(f"| {label} | {value:.4f} |" if isinstance(value, (int, float)) else f"| {label} | – |")
    return "\n".join(lines) + "\n"
