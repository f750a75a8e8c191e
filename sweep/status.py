"""`python -m sweep status`: where a study stands, for people and (with --json) for scripts."""

from __future__ import annotations

from datetime import datetime

import optuna
from optuna.trial import TrialState

from sweep.best import open_study_readonly
from sweep.metrics import CLASS_NAMES


def study_status(storage_url: str, study_name: str) -> dict:
    """Trials by state, the target (of the latest run), the best trial, running trials."""
    study = open_study_readonly(storage_url, study_name)
    trials = study.get_trials(deepcopy=False)
    states = {s.name.lower(): 0 for s in TrialState}
    for t in trials:
        states[t.state.name.lower()] += 1
    now = datetime.now()  # Optuna stores naive local times
    running = [
        {
            "trial": t.number,
            "worker": t.user_attrs.get("worker"),
            "age_s": round((now - t.datetime_start).total_seconds(), 1) if t.datetime_start else None,
            "started": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
        }
        for t in trials
        if t.state == TrialState.RUNNING
    ]
    return {
        "study": study.study_name,
        "storage": storage_url,
        "states": states,
        "finished": states["complete"] + states["pruned"],
        "target": recorded_target(study),
        "best": _best(study),
        "running": running,
        "evaluation": study.user_attrs.get("evaluation"),
        "data": study.user_attrs.get("data_description"),
        "cv": study.user_attrs.get("cv", 0),
    }


def recorded_target(study: optuna.Study) -> int | None:
    """The ``--trials`` of the latest ``run`` on the study."""
    return study.user_attrs.get("target")


def _best(study: optuna.Study) -> dict | None:
    try:
        t = study.best_trial
    except ValueError:
        return None
    val = {f"dice_{c}": t.user_attrs.get(f"dice_{c}") for c in CLASS_NAMES}
    return {"trial": t.number, "val_dice_fg": t.value, "params": t.params, "val": val}


def format_status(status: dict) -> str:
    s = status["states"]
    target = f" of {status['target']}" if status["target"] is not None else ""
    lines = [
        f"study {status['study']!r} in {status['storage']}: {status['finished']}{target} trials finished "
        f"({s['complete']} complete, {s['pruned']} pruned, {s['fail']} failed, {s['running']} running)"
    ]
    if status.get("data"):
        lines.append(f"data: {status['data']}")
    best = status["best"]
    if best is None:
        lines.append("best: no complete trial yet")
    else:
        val = "  ".join(f"{k[5:]} {v:.4f}" for k, v in best["val"].items() if v is not None)
        score = f"{status['cv']}-fold cv dice_fg" if status.get("cv") else "val dice_fg"
        lines.append(f"best: trial {best['trial']}, {score} {best['val_dice_fg']:.4f}" + (f"  ({val})" if val else ""))
        lines.append("  params " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items()))
    for r in status["running"]:
        age = _age(r["age_s"]) if r["age_s"] is not None else "?"
        lines.append(f"running: trial {r['trial']} on {r['worker'] or 'unknown worker'} for {age}")
    ev = status.get("evaluation")
    if ev:
        test = ev.get("test")
        shown = f"test dice_fg {test['dice_fg']:.4f}" if test else "no test masks"
        lines.append(f"evaluated: trial {ev['trial']}, seeds {ev['seeds']}: {shown}")
    return "\n".join(lines)


def _age(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"
