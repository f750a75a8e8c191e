"""The study holds what ran: a rerun cannot change a trial's length, each run draws its own
start-up configurations, the report's commands reproduce what was run, and `best` says whether
the search paid over the default it measured."""

from __future__ import annotations

import json

import optuna

from sweep.cli import main
from sweep.search.presets import preset


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
    assert "secret" not in hidden and '--storage "$SEGNET_STORAGE"' in hidden  # runs as printed once exported


def test_the_report_reproduces_the_recorded_evaluation_command(study_copy):
    from sweep.core.records import Evaluation, StudyKey
    from sweep.views.report import reproduce

    study = _study()
    command = "python -m sweep best --evaluate --seeds 1 --out acdc-best --no-refit --epochs 100"
    study.set_user_attr(StudyKey.EVALUATION, Evaluation(trial=0, seeds=[0], out="acdc-best", command=command).to_dict())
    assert command in reproduce(_study(), "sqlite:///studies.db")


# Item 21: the first command enqueues the default, and `best` gives a verdict.

def _queued(monkeypatch, argv: list[str]) -> list[dict]:
    """The params ``run`` queues on a new study before anything trains (it stops right there)."""
    from sweep.training import workers

    def stop(name, seed):
        raise KeyboardInterrupt

    monkeypatch.setattr(workers, "make_sampler", stop)
    assert main(argv) == 130
    return [t.system_attrs.get("fixed_params") for t in _study().trials]


def test_a_new_study_runs_the_default_first(in_tmp, monkeypatch):
    from sweep.search.presets import DEFAULT_PRESET

    assert _queued(monkeypatch, ["run", "--trials", "10", "--epochs", "6", "--quiet"]) == [preset(DEFAULT_PRESET)]
    assert DEFAULT_PRESET == "small"  # cheap on any machine: depth 3, width 8


def test_enqueue_still_names_the_first_trial(in_tmp, monkeypatch):
    mine = preset("small", lr=2e-3)
    assert _queued(monkeypatch, ["run", "--trials", "10", "--quiet", "--enqueue", json.dumps(mine)]) == [mine]


def test_a_resumed_study_gets_no_default_in_the_middle(study_copy, monkeypatch):
    assert _queued(monkeypatch, ["run", "--trials", "3", "--quiet"]) == [preset("small")]  # its own first, nothing added


def _made_study(values: dict[float, float]) -> None:
    """A study in ./studies.db whose trial 0 is the enqueued default x=0.5; ``values``: x -> value of each trial."""
    study = optuna.create_study(study_name="segnet", storage="sqlite:///studies.db", direction="maximize")
    for x in values:
        study.enqueue_trial({"x": x})
    study.optimize(lambda t: values[t.suggest_float("x", 0.0, 1.0)], n_trials=len(values))


def test_best_says_the_search_found_nothing_better_when_the_default_is_best(in_tmp, capsys):
    _made_study({0.5: 0.9, 0.2: 0.4})
    assert main(["best"]) == 0
    out = capsys.readouterr().out
    assert "the search found nothing better than the default (trial 0, val dice_fg 0.9000); the search took" in out
    assert "+0.0000" not in out
    assert main(["best", "--json"]) == 0
    search = json.loads(capsys.readouterr().out)["search"]
    assert search["best_is_default"] is True and search["search_minutes"] >= 0


def test_best_gives_the_gain_and_what_the_search_took(in_tmp, capsys):
    _made_study({0.5: 0.5, 0.9: 0.9})
    assert main(["best"]) == 0
    out = capsys.readouterr().out
    assert "gain +0.4000 val dice_fg over the enqueued default (trial 0, 0.5000 -> 0.9000); the search took 0.0 min" in out


def test_an_evaluated_gain_gives_both_held_out_figures():
    from sweep.core.records import search_line

    search = {"default_trial": 0, "default_val_dice_fg": 0.8, "best_val_dice_fg": 0.83, "gain_val": 0.03,
              "best_is_default": False, "search_minutes": 42.0, "default_estimate_dice_fg": 0.79,
              "best_estimate_dice_fg": 0.82, "gain_estimate": 0.03, "gain_estimate_ci95": [0.01, 0.05]}
    assert search_line(search) == ("gain +0.0300 val dice_fg over the enqueued default (trial 0, 0.8000 -> 0.8300); "
                                   "held-out 0.7900 -> 0.8200, +0.0300 (95% interval +0.0100 to +0.0500); "
                                   "the search took 42.0 min")
