"""`python -m sweep run`: create or resume a study and run trials until its target is reached."""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import shlex
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from tqdm.auto import tqdm

from data import Dataset, fold_indices, load_dataset
from sweep import study as st
from sweep.errors import UsageError
from sweep.objective import Objective
from sweep.space import SPACE_VERSION, configs_from_params
from sweep.train import DeviceSplit, Fold, resolve_device

MAX_CONSECUTIVE_FAILURES = 5  # a sweep whose every trial fails has a systematic problem: stop and say so


@dataclass
class RunOptions:
    trials: int = 20
    epochs: int = 50
    data: str = "phantom"
    storage: str = st.DEFAULT_STORAGE
    study: str = st.DEFAULT_STUDY
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    device: str = "auto"
    workers: int = 1
    timeout: float | None = None
    enqueue: str | None = None
    cv: int = 0  # K >= 2: K-fold cross-validation over train+val instead of selecting on val
    progress: bool = True

    def check(self) -> None:
        for flag in ("trials", "epochs", "workers"):
            if getattr(self, flag) <= 0:
                raise UsageError(f"--{flag} must be a positive integer, got {getattr(self, flag)}")
        if self.timeout is not None and self.timeout <= 0:
            raise UsageError(f"--timeout must be positive seconds, got {self.timeout}")
        if self.cv < 0 or self.cv == 1:
            raise UsageError(f"--cv must be 0 (select on val) or a number of folds >= 2, got {self.cv}")
        if self.sampler not in ("tpe", "random"):
            raise UsageError(f"--sampler must be tpe or random, got {self.sampler!r}")
        if self.pruner not in ("median", "hyperband", "none"):
            raise UsageError(f"--pruner must be median, hyperband or none, got {self.pruner!r}")


def parse_enqueue(value: str, epochs: int) -> dict:
    """``--enqueue`` takes a JSON file or inline JSON object of params; checked against the space."""
    path = Path(value)
    try:
        text = path.read_text() if not value.lstrip().startswith("{") and path.is_file() else value
        params = json.loads(text)
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"--enqueue {value!r}: neither a readable JSON file nor a JSON object ({err})") from None
    if not isinstance(params, dict):
        raise UsageError(f"--enqueue {value!r}: expected a JSON object of parameters")
    try:
        configs_from_params(params, epochs)
    except (ValueError, KeyError, TypeError) as err:
        raise UsageError(f"--enqueue {value!r}: not a configuration of this search space ({err})") from None
    return params


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # constant_liar: trials running in other workers count as mediocre, so parallel workers
        # do not all sample the same region.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, n_startup_trials=10)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        # Early epochs of a segmentation net are noisy: judge no trial before a fifth of its budget.
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, epochs // 5))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, epochs // 10), max_resource=epochs)
    return optuna.pruners.NopPruner()


def record_study_metadata(study: optuna.Study, data: Dataset, opts: RunOptions) -> None:
    study.set_metric_names([st.OBJECTIVE_NAME])
    study.set_user_attr("data_fingerprint", data.fingerprint)
    study.set_user_attr("data_source", data.source)
    study.set_user_attr("data_description", data.describe())
    study.set_user_attr("synthetic_data", data.synthetic)
    study.set_user_attr("space_version", SPACE_VERSION)
    study.set_user_attr("epochs", opts.epochs)
    study.set_user_attr("versions", st.versions())
    study.set_user_attr("cv", opts.cv)
    if opts.cv:
        study.set_user_attr("cv_folds", [[pool_names(data)[i] for i in fold] for fold in cv_folds(data, opts.cv)])


