"""Workers: the loop that runs trials, and the processes that run several loops on one machine."""

from __future__ import annotations

import gc
import multiprocessing
import os
import secrets
import signal
import sys
import threading
import time

import optuna
import torch
from optuna.exceptions import StorageInternalError
from sqlalchemy.exc import SQLAlchemyError

from data import Dataset, load_dataset
from sweep.core import artifacts, interrupts
from sweep.core import records as rec
from sweep.core import study as st
from sweep.core.errors import OutsideError, UsageError, outside_failure
from sweep.core.progress import Progress, StopAfterFailures, UntilTarget
from sweep.nn import threads
from sweep.nn.threads import available_cores  # noqa: F401 - for benchmarks/throughput.py
from sweep.search.options import RunOptions
from sweep.search.strategies import make_pruner, make_sampler
from sweep.training.folds import selection_folds
from sweep.training.objective import Objective, TimeUp
from sweep.training.resume import open_points, prune_orphans

EXIT_INTERRUPTED, EXIT_TRIPPED, EXIT_OUTSIDE = 130, 3, 4  # a worker process's exit codes besides 0
POLL_SECONDS = 2.0


def optimize(opts: RunOptions, data: Dataset, device: torch.device, worker: int, location: str,
             callbacks=()) -> StopAfterFailures:
    """One worker's loop: run trials until the study's target of finished trials is reached.

    ``location``: the study's artifact location, as ``run`` resolved it once for every worker.
    """
    storage = st.make_storage(opts.storage)
    study = optuna.load_study(study_name=opts.study, storage=storage, pruner=make_pruner(opts.pruner, opts.epochs))
    study.sampler = make_sampler(opts.sampler, sampler_seed(opts.seed, len(study.trials), worker))
    selection = selection_folds(data, opts.cv, device, study.user_attrs.get(rec.StudyKey.CV_FOLDS))
    resume_dir = open_points(location)
    if worker == 0:
        prune_orphans(resume_dir, study)
    objective = Objective(
        selection.folds, opts.epochs, seed=opts.seed or 0, artifact_store=artifacts.open_store(location),
        resume_dir=resume_dir,
        on_progress=next((c.show_trial for c in callbacks if isinstance(c, Progress)), None),
        deadline=opts.deadline, max_trial_seconds=opts.trial_cap(), fidelity=rec.Fidelity.of_study(study),
        space=study.user_attrs.get(rec.StudyKey.SPACE),
    )
    failures = StopAfterFailures()
    # gc_after_trial runs a full collection; freezing the long-lived objects of the torch and
    # optuna imports (~200k) makes it ~5x cheaper.
    gc.freeze()
    try:
        study.optimize(
            objective,
            timeout=None if opts.deadline is None else max(0.0, opts.deadline - time.time()),
            catch=(Exception,),
            callbacks=[UntilTarget(opts.trials), failures, *callbacks],
            gc_after_trial=True,
        )
    except TimeUp:
        pass  # the running trial stopped at the deadline and is queued to resume: a normal end
    except AssertionError as err:
        # Optuna asserts when the storage cannot record how a trial ended (a full disk, a lost
        # server); the storage's own error is the context, and the one worth reporting.
        if isinstance(err.__context__, (SQLAlchemyError, StorageInternalError)):
            raise err.__context__
        raise
    return failures


def sampler_seed(seed: int | None, n_trials: int, worker: int) -> int:
    """The sampler seed of one worker: with ``--seed``, distinct per worker and per resumption
    (``n_trials``: the study's trials when it starts) and the same on a rerun of the same state;
    without, one of this process's own, so that two ``run`` processes on one study (two
    machines, or two terminals) never draw the same start-up configurations."""
    if seed is None:
        return secrets.randbits(32)
    return (seed + 7919 * n_trials + 104729 * worker) % 2**32


def _worker_main(opts: RunOptions, worker: int, device: torch.device, location: str, reasons=None) -> None:
    """Entry point of a worker process (spawned; quiet; Ctrl-C/SIGTERM end the running trial as FAIL).

    A lost database or store (or a location that became unusable) ends it with EXIT_OUTSIDE, its
    one line put on ``reasons`` for the parent to print (a traceback per worker would bury it).
    """
    interrupts.install()  # SIGTERM as Ctrl-C; the terminal's SIGINT, then the parent's SIGTERM, are one interruption
    rec.silence_optuna()
    # Split the cores between workers (oversubscribed intra-op threads slow every worker down),
    # then time the steps: sweep.nn.threads.
    threads.start(device, opts.workers)
    try:
        failures = optimize(opts, load_dataset(opts.data, groups=opts.groups), device, worker, location)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except Exception as err:
        line = str(err) if isinstance(err, UsageError) else outside_failure(err, st.display_url(opts.storage))
        if line is None or reasons is None:
            raise
        reasons.put(line)
        sys.exit(EXIT_OUTSIDE)
    sys.exit(EXIT_TRIPPED if failures.tripped else 0)


def run_workers(opts: RunOptions, study: optuna.Study, progress: Progress, devices: list[torch.device],
                location: str) -> bool:
    """Start ``opts.workers`` processes on this machine (worker i on ``devices[i]``, artifacts in
    ``location``) and follow the study until they end.

    Returns whether a worker stopped after too many failed trials in a row.
    """
    ctx = multiprocessing.get_context("spawn")  # no forked CUDA or thread pools
    reasons = ctx.SimpleQueue()  # the one line of a worker that lost the database or the store
    procs = [ctx.Process(target=_worker_main, args=(opts, i, devices[i], location, reasons), name=f"sweep-worker-{i}")
             for i in range(opts.workers)]
    for p in procs:
        p.start()
    stop = threading.Event()  # a Ctrl-C or SIGTERM arrived, even if library code swallowed its exception
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum, frame):
        stop.set()
        interrupts.on_signal(signum, frame)  # KeyboardInterrupt on the first; one right behind it is absorbed

    for sig in handlers:
        signal.signal(sig, on_signal)
    try:
        _follow(study, procs, progress, stop)
        if stop.is_set():
            raise KeyboardInterrupt
    except BaseException:  # Ctrl-C, or this process lost the database too: no worker runs on alone
        stop_workers(procs)
        raise
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    codes = [p.exitcode for p in procs]
    if EXIT_OUTSIDE in codes:
        raise OutsideError(reasons.get())
    if any(code == EXIT_INTERRUPTED or (code is not None and code < 0) for code in codes):
        raise KeyboardInterrupt  # a worker was interrupted or killed: say how to resume
    if any(code not in (0, EXIT_TRIPPED) for code in codes):
        raise RuntimeError(f"a worker ended with exit codes {codes}")
    return EXIT_TRIPPED in codes


def _follow(study: optuna.Study, procs, progress: Progress, stop: threading.Event | None = None) -> None:
    """Show each trial that finishes, until every worker has ended (or ``stop`` is set: KeyboardInterrupt)."""
    seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    while True:
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt
        alive = any(p.is_alive() for p in procs)
        trials = study.get_trials(deepcopy=False)
        for t in trials:
            if t.state.is_finished() and t.number not in seen:
                seen.add(t.number)
                progress(study, t)
        progress.show_running(trials)
        if not alive:
            return
        time.sleep(POLL_SECONDS)


def stop_workers(procs, timeout: float = 30.0) -> None:
    """Ask workers to stop (their running trials end as FAIL, the storage stays consistent)."""
    for p in procs:
        if p.is_alive():
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()



