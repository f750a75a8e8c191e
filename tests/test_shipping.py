"""The shipping benchmark: a draw's sweep is reused, each recipe shipped once, estimates set against held-out Dice."""

import json

import pytest

from benchmarks import bench, shipping
from benchmarks import time_to_quality as ttq
from sweep.cli import main


@pytest.fixture
def draw(tmp_path, monkeypatch, capsys):
    """A finished one-trial sweep in the layout `shipping.sweep` leaves behind."""
    source = bench.prepare_data("phantom", bench.PROFILES["smoke"], tmp_path / "src").folder
    work = tmp_path / "draw"
    held = ttq.make_folder(source, 4, seed=0, dest=work / "slices")
    url = f"sqlite:///{work / 'ours.db'}"
    monkeypatch.chdir(work)
    assert main(["run", "--data", str(work / "slices"), "--storage", url, "--study", "ttq", "--trials", "1",
                 "--epochs", "2", "--enqueue", "small", "--quiet"]) == 0
    capsys.readouterr()
    (work / "sweep.json").write_text(json.dumps({"url": url, "start": "2026-01-01T00:00:00", "minutes": 0}))
    return work, held


@pytest.mark.slow
def test_each_recipe_is_shipped_once_and_its_estimate_set_against_the_held_out_slices(draw, tmp_path, monkeypatch):
    work, held = draw
    out = tmp_path / "result.json"
    args = ["--minutes", "0", "--work", str(work), "--recipes", "top1x1", "--out", str(out)]
    assert shipping.main(args) == 0
    result = json.loads(out.read_text())
    assert result["sweep"]["complete"] == 1
    (recipe,) = result["recipes"]
    assert recipe["recipe"] == "top1x1" and recipe["trials"] == [0]
    summary = json.loads((work / "ship-top1x1" / "summary.json").read_text())
    assert summary["n_test_images"] == len(held)  # scored on the slices the script held out
    assert recipe["held_out_dice_fg"] == summary["test"]["ensemble"]["dice_fg"]
    assert recipe["estimate"] == summary["estimate"]["dice_fg"] and recipe["estimate_n"] > 0
    assert recipe["estimate_error"] == pytest.approx(recipe["estimate"] - recipe["held_out_dice_fg"], abs=1e-4)

    def no_second_ship(*a, **k):
        raise AssertionError("shipped again")

    monkeypatch.setattr(shipping, "ship", no_second_ship)
    assert shipping.main(args) == 0  # the draw's result already holds top1x1
    assert json.loads(out.read_text())["recipes"] == [recipe]


@pytest.mark.parametrize("text", ["top0x1", "3x1", "topx", "top2x0"])
def test_a_malformed_recipe_is_refused(text):
    with pytest.raises(Exception, match="recipe"):
        shipping.parse_recipe(text)
    assert shipping.parse_recipe("top3x1") == (3, 1)
