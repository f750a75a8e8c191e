"""The options of ``run``: one validated dataclass, and the command line that reproduces it."""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass

from sweep.errors import UsageError
from sweep.strategies import PRUNERS, SAMPLERS
from sweep.study import DEFAULT_STORAGE, DEFAULT_STUDY


EPOCH_SLICES_AUTO = 1000  # default bound on the train slices of one epoch
VAL_SLICES_AUTO = 200  # default bound on the val slices scored after each epoch
PATCH_STEP = 32  # --patch must be a multiple: 2 ** 5, SegNet's deepest down-sampling


@dataclass
class RunOptions:
    trials: int = 20
    epochs: int = 50
    data: str = "phantom"
    storage: str = DEFAULT_STORAGE
    study: str = DEFAULT_STUDY
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    device: str = "auto"
    workers: int = 1
    timeout: float | None = None
    max_trial_seconds: float | None = None  # None: a tenth of --timeout (no cap without one); 0: no cap
    enqueue: str | None = None
    cv: int = 0  # K >= 2: K-fold cross-validation over train+val instead of selecting on val
    groups: str | None = None  # regex whose first capture names a slice's patient
    artifacts: str | None = None  # folder or s3://bucket for checkpoints and pictures (default: beside the storage)
    epoch_slices: int | None = None  # slices trained per epoch (None: every train slice, at most EPOCH_SLICES_AUTO)
    val_slices: int | None = None  # val slices scored per epoch (None: every one, at most VAL_SLICES_AUTO)
    patch: int = 0  # side of the random crop each train slice is trained on (0: the whole slice)
    progress: bool = True
    deadline: float | None = None  # set by `run` from --timeout: wall-clock end shared by every worker

    def check(self) -> None:
        """Every option on its own, before anything is read or created."""
        for flag in ("trials", "epochs", "workers"):
            if getattr(self, flag) <= 0:
                raise UsageError(f"--{flag} must be a positive integer, got {getattr(self, flag)}")
        if self.timeout is not None and not (math.isfinite(self.timeout) and self.timeout > 0):
            raise UsageError(f"--timeout must be a positive number of seconds, got {self.timeout}")
        if self.max_trial_seconds is not None and not (math.isfinite(self.max_trial_seconds) and self.max_trial_seconds >= 0):
            raise UsageError(f"--max-trial-seconds must be a number of seconds >= 0, got {self.max_trial_seconds}")
        if not self.study.strip():  # Optuna would make a study named "", which no other command's default finds
            raise UsageError(f"--study {self.study!r}: give the study a name, e.g. --study {DEFAULT_STUDY}")
        if not 0 <= self.seed < 2**32:
            raise UsageError(f"--seed must be within 0..{2**32 - 1}, got {self.seed}")
        if self.cv < 0 or self.cv == 1:
            raise UsageError(f"--cv must be 0 (select on val) or a number of folds >= 2, got {self.cv}")
        if self.sampler not in SAMPLERS:
            raise UsageError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.pruner not in PRUNERS:
            raise UsageError(f"--pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}")
        for flag in ("epoch_slices", "val_slices"):
            value = getattr(self, flag)
            if value is not None and value < 0:
                raise UsageError(f"--{flag.replace('_', '-')} must be >= 0 (0: all), got {value}")
        if self.patch < 0 or self.patch % PATCH_STEP:
            raise UsageError(f"--patch must be 0 (whole slices) or a multiple of {PATCH_STEP} "
                             f"(SegNet's deepest down-sampling), got {self.patch}")

    def fidelity(self, n_train: int, n_val: int) -> dict[str, int]:
        """What one epoch costs, for data with ``n_train`` train and ``n_val`` val slices:
        ``epoch_slices`` and ``val_slices`` (0: all) and ``patch`` (0: whole slices).

        By default an epoch trains on every train slice and scores every val slice, up to
        ``EPOCH_SLICES_AUTO`` and ``VAL_SLICES_AUTO``: small data sets train as they always did,
        and a trial's cost on a large one (ACDC's 1,224 train slices of 192 x 192) stays bounded.
        """
        def bounded(value: int | None, n: int, limit: int) -> int:
            if value is None:
                value = limit if n > limit else 0
            return 0 if value >= n else value

        return {"epoch_slices": self.epoch_slices if self.epoch_slices is not None else bounded(None, n_train, EPOCH_SLICES_AUTO),
                "val_slices": bounded(self.val_slices, n_val, VAL_SLICES_AUTO), "patch": self.patch}

    def trial_cap(self) -> float | None:
        """Seconds a trial may be projected to run before it is pruned (``sweep.objective.over_time_cap``).

        By default a tenth of ``--timeout``: the sampler's 10 random start-up trials then fit in
        the budget whatever they draw, where one wide, deep start-up trial alone took a fifth of a
        90-minute budget on 2 cores (docs/PERFORMANCE.md). No cap without ``--timeout``.
        """
        if self.max_trial_seconds is not None:
            return self.max_trial_seconds or None
        return self.timeout / 10 if self.timeout is not None else None


def resume_command(opts: RunOptions) -> str:
    """The ``run`` command line of ``opts``, defaults left out: it resumes the study."""
    parts = ["python", "-m", "sweep", "run", "--trials", str(opts.trials), "--epochs", str(opts.epochs)]
    defaults = RunOptions()
    for flag in ("data", "storage", "study", "sampler", "pruner", "seed", "device", "workers", "timeout", "max_trial_seconds", "enqueue", "cv", "groups", "artifacts", "epoch_slices", "val_slices", "patch"):
        value = getattr(opts, flag)
        if value != getattr(defaults, flag):
            parts += [f"--{flag.replace('_', '-')}", str(value)]
    return shlex.join(parts)