def check_same_data(study: optuna.Study, data: Dataset, opts: RunOptions) -> None:
    recorded = study.user_attrs.get("data_fingerprint")
    if recorded is not None and recorded != data.fingerprint:
        source = study.user_attrs.get("data_source", "?")
        raise UsageError(
            f"--data {opts.data}: study {opts.study!r} was run on other data ({source}, fingerprint "
            f"{recorded}, this is {data.fingerprint}); use another --study or --storage"
        )
    recorded_cv = study.user_attrs.get("cv", 0)
    if recorded is not None and recorded_cv != opts.cv:  # (a study made by enqueueing alone records nothing yet)
        made = f"--cv {recorded_cv}" if recorded_cv else "selection on val (no --cv)"
        raise UsageError(f"--cv {opts.cv}: study {opts.study!r} was made with {made}; use the same or another --study")
    version = study.user_attrs.get("space_version")
    if version is not None and version != SPACE_VERSION:
        raise UsageError(
            f"--study {opts.study!r}: made with search-space version {version}, this is {SPACE_VERSION}; use another --study"
        )


CV_SEED = 0  # fold assignment: fixed, so that studies with different --seed compare on the same folds


def pool_names(data: Dataset) -> list[str]:
    """Train then val slice names: the labelled pool that --cv splits into folds."""
    return list(data.train.names) + list(data.val.names)


def cv_folds(data: Dataset, k: int) -> list[np.ndarray]:
    """Indices into the pool (train then val) of each of ``k`` folds."""
    n = len(data.train) + len(data.val)
    if k > n:
        raise UsageError(f"--cv {k}: only {n} labelled train+val slices to split into folds")
    return fold_indices(n, k, CV_SEED)


def device_folds(data: Dataset, folds_idx: list[np.ndarray], device: torch.device) -> list[Fold]:
    """(train, held-out) device splits of each fold: every pool slice is held out exactly once."""
    images = np.concatenate([data.train.images, data.val.images])
    masks = np.concatenate([data.train.masks, data.val.masks])
    folds = []
    for held in folds_idx:
        rest = np.setdiff1d(np.arange(len(images)), held)
        folds.append((DeviceSplit.from_arrays(images[rest], masks[rest], device),
                      DeviceSplit.from_arrays(images[held], masks[held], device)))
    return folds


def resume_command(opts: RunOptions) -> str:
    parts = ["python", "-m", "sweep", "run", "--trials", str(opts.trials), "--epochs", str(opts.epochs)]
    defaults = RunOptions()
    for flag in ("data", "storage", "study", "sampler", "pruner", "seed", "device", "workers", "timeout", "cv"):
        value = getattr(opts, flag)
        if value != getattr(defaults, flag):
            parts += [f"--{flag}", str(value)]
    return shlex.join(parts)


