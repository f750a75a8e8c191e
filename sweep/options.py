"""The options of ``run``: one validated dataclass, and the command line that reproduces it."""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass

from sweep.errors import UsageError
from sweep.strategies import PRUNERS, SAMPLERS
from sweep.study import DEFAULT_STORAGE, DEFAULT_STUDY


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
    for flag in ("data", "storage", "study", "sampler", "pruner", "seed", "device", "workers", "timeout", "max_trial_seconds", "enqueue", "cv", "groups", "artifacts"):
        value = getattr(opts, flag)
        if value != getattr(defaults, flag):
            parts += [f"--{flag.replace('_', '-')}", str(value)]
    return shlex.join(parts)
