"""`best --evaluate`'s estimate is scored on slices that neither trained nor selected what it scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data import Dataset, Split, load_dataset
from sweep.shipping import evaluate
from sweep.cli import main
from sweep.training.folds import estimate_holdout


def _dataset(groups: list[str]) -> Dataset:
    n = len(groups)
    images = np.zeros((n, 8, 8), np.float32)
    train = Split(images, np.zeros((n, 8, 8), np.uint8), tuple(f"s{i:02d}" for i in range(n)), tuple(groups))
    small = Split(images[:2], np.zeros((2, 8, 8), np.uint8), ("v0", "v1"))
    return Dataset("x", False, "coursework", train, small, small, None)


def test_the_estimate_holds_out_whole_train_patients():
    groups = [f"p{i // 3}" for i in range(30)]  # 10 patients of 3 slices
    data = _dataset(groups)
    held = estimate_holdout(data, 0.2)
    patients = {groups[i] for i in held}
    assert len(patients) == 2  # a fifth of the patients ...
    assert sorted(held) == [i for i, g in enumerate(groups) if g in patients]  # ... with all their slices
    assert np.array_equal(estimate_holdout(data, 0.2), held)  # the same on every rerun
    assert estimate_holdout(data, 0.0) is None


def test_too_few_train_patients_to_hold_out_is_a_usage_error():
    from sweep.core.errors import UsageError

    with pytest.raises(UsageError, match="--holdout"):
        estimate_holdout(_dataset(["p0"] * 4), 0.2)


@pytest.fixture
def trainings(monkeypatch):
    """Every training of `best --evaluate`: ("folds", train images of each fold) or ("final", images)."""
    seen = []
    fit_folds, fit_final = evaluate.fit_folds, evaluate.fit_final

    def spy_folds(model_cfg, train_cfg, folds, **kw):
        seen.append(("folds", [train.images.clone() for train, _ in folds], train_cfg.epochs))
        return fit_folds(model_cfg, train_cfg, folds, **kw)

    def spy_final(model_cfg, train_cfg, split, **kw):
        seen.append(("final", [split.images.clone()], train_cfg.epochs))
        return fit_final(model_cfg, train_cfg, split, **kw)

    monkeypatch.setattr(evaluate, "fit_folds", spy_folds)
    monkeypatch.setattr(evaluate, "fit_final", spy_final)
    return seen


def _rows(images: np.ndarray) -> set[bytes]:
    return {img.tobytes() for img in images}


@pytest.mark.slow
def test_the_estimate_is_scored_on_train_slices_its_retrainings_left_out(in_tmp, capsys, trainings):
    assert main(["run", "--trials", "1", "--epochs", "2", "--quiet", "--enqueue", "small"]) == 0
    capsys.readouterr()
    assert main(["best", "--evaluate", "--seeds", "2", "--quiet", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)

    data = load_dataset("phantom")
    held = estimate_holdout(data, 0.2)
    held_rows = _rows(data.train.images[held][:, None])
    est = result["estimate"]
    assert est["n_images"] == len(held) > 0 and "held out" in est["source"]
    assert est["dice_fg_ci95"][0] <= est["dice_fg"] <= est["dice_fg_ci95"][1]
    assert 0.0 <= est["val_dice_fg"] <= 1.0  # the same recipe on val, which selected it, for comparison

    # per seed: the fit that picks the epoch count on val, the estimate's refit, the shipped refit
    assert [kind for kind, _, _ in trainings] == ["folds", "final", "final"] * 2
    best_epochs = [run["best_epoch"] for run in result["runs"]]
    for seed, best_epoch in enumerate(best_epochs):
        (_, (fit,), _), (_, (twin,), twin_epochs), (_, (shipped,), shipped_epochs) = trainings[3 * seed:3 * seed + 3]
        # the fit and the estimate's refit never saw the held-out slices ...
        assert not _rows(fit.cpu().numpy()) & held_rows and len(fit) == len(data.train) - len(held)
        assert not _rows(twin.cpu().numpy()) & held_rows
        assert len(twin) == len(data.train) - len(held) + len(data.val)  # ... the refit trained on val as well
        # ... while what ships trained on every labelled slice, and for as many epochs as the estimate's refit
        assert held_rows <= _rows(shipped.cpu().numpy()) and len(shipped) == len(data.train) + len(data.val)
        assert twin_epochs == shipped_epochs == best_epoch
    assert "refit on the other" in est["source"]


@pytest.mark.slow
def test_without_refit_the_shipped_models_still_train_on_every_train_slice(in_tmp, capsys, trainings):
    assert main(["run", "--trials", "1", "--epochs", "2", "--quiet", "--enqueue", "small"]) == 0
    capsys.readouterr()
    assert main(["best", "--evaluate", "--seeds", "1", "--no-refit", "--quiet", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    data = load_dataset("phantom")
    assert [len(images[0]) for _, images, _ in trainings] == [len(data.train) - result["estimate"]["n_images"],
                                                              len(data.train)]


@pytest.mark.slow
def test_holdout_zero_scores_the_estimate_on_val_and_says_it_is_optimistic(in_tmp, capsys):
    assert main(["run", "--trials", "1", "--epochs", "2", "--quiet", "--enqueue", "small"]) == 0
    capsys.readouterr()
    assert main(["best", "--evaluate", "--seeds", "1", "--holdout", "0", "--quiet", "--json"]) == 0
    est = json.loads(capsys.readouterr().out)["estimate"]
    assert est["n_images"] == len(load_dataset("phantom").val)
    assert "optimistic" in est["source"] and est["dice_fg"] == est["val_dice_fg"]


def test_a_holdout_outside_zero_to_one_is_refused_in_one_line(in_tmp, capsys):
    assert main(["best", "--evaluate", "--holdout", "1.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--holdout" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_the_estimate_scores_masks_post_processed_as_the_shipped_ones(in_tmp, capsys, monkeypatch):
    """The held-out estimate's masks get the same rotation TTA and largest-component cleaning as the
    written test masks, chosen once on val (here forced on, so that a path that skipped them shows)."""
    from sweep.nn.postprocess import Probs

    forced = {"tta": True, "largest_component": True, "val_dice_fg": {}}
    monkeypatch.setattr(evaluate, "choose_postprocessing", lambda probs, masks: forced)
    applied, chosen_tta = [], []
    apply, of = evaluate.apply_postprocessing, Probs.of
    monkeypatch.setattr(evaluate, "apply_postprocessing", lambda probs, post: applied.append((len(probs), post)) or apply(probs, post))
    monkeypatch.setattr(Probs, "of", lambda self, tta: chosen_tta.append(tta) or of(self, tta))

    assert main(["run", "--trials", "1", "--epochs", "2", "--quiet", "--enqueue", "small"]) == 0
    capsys.readouterr()
    assert main(["best", "--evaluate", "--seeds", "1", "--quiet", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    data = load_dataset("phantom")
    n_held = result["estimate"]["n_images"]
    assert {n for n, _ in applied} >= {n_held, len(data.test)}  # the estimate and the written masks ...
    assert all(post is forced for _, post in applied) and set(chosen_tta) == {True}  # ... post-processed alike
    assert result["postprocess"] is not None
