"""An interrupted trial and its retries are one trial: in `run`, `status`, `export`, the report and the bar."""

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from sweep.views.export import export_csv
from sweep.core.progress import Progress
from sweep.core.records import INTERRUPTED, TrialKey, chain_counts, states_line
from sweep.views.report import write_report
from sweep.training.resume import enqueue_retry
from sweep.views.status import format_status, study_status

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def interrupt(trial: optuna.Trial, epochs: int) -> None:
    """What the objective does on Ctrl-C: queue the retry, then record why the trial stopped."""
    for epoch in range(1, epochs + 1):
        trial.report(0.1 * epoch, epoch)
    trial.set_user_attr(TrialKey.PROGRESS, {"epoch": epochs, "epochs": 4, "last": 0.1, "best": 0.1, "seconds": 1.0})
    assert enqueue_retry(trial)
    trial.set_user_attr(TrialKey.FAIL_REASON, INTERRUPTED)
    trial.study.tell(trial, state=TrialState.FAIL)


@pytest.fixture
def twice_interrupted(tmp_path):
    """A new user's study: a finished trial, then one interrupted, resumed, and interrupted again."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name="segnet", storage=url, direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}))
    first = study.ask()
    interrupt(first, 2)
    retry = study.ask()  # takes the queued retry
    assert retry.number == first.number + 1
    retry.set_user_attr(TrialKey.RESUMED_AT, 2)
    interrupt(retry, 3)
    return url, study


def test_a_twice_interrupted_trial_counts_once(twice_interrupted, tmp_path):
    url, study = twice_interrupted
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL, TrialState.WAITING]
    assert chain_counts(study.trials) == {"stopped": 1, "failed": 0, "interruptions": 2}

    status = study_status(url, "segnet")
    assert status["stopped"] == 1
    assert ("(1 complete, 0 pruned, 0 failed, 1 stopped and queued to resume, 0 running, 2 interruptions retried)"
            in format_status(status))

    rows = export_csv(url, "segnet", tmp_path / "trials.csv")
    frame = pd.read_csv(tmp_path / "trials.csv")
    assert rows == 4 and list(frame.columns[:4]) == ["number", "trial", "attempt", "state"]
    assert frame["trial"].tolist() == [0, 1, 1, 1] and frame["attempt"].tolist() == [1, 1, 2, 3]

    page = write_report(url, "segnet", tmp_path / "report.html").read_text()
    assert "2 (1 complete, 0 pruned, 0 failed, 1 stopped and queued to resume, 0 running, 2 interruptions retried)" in page


def test_a_retry_keeps_its_trial_number_on_the_bar_and_in_status(twice_interrupted):
    url, study = twice_interrupted
    running = study.ask()  # the third attempt of trial 1
    running.set_user_attr(TrialKey.RESUMED_AT, 3)
    running.set_user_attr(TrialKey.PROGRESS, {"epoch": 3, "epochs": 4, "last": 0.3, "best": 0.3, "seconds": 3.0})
    bar = Progress(study, target=2, enabled=False)
    bar.show_running(study.get_trials(deepcopy=False))
    assert bar.bar.postfix.startswith("#1 epoch 3/4")
    bar.show_trial(running.number, {"epoch": 4, "epochs": 4, "last": 0.4, "best": 0.4, "seconds": 4.0})
    assert bar.bar.postfix.startswith("#1 epoch 4/4")
    shown = format_status(study_status(url, "segnet")).splitlines()[-1]
    assert shown.startswith("running: trial 1 on") and shown.endswith("(attempt 3, resumed after epoch 3)")
    study.tell(running, 0.4)
    line = bar.line(study, study.trials[running.number])
    assert line.startswith("trial    1 COMPLETE") and line.endswith("[attempt 3, resumed after epoch 3]")
    bar.close()

    status = study_status(url, "segnet")
    assert "(2 complete, 0 pruned, 0 failed, 0 running, 2 interruptions retried)" in format_status(status)


def test_states_line_without_chains_counts_trials():
    states = {"complete": 1, "pruned": 2, "fail": 3, "running": 0}
    assert states_line(states) == "1 complete, 2 pruned, 3 failed"


def test_a_study_at_its_target_still_runs_a_queued_retry(twice_interrupted):
    """Machines reached the target while a killed trial looked RUNNING: its retry runs, then the study stops."""
    from sweep.core.progress import UntilTarget
    from sweep.core.records import waiting_retries

    _, study = twice_interrupted
    assert waiting_retries(study.trials) == 1
    study.optimize(lambda trial: 0.6, n_trials=5, callbacks=[UntilTarget(target=1)])
    assert [t.state for t in study.trials][-1] == TrialState.COMPLETE and len(study.trials) == 4
    assert waiting_retries(study.trials) == 0
