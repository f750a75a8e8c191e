"""The objective: one trial trains one SegNet, reports val dice_fg per epoch and may be pruned."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import optuna
import optuna_dashboard
import torch

from model import SegNetConfig, count_parameters
from model.segnet import SegNet
from sweep.core import interrupts
from sweep.core.artifacts import patiently
from sweep.core.errors import is_outage, warn
from sweep.core.notes import dice_table_markdown
from sweep.core.records import INTERRUPTED, TIMED_OUT, VAL_DICE_FG, Fidelity, TrialKey, TrialProgress, trial_summary
from sweep.nn.pictures import overlay_png
from sweep.training.resume import (
    Points,
    ResumeFile,
    enqueue_retry,
    frozen,
    resume_interval,
    root_trial_number,
)
from sweep.search.space import suggest
from sweep.search.config import TrainConfig
from sweep.nn.runtime import Fold, load_model, predict_logits, use_bf16
from sweep.training.train import DivergedError, FitResult, fit_folds

STEP_PROGRESS_SECONDS = 1.0  # at most this often a running epoch's step count reaches the progress bar
# ... and, from a worker process, the trial's PROGRESS attribute that the main process's bar polls:
# a storage write, so far rarer.
STORED_STEP_SECONDS = 15.0


class TimeUp(KeyboardInterrupt):
    """The run's ``--timeout`` passed during a trial: it stops as Ctrl-C stops it (queued to resume)."""


def past(deadline: float) -> bool:
    return time.time() >= deadline


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def save_checkpoint(path: Path, model_cfg: SegNetConfig, train_cfg: TrainConfig, result: FitResult, params: dict) -> None:
    """A checkpoint carries the hyperparameters that built it."""
    torch.save(
        {
            "model_config": model_cfg.to_dict(),
            "train_config": train_cfg.to_dict(),
            "params": params,
            "best_epoch": result.best_epoch,
            "val_scores": result.best_scores,
            "state_dict": result.state_dict,  # the (first) fold's model
            "fold_state_dicts": result.state_dicts,  # every fold's model (one without --cv)
            "fold_scores": result.fold_scores,
        },
        path,
    )


