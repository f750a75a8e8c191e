"""What a study and its trials record: the attribute names, and the summaries every command reads.

The study and trial attributes of docs/FORMATS.md, in code. Commands, the report and ``export``
read the study through these names and functions only, so an attribute is spelled in one place.
Imports Optuna and nothing that trains.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import optuna
from optuna.trial import FrozenTrial, TrialState

OBJECTIVE_NAME = "val_dice_fg"
VAL_DICE_FG = OBJECTIVE_NAME  # a trial's value, and its key in every record that carries it
SUMMARY_FILE = "summary.json"  # best --evaluate's summary under --out and among the study's artifacts
MODEL_FILE = "model.pt"  # the evaluated model under --out and among the study's artifacts
TEST_OVERLAY = "test_overlay.png"  # the evaluation's test picture among the study's artifacts
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
CLASS_NAMES = ("bg", "rv", "myo", "lv")  # class ids 0..3
DICE_KEYS = tuple(f"dice_{c}" for c in CLASS_NAMES)


class StudyKey:
    """Study user attributes."""

    DATA_FINGERPRINT = "data_fingerprint"  # Dataset.fingerprint: a study refuses other data
    DATA_SOURCE = "data_source"  # "phantom" or the data folder; `best` reloads it
    DATA_DESCRIPTION = "data_description"  # one line for people
    SYNTHETIC = "synthetic_data"  # True for the phantom: output must say so
    SPLIT_PATIENTS = "split_patients"  # {"train": [...], "val": [...], "test": [...]}: who went where
    GROUPS = "groups"  # --groups REGEX that named the patients (None: the layout's own, or none)
    SPACE_VERSION = "space_version"
    SPACE = "space"  # run --space: {"name": "full" or "local", "centre": the enqueued default's params (local)}
    EPOCHS = "epochs"  # the epoch budget of the study's trials
    FIDELITY = "fidelity"  # what an epoch costs: {"epoch_slices", "val_slices", "patch"} (0: all / whole)
    VERSIONS = "versions"  # package versions of the run that made the study
    CV = "cv"  # K of --cv K, 0 for selection on val
    CV_FOLDS = "cv_folds"  # the slice names of each fold
    TARGET = "target"  # --trials of the latest run
    COMMAND = "command"  # the latest run's command, which resumes the study
    EVALUATION = "evaluation"  # the latest `best --evaluate`'s figures
    ARTIFACTS = "artifacts"  # {"location": folder or s3://bucket, "host": who recorded it}


class TrialKey:
    """Trial user attributes."""

    EPOCH_BUDGET = "epoch_budget"
    N_PARAMS = "n_params"
    DEVICE = "device"
    WORKER = "worker"  # host:pid
    CV = "cv"
    BEST_EPOCH = "best_epoch"  # 1-based
    EPOCHS_RUN = "epochs_run"
    SECONDS = "seconds"
    HISTORY = "history"  # per-epoch curves, one list per HISTORY_KEYS entry
    PRUNED_AT = "pruned_at_epoch"
    PRUNE_REASON = "prune_reason"  # set where a trial was pruned for another reason than the median
    FAIL_REASON = "fail_reason"
    CHECKPOINT = "checkpoint_artifact"  # artifact id of the best-so-far weights
    CV_FOLD_SCORES = "cv_dice_fg_folds"
    PROGRESS = "progress"  # while running, updated every epoch: a dict of ProgressKey names
    RESUMED_AT = "resumed_at_epoch"  # on a retry: the epochs its resume point held (0: started over)
    # Per-class Dice at the best epoch go by their own names: DICE_KEYS, "dice_fg", "dice_mean4".


class ProgressKey:
    """The entries of a running trial's TrialKey.PROGRESS."""

    EPOCH = "epoch"  # epochs done
    EPOCHS = "epochs"  # the epoch budget
    LAST = "last"  # val dice_fg of the latest epoch (None before the first)
    BEST = "best"  # best val dice_fg so far
    SECONDS = "seconds"  # training time so far, earlier runs of a resumed trial included
    # Inside an epoch only (the epoch's end leaves them out again): signs of life in a long epoch.
    STEP = "step"  # optimiser steps done in the running epoch (every fold's together)
    STEPS = "steps"  # optimiser steps in an epoch


