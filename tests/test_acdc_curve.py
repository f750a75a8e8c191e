"""benchmarks/acdc_curve.py on an ACDC-layout phantom: held-out volumes scored, with and without val in training."""

from __future__ import annotations

import json

import pytest

from benchmarks import acdc_curve
from data import load_dataset, write_acdc_phantom
from sweep.training.folds import estimate_holdout


@pytest.mark.slow
def test_the_curve_scores_the_held_out_volumes_and_with_val_trains_on_val_too(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGNET_CACHE_DIR", str(tmp_path / "cache"))
    root = write_acdc_phantom(tmp_path / "acdc", 6, seed=3, n_test=2)
    data = load_dataset(str(root))
    held = estimate_holdout(data, 0.2)
    runs = {}
    for with_val in (False, True):
        out = tmp_path / f"curve-{with_val}.json"
        acdc_curve.main(["--data", str(root), "--params", "small", "--epochs", "2", "--every", "1", "--epoch-slices", "8",
                         "--val-slices", "0", "--patch", "64", "--device", "cpu", "--out", str(out),
                         *(["--with-val"] if with_val else [])])
        runs[with_val] = json.loads(out.read_text())
    for with_val, result in runs.items():
        assert result["with_val"] is with_val and [p["epoch"] for p in result["points"]] == [1, 2]
        for point in result["points"]:
            for key in ("held_out_dice_fg", "held_out_postprocessed_dice_fg"):
                mean = point[key]["all"][0]
                assert 0.0 <= mean <= 1.0
            assert point["held_out_n_volumes"] == 2 * len(result["held_out_patients"])
    assert runs[True]["train_slices"] == runs[False]["train_slices"] + len(data.val)
    assert runs[False]["train_slices"] == len(data.train) - len(held)