@dataclass
class Objective:
    """One trial: sample its hyperparameters, train one model per fold, report the mean fold ``dice_fg``.

    ``folds`` is one (train, val) pair when selecting on val, or K pairs with ``--cv K``; the
    models train in lockstep and every epoch reports the mean over folds, so the pruner acts
    on the running score either way. The dashboard picture shows the first fold's val slices.

    With ``resume_dir`` (``sweep.training.resume.open_points`` of the study's artifact location) a trial
    keeps a resume point there, at most every ``resume_every`` seconds (default:
    ``sweep.training.resume.resume_interval()``); an interrupted trial is queued again with its params
    and its retry continues from that point, with the seed of the chain's first trial.
    ``on_progress(trial_number, progress)`` is called after every epoch with the trial's
    ``TrialKey.PROGRESS`` record (``TrialProgress.to_dict``), e.g. to show it on a progress bar.
    """

    folds: list[Fold]
    epochs: int
    seed: int = 0
    artifact_store: optuna.artifacts.FileSystemArtifactStore | None = None
    resume_dir: Points | Path | None = None
    resume_every: float | None = None
    on_progress: Callable[[int, dict], None] | None = None
    bf16: bool | None = None  # None: where the device runs it fast (sweep.nn.runtime.use_bf16)
    deadline: float | None = None  # wall-clock time (time.time()) after which a running trial stops at its epoch's end
    max_trial_seconds: float | None = None  # a trial projected to run longer is pruned early (``over_time_cap``)
    fidelity: Fidelity | None = None  # what an epoch costs (``Fidelity.of_study``); None: whole passes
    space: dict | None = None  # the study's search space (``StudyKey.SPACE``); None: the full space

    def __call__(self, trial: optuna.Trial) -> float:
        root = root_trial_number(frozen(trial))
        point_file = ResumeFile(self.resume_dir, trial.study.study_name, root, trial=trial)
        try:
            value = self._run(trial, root, point_file)
        except KeyboardInterrupt as err:
            with interrupts.held():  # a second Ctrl-C must not leave the trial without its reason and retry
                # The retry copies this trial's user attributes: queue it before the reason is recorded.
                if not enqueue_retry(trial):
                    point_file.remove()
                trial.set_user_attr(TrialKey.FAIL_REASON, TIMED_OUT if isinstance(err, TimeUp) else INTERRUPTED)
            raise
        except BaseException:
            point_file.remove()  # pruned or failed for good: nothing will resume it
            raise
        point_file.remove()
        return value

    def _run(self, trial: optuna.Trial, root: int, point_file: ResumeFile) -> float:
        fidelity = self.fidelity or Fidelity()
        model_cfg, train_cfg = suggest(trial, self.epochs, self.space)
        train_cfg = replace(train_cfg, epoch_slices=fidelity.epoch_slices, patch=fidelity.patch)
        self._record_setup(trial, model_cfg)
        seed = self.seed + root  # the chain's seed: a retry trains as its first trial would have
        point_file.identity = {"params": trial.params, "epochs": self.epochs, "folds": len(self.folds), "seed": seed}
        if self.fidelity:
            point_file.identity["fidelity"] = fidelity.to_dict()
        point = point_file.load()
        history: list[dict[str, float]] = []
        start = time.perf_counter() - (point["seconds"] if point else 0.0)
        # Until one trial is complete, a trial runs to its end whatever the cap and the deadline say:
        # on a slow or busy machine a run must still leave something that `best --evaluate` can ship.
        first = not trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        cap, deadline = (None, None) if first else (self.max_trial_seconds, self.deadline)
        ends: list[float] = []  # when each epoch run by this process ended

        def on_epoch(epoch: int, record: dict[str, float]) -> None:
            history.append(record)
            ends.append(time.perf_counter())
            trial.report(record[VAL_DICE_FG], epoch)
            self._show_progress(trial, history, time.perf_counter() - start)
            if trial.should_prune():
                _prune(trial, history, time.perf_counter() - start)
            projected = over_time_cap(ends, ends[-1] - start, epoch, self.epochs, cap)
            if projected is not None:
                _prune(trial, history, time.perf_counter() - start,
                       f"projected {_duration(projected)}, over the cap of {_duration(cap)} per trial")
            if deadline is not None and epoch < self.epochs and past(deadline):  # the last epoch finishes
                raise TimeUp(f"--timeout reached in epoch {epoch}")

        if root != trial.number:
            trial.set_user_attr(TrialKey.RESUMED_AT, point["epoch"] if point else 0)
        self._replay(trial, point, history, on_epoch)
        result = self._fit(
            trial, model_cfg, train_cfg, on_epoch, seed=seed, resume=point,
            on_step=self._step_hook(trial, history, start, ends, len(point["history"]) if point else 0, cap),
            on_resume_point=point_file.save if self.resume_dir is not None else None,
            resume_every=resume_interval() if self.resume_every is None else self.resume_every,
            val_slices=fidelity.val_slices,
        )
        best = {"epoch": result.best_epoch, **{f"val_{k}": v for k, v in result.best_scores.items()}}
        _set_attrs(trial, trial_summary(result.history, best, result.seconds))
        if len(self.folds) > 1:
            trial.set_user_attr(TrialKey.CV_FOLD_SCORES, [round(f["dice_fg"], 5) for f in result.fold_scores])
        self._maybe_upload_checkpoint(trial, model_cfg, train_cfg, result)
        self._show_in_dashboard(trial, model_cfg, result)
        return result.best_value

    def _replay(self, trial: optuna.Trial, point: dict | None, history: list, on_epoch) -> None:
        """Report the epochs a resume point already holds, so that curves and the pruner see them.

        Only the last one is put to the pruner (``on_epoch`` checks after each report, and the
        earlier epochs passed that check when they ran); without a point the progress restarts.
        """
        done = point["history"] if point else []
        for record in done[:-1]:
            history.append(record)
            trial.report(record[VAL_DICE_FG], record["epoch"])
        if done:
            on_epoch(done[-1]["epoch"], done[-1])
        else:
            self._show_progress(trial, history, 0.0)

    def _show_progress(self, trial: optuna.Trial, history: list[dict[str, float]], seconds: float) -> None:
        """The trial's PROGRESS attribute (what `status` and the bar show), and the ``on_progress`` hook."""
        progress = self._progress(history, seconds).to_dict()
        trial.set_user_attr(TrialKey.PROGRESS, progress)
        if self.on_progress is not None:
            self.on_progress(trial.number, progress)

    def _step_hook(self, trial: optuna.Trial, history: list[dict[str, float]], start: float, ends: list[float],
                   resumed_epochs: int, cap: float | None):
        """Inside an epoch, the epoch's step count and the time so far, so that a long epoch shows life:
        to ``on_progress`` at most every STEP_PROGRESS_SECONDS, or, without it (a worker process), to
        the trial's PROGRESS attribute at most every STORED_STEP_SECONDS. In the first epoch this
        process runs, a trial projected from its steps to run past ``max_trial_seconds`` is pruned
        there (``StepClock``), before it spends minutes on epochs the cap (``cap``) would end anyway."""
        every = STEP_PROGRESS_SECONDS if self.on_progress is not None else STORED_STEP_SECONDS
        shown = time.perf_counter()
        clock = StepClock(cap, self.epochs - resumed_epochs)

        def on_step(done: int, steps: int) -> None:
            nonlocal shown
            now = time.perf_counter()
            remaining = clock.remaining(done, steps, now) if not ends else None  # this process's first epoch
            if remaining is not None and now - start + remaining > cap:
                _prune_unscored(trial, now - start, f"projected {_duration(now - start + remaining)} from its first "
                                f"{done} steps, over the cap of {_duration(cap)} per trial")
            if now - shown < every:
                return
            shown = now
            progress = replace(self._progress(history, now - start), step=done, steps=steps).to_dict()
            if self.on_progress is not None:
                self.on_progress(trial.number, progress)
            else:
                trial.set_user_attr(TrialKey.PROGRESS, progress)

        return on_step

    def _progress(self, history: list[dict[str, float]], seconds: float) -> TrialProgress:
        return TrialProgress(
            epoch=len(history),
            epochs=self.epochs,
            last=round(history[-1][VAL_DICE_FG], 5) if history else None,
            best=round(max(r[VAL_DICE_FG] for r in history), 5) if history else None,
            seconds=round(seconds, 1),
        )

    def _record_setup(self, trial: optuna.Trial, model_cfg: SegNetConfig) -> None:
        trial.set_user_attr(TrialKey.EPOCH_BUDGET, self.epochs)
        with torch.device("meta"):  # count without allocating or initialising the weights
            trial.set_user_attr(TrialKey.N_PARAMS, count_parameters(SegNet.from_config(model_cfg)))
        trial.set_user_attr(TrialKey.DEVICE, str(self.device))
        trial.set_user_attr(TrialKey.WORKER, worker_name())
        if len(self.folds) > 1:
            trial.set_user_attr(TrialKey.CV, len(self.folds))

    def _fit(self, trial: optuna.Trial, model_cfg, train_cfg, on_epoch, **kwargs) -> FitResult:
        """Train; a failure records its reason on the trial before Optuna marks it FAIL."""
        try:
            return fit_folds(model_cfg, train_cfg, self.folds, on_epoch=on_epoch, bf16=self.bf16, **kwargs)
        except (optuna.TrialPruned, KeyboardInterrupt):
            raise
        except Exception as err:
            trial.set_user_attr(TrialKey.FAIL_REASON, failure_reason(err))
            if isinstance(err, torch.OutOfMemoryError) and self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise

    @property
    def device(self) -> torch.device:
        return self.folds[0][0].images.device

    def _show_in_dashboard(self, trial, model_cfg, result) -> None:
        """A picture of the best epoch's val predictions (artifact) and a Dice table (note)."""
        optuna_dashboard.save_note(trial, dice_table_markdown(trial.user_attrs))
        if self.artifact_store is None:
            return
        val = self.folds[0][1]
        model = load_model(model_cfg, result.state_dict, self.device)
        bf16 = use_bf16(self.device) if self.bf16 is None else self.bf16
        pred = predict_logits(model, val.images, bf16).argmax(1).cpu().numpy().astype(np.uint8)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"trial{trial.number}_val_predictions.png"
            overlay_png(val.images[:, 0].cpu().numpy(), val.masks.cpu().numpy().astype(np.uint8), pred, path)
            upload_or_warn(trial, self.artifact_store, path, "image/png")

    def _maybe_upload_checkpoint(self, trial, model_cfg, train_cfg, result) -> None:
        """Keep the weights of a trial that beats every trial before it (an artifact the dashboard lists)."""
        if self.artifact_store is None:
            return
        try:
            if result.best_value <= trial.study.best_value:
                return
        except ValueError:  # no completed trial yet
            pass
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"trial{trial.number}_checkpoint.pt"
            save_checkpoint(path, model_cfg, train_cfg, result, trial.params)
            artifact_id = upload_or_warn(trial, self.artifact_store, path, "application/octet-stream")
        if artifact_id is not None:
            trial.set_user_attr(TrialKey.CHECKPOINT, artifact_id)


