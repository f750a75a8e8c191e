"""An interrupted trial resumes where it stopped, ends as if never interrupted, and leaves no files;
a running trial's progress is visible."""

import re

import optuna
import pytest
import torch
from optuna.trial import TrialState

import sweep.training.objective
import sweep.training.resume
from data import make_phantom
from model import SegNetConfig
from sweep.training.objective import INTERRUPTED, TIMED_OUT, Objective, TimeUp
from sweep.search.presets import preset
from sweep.core.progress import Progress, progress_text, remaining_seconds
from sweep.core.records import ProgressKey, TrialKey
from sweep.training.resume import ResumeFile, resume_folder
from sweep.views.status import format_status, study_status
from sweep.core.study import make_storage
from sweep.training.train import DeviceSplit, TrainConfig, fit_folds

EPOCHS = 4
# Dropout and every augmentation on: a resume must restore torch's global RNG and the training generator too.
PARAMS = preset("small", batch_size=4, dropout=0.2)
CPU = torch.device("cpu")
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


@pytest.fixture(scope="module")
def slices():
    return make_phantom(16, seed=5, size=32)


def folds_of(slices, k: int = 1):
    """k (train, held-out) folds of the 16 slices: 4 held out each (one fold: slices 12-15)."""
    images, masks = slices
    folds = []
    for i in range(k):
        held = list(range(12 - 4 * i, 16 - 4 * i))
        rest = [j for j in range(16) if j not in held]
        folds.append((DeviceSplit.from_arrays(images[rest], masks[rest], CPU), DeviceSplit.from_arrays(images[held], masks[held], CPU)))
    return folds


class Interrupted(BaseException):
    """Stands for Ctrl-C in fit-level tests (a real KeyboardInterrupt would look like the user's)."""


# --- the trainer: a resumed fit is bit-identical ------------------------------------------


@pytest.mark.parametrize("n_folds, stop_at", [(1, 1), (1, 3), (2, 2)])
def test_resumed_fit_ends_exactly_as_an_uninterrupted_one(slices, tmp_path, n_folds, stop_at):
    folds = folds_of(slices, n_folds)
    model_cfg = SegNetConfig(depth=2, base_width=4, convs_per_stage=(1, 1), dropout=0.2)
    train_cfg = TrainConfig(lr=3e-3, batch_size=4, schedule="cosine", dice_weight=0.5, class_weight_power=0.5,
                            aug_rotate=5.0, aug_scale=0.05, aug_gamma=0.1, epochs=5)
    reference = fit_folds(model_cfg, train_cfg, folds, seed=3, bf16=False)

    point_file = ResumeFile(tmp_path, "s", 0, identity={"run": 1})

    def stop(epoch, record):
        if epoch == stop_at:
            raise Interrupted

    with pytest.raises(Interrupted):
        fit_folds(model_cfg, train_cfg, folds, seed=3, bf16=False, on_epoch=stop,
                  on_resume_point=point_file.save, resume_every=0)
    point = point_file.load()  # through the file: what a retry in another process gets
    assert point["epoch"] == stop_at
    resumed_epochs = []
    resumed = fit_folds(model_cfg, train_cfg, folds, seed=3, bf16=False, resume=point,
                        on_epoch=lambda epoch, record: resumed_epochs.append(epoch))

    assert resumed_epochs == list(range(stop_at + 1, 6))
    assert resumed.history == reference.history  # every float of every epoch, not approximately
    assert (resumed.best_epoch, resumed.best_value, resumed.best_scores) == (reference.best_epoch, reference.best_value, reference.best_scores)
    assert resumed.fold_scores == reference.fold_scores
    for mine, theirs in zip(resumed.state_dicts, reference.state_dicts, strict=True):
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_resume_points_are_written_at_most_every_resume_every_seconds(slices):
    model_cfg = SegNetConfig(depth=2, base_width=4, convs_per_stage=(1, 1))
    points = []
    fit_folds(model_cfg, TrainConfig(batch_size=8, epochs=3), folds_of(slices), bf16=False,
              on_resume_point=points.append, resume_every=1e9)
    assert points == []
    fit_folds(model_cfg, TrainConfig(batch_size=8, epochs=3), folds_of(slices), bf16=False,
              on_resume_point=points.append, resume_every=0)
    assert [p["epoch"] for p in points] == [1, 2, 3]
    assert [len(p["history"]) for p in points] == [1, 2, 3]  # copies, not views of the live history


