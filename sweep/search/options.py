"""The options of ``run``, defined once: each field of ``RunOptions`` that is a flag carries its help
text and argparse's other keywords (``sweep.core.flags.flag``), and the parser (``sweep.cli``), the
defaults, building the options from the parsed arguments and the command line that resumes a study
all read these fields. A new flag is one field here (and its check in ``check``, where it needs one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sweep.core import flags
from sweep.core.errors import UsageError
from sweep.core.flags import device_flag, flag, flag_name, storage_flag, study_flag  # noqa: F401 - flag_name: for the CLI
from sweep.core.records import Fidelity
from sweep.core.study import DEFAULT_STUDY
from sweep.search.config import DEFAULT_EPOCHS
from sweep.search.space import SPACES
from sweep.search.strategies import PRUNERS, SAMPLERS

EPOCH_SLICES_AUTO = 1000  # default bound on the train slices of one epoch
VAL_SLICES_AUTO = 200  # default bound on the val slices scored after each epoch
PATCH_STEP = 32  # --patch must be a multiple: 2 ** 5, SegNet's deepest down-sampling
# Optuna's schema stores a study's name in a VARCHAR(512) (optuna.storages._rdb.models): PostgreSQL
# and MySQL refuse a longer one with the server's own error, SQLite keeps it; refused before any storage.
STUDY_NAME_MAX = 512
MAX_EPOCH_PASSES = 100  # --epoch-slices beyond this many passes over the train split is a slip, not a budget


@dataclass
class RunOptions:
    trials: int = flag(20, "target of finished trials, across runs and workers (default %(default)s)")
    epochs: int | None = flag(None, "epoch budget of each trial (default: the study's; "
                                    f"{DEFAULT_EPOCHS} for a new study); a rerun cannot change it")
    data: str = flag("phantom", "'phantom' (built-in synthetic), a PNG folder, or ACDC / nnU-Net NIfTI (default %(default)s)")
    storage: str = storage_flag()
    study: str = study_flag()
    sampler: str = flag("tpe", "how trials are drawn (default %(default)s)", choices=SAMPLERS)
    pruner: str = flag("median", "how trials that fall behind are stopped early (default %(default)s)", choices=PRUNERS)
    space: str | None = flag(None, "what the sampler searches: the full space, or (local) a neighbourhood of the --enqueue "
                                   "default: lr, weight decay, loss weighting, augmentation strengths, depth +-1, width halved or "
                                   "doubled (default: the study's, for a new study full)", choices=SPACES)
    seed: int | None = flag(None, "sampler and training seed (default: training seed 0, and a sampler seed of each "
                                  "run's own, so that runs on several machines draw different configurations)")
    device: str = device_flag()
    workers: int = flag(1, "worker processes on this machine (default %(default)s)")
    timeout: float | None = flag(None, "end the run after this many seconds: no trial starts later, and a running "
                                       "trial stops at the end of its epoch and resumes on the next run")
    max_trial_seconds: float | None = flag(
        None, "prune a trial projected, from the steps of its first epoch or in its first fifth of epochs, to run longer than this "
              "(default: a tenth of --timeout; no cap without --timeout; 0: no cap)", metavar="SEC")
    enqueue: str | None = flag(None, "run this configuration first: a preset (original, small, acdc), a JSON file "
                                     "or a JSON object", metavar="NAME|PARAMS.json|JSON")
    cv: int = flag(0, "K-fold cross-validation over train+val: a trial's value is its mean fold dice_fg "
                      "(default 0: train on train, select on val)", metavar="K")
    groups: str | None = flag(None, "a regex whose first capture on a file or case name is its patient, e.g. "
                                    "'patient(\\d+)': splits and folds then keep each patient in one part", metavar="REGEX")
    artifacts: str | None = flag(None, "where checkpoints and pictures go: a folder all machines share, or an object "
                                       "store (default: beside the SQLite file, else ./artifacts); recorded on the study",
                                 metavar="PATH|s3://BUCKET")
    epoch_slices: int | None = flag(None, "train slices drawn per epoch, so that an epoch costs the same on any data "
                                          f"set (default: every train slice, at most {EPOCH_SLICES_AUTO}; 0: every one)",
                                    metavar="N")
    val_slices: int | None = flag(None, "val slices scored after each epoch (evenly spaced); the best epoch is then "
                                        "scored on the whole val split (default: every val slice, at most "
                                        f"{VAL_SLICES_AUTO}; 0: every one)", metavar="N")
    patch: int | None = flag(None, "train on random PX x PX crops of each slice (a multiple of 32); val, test and "
                                   "predictions use whole slices (default 0: whole slices)", metavar="PX")
    progress: bool = flag(True, "no progress bar or per-trial lines", resume=False, flag="--quiet", action="store_false")
    deadline: float | None = None  # set by `run` from --timeout: wall-clock end shared by every worker

    @classmethod
    def from_args(cls, args) -> RunOptions:
        """The options of a parsed ``run`` command line (each flag's ``dest`` is its field's name)."""
        return flags.from_args(cls, args)

    def check(self) -> None:
        """Every option on its own, before anything is read or created."""
        for flag in ("trials", "epochs", "workers"):
            if getattr(self, flag) is not None and getattr(self, flag) <= 0:
                raise UsageError(f"--{flag} must be a positive integer, got {getattr(self, flag)}")
        if self.timeout is not None and not (math.isfinite(self.timeout) and self.timeout > 0):
            raise UsageError(f"--timeout must be a positive number of seconds, got {self.timeout}")
        if self.max_trial_seconds is not None and not (math.isfinite(self.max_trial_seconds) and self.max_trial_seconds >= 0):
            raise UsageError(f"--max-trial-seconds must be a number of seconds >= 0, got {self.max_trial_seconds}")
        if not self.study.strip():  # Optuna would make a study named "", which no other command's default finds
            raise UsageError(f"--study {self.study!r}: give the study a name, e.g. --study {DEFAULT_STUDY}")
        if len(self.study) > STUDY_NAME_MAX:
            raise UsageError(f"--study: a name of {len(self.study)} characters; Optuna's storage holds at most "
                             f"{STUDY_NAME_MAX} (its study_name column)")
        if self.seed is not None and not 0 <= self.seed < 2**32:
            raise UsageError(f"--seed must be within 0..{2**32 - 1}, got {self.seed}")
        if self.cv < 0 or self.cv == 1:
            raise UsageError(f"--cv must be 0 (select on val) or a number of folds >= 2, got {self.cv}")
        if self.sampler not in SAMPLERS:
            raise UsageError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.space is not None and self.space not in SPACES:
            raise UsageError(f"--space must be one of {', '.join(SPACES)}, got {self.space!r}")
        if self.pruner not in PRUNERS:
            raise UsageError(f"--pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}")
        for flag in ("epoch_slices", "val_slices"):
            value = getattr(self, flag)
            if value is not None and value < 0:
                raise UsageError(f"--{flag.replace('_', '-')} must be >= 0 (0: all), got {value}")
        if self.patch is not None and (self.patch < 0 or self.patch % PATCH_STEP):
            raise UsageError(f"--patch must be 0 (whole slices) or a multiple of {PATCH_STEP} "
                             f"(SegNet's deepest down-sampling), got {self.patch}")

    def fidelity(self, n_train: int, n_val: int, shape: tuple[int, int] | None = None) -> dict[str, int]:
        """What one epoch costs, for data with ``n_train`` train and ``n_val`` val slices of
        ``shape``: ``epoch_slices`` and ``val_slices`` (0: all) and ``patch`` (0: whole slices),
        as what runs: a value that means "every slice" or "the whole slice" is 0, so that equal
        meanings compare equal.

        By default an epoch trains on every train slice and scores every val slice, up to
        ``EPOCH_SLICES_AUTO`` and ``VAL_SLICES_AUTO``: small data sets train as they always did,
        and a trial's cost on a large one (ACDC's 1,224 train slices of 192 x 192) stays bounded.
        An ``epoch_slices`` above ``n_train`` is kept: an epoch then passes over the split more than once.
        """
        def bounded(value: int | None, n: int, limit: int) -> int:
            if value is None:
                value = limit if n > limit else 0
            return 0 if value >= n else value

        epoch_slices = bounded(None, n_train, EPOCH_SLICES_AUTO) if self.epoch_slices is None else self.epoch_slices
        patch = self.patch or 0
        if shape is not None and patch >= max(shape):  # random_patches crops nothing: whole slices run
            patch = 0
        return Fidelity(0 if epoch_slices == n_train else epoch_slices, bounded(self.val_slices, n_val, VAL_SLICES_AUTO),
                        patch).to_dict()

    def check_fidelity(self, n_train: int) -> None:
        """``--epoch-slices`` against the data: more than ``MAX_EPOCH_PASSES`` passes over the train
        split in one epoch is refused before anything is allocated."""
        if self.epoch_slices is not None and self.epoch_slices > MAX_EPOCH_PASSES * max(n_train, 1):
            raise UsageError(f"--epoch-slices {self.epoch_slices}: more than {MAX_EPOCH_PASSES} passes over the "
                             f"{n_train} train slices in one epoch; give at most {MAX_EPOCH_PASSES * n_train} "
                             "(0: every slice once)")

    def trial_cap(self) -> float | None:
        """Seconds a trial may be projected to run before it is pruned (``sweep.training.objective.over_time_cap``).

        By default a tenth of ``--timeout``: the sampler's 10 random start-up trials then fit in
        the budget whatever they draw, where one wide, deep start-up trial alone took a fifth of a
        90-minute budget on 2 cores (docs/PERFORMANCE.md). No cap without ``--timeout``.
        """
        if self.max_trial_seconds is not None:
            return self.max_trial_seconds or None
        return self.timeout / 10 if self.timeout is not None else None


def run_flags():
    """The fields of ``RunOptions`` that are ``run`` flags, in the order ``run --help`` shows them."""
    return flags.flag_fields(RunOptions)


def resume_command(opts: RunOptions) -> str:
    """The ``run`` command line of ``opts``, defaults left out but the target and the epoch budget
    (where known: left out, the study's runs): it resumes the study."""
    return flags.command_line("run", *flags.option_flags(opts, always=("trials", "epochs")))
