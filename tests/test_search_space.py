"""`run --space local` and the small-budget strategies: a neighbourhood of the enqueued default,
TPE with 5 start-up trials, successive halving with rungs fixed by the epoch budget."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from sweep.core import records as rec
from sweep.cli import main
from sweep.search.presets import preset
from sweep.search.space import FULL, local_space, params_problem, suggest
from sweep.search.strategies import make_pruner, make_sampler


def _draws(space: dict | None, n: int = 12) -> list[optuna.trial.FrozenTrial]:
    rec.silence_optuna()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(lambda t: (suggest(t, 3, space), 0.0)[1], n_trials=n)
    return study.trials


def test_the_full_space_draws_what_it_always_drew():
    dists = _draws(None, 1)[0].distributions
    assert list(dists) == list(FULL)  # every parameter, in the order a seeded sampler draws them
    assert dists["lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert dists["weight_decay"] == FloatDistribution(1e-6, 1e-2, log=True)
    assert dists["depth"] == IntDistribution(3, 5) and dists["base_width"] == CategoricalDistribution((8, 16, 32, 64))
    assert dists["batch_size"] == CategoricalDistribution((4, 8, 10, 16)) and dists["aug_rotate"] == FloatDistribution(0.0, 45.0)


def test_the_local_space_is_the_acdc_presets_neighbourhood():
    centre = preset("acdc")
    space = local_space(centre)
    assert space["lr"].low == pytest.approx(centre["lr"] / 10 ** 0.5) and space["lr"].high == pytest.approx(centre["lr"] * 10 ** 0.5)
    assert (space["depth"].low, space["depth"].high) == (centre["depth"] - 1, centre["depth"] + 1)
    assert space["base_width"].values == (8, 16, 32)  # 16 halved or doubled
    assert space["batch_size"].values == (8,) and space["kernel_size"].values == (3,)  # the rest kept
    assert space["aug_elastic"].high == 0.0 and space["aug_mirror"].high == 0.0  # off in the preset: stays off
    assert space["aug_rotate"].high == 45.0 and space["aug_noise"].high == pytest.approx(0.1)  # up to twice, inside the full range
    assert space["dice_weight"] == FULL["dice_weight"]


def test_every_local_draw_is_a_configuration_of_the_full_space_and_leaves_the_rest_as_the_default():
    centre = preset("acdc")
    for trial in _draws({"name": "local", "centre": centre}):
        assert params_problem(trial.params, 3) is None  # so best, report and --enqueue read it as ever
        assert {k: trial.params[k] for k in ("batch_size", "schedule", "convs_shallow", "kernel_size", "dropout")} == \
            {k: centre[k] for k in ("batch_size", "schedule", "convs_shallow", "kernel_size", "dropout")}


def test_the_small_budget_strategies():
    assert make_sampler("tpe-5", 0)._n_startup_trials == 5
    pruner = make_pruner("halving", 20)
    assert isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner)
    assert pruner._min_resource == 2 and pruner._reduction_factor == 3  # rungs at 2, 6 and 18 of 20 epochs


@pytest.mark.slow
def test_a_local_search_runs_the_default_first_and_records_its_space(in_tmp, capsys):
    assert main(["run", "--trials", "3", "--epochs", "2", "--quiet", "--space", "local", "--enqueue", "small",
                 "--sampler", "tpe-5", "--pruner", "halving"]) == 0
    study = optuna.load_study(study_name="segnet", storage="sqlite:///studies.db")
    space = study.user_attrs[rec.StudyKey.SPACE]
    assert space == {"name": "local", "centre": preset("small")}
    assert study.trials[0].params == preset("small")
    ranges = local_space(preset("small"))
    for t in study.trials:
        assert all(ranges[k].low <= v <= ranges[k].high for k, v in t.params.items() if hasattr(ranges[k], "low"))
    capsys.readouterr()
    assert main(["best", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["search"]["default_trial"] == 0
    assert main(["report", "--out", "r.html"]) == 0
    assert "local: the enqueued default" in (in_tmp / "r.html").read_text()
    capsys.readouterr()
    # The study's space is kept: left out, it continues (tests/test_inputs_checked.py); another one typed is refused.
    assert main(["run", "--trials", "4", "--epochs", "2", "--quiet", "--space", "full"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--space full" in err and "--space local" in err and len(err.splitlines()) == 1


def test_a_local_search_without_a_default_is_refused_in_one_line(in_tmp, capsys):
    assert main(["run", "--trials", "1", "--epochs", "1", "--quiet", "--space", "local"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--enqueue" in err and len(err.splitlines()) == 1