def test_a_point_of_another_configuration_is_not_resumed(tmp_path):
    ResumeFile(tmp_path, "s", 0, identity={"params": {"lr": 0.1}}).save({"epoch": 1})
    assert ResumeFile(tmp_path, "s", 0, identity={"params": {"lr": 0.2}}).load() is None
    assert ResumeFile(tmp_path, "s", 0, identity={"params": {"lr": 0.1}}).load() == {"epoch": 1}
    assert ResumeFile(tmp_path, "other study", 0, identity={"params": {"lr": 0.1}}).load() is None
    assert [p.name for p in tmp_path.iterdir()] == ["s-trial0.pt"]  # atomic write: no temporary file left
    ResumeFile(None, "s", 0).save({"epoch": 1})  # no folder: keeps nothing, fails nothing


# --- the objective in a real study: interrupt, retry, continue ------------------------------


class FitSpy:
    """Wraps fit_folds: records where each fit started and which epochs it ran; can interrupt one."""

    def __init__(self, monkeypatch, interrupt_at: int | None = None, fail_at: int | None = None):
        self.real = sweep.training.objective.fit_folds
        self.interrupt_at, self.fail_at = interrupt_at, fail_at
        self.started_at: list[int] = []  # epochs held by the resume point each fit started from
        self.epochs: list[list[int]] = []  # epochs each fit ran
        self.points_seen = 0  # resume-point files present while a fit ran
        monkeypatch.setattr(sweep.training.objective, "fit_folds", self)

    def __call__(self, model_cfg, train_cfg, folds, *, on_epoch, resume=None, on_resume_point=None, **kw):
        self.started_at.append(resume["epoch"] if resume else 0)
        self.epochs.append([])

        def spied(epoch, record):
            self.epochs[-1].append(epoch)
            self.points_seen += bool(on_resume_point and on_resume_point.__self__.path.exists())
            on_epoch(epoch, record)
            if epoch == self.interrupt_at:
                self.interrupt_at = None
                raise KeyboardInterrupt
            if epoch == self.fail_at:
                raise RuntimeError("disk on fire")

        return self.real(model_cfg, train_cfg, folds, on_epoch=spied, resume=resume, on_resume_point=on_resume_point, **kw)


def open_study(tmp_path, name="segnet", heartbeat=True, **kwargs):
    storage = make_storage(f"sqlite:///{tmp_path / 'studies.db'}", heartbeat=heartbeat)
    kwargs.setdefault("pruner", optuna.pruners.NopPruner())
    return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True, **kwargs)


def objective(slices, tmp_path, **kwargs):
    return Objective(folds_of(slices), EPOCHS, seed=0, resume_dir=resume_folder(tmp_path / "artifacts"),
                     resume_every=0, bf16=False, **kwargs)


def resume_files(tmp_path):
    """The chains with points in the folder (a point's name is its chain's plus a unique suffix)."""
    folder = resume_folder(tmp_path / "artifacts")
    return sorted(re.sub(r"-[0-9a-f]{12}\.pt$", ".pt", p.name) for p in folder.iterdir()) if folder.exists() else []


