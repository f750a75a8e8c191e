"""docs/FORMATS.md's "search": what the search gained over the enqueued default, on val and held out."""

from __future__ import annotations

import json

import optuna
import pytest
import torch

from data import load_dataset
from sweep.shipping import evaluate
from sweep.core import records as rec
from sweep.cli import main
from sweep.nn.metrics import bootstrap_dice_fg_gain

KEYS = {"default_trial", "default_val_dice_fg", "best_val_dice_fg", "gain_val", "gain_estimate", "gain_estimate_ci95",
        "best_is_default", "search_minutes", "default_estimate_dice_fg", "best_estimate_dice_fg"}


def _study() -> optuna.Study:
    rec.silence_optuna()
    return optuna.create_study(direction="maximize")


def test_the_default_is_the_enqueued_trial_and_the_gain_is_the_best_over_it():
    study = _study()
    study.enqueue_trial({"x": 0.5})
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=4)
    search = rec.search_gain(study)
    assert set(search) == KEYS
    assert search["default_trial"] == 0 and search["default_val_dice_fg"] == 0.5
    assert search["gain_val"] == pytest.approx(study.best_value - 0.5, abs=1e-5)
    assert search["gain_estimate"] is None and search["gain_estimate_ci95"] is None


def test_an_interrupted_default_is_counted_by_its_retry():
    study = _study()
    study.enqueue_trial({"x": 0.25})

    def interrupted(t):
        t.suggest_float("x", 0.0, 1.0)
        raise RuntimeError("killed")

    study.optimize(interrupted, n_trials=1, catch=(RuntimeError,))
    first = study.trials[0]
    study.add_trial(optuna.trial.create_trial(  # as Optuna's retry callback queues it, here already finished
        params=first.params, distributions=first.distributions, value=0.25,
        system_attrs={"failed_trial": 0, "retry_history": [0], **first.system_attrs}))
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=2)
    search = rec.search_gain(study)
    assert search["default_trial"] == 0 and search["default_val_dice_fg"] == 0.25


def test_without_an_enqueued_default_the_gain_is_null_and_says_why():
    study = _study()
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=2)
    search = rec.search_gain(study)
    assert search["default_trial"] is None and search["gain_val"] is None
    assert "--enqueue" in rec.search_line(search)


def test_a_paired_bootstrap_of_a_prediction_against_itself_is_zero():
    better = torch.randint(1, 50, (20, 3, 4))
    better[:, 0] = better[:, 1:].min(1).values  # every intersection as large as it can be
    worse = better.clone()
    worse[:, 0] //= 2
    assert bootstrap_dice_fg_gain(worse, worse) == (0.0, 0.0)
    lo, hi = bootstrap_dice_fg_gain(better, worse)
    assert 0 < lo <= hi


@pytest.fixture
def fits(monkeypatch):
    """How many fits `best --evaluate` runs and on how many train slices."""
    seen = []
    fit_folds = evaluate.fit_folds

    def spy(model_cfg, train_cfg, folds, **kw):
        seen.append(len(folds[0][0].images))
        return fit_folds(model_cfg, train_cfg, folds, **kw)

    monkeypatch.setattr(evaluate, "fit_folds", spy)
    return seen


def _evaluate(capsys, *flags) -> dict:
    capsys.readouterr()
    assert main(["best", "--evaluate", "--seeds", "1", "--quiet", "--json", *flags]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_when_the_default_ships_its_held_out_gain_is_zero_and_nothing_more_trains(in_tmp, capsys, fits):
    assert main(["run", "--trials", "1", "--epochs", "2", "--quiet", "--enqueue", "small"]) == 0
    result = _evaluate(capsys)
    held = result["estimate"]["dice_fg"]
    assert result["search"] == {**result["search"], "default_trial": 0, "gain_val": 0.0, "gain_estimate": 0.0,
                                "gain_estimate_ci95": None, "best_is_default": True,
                                "default_estimate_dice_fg": held, "best_estimate_dice_fg": held}
    assert len(fits) == 1  # the estimate's twin only (the shipped refit is fit_final)
    summary = json.loads((in_tmp / "best" / "summary.json").read_text())
    assert summary["search"] == result["search"]
    line = rec.search_line(summary["search"])
    assert line.startswith(f"the search found nothing better than the default (trial 0, val dice_fg ")
    assert f"held-out {held:.4f})" in line and "+0.0000" not in line  # not a gain that looks measured
    assert main(["best"]) == 0
    assert "the search found nothing better than the default (trial 0" in capsys.readouterr().out


@pytest.fixture
def finals(monkeypatch):
    """The train splits of every fit_final (the refits) `best --evaluate` runs."""
    seen = []
    fit_final = evaluate.fit_final

    def spy(model_cfg, train_cfg, split, **kw):
        seen.append(split.images)
        return fit_final(model_cfg, train_cfg, split, **kw)

    monkeypatch.setattr(evaluate, "fit_final", spy)
    return seen


@pytest.mark.slow
def test_when_another_recipe_ships_the_default_is_retrained_on_the_same_held_out_patients(in_tmp, capsys, fits, finals):
    # --space local: the second trial is a neighbour of `small`, as cheap to retrain
    assert main(["run", "--trials", "2", "--epochs", "2", "--quiet", "--enqueue", "small", "--space", "local"]) == 0
    result = _evaluate(capsys, "--top", "2")
    search = result["search"]
    lo, hi = search["gain_estimate_ci95"]
    assert lo <= search["gain_estimate"] <= hi and search["default_trial"] == 0
    assert search["best_is_default"] is False and search["best_estimate_dice_fg"] == result["estimate"]["dice_fg"]
    assert search["best_estimate_dice_fg"] - search["default_estimate_dice_fg"] == pytest.approx(search["gain_estimate"], abs=2e-5)
    assert len(fits) == 3 and fits[0] == fits[1] == fits[2]  # two twins, then the default's, all without the held-out slices
    refits = [len(split) for split in finals]
    data = load_dataset("phantom")
    held = result["estimate"]["n_images"]
    # each twin's estimate refit (train + val less the held-out patients) then its shipped refit, twice,
    # then the default's estimate refit: the default is estimated as the shipped recipe is
    assert refits == [len(data.train) + len(data.val) - held, len(data.train) + len(data.val)] * 2 + [
        len(data.train) + len(data.val) - held]
    assert main(["report", "--out", "r.html"]) == 0
    assert "held-out" in (in_tmp / "r.html").read_text()


@pytest.mark.slow
def test_on_volumes_the_held_out_gain_is_paired_per_volume_over_patients(in_tmp, capsys, monkeypatch):
    from data import write_acdc_phantom

    monkeypatch.setenv("SEGNET_CACHE_DIR", str(in_tmp / "cache"))
    root = write_acdc_phantom(in_tmp / "acdc", 6, seed=3, n_test=2)
    assert main(["run", "--data", str(root), "--trials", "2", "--epochs", "2", "--quiet", "--enqueue", "small",
                 "--space", "local"]) == 0
    result = _evaluate(capsys, "--top", "2")
    search, cases = result["search"], result["estimate"]["volumes"]["cases"]
    lo, hi = search["gain_estimate_ci95"]
    assert cases and lo <= search["gain_estimate"] <= hi and -1.0 <= search["gain_estimate"] <= 1.0
