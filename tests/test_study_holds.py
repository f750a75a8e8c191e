"""The study holds what ran: a rerun cannot change a trial's length, each run draws its own
start-up configurations, the report's commands reproduce what was run, and `best` says whether
the search paid over the default it measured."""

from __future__ import annotations

import json
import shutil

import optuna
import pytest

from sweep.cli import main
from sweep.search.presets import preset


@pytest.fixture
def study_copy(one_trial_study, tmp_path, monkeypatch):
    """A private copy of the one-trial study (made with --epochs 1), the working folder."""
    for path in one_trial_study.glob("studies.db*"):
        shutil.copy(path, tmp_path / path.name)
    shutil.copytree(one_trial_study / "artifacts", tmp_path / "artifacts")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _study() -> optuna.Study:
    return optuna.load_study(study_name="segnet", storage="sqlite:///studies.db")


# Item 7: --epochs is the study's, like --patch.

def test_a_rerun_with_another_epoch_budget_is_refused_naming_the_studys(study_copy, capsys):
    before = _study().user_attrs
    assert main(["run", "--trials", "2", "--epochs", "5", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: --epochs 5: study 'segnet' was made with --epochs 1; leave it out, give the same, "
                   "or use another --study")
    study = _study()
    assert len(study.trials) == 1 and study.user_attrs == before  # nothing ran, nothing recorded


def test_a_rerun_without_epochs_runs_the_studys_budget(study_copy, capsys):
    study = _study()
    study.enqueue_trial(preset("small", lr=2e-3))  # the next trial: small, whatever the sampler would draw
    assert main(["run", "--trials", "2", "--quiet"]) == 0
    study = _study()
    assert [t.user_attrs.get("epoch_budget") for t in study.trials] == [1, 1]
    assert study.user_attrs["epochs"] == 1
    assert "--epochs 1" in study.user_attrs["command"]


# Item 10: each run process draws its own start-up configurations, unless --seed is given.

def _sampler_seeds(monkeypatch, argv: list[str], runs: int = 2) -> list[int]:
    """The sampler seed each of ``runs`` identical ``run`` commands gets (each stops right there)."""
    from sweep.training import workers

    seeds = []

    def spy(name, seed):
        seeds.append(seed)
        raise KeyboardInterrupt  # nothing trains: the study stays as it was for the next run

    monkeypatch.setattr(workers, "make_sampler", spy)
    for _ in range(runs):
        assert main(argv) == 130
    return seeds


def test_two_runs_on_one_study_draw_different_start_up_configurations(study_copy, monkeypatch):
    first, second = _sampler_seeds(monkeypatch, ["run", "--trials", "3", "--quiet"])
    assert first != second  # before: both 0 + 7919 * trials, the same draws on every machine


def test_with_a_seed_the_draws_are_reproducible(study_copy, monkeypatch):
    first, second = _sampler_seeds(monkeypatch, ["run", "--trials", "3", "--quiet", "--seed", "7"])
    assert first == second == 7 + 7919 * 1


# Item 8: the reproduce line carries every flag that changed the result.

def test_the_evaluate_command_gives_back_every_option_that_changed_the_result():
    import shlex
    from dataclasses import fields, replace

    from sweep.cli import build_parser
    from sweep.core import flags
    from sweep.core.best import BestOptions, evaluate_command

    changed = BestOptions(evaluate=True, seeds=1, data="/d", out="acdc-best", top=3, refit=False, holdout=0.1,
                          epochs=100, device="cpu", storage="sqlite:///x.db", study="acdc")
    for f in fields(BestOptions):  # every result-changing flag is set to something not its default above
        if f.metadata.get("resume", True) and "help" in f.metadata:
            assert getattr(changed, f.name) != f.default, f.name
    line = evaluate_command(changed)
    assert line.startswith("python -m sweep best --evaluate")
    parsed = flags.from_args(BestOptions, build_parser().parse_args(shlex.split(line)[3:]))
    assert parsed == changed  # before: --epochs, --no-refit, --top and --holdout were dropped
    assert "--no-refit" in line and "--epochs 100" in line
    hidden = evaluate_command(replace(changed, storage="postgresql://u:secret@db/x"))
    assert "secret" not in hidden and "postgresql://u:***@db/x" in hidden


def test_the_report_reproduces_the_recorded_evaluation_command(study_copy):
    from sweep.core.records import Evaluation, StudyKey
    from sweep.views.report import reproduce

    study = _study()
    command = "python -m sweep best --evaluate --seeds 1 --out acdc-best --no-refit --epochs 100"
    study.set_user_attr(StudyKey.EVALUATION, Evaluation(trial=0, seeds=[0], out="acdc-best", command=command).to_dict())
    assert command in reproduce(_study(), "sqlite:///studies.db")
