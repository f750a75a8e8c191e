"""--cv K: folds, lockstep training, the study it records, and best --evaluate on it."""

import json

import numpy as np
import optuna
import pytest
import torch

from data import fold_indices, load_dataset, make_phantom
from sweep.cli import main
from sweep.search.presets import preset
from sweep.search.space import configs_from_params
from sweep.training.train import DeviceSplit, fit, fit_folds

SMALL_PARAMS = preset("small")  # a fast configuration that does not depend on what the sampler draws


@pytest.mark.parametrize(("n", "k"), [(72, 5), (72, 4), (10, 3), (5, 5)])
def test_folds_partition_the_pool_in_near_equal_parts(n, k):
    folds = fold_indices(n, k, seed=0)
    assert len(folds) == k
    assert sorted(np.concatenate(folds).tolist()) == list(range(n))
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    assert all(np.array_equal(a, b) for a, b in zip(folds, fold_indices(n, k, seed=0)))  # reproducible
    assert not all(np.array_equal(a, b) for a, b in zip(folds, fold_indices(n, k, seed=1)))


@pytest.mark.parametrize(("n", "k"), [(10, 1), (3, 4)])
def test_impossible_folds_are_refused(n, k):
    with pytest.raises(ValueError):
        fold_indices(n, k)


def _splits(data, idx):
    return DeviceSplit.from_arrays(data.train.images[idx], data.train.masks[idx], torch.device("cpu"))


@pytest.mark.slow
def test_lockstep_folds_report_the_mean_over_folds():
    data = load_dataset("phantom")
    n = 30
    folds_idx = fold_indices(n, 3)
    folds = [(_splits(data, np.setdiff1d(np.arange(n), held)), _splits(data, held)) for held in folds_idx]
    model_cfg, train_cfg = configs_from_params(dict(SMALL_PARAMS, batch_size=8), 3)
    records = []
    result = fit_folds(model_cfg, train_cfg, folds, seed=0, on_epoch=lambda e, r: records.append(r))
    assert [r["epoch"] for r in records] == [1, 2, 3] and result.history == records
    assert result.best_value == max(r["val_dice_fg"] for r in records)
    assert result.best_epoch == 1 + int(np.argmax([r["val_dice_fg"] for r in records]))
    assert len(result.state_dicts) == 3 and len(result.fold_scores) == 3
    assert result.best_value == pytest.approx(np.mean([f["dice_fg"] for f in result.fold_scores]))
    # the folds' models are different models: each learnt from its own training part
    first = next(iter(result.state_dicts[0]))
    assert not torch.equal(result.state_dicts[0][first], result.state_dicts[1][first])
    # one fold is plain training with a val split
    plain = fit(model_cfg, train_cfg, *folds[0], seed=0)
    single = fit_folds(model_cfg, train_cfg, folds[:1], seed=0)
    assert plain.best_value == single.best_value and plain.best_epoch == single.best_epoch


def _queue_small(n=2, name="segnet"):
    queued = optuna.create_study(study_name=name, storage="sqlite:///studies.db", direction="maximize")
    for i in range(n):
        queued.enqueue_trial(dict(SMALL_PARAMS, lr=SMALL_PARAMS["lr"] * (1 + i)))


@pytest.mark.slow
def test_cv_study_records_folds_and_best_evaluate_ensembles_them(in_tmp, capsys):
    _queue_small()
    assert main(["run", "--trials", "2", "--epochs", "2", "--cv", "3", "--quiet"]) == 0
    study = optuna.load_study(study_name="segnet", storage="sqlite:///studies.db")
    assert study.user_attrs["cv"] == 3
    folds = study.user_attrs["cv_folds"]
    data = load_dataset("phantom")
    pool = list(data.train.names) + list(data.val.names)
    assert sorted(sum(folds, [])) == sorted(pool) and len(folds) == 3  # every slice held out once
    for t in study.trials:
        assert t.state.name == "COMPLETE" and t.user_attrs["cv"] == 3
        assert sorted(t.intermediate_values) == [1, 2]
        assert t.value == pytest.approx(max(t.intermediate_values.values()))
        assert len(t.user_attrs["cv_dice_fg_folds"]) == 3
        assert t.value == pytest.approx(np.mean(t.user_attrs["cv_dice_fg_folds"]), abs=1e-4)

    # resuming with another selection rule would mix incomparable values: refused, nothing run
    capsys.readouterr()
    assert main(["run", "--trials", "3", "--epochs", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cv 3" in err[0]
    assert len(optuna.load_study(study_name="segnet", storage="sqlite:///studies.db").trials) == 2

    assert main(["best", "--evaluate", "--json", "--seeds", "1", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cv"] == 3 and result["selection"].startswith("3-fold")
    assert result["val_dice_fg"] == pytest.approx(study.best_value)
    assert len(result["runs"]) == 1 and 0 < result["runs"][0]["val_dice_fg"] <= 1
    assert set(result["postprocess"]["val_dice_fg"]) == {"tta=false,lcc=false", "tta=false,lcc=true",
                                                        "tta=true,lcc=false", "tta=true,lcc=true"}
    assert result["test"]["n_images"] == 80 and 0 <= result["test"]["dice_fg"] <= 1
    est = result["estimate"]  # what to expect on unseen slices: out-of-fold predictions of the whole pool
    assert est["n_images"] == 120 and "out-of-fold" in est["source"]
    assert est["dice_fg_ci95"][0] <= est["dice_fg"] <= est["dice_fg_ci95"][1]
    assert len(list((in_tmp / "best" / "masks").glob("*_mask.png"))) == 80


@pytest.mark.parametrize("cv", ["1", "-2", "121"])
def test_bad_cv_is_a_usage_error(in_tmp, capsys, cv):
    assert main(["run", "--trials", "1", "--epochs", "1", "--cv", cv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cv" in err[0]
    assert not (in_tmp / "studies.db").exists()


def test_fit_final_trains_exactly_its_epochs_on_everything_and_repeats():
    from sweep.training.train import fit_final

    images, masks = make_phantom(12, seed=2, size=32)
    split = DeviceSplit.from_arrays(images, masks, torch.device("cpu"))
    model_cfg, train_cfg = configs_from_params(dict(SMALL_PARAMS, batch_size=4), 3)
    seen = []
    first = fit_final(model_cfg, train_cfg, split, seed=1, on_epoch=lambda epoch, record: seen.append(record))
    assert [r["epoch"] for r in seen] == [1, 2, 3] and all(np.isfinite(r["train_loss"]) for r in seen)
    again = fit_final(model_cfg, train_cfg, split, seed=1, bf16=False)
    other = fit_final(model_cfg, train_cfg, split, seed=1, bf16=False)
    assert all(torch.equal(again[k], other[k]) for k in again)  # same seed, same weights (float32, CPU)
    assert set(first) == set(again)
