"""The cap per trial: a trial projected, early on, to run past it is pruned, and says why."""

import optuna
import pytest
import torch
from optuna.trial import TrialState

from data import make_phantom
from sweep.core.errors import UsageError
from sweep.training.objective import Objective, StepClock, over_time_cap
from sweep.search.options import RunOptions
from sweep.search.presets import preset
from sweep.core.records import TrialKey
from sweep.core.study import make_storage
from sweep.training.train import DeviceSplit

CPU = torch.device("cpu")
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


# --- the projection ----------------------------------------------------------------------------


def test_projection_extrapolates_the_steady_epochs_not_the_first():
    # Epochs end at 10 s (start-up included), 12 s and 14 s: 2 s per epoch after the first.
    ends = [10.0, 12.0, 14.0]
    assert over_time_cap(ends, 14.0, epoch=3, epochs=50, cap=100.0) == pytest.approx(14.0 + 2.0 * 47)
    assert over_time_cap(ends, 14.0, epoch=3, epochs=50, cap=200.0) is None  # 108 s fits
    assert over_time_cap(ends, 14.0, epoch=3, epochs=50, cap=None) is None


def test_projection_waits_for_a_steady_epoch_and_stops_after_the_first_fifth():
    assert over_time_cap([10.0], 10.0, epoch=1, epochs=50, cap=1.0) is None  # only the start-up epoch so far
    assert over_time_cap([10.0, 12.0], 12.0, epoch=10, epochs=50, cap=1.0) is not None  # the last epoch of the fifth
    assert over_time_cap([10.0, 12.0], 12.0, epoch=11, epochs=50, cap=1.0) is None  # past it: the trial runs on
    assert over_time_cap([10.0, 12.0], 12.0, epoch=2, epochs=4, cap=1.0) is not None  # short budgets: epoch 2
    assert over_time_cap([10.0, 12.0], 12.0, epoch=2, epochs=2, cap=1.0) is None  # the last epoch finishes


def test_a_resumed_trial_counts_its_earlier_seconds():
    # Resumed at epoch 5 with 300 s behind it: two epochs here at 3 s each.
    assert over_time_cap([1.0, 4.0], 306.0, epoch=7, epochs=50, cap=400.0) == pytest.approx(306.0 + 3.0 * 43)


def test_the_step_clock_projects_from_timed_steps_after_the_warm_ones():
    clock = StepClock(cap=100.0, epochs=20)
    assert clock.remaining(1, 50, now=0.0) is None  # warming up
    assert clock.remaining(2, 50, now=3.0) is None  # the timing starts here
    assert clock.remaining(4, 50, now=5.0) is None  # 2 s of steps: too few to trust
    # 10 steps in 10 s after the warm ones: 1 s a step, 20 epochs of 50 steps less the 12 done
    assert clock.remaining(12, 50, now=13.0) == pytest.approx(1000 - 12)
    assert StepClock(cap=None, epochs=20).remaining(12, 50, now=13.0) is None


# --- in a study ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folds():
    images, masks = make_phantom(12, seed=5, size=32)
    return [(DeviceSplit.from_arrays(images[:8], masks[:8], CPU), DeviceSplit.from_arrays(images[8:], masks[8:], CPU))]


def run_one(folds, tmp_path, cap, first: bool = False):
    """The trial an Objective with ``cap`` runs; ``first``: the study's first, else one is complete already."""
    storage = make_storage(f"sqlite:///{tmp_path / 'studies.db'}")
    study = optuna.create_study(storage=storage, direction="maximize", pruner=optuna.pruners.NopPruner())
    if not first:
        study.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}))
    study.enqueue_trial(preset("small", batch_size=4))
    study.optimize(Objective(folds, 5, seed=0, bf16=False, max_trial_seconds=cap), n_trials=1)
    return study.trials[-1]


def test_a_trial_over_the_cap_is_pruned_at_its_second_epoch_with_the_reason(folds, tmp_path):
    trial = run_one(folds, tmp_path, cap=1e-6)
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs[TrialKey.PRUNED_AT] == 2 and sorted(trial.intermediate_values) == [1, 2]
    assert "per trial" in trial.user_attrs[TrialKey.PRUNE_REASON]
    assert trial.user_attrs[TrialKey.EPOCHS_RUN] == 2  # what it ran is recorded, as for any pruned trial


def test_a_trial_far_over_the_cap_is_pruned_inside_its_first_epoch(tmp_path, monkeypatch):
    monkeypatch.setattr(StepClock, "MIN_SECONDS", 0.0)  # project from the first timed steps, whatever the machine's speed
    images, masks = make_phantom(30, seed=5, size=32)
    folds = [(DeviceSplit.from_arrays(images[:24], masks[:24], CPU), DeviceSplit.from_arrays(images[24:], masks[24:], CPU))]
    trial = run_one(folds, tmp_path, cap=1e-6)  # batch 4: 6 steps an epoch
    assert trial.state == TrialState.PRUNED and trial.intermediate_values == {}
    assert trial.user_attrs[TrialKey.PRUNED_AT] == 0 and trial.user_attrs[TrialKey.EPOCHS_RUN] == 0
    assert "from its first 3 steps, over the cap" in trial.user_attrs[TrialKey.PRUNE_REASON]


def test_the_first_trial_of_a_study_runs_its_whole_budget_whatever_the_cap(folds, tmp_path, monkeypatch):
    """A slow or busy machine still ends a run with a complete trial for `best --evaluate` to ship."""
    monkeypatch.setattr(StepClock, "MIN_SECONDS", 0.0)
    trial = run_one(folds, tmp_path, cap=1e-6, first=True)
    assert trial.state == TrialState.COMPLETE and len(trial.intermediate_values) == 5


def test_a_trial_within_the_cap_runs_its_whole_budget(folds, tmp_path):
    trial = run_one(folds, tmp_path, cap=1e9)
    assert trial.state == TrialState.COMPLETE and len(trial.intermediate_values) == 5
    assert TrialKey.PRUNE_REASON not in trial.user_attrs


# --- the option -----------------------------------------------------------------------------


def test_the_cap_defaults_to_a_tenth_of_the_timeout_and_to_none_without_one():
    assert RunOptions(timeout=5400).trial_cap() == pytest.approx(540)
    assert RunOptions().trial_cap() is None
    assert RunOptions(timeout=5400, max_trial_seconds=60).trial_cap() == 60
    assert RunOptions(max_trial_seconds=60).trial_cap() == 60
    assert RunOptions(timeout=5400, max_trial_seconds=0).trial_cap() is None  # 0 turns it off


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_a_bad_cap_is_a_usage_error(value):
    with pytest.raises(UsageError, match="--max-trial-seconds"):
        RunOptions(max_trial_seconds=value).check()


@pytest.mark.slow
def test_run_passes_the_cap_to_its_trials_and_shows_why_one_was_pruned(in_tmp, capsys):
    import json

    from sweep.cli import main

    args = ["run", "--trials", "2", "--epochs", "3", "--enqueue", "small", "--json", "--max-trial-seconds", "0.000001"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    # The first trial runs whatever the cap (the run must leave something to ship); the second meets it.
    assert json.loads(out)["states"]["complete"] == 1 and json.loads(out)["states"]["pruned"] == 1
    assert "over the cap of 0 s per trial" in err  # the trial's line says why it stopped
    first, second = optuna.load_study(study_name="segnet", storage="sqlite:///studies.db").trials
    assert first.state == TrialState.COMPLETE
    assert second.state == TrialState.PRUNED and second.user_attrs[TrialKey.PRUNED_AT] in (0, 2)
