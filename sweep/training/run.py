"""`python -m sweep run`: create or resume a study and run trials until its target is reached."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna

from data import Dataset, load_dataset
from sweep.core import artifacts
from sweep.training import objective
from sweep.core import records as rec
from sweep.core import study as st
from sweep.core.errors import UsageError
from sweep.training.folds import cv_folds, pool_names
from sweep.search.options import RunOptions, resume_command
from sweep.core.progress import MAX_CONSECUTIVE_FAILURES, Progress
from sweep.core.records import StudyKey
from sweep.search.config import DEFAULT_EPOCHS
from sweep.search.presets import DEFAULT_PRESET, PRESETS
from sweep.search.space import ADDED_OFF, SPACE_VERSION, params_problem
from sweep.nn import threads
from sweep.nn.runtime import resolve_device_or_fail, worker_device
from sweep.training.workers import optimize, run_workers


LOCAL_NEEDS_ENQUEUE = "--space local searches around the configuration --enqueue names: add one, e.g. --enqueue acdc"


def parse_enqueue(value: str, epochs: int) -> dict:
    """``--enqueue`` takes a preset name, a JSON file or an inline JSON object of params; checked against the space."""

    if value in PRESETS:
        return dict(PRESETS[value])
    if not value.strip():
        raise UsageError(f"--enqueue is empty: give a preset ({', '.join(PRESETS)}), a JSON file or a JSON object")
    path = Path(value)
    inline = value.lstrip().startswith("{") or not path.exists()
    try:
        params = json.loads(value if inline else path.read_text())
    except OSError as err:
        raise UsageError(f"--enqueue {value!r}: cannot read it ({err.strerror or err})") from None
    except json.JSONDecodeError as err:
        if not inline:
            raise UsageError(f"--enqueue {value!r}: not valid JSON ({err})") from None
        if value.lstrip().startswith("{"):
            raise UsageError(f"--enqueue {value!r}: not a valid JSON object ({err})") from None
        # Neither a file nor JSON: most likely a mistyped file or preset name.
        raise UsageError(f"--enqueue {value!r}: no such file or preset ({', '.join(PRESETS)}), nor a JSON object") from None
    if not isinstance(params, dict):
        raise UsageError(f"--enqueue {value!r}: expected a JSON object of parameters")
    params = {**ADDED_OFF, **params}  # a configuration written before a parameter existed has it off
    problem = params_problem(params, epochs)
    if problem:
        presets = f"; or name a preset: {', '.join(PRESETS)}" if "missing" in problem else ""
        raise UsageError(f"--enqueue {value!r}: not a configuration of this search space ({problem}{presets})")
    return params


def record_study_metadata(study: optuna.Study, data: Dataset, opts: RunOptions, enqueue: dict | None = None) -> None:
    study.set_metric_names([rec.OBJECTIVE_NAME])
    study.set_user_attr(StudyKey.DATA_FINGERPRINT, data.fingerprint)
    study.set_user_attr(StudyKey.DATA_SOURCE, data.source)
    study.set_user_attr(StudyKey.DATA_DESCRIPTION, data.describe())
    study.set_user_attr(StudyKey.SYNTHETIC, data.synthetic)
    study.set_user_attr(StudyKey.SPLIT_PATIENTS, data.split_patients())
    study.set_user_attr(StudyKey.GROUPS, opts.groups)
    study.set_user_attr(StudyKey.SPACE_VERSION, SPACE_VERSION)
    space = opts.space or "full"  # (None: --space left out)
    study.set_user_attr(StudyKey.SPACE, {"name": space, "centre": enqueue if space == "local" else None})
    study.set_user_attr(StudyKey.EPOCHS, opts.epochs)
    study.set_user_attr(StudyKey.FIDELITY, opts.fidelity(len(data.train), len(data.val), data.image_shape))
    study.set_user_attr(StudyKey.VERSIONS, st.versions())
    study.set_user_attr(StudyKey.CV, opts.cv)
    if opts.cv:
        names = pool_names(data)
        study.set_user_attr(StudyKey.CV_FOLDS, [[names[i] for i in fold] for fold in cv_folds(data, opts.cv)])


def check_same_data(study: optuna.Study, data: Dataset, opts: RunOptions) -> None:
    recorded = study.user_attrs.get(StudyKey.DATA_FINGERPRINT)
    if recorded is not None and recorded != data.fingerprint:
        source = study.user_attrs.get(StudyKey.DATA_SOURCE, "?")
        raise UsageError(
            f"--data {opts.data}: study {opts.study!r} was run on other data ({source}, fingerprint "
            f"{recorded}, this is {data.fingerprint}); use another --study or --storage"
        )
    epochs = study.user_attrs.get(StudyKey.EPOCHS)
    if opts.epochs is not None and epochs is not None and opts.epochs != epochs:
        # Trials of two lengths would be ranked together, and the study would still say the first.
        raise UsageError(f"--epochs {opts.epochs}: study {opts.study!r} was made with --epochs {epochs}; "
                         "leave it out, give the same, or use another --study")
    recorded_cv = rec.study_cv(study)
    if recorded is not None and recorded_cv != opts.cv:  # (a study made by enqueueing alone records nothing yet)
        made = f"--cv {recorded_cv}" if recorded_cv else "selection on val (no --cv)"
        raise UsageError(f"--cv {opts.cv}: study {opts.study!r} was made with {made}; use the same or another --study")
    if study.user_attrs.get(StudyKey.FIDELITY) is not None:
        asked = opts.fidelity(len(data.train), len(data.val), data.image_shape)
        for key, value in rec.Fidelity.of_study(study).to_dict().items():
            given = getattr(opts, key)  # None: left out, so the study's recorded value runs
            if given is not None and asked[key] != value:
                flag = f"--{key.replace('_', '-')}"
                raise UsageError(f"{flag} {given}: study {opts.study!r} was made with {flag} {value} (0: all); "
                                 "leave it out, give the same, or use another --study")
    space = (study.user_attrs.get(StudyKey.SPACE) or {}).get("name", "full")  # studies before --space: full
    if recorded is not None and opts.space is not None and space != opts.space:  # left out: the study's runs
        raise UsageError(f"--space {opts.space}: study {opts.study!r} was made with --space {space}; "
                         "use the same or another --study")
    version = study.user_attrs.get(StudyKey.SPACE_VERSION)
    if version is not None and version != SPACE_VERSION:
        raise UsageError(
            f"--study {opts.study!r}: made with search-space version {version}, this is {SPACE_VERSION}; use another --study"
        )


def check_same_artifacts(study: optuna.Study, opts: RunOptions, requested: str) -> None:
    """``requested``: ``--artifacts`` resolved (``artifacts.resolve``)."""
    recorded = getattr(rec.ArtifactLocation.of_study(study), "location", None)
    if opts.artifacts is not None and recorded and recorded != requested:
        raise UsageError(f"--artifacts {opts.artifacts}: study {opts.study!r} keeps its artifacts in {recorded}; "
                         "leave --artifacts out or give that location")


def check_own_study(study: optuna.Study, opts: RunOptions) -> None:
    """Refuse a study another tool made (a plain Optuna script's): new trials would mix with its own."""
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise UsageError(f"--study {opts.study!r}: minimises its value, not made by this tool (its studies maximise "
                         "val dice_fg); use another --study")
    if study.user_attrs.get(StudyKey.DATA_FINGERPRINT) is None:  # (a study made by enqueueing alone records nothing yet)
        for trial in study.get_trials(deepcopy=False):
            if trial.params and params_problem(trial.params, opts.epochs):
                raise UsageError(f"--study {opts.study!r}: trial {trial.number}'s params ({', '.join(sorted(trial.params))}) "
                                 "are not of this search space, a study not made by this tool; use another --study")


def run(opts: RunOptions) -> dict:
    """Run the sweep; returns a summary. Every input is checked before a study is touched."""
    opts.check()
    st.check_storage_url(opts.storage)
    device = resolve_device_or_fail(opts.device)
    data = load_dataset(opts.data, groups=opts.groups)
    opts.check_fidelity(len(data.train))
    if opts.cv:
        cv_folds(data, opts.cv)  # enough slices for the folds
    enqueue = parse_enqueue(opts.enqueue, opts.epochs or DEFAULT_EPOCHS) if opts.enqueue is not None else None
    requested = artifacts.resolve(opts.storage, opts.artifacts)
    if opts.artifacts is not None:
        artifacts.check(requested)
    db = st.sqlite_path(opts.storage)
    if opts.space == "local" and enqueue is None and db is not None and not db.exists():
        raise UsageError(LOCAL_NEEDS_ENQUEUE)  # now: opening the storage would leave an empty studies.db

    study, location, opts = _open_study(opts, data, requested, enqueue)
    note = grouping_note(data, opts)  # after the study's checks: a refusal is then its one line alone
    if note:
        print(note, file=sys.stderr)
    finished = rec.count_finished(study)
    if finished >= opts.trials and not rec.waiting_retries(study.get_trials(deepcopy=False)):
        return summarize(study, opts, ran=0, note=f"study {opts.study!r} is complete: {finished} of {opts.trials} trials finished")
    default = enqueue is None and not study.get_trials(deepcopy=False)
    if default:  # a new study measures its search against the default, which goes first
        enqueue = dict(PRESETS[DEFAULT_PRESET])
    if enqueue is not None:
        study.enqueue_trial(enqueue, skip_if_exists=True)
    if opts.workers == 1:
        threads_line = threads.start(worker_device(device, 0), 1, report=_say if opts.progress else None)
    else:
        threads_line = threads.plan(worker_device(device, 0), opts.workers)[2]
    if opts.progress:
        _announce(opts, data, device, finished, threads_line)
        if default:
            print(f"first trial: the default configuration, preset {DEFAULT_PRESET!r} (--enqueue names another)",
                  file=sys.stderr)

    before = len(study.trials)
    if opts.timeout is not None:
        opts = replace(opts, deadline=time.time() + opts.timeout)
    progress = Progress(study, opts.trials, opts.progress, opts.deadline)
    try:
        if opts.workers == 1:
            failures = optimize(opts, data, worker_device(device, 0), 0, location, callbacks=[progress])
            tripped, reason = failures.tripped, f"last: {failures.last_reason}"
        else:
            devices = [worker_device(device, i) for i in range(opts.workers)]
            tripped = run_workers(opts, study, progress, devices, location)
            reason = f"see the failed trials' fail_reason ({st.sweep_command('status', opts.storage, opts.study)})"
    finally:
        progress.close()
    note = f"stopped after {MAX_CONSECUTIVE_FAILURES} failed trials in a row; {reason}" if tripped else None
    if note is None and opts.deadline is not None and objective.past(opts.deadline):
        resuming = sum(t.state == optuna.trial.TrialState.WAITING for t in study.get_trials(deepcopy=False))
        note = (f"--timeout {opts.timeout:g} s reached" + (f"; {resuming} stopped trial(s) resume on the next run"
                                                           if resuming else ""))
    return summarize(study, opts, ran=len(study.trials) - before, note=note, stopped_early=tripped)


def grouping_note(data: Dataset, opts: RunOptions) -> str | None:
    """Where no patient is known, say once that cases are split one by one (a leak if one
    patient has several); None where patients are known or the split is given and unused."""
    if opts.groups or data.layout in ("phantom", "acdc") or (data.layout == "coursework" and not opts.cv):
        return None
    unit = "case" if data.volumes else "image"
    parts = f"{opts.cv} folds" if opts.cv else "train/val/test"
    return (f"note: no --groups, so every {unit} counts as its own patient and the {parts} split is made "
            f"{unit} by {unit}; if a patient has several, name it with --groups REGEX (e.g. --groups 'patient(\\d+)')")


def _open_study(opts: RunOptions, data: Dataset, requested: str,
                enqueue: dict | None) -> tuple[optuna.Study, str, RunOptions]:
    """Create the study or resume it (refusing other data); record the latest target and command.

    Returns the study; its artifact location, for every worker of the run: the one it
    recorded, else ``requested`` (``--artifacts`` resolved), now recorded; and ``opts`` with the
    epoch budget the study runs (``--epochs``, else the study's, else ``DEFAULT_EPOCHS``).
    """
    storage = st.make_storage(opts.storage)
    existing = st.load_study(storage, opts.study) if st.study_exists(storage, opts.study) else None
    if opts.epochs is None:
        opts = replace(opts, epochs=(existing and existing.user_attrs.get(StudyKey.EPOCHS)) or DEFAULT_EPOCHS)
    if existing is not None:
        check_same_data(existing, data, opts)
        check_same_artifacts(existing, opts, requested)
        check_own_study(existing, opts)
        if opts.artifacts is None:  # (a given one is checked already)
            artifacts.check_recorded(existing, artifacts.location_of(existing, opts.storage, warn=False))
    if opts.space == "local" and enqueue is None and not (existing and existing.user_attrs.get(StudyKey.SPACE)):
        raise UsageError(LOCAL_NEEDS_ENQUEUE)
    study = optuna.create_study(storage=storage, study_name=opts.study, direction="maximize", load_if_exists=True)
    if not study.user_attrs.get(StudyKey.DATA_FINGERPRINT):
        record_study_metadata(study, data, opts, enqueue)
    if rec.ArtifactLocation.of_study(study) is None:
        artifacts.record(study, requested)
    if study.user_attrs.get(StudyKey.TARGET) != opts.trials:
        study.set_user_attr(StudyKey.TARGET, opts.trials)
        study.set_user_attr(StudyKey.COMMAND, resume_command(opts))
    # A worker killed in an earlier run left a RUNNING trial: fail it now (if its heartbeat is
    # stale) so that its retry with the same params is queued before anything new.
    optuna.storages.fail_stale_trials(study)
    return study, artifacts.location_of(study, opts.storage), opts


def _say(line: str) -> None:
    """One line on stderr above the progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)


def _announce(opts: RunOptions, data: Dataset, device, finished: int, threads_line: str) -> None:
    print(f"data: {data.describe()}", file=sys.stderr)
    if opts.cv:
        n = len(data.train) + len(data.val)
        print(f"selection: {opts.cv}-fold cross-validation over the {n} train+val slices "
              f"(a trial's value is its mean fold dice_fg)", file=sys.stderr)
    print(
        f"device: {device}, {opts.workers} worker(s); study {opts.study!r} in {st.display_url(opts.storage)}: "
        f"{finished} of {opts.trials} trials finished",
        file=sys.stderr,
    )
    print(threads_line, file=sys.stderr)


def summarize(study: optuna.Study, opts: RunOptions, ran: int, note: str | None = None, stopped_early: bool = False) -> dict:
    trials = study.get_trials(deepcopy=False)
    states = rec.state_counts(trials)
    best = rec.best_summary(study)
    summary = {
        "study": study.study_name, "storage": st.display_url(opts.storage), "target": opts.trials, "ran": ran, "states": states,
        "stopped": rec.stopped_count(trials),
        "chains": rec.chain_counts(trials),
        "best": best and {k: best[k] for k in ("trial", rec.VAL_DICE_FG, "params")},
        "stopped_early": stopped_early,
    }
    if note:
        summary["note"] = note
    summary["finished"] = states["complete"] + states["pruned"]
    summary["complete_target"] = summary["finished"] >= opts.trials
    return summary