def _known(cls, record: Mapping | None) -> dict[str, Any]:
    """The entries of ``record`` that are fields of the dataclass ``cls`` (others are ignored)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in (record or {}).items() if k in names}


# The records below are the JSON shapes docs/FORMATS.md describes, key for key. Each has one
# ``to_dict`` (what is written) and one ``from_dict`` (what is read, tolerant of older records);
# VERSION is bumped when a shape changes (it is not written, so the shapes stay as they were).


@dataclass(frozen=True)
class Fidelity:
    """What an epoch costs (``StudyKey.FIDELITY``): slices per epoch and per validation, patch size;
    0 means all slices, whole slices (and is what studies made before it was recorded read as)."""

    VERSION: ClassVar[int] = 1
    epoch_slices: int = 0
    val_slices: int = 0
    patch: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: Mapping | None) -> Fidelity:
        return cls(**_known(cls, record))

    @classmethod
    def of_study(cls, study) -> Fidelity:
        return cls.from_dict(study.user_attrs.get(StudyKey.FIDELITY))


@dataclass(frozen=True)
class ArtifactLocation:
    """Where a study keeps its artifacts (``StudyKey.ARTIFACTS``): a folder or an object store URL,
    and the host that recorded it (a local folder is only seen there, unless shared)."""

    VERSION: ClassVar[int] = 1
    location: str
    host: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: Mapping | None) -> ArtifactLocation | None:
        return cls(**_known(cls, record)) if record else None

    @classmethod
    def of_study(cls, study) -> ArtifactLocation | None:
        return cls.from_dict(study.user_attrs.get(StudyKey.ARTIFACTS))


@dataclass(frozen=True)
class TrialProgress:
    """A running trial's progress (``TrialKey.PROGRESS``, its names in ``ProgressKey``): epochs done
    of the budget, the latest and best val dice_fg, training seconds; ``step`` and ``steps`` only
    inside an epoch (the epoch's end leaves them out again)."""

    VERSION: ClassVar[int] = 1
    epoch: int | None = None
    epochs: int | None = None
    last: float | None = None
    best: float | None = None
    seconds: float | None = None
    step: int | None = None
    steps: int | None = None

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        if self.step is None:
            del record[ProgressKey.STEP], record[ProgressKey.STEPS]
        return record

    @classmethod
    def from_dict(cls, record: Mapping | None) -> TrialProgress:
        return cls(**_known(cls, record))

    @property
    def in_epoch(self) -> bool:
        return self.step is not None


EVALUATION_KEYS = ("trial", "seeds", "test", VAL_DICE_FG, "n_test_images", "postprocess", "estimate", "cv", "out", "model")


@dataclass(frozen=True)
class Evaluation:
    """The latest ``best --evaluate`` as the study records it (``StudyKey.EVALUATION``): the part of
    summary.json every machine's ``status``, ``report`` and ``export`` read, without the files."""

    VERSION: ClassVar[int] = 1
    trial: int | None = None
    seeds: list[int] | None = None
    test: dict | None = None  # None where the test split has no masks
    val_dice_fg: float | None = None
    n_test_images: int | None = None
    postprocess: dict | None = None
    estimate: dict | None = None
    cv: int = 0
    out: str | None = None
    model: str | None = None
    volumes: dict | None = None  # per-patient figures, on volume data only
    search: dict | None = None  # what the search gained over the enqueued default (``search_gain``)
    command: str | None = None  # the `best --evaluate` command line that made it (``best.evaluate_command``)

    def to_dict(self) -> dict[str, Any]:
        record = {key: getattr(self, key) for key in EVALUATION_KEYS}
        for key in ("search", "volumes", "command"):  # written where present: records without them read as before
            if getattr(self, key):
                record[key] = getattr(self, key)
        return record

    @classmethod
    def from_dict(cls, record: Mapping | None) -> Evaluation | None:
        return cls(**_known(cls, record)) if record else None

    @classmethod
    def of_summary(cls, summary: Mapping) -> Evaluation:
        """What of summary.json the study records."""
        return cls(**{key: summary[key] for key in EVALUATION_KEYS}, volumes=summary.get("volumes") or None,
                   search=summary.get("search"), command=summary.get("command"))

    @classmethod
    def of_study(cls, study) -> Evaluation | None:
        return cls.from_dict(study.user_attrs.get(StudyKey.EVALUATION))


HISTORY_KEYS = ("train_loss", "val_loss", "val_dice_bg", "val_dice_rv", "val_dice_myo", "val_dice_lv", "val_dice_fg")


def silence_optuna() -> None:
    """Optuna's logs (a traceback per failed trial) would drown the per-trial lines, which say the
    same; its experimental-feature warnings (heartbeats, artifacts) say nothing to a user."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def score_label(cv: int) -> str:
    """What a trial's value is: "val dice_fg" or "5-fold cv dice_fg"."""
    return f"{cv}-fold cv dice_fg" if cv else "val dice_fg"


def study_cv(study: optuna.Study) -> int:
    return study.user_attrs.get(StudyKey.CV, 0)


# A trial stopped by Ctrl-C, SIGTERM or --timeout ends FAIL with one of these reasons, and a
# copy with its params is queued to resume it: it was stopped, not broken.
INTERRUPTED = "interrupted (Ctrl-C or SIGTERM)"
TIMED_OUT = "stopped at the run's --timeout"


def root_trial_number(trial: FrozenTrial) -> int:
    """The original trial of a retry chain (the trial itself when it is not a retry): the number
    a user knows an interrupted trial by, whichever retry runs it now. (Optuna's retry callback
    records it as ``failed_trial``; ``RetryHeartbeatStaleTrialCallback.retried_trial_number``.)"""
    return trial.system_attrs.get("failed_trial", trial.number)


ENQUEUED = "fixed_params"  # Optuna's system attribute on a trial made by enqueue_trial (`run --enqueue`)


def default_chain(trials: Iterable[FrozenTrial]) -> list[FrozenTrial] | None:
    """The enqueued default's retry chain: the first trial ``run --enqueue`` queued (a retry copies
    its ``fixed_params``, so only a chain's root counts), with its retries; None if none was queued."""
    for root, chain in retry_chains(trials).items():
        if chain[0].number == root and ENQUEUED in chain[0].system_attrs:
            return chain
    return None


def search_gain(study: optuna.Study) -> dict:
    """What the search gained over the enqueued default on val (docs/FORMATS.md's ``"search"``): the
    default's and the best trial's val dice_fg and the gain; whether the best trial is the default;
    the minutes the search's trials ran. The held-out figures are left None here (``best
    --evaluate`` fills them in)."""
    trials = study.get_trials(deepcopy=False)
    chain = default_chain(trials)
    best = best_summary(study)
    done = [t.value for t in chain or () if t.state == TrialState.COMPLETE]
    default = done[-1] if done else None
    best_value = best["val_dice_fg"] if best else None
    trials = list(trials)
    best_is_default = None if chain is None or best is None else root_trial_number(trials[best["trial"]]) == chain[0].number
    return {"default_trial": chain[0].number if chain else None, "default_val_dice_fg": default,
            "best_val_dice_fg": best_value,
            "gain_val": None if default is None or best_value is None else round(best_value - default, 5),
            "best_is_default": best_is_default, "search_minutes": search_minutes(trials),
            "default_estimate_dice_fg": None, "best_estimate_dice_fg": None,
            "gain_estimate": None, "gain_estimate_ci95": None}


def search_minutes(trials: Iterable[FrozenTrial]) -> float:
    """Minutes the study's trials ran, from each one's start to its end (every worker's added up)."""
    seconds = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials
                  if t.datetime_start is not None and t.datetime_complete is not None)
    return round(seconds / 60, 2)


