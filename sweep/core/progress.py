"""What a running sweep shows and how it notices a systematic failure: Optuna study callbacks."""

from __future__ import annotations

import sys
import time

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from sweep.core import records as rec
from sweep.core.records import TrialKey, TrialProgress

MAX_CONSECUTIVE_FAILURES = 5  # a sweep whose every trial fails has a systematic problem: stop and say so


# tqdm's own layout, its projected time left replaced by ``time_left``'s.
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{left}, {rate_fmt}{postfix}]"


def time_left(n: int, total: int | None, elapsed: float, rate: float | None, initial: int = 0,
              until_deadline: float | None = None) -> str:
    """The bar's time left: the trials still to go at the rate so far (tqdm's projection), but never
    past the run's ``--timeout`` (``until_deadline`` seconds away), after which no trial starts."""
    if rate is None and elapsed:
        rate = (n - initial) / elapsed
    projection = (total - n) / rate if rate and total else None
    known = [s for s in (projection, until_deadline) if s is not None]
    return tqdm.format_interval(max(0.0, min(known))) if known else "?"


class _Bar(tqdm):
    """tqdm, its time left bounded by the run's deadline (``time.time()`` seconds, or None)."""

    deadline: float | None = None

    @property
    def format_dict(self):
        d = super().format_dict
        until = None if self.deadline is None else self.deadline - time.time()
        d["left"] = time_left(d["n"], d["total"], d["elapsed"] or 0.0, d["rate"], d.get("initial") or 0, until)
        return d


class Progress:
    """A bar over the study's target and one line per finished trial; with ``deadline`` (``run
    --timeout``'s wall-clock end) its time left never runs past it."""

    def __init__(self, study: optuna.Study, target: int, enabled: bool, deadline: float | None = None) -> None:
        self.bar = _Bar(
            total=target,
            bar_format=BAR_FORMAT,
            initial=min(rec.count_finished(study), target),
            desc=f"study {study.study_name}",
            unit="trial",
            disable=not enabled,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        self.bar.deadline = deadline
        self.enabled = enabled
        self.score = rec.score_label(rec.study_cv(study))
        self.study = study
        self.roots: dict[int, int] = {}  # trial number -> its chain's (what the bar shows), looked up once per trial

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state in rec.FINISHED:
            if self.bar.n >= self.bar.total:  # several workers may overshoot the target a little
                self.bar.total = self.bar.n + 1
            self.bar.update(1)
        if self.enabled:
            self.bar.write(self.line(study, trial), file=sys.stderr)

    def line(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
        best = rec.best_summary(study)
        shown_best = f"best {best['val_dice_fg']:.4f} (#{best['trial']})" if best else "best -"
        value = trial.value if trial.value is not None else (
            max(trial.intermediate_values.values()) if trial.intermediate_values else None
        )
        shown = f"{value:.4f}" if value is not None else "  -   "
        attrs = trial.user_attrs
        # A trial that failed after training never recorded its epochs and seconds: what it reported, and its clock
        epochs = attrs.get(TrialKey.EPOCHS_RUN, len(trial.intermediate_values))
        seconds = attrs.get(TrialKey.SECONDS)
        if seconds is None and trial.datetime_start is not None and trial.datetime_complete is not None:
            seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
        line = (
            f"trial {rec.root_trial_number(trial):4d} {trial.state.name:8s} {self.score} {shown}  {shown_best}  "
            f"{epochs:3d} epochs  {seconds or 0.0:7.1f} s"
        )
        if trial.state == TrialState.FAIL:
            line += f"  ({attrs.get(TrialKey.FAIL_REASON, 'failed')})"
        elif TrialKey.PRUNE_REASON in attrs:
            line += f"  ({attrs[TrialKey.PRUNE_REASON]})"
        if rec.attempt(trial) > 1:
            line += f"  [attempt {rec.attempt(trial)}, resumed after epoch {attrs.get(TrialKey.RESUMED_AT, 0)}]"
        return line

    def show_trial(self, number: int, progress: dict) -> None:
        """Show a running trial's progress as the bar's postfix (``Objective.on_progress``, one worker)."""
        if number not in self.roots:
            self.roots = {t.number: rec.root_trial_number(t) for t in self.study.get_trials(deepcopy=False)}
        self.bar.set_postfix_str(progress_text(self.roots.get(number, number), progress))

    def show_running(self, trials) -> None:
        """Show the running trials' progress (their PROGRESS attributes) as the bar's postfix.

        For several workers: called with the study's trials whenever the main process polls the storage.
        """
        texts = [
            progress_text(rec.root_trial_number(t), t.user_attrs[TrialKey.PROGRESS])
            for t in trials
            if t.state == TrialState.RUNNING and TrialKey.PROGRESS in t.user_attrs
        ]
        self.bar.set_postfix_str("; ".join(texts))

    def close(self) -> None:
        self.bar.close()


def remaining_seconds(progress: dict) -> float | None:
    """Estimated seconds until a running trial has used its epoch budget (None before its first epoch)."""
    p = TrialProgress.from_dict(progress)
    done, budget = p.epoch or 0, p.epochs or 0
    if done <= 0 or p.seconds is None:
        return None
    return p.seconds / done * max(budget - done, 0)


def progress_text(number: int, progress: dict) -> str:
    """One running trial in a few words: "#12 epoch 5/50 last 0.8123 best 0.8345 ~3m 05s left";
    inside an epoch, where the progress has its step count, also "(step 37/120, 1m 05s)"."""
    p = TrialProgress.from_dict(progress)
    text = f"#{number} epoch {_or(p.epoch, 0)}/{_or(p.epochs, '?')} "
    if p.in_epoch:
        text += f"(step {p.step}/{_or(p.steps, '?')}, {duration(p.seconds or 0.0)}) "
    text += f"last {_dice(p.last)} best {_dice(p.best)}"
    left = remaining_seconds(progress)
    return text if left is None else f"{text} ~{duration(left)} left"


def _or(value, default):
    return default if value is None else value


def _dice(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def duration(seconds: float) -> str:
    """Seconds for people: "42s", "3m 05s", "2h 07m"."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


class StopAfterFailures:
    """Stops the study after MAX_CONSECUTIVE_FAILURES failed trials in a row in this worker."""

    def __init__(self, limit: int = MAX_CONSECUTIVE_FAILURES) -> None:
        self.limit = limit
        self.streak = 0
        self.last_reason = ""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.FAIL:
            self.streak += 1
            self.last_reason = trial.user_attrs.get(TrialKey.FAIL_REASON, "unknown")
            if self.streak >= self.limit:
                study.stop()
        elif trial.state in rec.FINISHED:
            self.streak = 0

    @property
    def tripped(self) -> bool:
        return self.streak >= self.limit


class UntilTarget:
    """Stops the study once its target of finished trials is reached and no interrupted trial waits.

    Optuna's ``MaxTrialsCallback`` stops at the target alone; with several machines the target can
    be reached while a killed trial's retry is still queued (the others sampled new trials while it
    looked RUNNING), and that trial would stay half-trained. Its retry runs first, from its point.
    """

    def __init__(self, target: int) -> None:
        self.target = target

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        if sum(t.state in rec.FINISHED for t in trials) >= self.target and not rec.waiting_retries(trials):
            study.stop()
