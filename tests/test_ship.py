"""What `best --evaluate` ships is what `predict` and the Python API run: the same masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from data import load_dataset, read_mask
from sweep.cli import main
from sweep.nn.model_file import Segmenter


@pytest.mark.slow
def test_predict_on_the_test_split_gives_the_evaluated_masks(in_tmp, capsys):
    assert main(["run", "--trials", "1", "--epochs", "2", "--quiet", "--enqueue", "small"]) == 0
    capsys.readouterr()
    assert main(["best", "--evaluate", "--seeds", "2", "--quiet", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    model = in_tmp / "best" / "model.pt"
    assert result["model"] == str(model.resolve())
    assert torch.load(model, weights_only=True)["format"] == "segnet-sweep-model"

    test = load_dataset("phantom").test  # 8-bit images: a PNG round trip is exact
    folder = in_tmp / "test-images"
    folder.mkdir()
    for name, image in zip(test.names, test.images):
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(folder / f"{name}.png")
    assert main(["predict", "--model", str(model), str(folder), "--out", "pred", "--quiet"]) == 0

    evaluated = np.stack([read_mask(in_tmp / "best" / "masks" / f"{n}_mask.png") for n in test.names])
    predicted = np.stack([read_mask(in_tmp / "pred" / f"{n}_mask.png") for n in test.names])
    np.testing.assert_array_equal(predicted, evaluated)
    np.testing.assert_array_equal(Segmenter.load(model).predict(test.images), evaluated)


@pytest.mark.slow
def test_an_ensemble_of_the_top_trials_ships_as_one_model(in_tmp, capsys):
    import optuna

    from sweep.search.presets import preset

    study = optuna.create_study(study_name="segnet", storage="sqlite:///studies.db", direction="maximize")
    study.enqueue_trial(preset("small"))
    study.enqueue_trial(preset("small", depth=4, base_width=16, lr=5e-3))  # another architecture
    assert main(["run", "--trials", "2", "--epochs", "2", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["best", "--evaluate", "--top", "2", "--seeds", "1", "--quiet", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["recipe"] == {"refit": True, "top": 2, "trials": result["recipe"]["trials"]}
    assert sorted(result["recipe"]["trials"]) == [0, 1] and len(result["runs"]) == 2

    bundle = torch.load(in_tmp / "best" / "model.pt", weights_only=True)
    assert [c["depth"] for c in bundle["group_configs"]] == [3 if t == 0 else 4 for t in result["recipe"]["trials"]]
    test = load_dataset("phantom").test
    evaluated = np.stack([read_mask(in_tmp / "best" / "masks" / f"{n}_mask.png") for n in test.names])
    np.testing.assert_array_equal(Segmenter.load(in_tmp / "best" / "model.pt").predict(test.images), evaluated)


@pytest.mark.slow
def test_refit_is_off_where_fold_models_saw_every_slice(in_tmp, capsys):
    assert main(["run", "--trials", "1", "--epochs", "2", "--cv", "2", "--quiet", "--enqueue", "small"]) == 0
    capsys.readouterr()
    assert main(["best", "--evaluate", "--seeds", "1", "--quiet", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["recipe"]["refit"] is False
    bundle = torch.load(in_tmp / "best" / "model.pt", weights_only=True)
    assert [len(group) for group in bundle["members"]] == [2]  # the two fold models
