"""Signs of life inside an epoch: step counts reach the progress bar while a long epoch runs."""

from __future__ import annotations

import optuna
import pytest
import torch

import sweep.training.objective
from data import make_phantom
from model import SegNetConfig
from sweep.search.config import TrainConfig
from sweep.training.objective import Objective
from sweep.search.presets import preset
from sweep.core.progress import progress_text
from sweep.core.records import ProgressKey, TrialKey
from sweep.nn.runtime import DeviceSplit
from sweep.training.train import fit_folds

CPU = torch.device("cpu")
TINY = SegNetConfig(depth=2, base_width=4, convs_per_stage=(1, 1))


@pytest.fixture(scope="module")
def folds():
    images, masks = make_phantom(12, seed=3, size=32)
    split = lambda idx: DeviceSplit.from_arrays(images[idx], masks[idx], CPU)  # noqa: E731
    return [(split(list(range(0, 8))), split(list(range(8, 12)))), (split(list(range(4, 12))), split(list(range(0, 4))))]


def test_every_step_is_counted_across_folds_as_plain_integers(folds):
    steps = []
    fit_folds(TINY, TrainConfig(epochs=2, batch_size=3), folds, bf16=False, keep_state=False,
              on_step=lambda done, total: steps.append((done, total)))
    per_epoch = 2 * 3  # two folds of 8 slices in batches of 3
    assert steps == [(n, per_epoch) for n in range(1, per_epoch + 1)] * 2
    assert all(type(done) is int and type(total) is int for done, total in steps)


def test_the_step_count_does_not_change_what_is_trained(folds):
    cfg = TrainConfig(epochs=2, batch_size=3)
    quiet = fit_folds(TINY, cfg, folds[:1], bf16=False)
    watched = fit_folds(TINY, cfg, folds[:1], bf16=False, on_step=lambda done, total: None)
    assert quiet.history == watched.history


def test_the_bar_shows_the_running_epochs_steps_and_time():
    text = progress_text(3, {ProgressKey.EPOCH: 0, ProgressKey.EPOCHS: 50, ProgressKey.LAST: None,
                             ProgressKey.BEST: None, ProgressKey.SECONDS: 65.0, ProgressKey.STEP: 37, ProgressKey.STEPS: 120})
    assert text == "#3 epoch 0/50 (step 37/120, 1m 05s) last - best -"
    assert progress_text(3, {ProgressKey.EPOCH: 1, ProgressKey.EPOCHS: 50, ProgressKey.LAST: 0.5, ProgressKey.BEST: 0.5,
                             ProgressKey.SECONDS: 10.0}).startswith("#3 epoch 1/50 last 0.5000 best 0.5000")


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_trial_shows_steps_between_its_epochs(folds, monkeypatch):
    monkeypatch.setattr(sweep.training.objective, "STEP_PROGRESS_SECONDS", 0.0)
    shown = []
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(preset("small", batch_size=4))
    study.optimize(Objective(folds[:1], 1, bf16=False, on_progress=lambda n, p: shown.append(dict(p))), n_trials=1)
    inside = [p for p in shown if ProgressKey.STEP in p]
    assert [p[ProgressKey.STEP] for p in inside] == [1, 2]  # 8 slices in batches of 4
    assert all(p[ProgressKey.EPOCH] == 0 and p[ProgressKey.STEPS] == 2 for p in inside)
    assert ProgressKey.STEP not in study.trials[0].user_attrs[TrialKey.PROGRESS]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_worker_process_stores_the_steps_for_the_bar_that_polls(folds, monkeypatch):
    monkeypatch.setattr(sweep.training.objective, "STORED_STEP_SECONDS", 0.0)
    stored = []
    real = optuna.Trial.set_user_attr

    def set_user_attr(self, key, value):
        if key == TrialKey.PROGRESS:
            stored.append(dict(value))
        real(self, key, value)

    monkeypatch.setattr(optuna.Trial, "set_user_attr", set_user_attr)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(preset("small", batch_size=4))
    study.optimize(Objective(folds[:1], 1, bf16=False), n_trials=1)  # no on_progress: as in a worker process
    assert [p[ProgressKey.STEP] for p in stored if ProgressKey.STEP in p] == [1, 2]
    assert ProgressKey.STEP not in study.trials[0].user_attrs[TrialKey.PROGRESS]  # the epoch's end replaced them


def test_the_time_left_is_the_projection_bounded_by_the_timeout():
    from sweep.core.progress import time_left

    # 29 of 100 trials in 38 minutes: tqdm's projection alone says 1:33:02 ...
    assert time_left(29, 100, 38 * 60, None) == "1:33:02"
    # ... but the run ends at its --timeout, 2 minutes away
    assert time_left(29, 100, 38 * 60, None, until_deadline=120) == "02:00"
    assert time_left(99, 100, 60, 1.0, until_deadline=3600) == "00:01"  # the projection where it comes first
    assert time_left(29, 100, 2400, None, until_deadline=-5) == "00:00"  # past the deadline: the last trial ends
    assert time_left(0, 100, 0, None) == "?" and time_left(0, 100, 0, None, until_deadline=60) == "01:00"


def test_the_bar_shows_the_time_left_until_the_deadline(capsys):
    import time

    from sweep.core.progress import Progress

    study = optuna.create_study(direction="maximize")
    progress = Progress(study, 100, True, deadline=time.time() + 90)
    progress.bar.refresh()
    progress.close()
    err = capsys.readouterr().err
    assert "<01:29" in err or "<01:30" in err


def test_a_trial_that_failed_after_training_shows_the_epochs_it_reported_and_its_time():
    import datetime

    from sweep.core.progress import Progress

    study = optuna.create_study(direction="maximize")
    start = datetime.datetime(2026, 1, 1, 12, 0, 0)
    failed = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, intermediate_values={1: 0.5, 2: 0.6, 3: 0.62},
                                       user_attrs={TrialKey.FAIL_REASON: "OSError: disk full"})
    failed.datetime_start, failed.datetime_complete = start, start + datetime.timedelta(seconds=42.5)
    progress = Progress(study, 10, False)
    line = progress.line(study, failed)
    progress.close()
    assert "  3 epochs" in line and "42.5 s" in line and "disk full" in line