def test_interrupted_trial_is_retried_with_its_params_and_continues_where_it_stopped(slices, tmp_path, monkeypatch):
    # Sampled (not enqueued): the retry must reuse the params the sampler drew.
    sampler = optuna.samplers.PartialFixedSampler(PARAMS, optuna.samplers.RandomSampler(seed=0))
    study = open_study(tmp_path, sampler=sampler)
    spy = FitSpy(monkeypatch, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective(slices, tmp_path), n_trials=1)

    interrupted, retry = study.trials
    assert interrupted.state == TrialState.FAIL and interrupted.user_attrs[TrialKey.FAIL_REASON] == INTERRUPTED
    assert retry.state == TrialState.WAITING and retry.params == interrupted.params
    assert retry.system_attrs["failed_trial"] == 0 and retry.system_attrs["retry_history"] == [0]
    assert TrialKey.FAIL_REASON not in retry.user_attrs
    assert resume_files(tmp_path) == ["segnet-trial0.pt"]

    study.optimize(objective(slices, tmp_path), n_trials=1)
    resumed = study.trials[1]
    assert resumed.state == TrialState.COMPLETE
    assert spy.started_at == [0, 2] and spy.epochs[1] == [3, 4]  # fewer epochs than the budget
    assert resumed.user_attrs[TrialKey.RESUMED_AT] == 2
    assert resumed.user_attrs[TrialKey.EPOCHS_RUN] == EPOCHS
    assert sorted(resumed.intermediate_values) == [1, 2, 3, 4]  # the replayed epochs too
    assert resume_files(tmp_path) == []

    # Exactly what the same trial would have done without the interruption (same root trial: same seed).
    reference = open_study(tmp_path, name="reference", sampler=sampler)
    reference.optimize(objective(slices, tmp_path), n_trials=1)
    assert resumed.intermediate_values == reference.trials[0].intermediate_values
    assert resumed.value == reference.trials[0].value
    assert resumed.user_attrs[TrialKey.HISTORY] == reference.trials[0].user_attrs[TrialKey.HISTORY]


def test_interrupted_enqueued_configuration_runs_again(slices, tmp_path, monkeypatch):
    """A reported bug: an interrupted --enqueue baseline failed, and the rerun's enqueue skipped it as existing."""
    study = open_study(tmp_path)
    study.enqueue_trial(PARAMS)
    spy = FitSpy(monkeypatch, interrupt_at=1)
    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective(slices, tmp_path), n_trials=1)

    study.enqueue_trial(PARAMS, skip_if_exists=True)  # what `run` does on the rerun: the retry stands for it
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]
    study.optimize(objective(slices, tmp_path), n_trials=1)
    baseline = study.trials[1]
    assert baseline.state == TrialState.COMPLETE and baseline.params == PARAMS
    assert baseline.system_attrs["fixed_params"] == PARAMS
    assert spy.started_at == [0, 1] and spy.epochs[1] == [2, 3, 4]
    assert len(study.trials) == 2 and resume_files(tmp_path) == []


def test_trial_past_its_retries_is_not_queued_again_and_keeps_no_point(slices, tmp_path, monkeypatch):
    study = open_study(tmp_path)
    study.add_trial(optuna.create_trial(state=TrialState.WAITING, system_attrs={
        "fixed_params": PARAMS, "failed_trial": 0, "retry_history": [0, 1, 2]}))  # the third retry of trial 0
    FitSpy(monkeypatch, interrupt_at=1)
    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective(slices, tmp_path), n_trials=1)
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    assert resume_files(tmp_path) == []