def upload_or_warn(trial: optuna.Trial, store, path: Path, mimetype: str) -> str | None:
    """Upload ``path`` as the trial's artifact; returns its id, or None where the store stays down.

    Tried again for about a minute (``artifacts.patiently``); after that the trial keeps its value
    with a warning and goes without the file: its value and params are what the study is for
    (``best --evaluate`` retrains from the params), the checkpoint and picture only views of it,
    and failing a trial that trained for a store outage would throw its training away.
    """
    def upload() -> str:
        return optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial,
                                                mimetype=mimetype)

    try:
        return patiently(upload, f"trial {trial.number}: uploading {path.name}")
    except Exception as err:
        if not is_outage(err):
            raise
        warn(f"trial {trial.number}: {path.name} not uploaded, the store stays down; the trial keeps its value without it")
        return None


def failure_reason(err: BaseException) -> str:
    """One line saying why a trial failed, for its ``fail_reason`` attribute."""
    if isinstance(err, DivergedError):
        kind = "diverged"
    elif isinstance(err, torch.OutOfMemoryError):
        kind = "out of memory"
    else:
        kind = type(err).__name__
    text = str(err).strip().splitlines()
    return f"{kind}: {text[0]}" if text else kind


class StepClock:
    """Projects a trial's remaining seconds from the steps of its first epoch, where a cap is set.

    The first ``WARM_STEPS`` steps are not timed (memory and kernel set-up); from then on, once
    ``MIN_SECONDS`` of steps have passed, the mean step time times the steps left in the trial
    (``epochs`` epochs of ``steps``, folds included) is its projection. Evaluation after each
    epoch is not counted, so the projection leans low: a trial pruned by it would have been
    pruned by ``over_time_cap`` after its second epoch, minutes later for a wide one.
    """

    WARM_STEPS = 2
    MIN_SECONDS = 5.0

    def __init__(self, cap: float | None, epochs: int) -> None:
        self.cap, self.epochs = cap, epochs
        self.since: tuple[int, float] | None = None

    def remaining(self, done: int, steps: int, now: float) -> float | None:
        """Seconds the trial is projected to run from now, or None (no cap, or too few steps timed)."""
        if self.cap is None or done < self.WARM_STEPS:
            return None
        if self.since is None:
            self.since = (done, now)
            return None
        first, then = self.since
        if done == first or now - then < self.MIN_SECONDS:
            return None
        return (now - then) / (done - first) * (steps * self.epochs - done)