def search_line(search: dict) -> str:
    """docs/FORMATS.md's ``"search"`` in one line, as ``best`` prints it and the report shows it: a
    verdict ("nothing better than the default", or the gain), with the held-out figures of both
    models where ``best --evaluate`` measured them, and the minutes the search took."""
    if search["default_trial"] is None:
        return "no enqueued default to measure the search against (run --enqueue PRESET)"
    if search["default_val_dice_fg"] is None:
        return f"the enqueued default (trial {search['default_trial']}) did not complete"
    minutes = search.get("search_minutes")
    took = "" if minutes is None else f"; the search took {minutes:.1f} min"
    if search.get("best_is_default"):  # a gain of 0 by definition, not a measured one
        held = search.get("best_estimate_dice_fg")
        held = "" if held is None else f", held-out {held:.4f}"
        return (f"the search found nothing better than the default (trial {search['default_trial']}, "
                f"val dice_fg {search['default_val_dice_fg']:.4f}{held}){took}")
    line = (f"gain {search['gain_val']:+.4f} val dice_fg over the enqueued default (trial {search['default_trial']}, "
            f"{search['default_val_dice_fg']:.4f} -> {search['best_val_dice_fg']:.4f})")
    if search["gain_estimate"] is not None:
        lo, hi = search["gain_estimate_ci95"]
        figures = ""
        if search.get("default_estimate_dice_fg") is not None:
            figures = f"{search['default_estimate_dice_fg']:.4f} -> {search['best_estimate_dice_fg']:.4f}, "
        line += f"; held-out {figures}{search['gain_estimate']:+.4f} (95% interval {lo:+.4f} to {hi:+.4f})"
    return line + took