@pytest.mark.parametrize("ending", ["complete", "pruned", "failed"])
def test_finished_trials_leave_no_resume_point(slices, tmp_path, monkeypatch, ending):
    class AlwaysPrune(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return max(trial.intermediate_values, default=0) >= 2

    study = open_study(tmp_path, pruner=AlwaysPrune() if ending == "pruned" else optuna.pruners.NopPruner())
    study.enqueue_trial(PARAMS)
    spy = FitSpy(monkeypatch, fail_at=3 if ending == "failed" else None)
    study.optimize(objective(slices, tmp_path), n_trials=1, catch=(RuntimeError,))
    trial, = study.trials
    assert trial.state.name.lower() == {"complete": "complete", "pruned": "pruned", "failed": "fail"}[ending]
    assert spy.points_seen > 0  # a point was kept while it ran ...
    assert resume_files(tmp_path) == []  # ... and removed when it ended


# --- progress: the trial attribute, the bar, status ---------------------------------------


def test_every_epoch_records_progress_and_calls_the_hook(slices, tmp_path):
    study = open_study(tmp_path)
    study.enqueue_trial(PARAMS)
    shown = []
    study.optimize(objective(slices, tmp_path, on_progress=lambda number, p: shown.append((number, p))), n_trials=1)
    assert [p[ProgressKey.EPOCH] for _, p in shown] == [0, 1, 2, 3, 4]
    assert {number for number, _ in shown} == {0}
    last = shown[-1][1]
    values = study.trials[0].intermediate_values
    assert last[ProgressKey.EPOCHS] == EPOCHS and last[ProgressKey.LAST] == round(values[EPOCHS], 5)
    assert last[ProgressKey.BEST] == round(max(values.values()), 5)
    assert study.trials[0].user_attrs[TrialKey.PROGRESS] == last


def test_progress_text_estimates_the_time_left():
    progress = {"epoch": 5, "epochs": 50, "last": 0.81234, "best": 0.83456, "seconds": 50.0}
    assert remaining_seconds(progress) == 450.0
    assert progress_text(12, progress) == "#12 epoch 5/50 last 0.8123 best 0.8346 ~7m 30s left"
    assert progress_text(3, {"epoch": 0, "epochs": 50, "last": None, "best": None, "seconds": 0.0}) == "#3 epoch 0/50 last - best -"


def test_the_bar_shows_running_trials(tmp_path):
    study = open_study(tmp_path, heartbeat=False)  # a trial made by hand, not by optimize
    trial = study.ask()
    trial.set_user_attr(TrialKey.PROGRESS, {"epoch": 2, "epochs": 4, "last": 0.5, "best": 0.6, "seconds": 2.0})
    bar = Progress(study, target=3, enabled=False)
    bar.show_running(study.get_trials(deepcopy=False))
    assert bar.bar.postfix == f"#{trial.number} epoch 2/4 last 0.5000 best 0.6000 ~2s left"
    bar.show_trial(7, {"epoch": 1, "epochs": 4, "last": 0.4, "best": 0.4, "seconds": 1.0})
    assert bar.bar.postfix.startswith("#7 epoch 1/4")
    bar.close()


def test_status_shows_a_running_trials_progress(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = open_study(tmp_path, heartbeat=False)  # a trial made by hand, not by optimize
    trial = study.ask()
    trial.set_user_attr(TrialKey.WORKER, "gpu-box:4242")
    trial.set_user_attr(TrialKey.PROGRESS, {"epoch": 5, "epochs": 20, "last": 0.8123, "best": 0.8456, "seconds": 10.0})
    status = study_status(url, "segnet")
    running, = status["running"]
    assert running["trial"] == trial.number and running["age_s"] >= 0
    assert (running["epoch"], running["epochs"]) == (5, 20)
    assert (running["last_val_dice_fg"], running["best_val_dice_fg"]) == (0.8123, 0.8456)
    assert running["remaining_s"] == 30.0
    line = format_status(status).splitlines()[-1]
    assert line.startswith(f"running: trial {trial.number} on gpu-box:4242 for 0m")
    assert "epoch 5/20, dice_fg last 0.8123 best 0.8456, ~30s left" in line


def test_points_of_chains_that_nothing_continues_are_pruned(tmp_path):
    """A worker killed after its retries were used up leaves a point no trial will take."""
    study = open_study(tmp_path, heartbeat=False)
    folder = resume_folder(tmp_path / "artifacts")
    done, running = study.ask(), study.ask()
    study.tell(done, state=TrialState.FAIL)  # its chain ended: no retry queued
    retried = study.ask()
    study.tell(retried, state=TrialState.FAIL)
    study.enqueue_trial({}, user_attrs={})  # stand-in for the heartbeat's retry of `retried`:
    waiting = study.get_trials(states=(TrialState.WAITING,))[0]
    study._storage.set_trial_system_attr(waiting._trial_id, "failed_trial", retried.number)
    for root in (done.number, running.number, retried.number):
        ResumeFile(folder, "segnet", root).save({"epoch": 3})
    half = folder / f"segnet-trial{done.number}.pt.4242.tmp"  # a writer killed mid-write
    half.write_bytes(b"partial")
    ResumeFile(folder, "other", done.number).save({"epoch": 1})  # another study's chain
    removed = sweep.training.resume.prune_orphans(folder, study)
    assert sorted(removed) == sorted([f"segnet-trial{done.number}.pt", half.name])
    assert resume_files(tmp_path) == sorted([f"other-trial{done.number}.pt", f"segnet-trial{running.number}.pt",
                                             f"segnet-trial{retried.number}.pt"])
    assert sweep.training.resume.prune_orphans(None, study) == []


# --- --timeout: a running trial stops at the deadline and resumes on the next run ---------------


def test_a_trial_running_at_the_deadline_stops_at_its_epoch_end_and_resumes(slices, tmp_path, monkeypatch):
    checks = []
    monkeypatch.setattr(sweep.training.objective, "past", lambda deadline: checks.append(deadline) or len(checks) >= 2)
    study = open_study(tmp_path)
    study.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}))  # the deadline binds once one is complete
    study.enqueue_trial(PARAMS)
    spy = FitSpy(monkeypatch)
    with pytest.raises(TimeUp):
        study.optimize(objective(slices, tmp_path, deadline=123.0), n_trials=1)
    _, stopped, retry = study.trials
    assert checks == [123.0, 123.0] and spy.epochs == [[1, 2]]  # checked after every epoch; stopped after the 2nd
    assert stopped.state == TrialState.FAIL and stopped.user_attrs[TrialKey.FAIL_REASON] == TIMED_OUT
    assert retry.state == TrialState.WAITING and retry.params == stopped.params

    study.optimize(objective(slices, tmp_path), n_trials=1)  # the next run, no deadline
    assert study.trials[2].state == TrialState.COMPLETE and spy.started_at == [0, 2]


