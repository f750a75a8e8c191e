"""Resume points: an interrupted trial is retried with its params and continues where it stopped.

A running trial keeps its training state (``sweep.training.train.resume_point``) where the study's
artifacts live, so that its retry continues on whichever machine picks it up: a folder
(``<artifact folder>/resume``, shared by the machines of a multi-machine study) or the object
store (keys ``resume/...``, with a local copy in ``~/.cache/segnet-sweep`` only as a cache).
Points belong to a retry chain, named by its root (the chain's original trial: a retry has
another number, and the seed and the point belong to the chain).

Each point is written under a new name, then the trial points at it (its ``resume_point``
system attribute, which a retry inherits with the others), then the previous point is deleted.
A kill at any moment leaves the previous point or the new one, never half of one; and a worker
whose trial was given up (a lost machine that comes back) cannot point its trial elsewhere, so
it never replaces the point its retry works from. Points are deleted when the trial ends other
than by an interruption, and a worker starting on the study deletes those of chains that
nothing continues (``prune_orphans``).

Interruptions that retry: Ctrl-C and SIGTERM (KeyboardInterrupt inside the objective, which
queues the retry itself, as ``RetryHeartbeatStaleTrialCallback`` does for a killed worker's
trial) and SIGKILL or a lost machine (noticed by the heartbeat, which queues the retry).
"""

from __future__ import annotations

import io
import os
import re
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import optuna
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from sweep.core.artifacts import OBJECT_STORES, cache_folder, open_store, patiently
from sweep.core.errors import described, is_outage, warn
from sweep.core.records import root_trial_number  # noqa: F401 - the objective reads it here, with the rest of resuming
from sweep.core.study import MAX_RETRY
from sweep.search.config import RESUME_SECONDS

FOLDER = "resume"  # inside the study's artifact folder, or the key prefix in an object store
POINTER = "resume_point"  # trial system attribute: the name of the chain's latest point
RESUME_SECONDS_ENV = "SEGNET_RESUME_SECONDS"  # tests write a point every epoch


def resume_folder(artifact_dir: str | Path) -> Path:
    """Where the resume points of the studies whose artifacts live in ``artifact_dir`` go."""
    return Path(artifact_dir) / FOLDER


def resume_interval() -> float:
    """Seconds between resume points (at epoch ends): ``SEGNET_RESUME_SECONDS``, else RESUME_SECONDS."""
    return float(os.environ.get(RESUME_SECONDS_ENV, RESUME_SECONDS))


class FolderPoints:
    """Points as files of one folder (local, or shared by every machine)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def put(self, name: str, data: bytes) -> None:
        """A temporary file in the same folder, synced, then renamed: the name appears whole or not at all."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / name
        tmp = path.with_name(f"{name}.{os.getpid()}.tmp")  # per process: two writers never share one
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def get(self, name: str) -> bytes | None:
        try:
            return (self.folder / name).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)

    def names(self) -> list[str]:
        return [p.name for p in self.folder.iterdir()] if self.folder.is_dir() else []

    def local(self, name: str) -> Path:
        return self.folder / name