class Progress:
    """A bar over the study's target and one line per finished trial."""

    def __init__(self, study: optuna.Study, target: int, enabled: bool) -> None:
        self.target = target
        self.bar = tqdm(
            total=target,
            initial=min(st.count_finished(study), target),
            desc=f"study {study.study_name}",
            unit="trial",
            disable=not enabled,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        self.enabled = enabled
        self.score = "cv dice_fg" if study.user_attrs.get("cv") else "val dice_fg"

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state in st.FINISHED:
            if self.bar.n >= self.bar.total:  # several workers may overshoot the target a little
                self.bar.total = self.bar.n + 1
            self.bar.update(1)
        try:
            best = f"best {study.best_value:.4f} (#{study.best_trial.number})"
        except ValueError:
            best = "best -"
        value = trial.value if trial.value is not None else (
            max(trial.intermediate_values.values()) if trial.intermediate_values else None
        )
        shown = f"{value:.4f}" if value is not None else "  -   "
        attrs = trial.user_attrs
        line = (
            f"trial {trial.number:4d} {trial.state.name:8s} {self.score} {shown}  {best}  "
            f"{attrs.get('epochs_run', 0):3d} epochs  {attrs.get('seconds', 0.0):7.1f} s"
        )
        if trial.state == optuna.trial.TrialState.FAIL:
            line += f"  ({attrs.get('fail_reason', 'failed')})"
        if self.enabled:
            self.bar.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


class StopAfterFailures:
    """Stops the study after MAX_CONSECUTIVE_FAILURES failed trials in a row in this worker."""

    def __init__(self, limit: int = MAX_CONSECUTIVE_FAILURES) -> None:
        self.limit = limit
        self.streak = 0
        self.last_reason = ""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.FAIL:
            self.streak += 1
            self.last_reason = trial.user_attrs.get("fail_reason", "unknown")
            if self.streak >= self.limit:
                study.stop()
        elif trial.state in st.FINISHED:
            self.streak = 0

    @property
    def tripped(self) -> bool:
        return self.streak >= self.limit


def run(opts: RunOptions) -> dict:
    """Run the sweep; returns a summary. Every input is checked before a study is touched."""
    opts.check()
    st.check_storage_url(opts.storage)
    device = resolve_device_or_fail(opts.device)
    data = load_dataset(opts.data)
    if opts.cv:
        cv_folds(data, opts.cv)  # enough slices for the folds
    enqueue = parse_enqueue(opts.enqueue, opts.epochs) if opts.enqueue else None

    storage = st.make_storage(opts.storage)
    if st.study_exists(storage, opts.study):
        check_same_data(st.load_study(storage, opts.study), data, opts)
    study = optuna.create_study(storage=storage, study_name=opts.study, direction="maximize", load_if_exists=True)
    if not study.user_attrs.get("data_fingerprint"):
        record_study_metadata(study, data, opts)
    if study.user_attrs.get("target") != opts.trials:  # the latest run's target and command
        study.set_user_attr("target", opts.trials)
        study.set_user_attr("command", resume_command(opts))
    # A worker killed in an earlier run left a RUNNING trial: fail it now (if its heartbeat is
    # stale) so that its retry with the same params is queued before anything new.
    optuna.storages.fail_stale_trials(study)
    finished = st.count_finished(study)
    if finished >= opts.trials:
        return summarize(study, opts, ran=0, note=f"study {opts.study!r} is complete: {finished} of {opts.trials} trials finished")
    if enqueue is not None:
        study.enqueue_trial(enqueue, skip_if_exists=True)

    if opts.progress:
        print(f"data: {data.describe()}", file=sys.stderr)
        if opts.cv:
            n = len(data.train) + len(data.val)
            print(f"selection: {opts.cv}-fold cross-validation over the {n} train+val slices "
                  f"(a trial's value is its mean fold dice_fg)", file=sys.stderr)
        print(
            f"device: {device}, {opts.workers} worker(s); study {opts.study!r} in {opts.storage}: "
            f"{finished} of {opts.trials} trials finished",
            file=sys.stderr,
        )
    before = len(study.trials)
    progress = Progress(study, opts.trials, opts.progress)
    try:
        if opts.workers == 1:
            failures = optimize(opts, data, worker_device(opts.device, 0), worker=0, callbacks=[progress])
            tripped = failures.tripped and f"last: {failures.last_reason}"
        else:
            tripped = run_workers(opts, study, progress)
    finally:
        progress.close()
    note = None
    if tripped:
        note = f"stopped after {MAX_CONSECUTIVE_FAILURES} failed trials in a row; {tripped}"
    return summarize(study, opts, ran=len(study.trials) - before, note=note)


def optimize(opts: RunOptions, data: Dataset, device, worker: int, callbacks=()) -> StopAfterFailures:
    """One worker's loop: run trials until the study's target of finished trials is reached."""
    storage = st.make_storage(opts.storage)
    study = optuna.load_study(study_name=opts.study, storage=storage, pruner=make_pruner(opts.pruner, opts.epochs))
    # Distinct seeds per worker and per resumption, so that no two draw the same start-up configurations.
    study.sampler = make_sampler(opts.sampler, opts.seed + 7919 * len(study.trials) + 104729 * worker)
    store = optuna.artifacts.FileSystemArtifactStore(str(_artifact_dir(opts.storage)))
    if opts.cv:
        objective = Objective.cross_validated(device_folds(data, cv_folds(data, opts.cv), device), opts.epochs, seed=opts.seed, artifact_store=store)
    else:
        train = DeviceSplit.from_arrays(data.train.images, data.train.masks, device)
        val = DeviceSplit.from_arrays(data.val.images, data.val.masks, device)
        objective = Objective(train, val, opts.epochs, seed=opts.seed, artifact_store=store)
    failures = StopAfterFailures()
    # gc_after_trial runs a full collection; freezing the long-lived objects of the torch and
    # optuna imports (~200k) makes it ~5x cheaper.
    gc.freeze()
    study.optimize(
        objective,
        timeout=opts.timeout,
        catch=(Exception,),
        callbacks=[optuna.study.MaxTrialsCallback(opts.trials, states=st.FINISHED), failures, *callbacks],
        gc_after_trial=True,
    )
    return failures


def worker_device(name: str, worker: int) -> torch.device:
    """Worker i uses GPU i mod count; several workers may share one GPU."""
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", worker % torch.cuda.device_count())
    return device


def _worker_main(opts: RunOptions, worker: int) -> None:
    """Entry point of a worker process (spawned; quiet; Ctrl-C/SIGTERM end the running trial as FAIL)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    device = worker_device(opts.device, worker)
    if device.type == "cpu":
        # Split the cores between workers: oversubscribed intra-op threads slow every worker down.
        torch.set_num_threads(max(1, available_cores() // opts.workers))
    try:
        failures = optimize(opts, load_dataset(opts.data), device, worker)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(EXIT_TRIPPED if failures.tripped else 0)


EXIT_INTERRUPTED, EXIT_TRIPPED = 130, 3
POLL_SECONDS = 2.0


def run_workers(opts: RunOptions, study: optuna.Study, progress: Progress) -> str | None:
    """Start ``opts.workers`` processes on this machine and follow the study until they end."""
    ctx = multiprocessing.get_context("spawn")  # no forked CUDA or thread pools
    procs = [ctx.Process(target=_worker_main, args=(opts, i), name=f"sweep-worker-{i}") for i in range(opts.workers)]
    for p in procs:
        p.start()
    seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    try:
        while True:
            alive = any(p.is_alive() for p in procs)
            for t in study.get_trials(deepcopy=False):
                if t.state.is_finished() and t.number not in seen:
                    seen.add(t.number)
                    progress(study, t)
            if not alive:
                break
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        _stop_workers(procs)
        raise
    codes = [p.exitcode for p in procs]
    if any(code == EXIT_INTERRUPTED or (code is not None and code < 0) for code in codes):
        raise KeyboardInterrupt  # a worker was interrupted or killed: say how to resume
    if any(code == EXIT_TRIPPED for code in codes):
        return "see the failed trials' fail_reason (python -m sweep status)"
    if any(code not in (0, EXIT_TRIPPED) for code in codes):
        raise RuntimeError(f"a worker ended with exit codes {codes}")
    return None


def _stop_workers(procs, timeout: float = 30.0) -> None:
    """Ask workers to stop (their running trials end as FAIL, the storage stays consistent)."""
    for p in procs:
        if p.is_alive():
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _artifact_dir(url: str) -> Path:
    path = st.default_artifact_dir(url)
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_device_or_fail(name: str):
    try:
        return resolve_device(name)
    except (ValueError, RuntimeError) as err:
        raise UsageError(f"--device {name!r}: {err}") from None


def summarize(study: optuna.Study, opts: RunOptions, ran: int, note: str | None = None) -> dict:
    states = {s.name.lower(): 0 for s in optuna.trial.TrialState}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name.lower()] += 1
    summary = {"study": study.study_name, "storage": opts.storage, "target": opts.trials, "ran": ran, "states": states}
    try:
        best = study.best_trial
        summary["best"] = {"trial": best.number, "val_dice_fg": best.value, "params": best.params}
    except ValueError:
        summary["best"] = None
    if note:
        summary["note"] = note
    summary["finished"] = states["complete"] + states["pruned"]
    summary["complete_target"] = summary["finished"] >= opts.trials
    return summary
