"""`python -m sweep status`: where a study stands, for people and (with --json) for scripts."""

from __future__ import annotations

from datetime import datetime

from optuna.trial import FrozenTrial, TrialState

from sweep.core import records as rec
from sweep.core.progress import duration, remaining_seconds
from sweep.core.records import Evaluation, StudyKey, TrialKey, TrialProgress
from sweep.core.study import display_url, open_study_readonly


def study_status(storage_url: str, study_name: str) -> dict:
    """Trials by state, the target (of the latest run), the best trial, running trials."""
    study = open_study_readonly(storage_url, study_name)
    trials = study.get_trials(deepcopy=False)
    states = rec.state_counts(trials)
    now = datetime.now()  # Optuna stores naive local times
    running = [_running(t, now) for t in trials if t.state == TrialState.RUNNING]
    return {
        "study": study.study_name,
        "storage": display_url(storage_url),
        "states": states,
        "stopped": rec.stopped_count(trials),
        "chains": rec.chain_counts(trials),
        "finished": states["complete"] + states["pruned"],
        "target": study.user_attrs.get(StudyKey.TARGET),
        "best": rec.best_summary(study),
        "running": running,
        "evaluation": (ev := Evaluation.of_study(study)) and ev.to_dict(),
        "data": study.user_attrs.get(StudyKey.DATA_DESCRIPTION),
        "cv": rec.study_cv(study),
    }


def _running(trial: FrozenTrial, now: datetime) -> dict:
    """A running trial: who runs it, for how long, and how far it has got (its PROGRESS attribute)."""
    record = trial.user_attrs.get(TrialKey.PROGRESS) or {}
    progress, left = TrialProgress.from_dict(record), remaining_seconds(record)
    return {
        "trial": rec.root_trial_number(trial),  # a retry goes by its chain's number, as the user knows it
        "attempt": rec.attempt(trial),
        "worker": trial.user_attrs.get(TrialKey.WORKER),
        "age_s": round((now - trial.datetime_start).total_seconds(), 1) if trial.datetime_start else None,
        "started": trial.datetime_start.isoformat(timespec="seconds") if trial.datetime_start else None,
        "epoch": progress.epoch,
        "epochs": trial.user_attrs.get(TrialKey.EPOCH_BUDGET) if progress.epochs is None else progress.epochs,
        "last_val_dice_fg": progress.last,
        "best_val_dice_fg": progress.best,
        "remaining_s": None if left is None else round(left, 1),
        "resumed_at_epoch": trial.user_attrs.get(TrialKey.RESUMED_AT),
    }


def _running_line(r: dict) -> str:
    age = _age(r["age_s"]) if r["age_s"] is not None else "?"
    line = f"running: trial {r['trial']} on {r['worker'] or 'unknown worker'} for {age}"
    if r.get("epoch") is not None:
        line += f", epoch {r['epoch']}/{r['epochs'] if r['epochs'] is not None else '?'}"
        if r.get("last_val_dice_fg") is not None:
            line += f", dice_fg last {r['last_val_dice_fg']:.4f} best {r['best_val_dice_fg']:.4f}"
        if r.get("remaining_s") is not None:
            line += f", ~{duration(r['remaining_s'])} left"
    if (r.get("attempt") or 1) > 1:
        line += f" (attempt {r['attempt']}, resumed after epoch {r.get('resumed_at_epoch') or 0})"
    return line


def format_status(status: dict) -> str:
    s = status["states"]
    target = f" of {status['target']}" if status["target"] is not None else ""
    lines = [
        (f"study {status['study']!r} in {status['storage']}: {status['finished']}{target} trials finished "
         f"({rec.states_line(s, status.get('chains'), running=True)})")
    ]
    if status.get("data"):
        lines.append(f"data: {status['data']}")
    best = status["best"]
    if best is None:
        lines.append("best: no complete trial yet")
    else:
        val = "  ".join(f"{k[5:]} {v:.4f}" for k, v in best["val"].items() if v is not None)
        lines.append(f"best: trial {best['trial']}, {rec.score_label(status.get('cv'))} {best[rec.VAL_DICE_FG]:.4f}" + (f"  ({val})" if val else ""))
        lines.append("  params " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items()))
    lines.extend(_running_line(r) for r in status["running"])
    ev = status.get("evaluation")
    if ev:
        test = ev.get("test")
        shown = f"test dice_fg {test['dice_fg']:.4f}" if test else "no test masks"
        lines.append(f"evaluated: trial {ev['trial']}, seeds {ev['seeds']}: {shown}")
        lines += volume_summary_lines((ev.get("volumes") or {}).get("summary") or {})
    return "\n".join(lines)


def _age(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def volume_summary_lines(summary: dict) -> list[str]:
    """Per-patient 3-D figures by phase, as mean over test volumes: Dice, HD95 and ASSD per structure."""
    lines = []
    for phase in ("ED", "ES", "all"):
        if phase not in summary:
            continue
        m = summary[phase]
        parts = [f"{metric} " + "/".join(f"{m[f'{metric}_{s}'][0]:.{digits}f}" for s in ("rv", "myo", "lv"))
                 for metric, digits in (("dice", 3), ("hd95", 1), ("assd", 1))]
        lines.append(f"  {phase:3s} (RV/Myo/LV, mean over volumes) " + "  ".join(parts) + "  (mm for distances)")
    return lines