class BucketPoints:
    """Points as objects ``resume/NAME`` of an object store (an Optuna artifact store), each
    also kept in a local cache folder: a retry on the machine that wrote the point reads it
    there. Names are never reused (``ResumeFile`` makes a new one per point), so a cached copy
    is never stale."""

    def __init__(self, store, cache: Path) -> None:
        self.store = store
        self.cache = FolderPoints(cache)

    def put(self, name: str, data: bytes) -> None:
        self.store.write(f"{FOLDER}/{name}", io.BytesIO(data))  # an object appears whole or not at all
        self.cache.put(name, data)

    def get(self, name: str) -> bytes | None:
        data = self.cache.get(name)
        if data is not None:
            return data
        try:
            with self.store.open_reader(f"{FOLDER}/{name}") as f:
                data = f.read()
        except optuna.artifacts.exceptions.ArtifactNotFound:
            return None
        self.cache.put(name, data)
        return data

    def delete(self, name: str) -> None:
        try:
            self.store.remove(f"{FOLDER}/{name}")
        except optuna.artifacts.exceptions.ArtifactNotFound:
            pass
        self.cache.delete(name)

    def names(self) -> list[str]:
        """The points in the store (Optuna's artifact stores cannot list: the client lists)."""
        prefix = f"{FOLDER}/"
        client = getattr(self.store, "client", None)
        if hasattr(client, "get_paginator"):  # boto3
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.store.bucket, Prefix=prefix)
            keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
        elif hasattr(self.store, "bucket_obj"):  # google-cloud-storage
            keys = [blob.name for blob in self.store.bucket_obj.list_blobs(prefix=prefix)]
        else:
            return []
        return [key[len(prefix):] for key in keys]

    def local(self, name: str) -> Path:
        return self.cache.local(name)

    def trim_cache(self, kept: set[str]) -> None:
        """Drop local copies of points no longer in the store (deleted by another machine)."""
        for name in self.cache.names():
            if name not in kept:
                self.cache.delete(name)


Points = FolderPoints | BucketPoints


def open_points(location: str) -> Points:
    """Where the resume points of studies whose artifacts are at ``location`` live."""
    if location.startswith(OBJECT_STORES):
        return BucketPoints(open_store(location), cache_folder() / FOLDER / quote(location, safe=""))
    return FolderPoints(resume_folder(location))


def frozen(trial: optuna.Trial) -> FrozenTrial:
    """The trial as stored, with its system attributes (a running ``Trial`` does not expose them)."""
    return trial.storage.get_trial(trial._trial_id)  # private, but Optuna's own code reads it so too


def enqueue_retry(trial: optuna.Trial, max_retry: int | None = MAX_RETRY) -> bool:
    """Queue a WAITING copy of an interrupted trial, as the heartbeat does for a killed worker's.

    Same params and distributions (an enqueued configuration's ``fixed_params`` too), user
    attributes, system attributes (the resume pointer too) and ``failed_trial``/``retry_history``.
    Call it before recording why the trial failed, or the copy carries the reason. Returns False
    once ``max_retry`` retries are used up.
    """
    record = frozen(trial)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retries = len(RetryHeartbeatStaleTrialCallback.retry_history(record))
        RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(trial.study, record)
    return max_retry is None or retries < max_retry


def _point_name(study: str, root: str) -> re.Pattern:
    """File or key names of points (and half-written ones) of ``study``'s chain ``root`` (a regex part)."""
    return re.compile(rf"^{re.escape(quote(study, safe=''))}-trial({root})(-[0-9a-f]{{12}})?\.pt(\.\d+\.tmp)?$")