def test_the_first_trial_of_a_study_finishes_past_the_deadline(slices, tmp_path, monkeypatch):
    """Until one trial is complete, the deadline does not stop a trial: a run on a slow machine still
    leaves a trial that `best --evaluate` can ship."""
    monkeypatch.setattr(sweep.training.objective, "past", lambda deadline: True)
    study = open_study(tmp_path)
    study.enqueue_trial(PARAMS)
    study.optimize(objective(slices, tmp_path, deadline=123.0), n_trials=1)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]


@pytest.mark.slow
def test_run_with_timeout_ends_normally_and_says_what_resumes(in_tmp, capsys, monkeypatch):
    import json

    from sweep.cli import main

    real_past = sweep.training.objective.past
    args = ["run", "--trials", "2", "--epochs", "3", "--enqueue", "small", "--quiet", "--json"]
    assert main(["run", "--trials", "1", "--epochs", "3", "--quiet"]) == 0  # the deadline binds once one is complete
    capsys.readouterr()
    monkeypatch.setattr(sweep.training.objective, "past", lambda deadline: True)  # the deadline passes in the first epoch
    assert main([*args, "--timeout", "3600"]) == 0  # not the exit code of an interruption
    summary = json.loads(capsys.readouterr().out)
    assert "--timeout 3600 s reached; 1 stopped trial(s) resume on the next run" in summary["note"]
    assert summary["finished"] == 1 and summary["states"]["fail"] == 1 and summary["stopped"] == 1

    monkeypatch.setattr(sweep.training.objective, "past", real_past)
    assert main(args) == 0
    study = optuna.load_study(study_name="segnet", storage="sqlite:///studies.db")
    resumed = study.trials[2]
    assert resumed.state == TrialState.COMPLETE and resumed.params == study.trials[1].params
    assert resumed.user_attrs[TrialKey.RESUMED_AT] in (0, 1)  # from the first epoch's point, if one was written
    assert json.loads(capsys.readouterr().out)["finished"] == 2


def test_stopped_trials_are_counted_apart_from_failed_ones(tmp_path):
    """A trial stopped by --timeout or Ctrl-C ends FAIL and is queued again: the summary lines
    count it as stopped, not as a failure; a broken trial still counts as failed."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name="segnet", storage=url, direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.8, params={}, distributions={}))
    for reason in (TIMED_OUT, INTERRUPTED, "RuntimeError: out of memory"):
        trial = study.ask()
        trial.set_user_attr(TrialKey.FAIL_REASON, reason)
        study.tell(trial, state=TrialState.FAIL)
    status = study_status(url, "segnet")
    assert status["states"]["fail"] == 3 and status["stopped"] == 2
    assert "(1 complete, 0 pruned, 1 failed, 2 stopped and queued to resume, 0 running)" in format_status(status)
