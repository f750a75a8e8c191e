"""What an epoch costs on large data: slices per epoch, random patches, a val subset, mirroring."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from model import SegNetConfig
from sweep.training.augment import augment
from sweep.cli import main
from sweep.core.errors import UsageError
from sweep.search.options import EPOCH_SLICES_AUTO, VAL_SLICES_AUTO, RunOptions
from sweep.search.presets import preset
from sweep.training.train import (
    DeviceSplit,
    TrainConfig,
    _FoldRun,
    epoch_batches,
    evaluate,
    fit_folds,
    load_model,
    random_patches,
    train_epoch,
    val_subset,
)

TINY = SegNetConfig(depth=2, base_width=4, convs_per_stage=(1, 1))


def _generator(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _split(n: int, size: int = 32, seed: int = 0) -> DeviceSplit:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), np.uint8)
    masks[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 3
    masks[:, size // 3 : 2 * size // 3, size // 3 : 2 * size // 3] = 2
    images = (masks / 3 + rng.normal(0, 0.1, masks.shape)).clip(0, 1).astype(np.float32)
    return DeviceSplit.from_arrays(images, masks, torch.device("cpu"))


@pytest.mark.parametrize("n,count,batch", [(10, 10, 4), (10, 4, 4), (10, 25, 3), (10, 25, 25)])
def test_an_epoch_draws_every_slice_once_before_any_twice(n, count, batch):
    batches = list(epoch_batches(n, count, batch, _generator()))
    assert [len(b) for b in batches[:-1]] == [batch] * (len(batches) - 1)  # batches cross permutations whole
    order = torch.cat(batches).tolist()
    assert len(order) == count
    for start in range(0, count, n):
        chunk = order[start : start + n]
        assert len(set(chunk)) == len(chunk)  # each pass over the slices is a permutation
    counts = np.bincount(order, minlength=n)
    assert counts.max() - counts.min() <= 1


def test_patches_cut_image_and_mask_alike_at_their_own_offsets():
    n, size = 6, 40
    grid = torch.arange(size * size, dtype=torch.float32).view(size, size)
    images = grid.expand(n, 1, size, size).clone()
    masks = grid.long().expand(n, size, size).clone()
    x, y = random_patches(images, masks, 16, _generator(3))
    assert x.shape == (n, 1, 16, 16) and y.shape == (n, 16, 16)
    torch.testing.assert_close(x[:, 0].long(), y)
    corners = {int(x[i, 0, 0, 0]) for i in range(n)}
    assert len(corners) > 1  # not one offset for the batch
    for i in range(n):  # a contiguous window of the slice
        r, c = divmod(int(x[i, 0, 0, 0]), size)
        torch.testing.assert_close(x[i, 0], grid[r : r + 16, c : c + 16])
    same = random_patches(images, masks, 0, _generator())
    assert same[0] is images and random_patches(images, masks, 64, _generator())[1] is masks


def test_an_epoch_trains_its_slice_count_in_patches():
    split = _split(10, size=64)
    cfg = TrainConfig(batch_size=4, epoch_slices=12, patch=32, epochs=1)
    run = _FoldRun(TINY, cfg, split, torch.device("cpu"))
    shapes = []
    run.model.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    train_epoch(run.model, run.optimizer, run.scheduler, split, cfg, run.weights, _generator(), False)
    assert shapes == [(4, 1, 32, 32)] * 3
    assert run.scheduler.last_epoch == 3  # the schedule counts the bounded epoch's steps


def test_the_val_subset_is_spread_over_the_split_and_the_best_epoch_is_scored_on_all_of_it():
    val = _split(30, seed=1)
    subset = val_subset(val, 5)
    assert len(subset) == 5 and torch.equal(subset.images[0], val.images[0]) and torch.equal(subset.images[-1], val.images[-1])
    assert val_subset(val, 0) is val and val_subset(val, 30) is val

    cfg = TrainConfig(batch_size=4, epochs=3, lr=3e-3)
    result = fit_folds(TINY, cfg, [(_split(12), val)], bf16=False, val_slices=5)
    whole = evaluate(load_model(TINY, result.state_dict, torch.device("cpu")), val, False)
    assert result.best_value == pytest.approx(whole["dice_fg"])
    assert result.best_scores["dice_lv"] == pytest.approx(whole["dice_lv"])
    full = fit_folds(TINY, cfg, [(_split(12), val)], bf16=False)  # same seed, every val slice every epoch
    assert [r["train_loss"] for r in full.history] == pytest.approx([r["train_loss"] for r in result.history])


def test_mirroring_flips_and_swaps_each_slice_with_its_mask():
    images = torch.arange(2 * 16.0).view(2, 1, 4, 4)
    masks = images[:, 0].long()
    x, y = augment(images, masks, TrainConfig(aug_mirror=1.0), _generator())
    expected = images.flip(2).flip(3).transpose(2, 3)
    torch.testing.assert_close(x, expected)
    torch.testing.assert_close(y, expected[:, 0].long())

    g = _generator(5)
    before = g.get_state()
    x, y = augment(images, masks, TrainConfig(), g)  # off: untouched, and no draw from the generator
    assert torch.equal(x, images) and torch.equal(g.get_state(), before)

    wide = torch.arange(2 * 12.0).view(2, 1, 3, 4)  # not square: flips only
    x, _ = augment(wide, wide[:, 0].long(), TrainConfig(aug_mirror=1.0), _generator())
    torch.testing.assert_close(x, wide.flip(2).flip(3))


def test_the_default_epoch_cost_is_bounded_on_large_data_and_whole_on_small():
    opts = RunOptions()
    assert opts.fidelity(60, 12) == {"epoch_slices": 0, "val_slices": 0, "patch": 0}
    assert opts.fidelity(1224, 294) == {"epoch_slices": EPOCH_SLICES_AUTO, "val_slices": VAL_SLICES_AUTO, "patch": 0}
    assert replace(opts, epoch_slices=0, val_slices=0).fidelity(1224, 294)["epoch_slices"] == 0
    assert replace(opts, epoch_slices=2000, val_slices=500, patch=128).fidelity(1224, 294) == {
        "epoch_slices": 2000, "val_slices": 0, "patch": 128}


@pytest.mark.parametrize("field,value,flag", [("patch", 100, "--patch"), ("patch", -32, "--patch"),
                                              ("epoch_slices", -1, "--epoch-slices"), ("val_slices", -5, "--val-slices")])
def test_bad_epoch_costs_are_refused_naming_the_flag(field, value, flag):
    with pytest.raises(UsageError, match=flag):
        replace(RunOptions(), **{field: value}).check()


@pytest.mark.slow
def test_a_study_keeps_the_epoch_cost_it_was_made_with(in_tmp, capsys):
    small = json.dumps(preset("small"))
    args = ["run", "--trials", "1", "--epochs", "1", "--quiet", "--enqueue", small, "--epoch-slices", "40", "--patch", "64"]
    assert main(args) == 0
    import optuna

    study = optuna.load_study(study_name="segnet", storage="sqlite:///studies.db")
    assert study.user_attrs["fidelity"] == {"epoch_slices": 40, "val_slices": 0, "patch": 64}
    capsys.readouterr()
    assert main(["run", "--trials", "2", "--epochs", "1", "--quiet", "--epoch-slices", "50"]) == 2
    assert "--epoch-slices 50: study 'segnet' was made with --epoch-slices 40" in capsys.readouterr().err
    assert len(study.trials) == 1  # refused before anything ran


@pytest.mark.slow
def test_a_rerun_without_the_epoch_cost_flags_runs_the_recorded_one(in_tmp, capsys):
    """Left out is not a different value: the study's recorded cost runs (it was refused as "leave it out")."""
    import optuna

    small = json.dumps(preset("small"))
    assert main(["run", "--trials", "1", "--epochs", "1", "--quiet", "--enqueue", small, "--patch", "64",
                 "--epoch-slices", "40", "--val-slices", "5"]) == 0
    assert main(["run", "--trials", "2", "--epochs", "1", "--quiet"]) == 0, capsys.readouterr().err
    study = optuna.load_study(study_name="segnet", storage="sqlite:///studies.db")
    assert study.user_attrs["fidelity"] == {"epoch_slices": 40, "val_slices": 5, "patch": 64}
    assert len(study.trials) == 2


