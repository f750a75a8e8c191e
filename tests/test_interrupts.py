"""Two Ctrl-C's in a row are one interruption: the trial is stopped and queued to resume, and no traceback."""

import json
import signal
import time

import optuna
import pytest

from sweep.core import interrupts
from tests.test_reliability import SMALL_PARAMS, start, wait_for_running_epoch


def test_the_first_signal_raises_and_those_right_behind_it_are_absorbed(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(interrupts.time, "monotonic", lambda: clock[0])
    previous = interrupts.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            interrupts.on_signal(signal.SIGINT, None)
        clock[0] += 0.01
        interrupts.on_signal(signal.SIGINT, None)  # absorbed
        interrupts.on_signal(signal.SIGTERM, None)  # absorbed
        clock[0] += interrupts.ABSORB_SECONDS + 1  # a user who insists, later, still stops it
        with pytest.raises(KeyboardInterrupt):
            interrupts.on_signal(signal.SIGINT, None)
    finally:
        interrupts.restore(previous)
    assert not interrupts.interrupted()


def test_a_held_section_absorbs_even_the_first_signal():
    previous = interrupts.install()
    try:
        with interrupts.held():
            interrupts.on_signal(signal.SIGTERM, None)
        assert interrupts.interrupted()
    finally:
        interrupts.restore(previous)


@pytest.mark.slow
@pytest.mark.parametrize("gap", [0.01, 0.15])
def test_two_sigints_stop_the_trial_as_one_and_queue_its_retry(tmp_path, gap):
    """Before: 10 ms apart the trial ended FAIL with no reason and no retry (3 tries of 3); 150 ms
    apart a KeyboardInterrupt traceback, or the process killed by the signal."""
    args = ["run", "--trials", "2", "--epochs", "40", "--enqueue", json.dumps(SMALL_PARAMS)]
    proc = start(tmp_path, *args, env={"OMP_NUM_THREADS": "1"})
    wait_for_running_epoch(tmp_path / "studies.db", proc=proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(gap)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert "Resume with" in err
    study = optuna.load_study(study_name="segnet", storage=f"sqlite:///{tmp_path / 'studies.db'}")
    first, *rest = study.trials
    assert first.state == optuna.trial.TrialState.FAIL
    assert first.user_attrs.get("fail_reason", "").startswith("interrupted")
    assert [t.state for t in rest] == [optuna.trial.TrialState.WAITING]
    assert rest[0].system_attrs.get("failed_trial") == first.number and rest[0].params == first.params
