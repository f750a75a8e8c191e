"""End-to-end sweeps on tiny budgets, through the same entry point users call."""

import json
from pathlib import Path

import optuna
import pytest
import torch

from data import load_dataset
from model import SegNet
from sweep.cli import main
from sweep.training.objective import Objective
from sweep.search.presets import preset
from sweep.training.run import parse_enqueue
from sweep.search.space import BATCH_SIZES, configs_from_params, suggest
from sweep.search.strategies import make_sampler
from sweep.training.train import DeviceSplit

ROOT = Path(__file__).resolve().parents[1]
SMALL_PARAMS = preset("small")  # a fast configuration that does not depend on what the sampler draws


def load(url="sqlite:///studies.db", name="segnet"):
    return optuna.load_study(study_name=name, storage=url)


@pytest.mark.slow
def test_phantom_sweep_resume_and_best_evaluate(in_tmp, capsys):
    # Small configurations first: what the sampler draws may take minutes on 2 cores.
    queued = optuna.create_study(study_name="segnet", storage="sqlite:///studies.db", direction="maximize")
    for i in range(3):
        queued.enqueue_trial(dict(SMALL_PARAMS, lr=SMALL_PARAMS["lr"] * (1 + i)))
    assert main(["run", "--trials", "3", "--epochs", "2", "--quiet"]) == 0
    assert (in_tmp / "studies.db").exists()
    study = load()
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    for t in trials:
        assert sorted(t.intermediate_values) == [1, 2]  # val dice_fg of every epoch
        assert t.value == pytest.approx(max(t.intermediate_values.values()))
        for key in ("dice_bg", "dice_rv", "dice_myo", "dice_lv", "best_epoch", "epochs_run", "seconds", "n_params", "device"):
            assert key in t.user_attrs, key
        assert len(t.user_attrs["history"]["val_dice_fg"]) == 2
    assert study.metric_names == ["val_dice_fg"]
    assert study.user_attrs["synthetic_data"] is True
    assert study.user_attrs["data_fingerprint"]
    # the best trial's checkpoint is an artifact
    storage = optuna.storages.RDBStorage("sqlite:///studies.db")
    assert optuna.artifacts.get_all_artifact_meta(study.best_trial, storage=storage)

    capsys.readouterr()
    assert main(["run", "--trials", "3", "--epochs", "2", "--quiet"]) == 0
    assert "complete" in capsys.readouterr().out
    assert len(load().trials) == 3  # nothing new ran

    assert main(["best", "--evaluate", "--json", "--seeds", "1", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["study"] == "segnet" and result["trial"] == study.best_trial.number
    assert result["params"] == study.best_trial.params
    assert result["seeds"] == [0]
    test = result["test"]
    assert test["n_images"] == 80
    for key in ("dice_bg", "dice_rv", "dice_myo", "dice_lv", "dice_fg", "dice_fg_std", "dice_mean4"):
        assert 0.0 <= test[key] <= 1.0
    assert test["dice_fg"] == pytest.approx((test["dice_rv"] + test["dice_myo"] + test["dice_lv"]) / 3, abs=1e-4)
    assert len(list((in_tmp / "best" / "masks").glob("*_mask.png"))) == 80
    assert json.loads((in_tmp / "best" / "summary.json").read_text())["test"] == test
    after = load()
    assert after.user_attrs["evaluation"]["test"] == test  # recorded on the study ...
    assert len(after.trials) == 3  # ... never as a trial


@pytest.mark.slow
def test_tiny_sweep_on_real_data(in_tmp, cmri_path, capsys):
    args = ["run", "--trials", "2", "--epochs", "2", "--data", str(cmri_path), "--quiet",
            "--enqueue", json.dumps(SMALL_PARAMS), "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["finished"] == 2
    study = load()
    assert study.trials[0].params == pytest.approx(SMALL_PARAMS)  # the enqueued configuration ran first
    assert study.user_attrs["synthetic_data"] is False
    assert "60 train / 12 val / 48 test" in study.user_attrs["data_description"]
    assert main(["best", "--evaluate", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test"] is None  # the shared test masks are held back
    est = result["estimate"]  # ... so the expectation comes from train slices left out of its retrainings
    assert est["n_images"] == 12 and "60 train slices" not in est["source"] and "12 train slices" in est["source"]
    assert est["dice_fg_ci95"][0] <= est["dice_fg"] <= est["dice_fg_ci95"][1]
    assert len(list((in_tmp / "best" / "masks").glob("*_mask.png"))) == 48


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Fixed parameter lr")  # the bad lr lies outside the searched range
def test_pruning_really_prunes(tmp_path):
    """A trial far behind the median of earlier trials is stopped early and marked PRUNED."""
    data = load_dataset("phantom")
    train = DeviceSplit.from_arrays(data.train.images, data.train.masks, torch.device("cpu"))
    val = DeviceSplit.from_arrays(data.val.images, data.val.masks, torch.device("cpu"))
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'p.db'}", direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2),
    )
    good, bad = dict(SMALL_PARAMS, lr=5e-3, batch_size=8), dict(SMALL_PARAMS, lr=1e-5, batch_size=8)
    for params in (good, good, bad):
        study.enqueue_trial(params)
    study.optimize(Objective([(train, val)], epochs=5), n_trials=3)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"], [t.intermediate_values for t in study.trials]
    pruned = study.trials[2]
    assert 2 <= pruned.user_attrs["epochs_run"] < 5  # never inside the 2 warm-up steps, always before the end
    assert pruned.user_attrs["pruned_at_epoch"] == pruned.user_attrs["epochs_run"] == max(pruned.intermediate_values)


def test_best_before_any_study_is_a_usage_error(in_tmp, capsys):
    assert main(["best"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "studies.db" in err[0]
    assert not (in_tmp / "studies.db").exists()


@pytest.mark.parametrize(
    "args,named",
    [(["--trials", "0"], "--trials"), (["--epochs", "-1"], "--epochs"), (["--data", "nowhere"], "--data"),
     (["--enqueue", "{bad json"], "--enqueue"), (["--storage", "sqlite:////no/such/dir/s.db"], "--storage"),
     (["--sampler", "grid"], "--sampler")],
)
def test_bad_run_input_is_one_line_and_touches_nothing(in_tmp, capsys, args, named):
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err
    assert not (in_tmp / "studies.db").exists()


def test_sampled_configurations_are_valid_models():
    """Every configuration the sampler draws from the space builds a SegNet that fits 96 x 96."""
    study = optuna.create_study(sampler=make_sampler("tpe", 0), direction="maximize")
    for i in range(30):
        trial = study.ask()
        model_cfg, train_cfg = suggest(trial, epochs=5)
        assert 96 % 2**model_cfg.depth == 0 and len(model_cfg.convs_per_stage) == model_cfg.depth
        assert train_cfg.batch_size in BATCH_SIZES and 1e-4 <= train_cfg.lr <= 1e-2
        with torch.device("meta"):
            assert SegNet.from_config(model_cfg)(torch.empty(2, 1, 96, 96)).shape == (2, 4, 96, 96)
        study.tell(trial, float(i % 7) / 7)
    assert len({t.params["lr"] for t in study.trials}) == 30  # sampled, not constant


def test_original_configuration_file_is_segnet_vgg16():
    params = parse_enqueue(str(ROOT / "configs" / "original.json"), epochs=100)
    model_cfg, train_cfg = configs_from_params(params, 100)
    assert model_cfg.widths == (64, 128, 256, 512, 512) and model_cfg.convs_per_stage == (2, 2, 3, 3, 3)
    assert (train_cfg.lr, train_cfg.batch_size, train_cfg.dice_weight, train_cfg.schedule) == (1e-3, 10, 0.0, "constant")
    assert train_cfg.aug_rotate == train_cfg.aug_scale == train_cfg.aug_gamma == 0.0


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu avx2 avx512f avx512_bf16 avx512_vnni", True),  # AMD Zen 4 / Intel Cooper Lake
        ("fpu avx2 avx512f amx_bf16 amx_tile amx_int8", True),  # Intel Sapphire Rapids
        ("fpu avx2 avx512f avx512_vnni", False),  # AVX-512 without bf16 dot products
        ("fpu avx2 fma", False),
    ],
)
def test_bf16_autocast_only_where_the_cpu_has_bf16_units(flags, expected):
    from sweep.training.train import cpu_has_bf16

    assert cpu_has_bf16(f"processor\t: 0\nflags\t\t: {flags}\n") is expected
