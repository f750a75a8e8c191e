"""What `best --evaluate` ships is what `predict` and the Python API run: the same masks."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from data import load_dataset, read_mask
from sweep.cli import main
from sweep.model_file import Segmenter


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
