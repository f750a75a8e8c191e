"""Resume points: an interrupted trial is retried with its params and continues where it stopped.

A running trial keeps its training state (``sweep.train.resume_point``) in one file per retry
chain, ``<resume folder>/<study>-trial<root>.pt``, where the root is the chain's original trial
(a retry has another number, and the seed and the file belong to the chain). The file is
replaced atomically, so a kill at any moment leaves the previous point or the new one, never
half of one; it is deleted when the trial ends other than by an interruption, and a worker
starting on the study deletes those of chains that nothing continues (``prune_orphans``).

Interruptions that retry: Ctrl-C and SIGTERM (KeyboardInterrupt inside the objective, which
queues the retry itself, as ``RetryHeartbeatStaleTrialCallback`` does for a killed worker's
trial) and SIGKILL or a lost machine (noticed by the heartbeat, which queues the retry).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import optuna
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from sweep.study import MAX_RETRY
from sweep.train import RESUME_SECONDS

FOLDER = "resume"  # inside the study's artifact folder
RESUME_SECONDS_ENV = "SEGNET_RESUME_SECONDS"  # tests write a point every epoch


def resume_folder(artifact_dir: str | Path) -> Path:
    """Where the resume points of the studies whose artifacts live in ``artifact_dir`` go."""
    return Path(artifact_dir) / FOLDER


def resume_interval() -> float:
    """Seconds between resume points (at epoch ends): ``SEGNET_RESUME_SECONDS``, else RESUME_SECONDS."""
    return float(os.environ.get(RESUME_SECONDS_ENV, RESUME_SECONDS))


def frozen(trial: optuna.Trial) -> FrozenTrial:
    """The trial as stored, with its system attributes (a running ``Trial`` does not expose them)."""
    return trial.storage.get_trial(trial._trial_id)  # private, but Optuna's own code reads it so too


def root_trial_number(trial: FrozenTrial) -> int:
    """The original trial of a retry chain (the trial itself when it is not a retry)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        root = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
    return trial.number if root is None else root


def enqueue_retry(trial: optuna.Trial, max_retry: int | None = MAX_RETRY) -> bool:
    """Queue a WAITING copy of an interrupted trial, as the heartbeat does for a killed worker's.

    Same params and distributions (an enqueued configuration's ``fixed_params`` too), user
    attributes, and ``failed_trial``/``retry_history``. Call it before recording why the trial
    failed, or the copy carries the reason. Returns False once ``max_retry`` retries are used up.
    """
    record = frozen(trial)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retries = len(RetryHeartbeatStaleTrialCallback.retry_history(record))
        RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(trial.study, record)
    return max_retry is None or retries < max_retry


@dataclass
class ResumeFile:
    """The resume point of one retry chain; ``folder`` None keeps none (every method does nothing).

    ``identity`` (params, epoch budget, folds, seed) is stored with each point, and a point whose
    identity differs (a study deleted and made again under the same name) is not resumed.
    """

    folder: Path | None
    study: str
    root: int
    identity: dict = field(default_factory=dict)

    @property
    def path(self) -> Path | None:
        return None if self.folder is None else self.folder / f"{quote(self.study, safe='')}-trial{self.root}.pt"

    def load(self) -> dict | None:
        """The stored point, or None (no file, another identity, or unreadable: training starts over)."""
        path = self.path
        if path is None or not path.is_file():
            return None
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - a bad point costs the epochs it held, not the trial
            warnings.warn(f"resume point {path} unreadable, trial {self.root} starts over: {err}", stacklevel=2)
            return None
        if saved.get("identity") != self.identity:
            return None
        return saved["point"]

    def save(self, point: dict) -> None:
        """Write ``point`` atomically: a temporary file in the same folder, synced, then renamed."""
        path = self.path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: two writers never share one
        try:
            with open(tmp, "wb") as f:
                torch.save({"identity": self.identity, "point": point}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def prune_orphans(folder: Path | None, study: optuna.Study) -> list[Path]:
    """Delete the resume points (and half-written ones) of ``study``'s chains that nothing continues.

    A chain lives while one of its trials is WAITING or RUNNING. One whose worker was killed after
    its retries were used up, or whose writer died mid-write, would otherwise keep its file for
    good. Returns the files removed.
    """
    if folder is None or not Path(folder).is_dir():
        return []
    name = re.compile(rf"^{re.escape(quote(study.study_name, safe=''))}-trial(\d+)\.pt(\.\d+\.tmp)?$")
    live = {root_trial_number(t) for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))}
    removed = []
    for path in Path(folder).iterdir():
        match = name.match(path.name)
        if match and int(match.group(1)) not in live:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