@pytest.mark.slow
def test_every_slice_means_every_slice_however_it_is_said(in_tmp, capsys):
    """The phantom has 100 train and 20 val slices of 96 x 96: --epoch-slices 100, --val-slices 500 and
    --patch 128 all mean what 0 means, on a study recorded as 0."""
    import optuna

    small = json.dumps(preset("small"))
    assert main(["run", "--trials", "1", "--epochs", "1", "--quiet", "--enqueue", small, "--patch", "128"]) == 0
    study = optuna.load_study(study_name="segnet", storage="sqlite:///studies.db")
    assert study.user_attrs["fidelity"] == {"epoch_slices": 0, "val_slices": 0, "patch": 0}  # what ran: whole slices
    for flags in (["--epoch-slices", "100"], ["--val-slices", "500"], ["--patch", "96"], ["--epoch-slices", "0"]):
        assert main(["run", "--trials", "1", "--epochs", "1", "--quiet", *flags]) == 0, (flags, capsys.readouterr().err)


def test_an_absurd_epoch_slices_is_refused_before_the_study(in_tmp, capsys):
    assert main(["run", "--trials", "1", "--epochs", "1", "--quiet", "--epoch-slices", "3000000000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --epoch-slices 3000000000: more than 100 passes") and "\n" not in err
    assert not (in_tmp / "studies.db").exists()


def test_an_epochs_order_is_drawn_as_it_goes():
    """A million-slice epoch over 10 slices holds one permutation at a time, not the whole order."""
    batches = epoch_batches(10, 10**6, 4, _generator())
    first = [next(batches) for _ in range(5)]
    assert torch.cat(first).tolist()[:10] and all(len(b) == 4 for b in first)
    assert batches.gi_frame is not None  # a generator, still running: nothing drawn past what was asked