def attempt(trial: FrozenTrial) -> int:
    """Which run of its chain a trial is: 1 for the original, 2 for its first retry, ..."""
    return len(trial.system_attrs.get("retry_history", [])) + 1


def retry_chains(trials: Iterable[FrozenTrial]) -> dict[int, list[FrozenTrial]]:
    """Trials by retry chain: an interrupted trial and its retries, in order, under the root's number."""
    chains: dict[int, list[FrozenTrial]] = {}
    for t in sorted(trials, key=lambda t: t.number):
        chains.setdefault(root_trial_number(t), []).append(t)
    return chains


def chain_counts(trials: Iterable[FrozenTrial]) -> dict[str, int]:
    """The study counted in chains, one trial each however often it was interrupted.

    ``stopped``: chains stopped (Ctrl-C, SIGTERM, ``--timeout``, a killed worker) and waiting to
    resume; ``failed``: chains whose last trial failed for a reason of its own; ``interruptions``:
    the stops that were retried (a chain's trials but its last).
    """
    counts = {"stopped": 0, "failed": 0, "interruptions": 0}
    for chain in retry_chains(trials).values():
        last = chain[-1]
        counts["interruptions"] += len(chain) - 1
        stopped_here = last.state == TrialState.FAIL and last.user_attrs.get(TrialKey.FAIL_REASON) in (INTERRUPTED, TIMED_OUT)
        if stopped_here or (last.state == TrialState.WAITING and len(chain) > 1):
            counts["stopped"] += 1
        elif last.state == TrialState.FAIL:
            counts["failed"] += 1
    return counts


def waiting_retries(trials: Iterable[FrozenTrial]) -> int:
    """Retries queued for interrupted trials: a study is not done while one waits (its work would be lost)."""
    return sum(t.state == TrialState.WAITING and attempt(t) > 1 for t in trials)


def stopped_count(trials: Iterable[FrozenTrial]) -> int:
    """Trials (chains) that were stopped (interrupted or timed out) rather than broken, and resume."""
    return chain_counts(trials)["stopped"]


def states_line(states: Mapping[str, int], chains: Mapping[str, int] | None = None, running: bool = False) -> str:
    """Trials by state in one line, as every command prints it: "38 complete, 25 pruned, 0 failed,
    1 stopped and queued to resume, 2 interruptions retried" (running trials too where ``running``).
    With ``chains`` (``chain_counts``) an interrupted trial and its retries count once."""
    chains = chains or {"stopped": 0, "failed": states["fail"], "interruptions": 0}
    parts = [f"{states['complete']} complete", f"{states['pruned']} pruned", f"{chains['failed']} failed"]
    if chains["stopped"]:
        parts.append(f"{chains['stopped']} stopped and queued to resume")
    if running:
        parts.append(f"{states['running']} running")
    if chains["interruptions"]:
        n = chains["interruptions"]
        parts.append(f"{n} interruption{'s' if n > 1 else ''} retried")
    return ", ".join(parts)


def state_counts(trials: Iterable[FrozenTrial]) -> dict[str, int]:
    """Trials by state, every state present: {"complete": 3, "pruned": 1, "fail": 0, ...}."""
    counts = {s.name.lower(): 0 for s in TrialState}
    for t in trials:
        counts[t.state.name.lower()] += 1
    return counts


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def class_dice(attrs: Mapping) -> dict[str, float | None]:
    """A trial's per-class val Dice at its best epoch."""
    return {key: attrs.get(key) for key in DICE_KEYS}


def best_summary(study: optuna.Study) -> dict | None:
    """The best trial as every command shows it, or None before the first complete trial."""
    try:
        t = study.best_trial
    except ValueError:
        return None
    return {"trial": t.number, "val_dice_fg": t.value, "params": t.params, "val": class_dice(t.user_attrs)}


def compact_history(history: list[dict[str, float]]) -> dict[str, list[float]]:
    """Per-epoch curves as one list per quantity, rounded: small enough for a trial attribute."""
    return {key: [round(record[key], 5) for record in history] for key in HISTORY_KEYS}


def trial_summary(history: list[dict[str, float]], best: dict[str, float], seconds: float) -> dict:
    """The attributes a trial records when it ends (complete or pruned); ``best`` is its best epoch's record."""
    return {
        TrialKey.BEST_EPOCH: best["epoch"],
        TrialKey.EPOCHS_RUN: len(history),
        TrialKey.SECONDS: round(seconds, 2),
        **{key[len("val_"):]: round(best[key], 5) for key in best if key.startswith("val_dice_")},
        TrialKey.HISTORY: compact_history(history),
    }
