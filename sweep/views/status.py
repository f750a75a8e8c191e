"""`python -m sweep status`: where a study stands, for people and (with --json) for scripts."""

from __future__ import annotations

from datetime import datetime

from optuna.trial import FrozenTrial, TrialState

from sweep.core import records as rec
from sweep.core.progress import duration, remaining_seconds
from sweep.core.records import Evaluation, StudyKey, TrialKey, TrialProgress
from sweep.core.study import GRACE_PERIOD, display_url, open_study_readonly


def study_status(storage_url: str, study_name: str) -> dict:
    """Trials by state, the target (of the latest run), the best trial, running trials."""
    study = open_study_readonly(storage_url, study_name)
    trials = study.get_trials(deepcopy=False)
    states = rec.state_counts(trials)
    now = datetime.now()  # Optuna stores naive local times
    beats = heartbeat_ages(study) if any(t.state == TrialState.RUNNING for t in trials) else {}
    running = [_running(t, now, beats.get(t._trial_id)) for t in trials if t.state == TrialState.RUNNING]
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


def heartbeat_ages(study) -> dict[int, float]:
    """Seconds since each running trial's last heartbeat, by trial id, on the database's own clock
    (the one its heartbeats were written with); a trial that never beat is left out. Reads only.
    """
    import sqlalchemy
    from optuna.storages import RDBStorage
    from optuna.storages._rdb import models

    storage = getattr(study._storage, "_backend", study._storage)  # (Optuna wraps it in a cache)
    if not isinstance(storage, RDBStorage):
        return {}
    session = storage.scoped_session()
    try:
        now = session.execute(sqlalchemy.func.now()).scalar().replace(tzinfo=None)
        rows = (session.query(models.TrialHeartbeatModel.trial_id, models.TrialHeartbeatModel.heartbeat)
                .join(models.TrialModel, models.TrialModel.trial_id == models.TrialHeartbeatModel.trial_id)
                .filter(models.TrialModel.study_id == study._study_id, models.TrialModel.state == TrialState.RUNNING)
                .all())
        return {trial_id: (now - beat.replace(tzinfo=None)).total_seconds() for trial_id, beat in rows}
    finally:
        session.rollback()
        session.close()


def _running(trial: FrozenTrial, now: datetime, heartbeat_age: float | None = None) -> dict:
    """A running trial: who runs it, for how long, and how far it has got (its PROGRESS attribute).

    ``heartbeat_age``: seconds since its worker last beat. Past the grace period its worker is
    gone (killed, or its machine lost): the trial is ``stale``, with no time left to show, and the
    next ``run`` fails it and retries it (``sweep.core.study.GRACE_PERIOD``).
    """
    record = trial.user_attrs.get(TrialKey.PROGRESS) or {}
    progress, left = TrialProgress.from_dict(record), remaining_seconds(record)
    stale = heartbeat_age is not None and heartbeat_age > GRACE_PERIOD
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
        "remaining_s": None if left is None or stale else round(left, 1),
        "resumed_at_epoch": trial.user_attrs.get(TrialKey.RESUMED_AT),
        "heartbeat_age_s": None if heartbeat_age is None else round(heartbeat_age, 1),
        "stale": stale,
    }


def _running_line(r: dict) -> str:
    if r.get("stale"):
        return (f"stale: trial {r['trial']} on {r['worker'] or 'unknown worker'}: no heartbeat for "
                f"{duration(r['heartbeat_age_s'])} (its worker has stopped; the next run retries it)")
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