def over_time_cap(ends: list[float], elapsed: float, epoch: int, epochs: int, cap: float | None) -> float | None:
    """The projected seconds of a trial that will run past ``cap``, else None.

    Checked in the first fifth of the epoch budget only (the median pruner's warm-up), from
    the second epoch this process ran: the first one pays for start-up. A trial that passes
    then runs on; one that does not is pruned before it spends the budget of several others.
    ``ends`` are the ``perf_counter`` times at which this process's epochs ended; ``elapsed``
    counts the trial's seconds so far, earlier runs of a resumed trial included.
    """
    if cap is None or len(ends) < 2 or epoch >= epochs or epoch > max(2, epochs // 5):
        return None
    per_epoch = (ends[-1] - ends[0]) / (len(ends) - 1)
    projected = elapsed + per_epoch * (epochs - epoch)
    return projected if projected > cap else None


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _prune(trial: optuna.Trial, history: list[dict[str, float]], seconds: float, why: str | None = None) -> None:
    """Record what a pruned trial ran (and why, if not behind the median), then stop it."""
    record = history[-1]
    best = max(history, key=lambda r: r[VAL_DICE_FG])
    _set_attrs(trial, trial_summary(history, best, seconds))
    trial.set_user_attr(TrialKey.PRUNED_AT, record["epoch"])
    if why is not None:
        trial.set_user_attr(TrialKey.PRUNE_REASON, why)
        raise optuna.TrialPruned(why)
    raise optuna.TrialPruned(f"val dice_fg {record[VAL_DICE_FG]:.4f} at epoch {record['epoch']} behind the median")


def _prune_unscored(trial: optuna.Trial, seconds: float, why: str) -> None:
    """Stop a trial inside its first epoch, before it has a val score, recording why."""
    _set_attrs(trial, {TrialKey.SECONDS: round(seconds, 2), TrialKey.EPOCHS_RUN: 0, TrialKey.PRUNED_AT: 0,
                       TrialKey.PRUNE_REASON: why})
    raise optuna.TrialPruned(why)


def _set_attrs(trial: optuna.Trial, attrs: dict) -> None:
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