@dataclass
class ResumeFile:
    """The resume point of one retry chain; ``points`` None keeps none (every method does nothing).

    With ``trial`` (the running trial of the chain) each point gets a new name and the trial
    points at it; without, the chain's point has one fixed name (for callers outside a study).
    ``identity`` (params, epoch budget, folds, seed) is stored with each point, and a point whose
    identity differs (a study deleted and made again under the same name) is not resumed.
    """

    points: Points | str | Path | None
    study: str
    root: int
    identity: dict = field(default_factory=dict)
    trial: optuna.Trial | None = None
    _pointer: str | None = field(default=None, init=False, repr=False)
    _pointer_read: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.points, (str, Path)):
            self.points = FolderPoints(self.points)

    @property
    def fixed_name(self) -> str:
        return f"{quote(self.study, safe='')}-trial{self.root}.pt"

    def current(self) -> str | None:
        """The name of the chain's latest point (what the trial points at), or None."""
        if self.trial is None:
            return self.fixed_name
        if not self._pointer_read:  # then only this object moves the pointer, while its trial runs
            self._pointer = frozen(self.trial).system_attrs.get(POINTER)
            self._pointer_read = True
        return self._pointer

    @property
    def path(self) -> Path | None:
        """The latest point's file on this machine (in the shared folder, or the local cache)."""
        if self.points is None:
            return None
        return self.points.local(self.current() or self.fixed_name)

    def load(self) -> dict | None:
        """The stored point, or None (none, another identity, or unreadable: training starts over)."""
        name = self.current() if self.points is not None else None
        try:
            data = patiently(lambda: self.points.get(name), f"resume point {name}") if name else None
        except Exception as err:  # the store stays down: the epochs it held are lost, not the trial
            if not is_outage(err):
                raise
            warn(f"resume point {name} not readable, trial {self.root} starts over ({type(err).__name__})")
            return None
        if data is None:
            return None
        try:
            saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - a bad point costs the epochs it held, not the trial
            warnings.warn(f"resume point {name} unreadable, trial {self.root} starts over: {err}", stacklevel=2)
            return None
        if saved.get("identity") != self.identity:
            return None
        return saved["point"]

    def save(self, point: dict) -> None:
        """Write ``point`` under a new name, point the trial at it, then delete the previous one.

        A trial that is no longer running (given up after its heartbeat went stale) cannot be
        pointed elsewhere: Optuna raises, and the point just written is deleted again.
        """
        if self.points is None:
            return
        buf = io.BytesIO()
        torch.save({"identity": self.identity, "point": point}, buf)
        if self.trial is None:
            self.points.put(self.fixed_name, buf.getvalue())
            return
        previous = self.current()
        name = f"{quote(self.study, safe='')}-trial{self.root}-{uuid.uuid4().hex[:12]}.pt"
        if not self._survive(lambda: self.points.put(name, buf.getvalue()),
                             f"trial {self.root}: resume point not written; it trains on and the next point tries again"):
            return
        try:
            self.trial.storage.set_trial_system_attr(self.trial._trial_id, POINTER, name)
        except Exception:  # (an interrupt here may come after the write: the name then stays, a stray)
            self.points.delete(name)
            raise
        self._pointer = name
        if previous is not None:
            self._survive(lambda: self.points.delete(previous),
                          f"trial {self.root}: previous resume point {previous} not deleted (it goes when the trial ends)")

    @staticmethod
    def _survive(call, what: str) -> bool:
        """``call()``; a store or folder that is down costs a warning, not the trial: a resume point
        is insurance, and the next one tries again. Returns whether it worked."""
        try:
            call()
            return True
        except Exception as err:
            if not is_outage(err):
                raise
            warn(f"{what} ({described(err)})")
            return False

    def remove(self) -> None:
        """Delete the chain's points (stray ones of killed writers too), unless the trial is no
        longer this worker's: a retry elsewhere may be working from them."""
        if self.points is None:
            return
        if self.trial is not None and frozen(self.trial).state != TrialState.RUNNING:
            return
        mine = _point_name(self.study, str(self.root))

        def delete_mine() -> None:
            for name in self.points.names():
                if mine.match(name):
                    self.points.delete(name)

        # Left behind, they go when a worker next starts on the study (``prune_orphans``).
        self._survive(delete_mine, f"trial {self.root}: its resume points not deleted")


def prune_orphans(points: Points | str | Path | None, study: optuna.Study) -> list[str]:
    """Delete the resume points (and half-written ones) of ``study``'s chains that nothing continues.

    A chain lives while one of its trials is WAITING or RUNNING. One whose worker was killed after
    its retries were used up, or whose writer died mid-write, would otherwise keep its point for
    good. Returns the names removed.
    """
    if points is None:
        return []
    if isinstance(points, (str, Path)):
        points = FolderPoints(points)
    ours = _point_name(study.study_name, r"\d+")
    live = {root_trial_number(t) for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))}
    removed, kept = [], set()
    for name in points.names():
        match = ours.match(name)
        if match and int(match.group(1)) not in live:
            points.delete(name)
            removed.append(name)
        else:
            kept.add(name)
    if isinstance(points, BucketPoints):
        points.trim_cache(kept)
    return removed
