"""benchmarks/search_vs_default.py at a tiny budget on the phantom: every arm runs, is paired, and draws."""

from __future__ import annotations

import json

import pytest

from benchmarks import search_vs_default as bench


@pytest.mark.slow
def test_every_arm_runs_at_a_tiny_budget_and_is_set_against_the_default(tmp_path):
    out = tmp_path / "svd.json"
    bench.main(["--data", "phantom", "--minutes", "0.08", "--seeds", "1", "--epochs", "2", "--epoch-slices", "0",
                "--val-slices", "0", "--patch", "0", "--preset", "small", "--threads", "1", "--ship-epochs", "3",
                "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["arms"]) == set(bench.ARMS) and out.with_suffix(".png").stat().st_size > 0
    searches = ("recipe", "local", "plain")
    shipping = []
    for arm in searches:
        points = result["arms"][arm][0]["points"]
        if arm == "plain" and not points:  # no default and no cap: its first draw may not finish in 5 s
            continue
        *searched, shipped = points
        for p in searched:  # nothing the search finished past its minutes counts ...
            assert not p.get("shipped") and p["wall_minutes"] <= 0.08 and 0.0 <= p["dice_fg"] <= 1.0
        # ... and what ships is the pick retrained for the shipping epochs, its time on top of the search's
        assert shipped["shipped"] and shipped["epochs"] == 3 and 1 <= shipped["best_epoch"] <= 3
        assert shipped["params"] == searched[-1]["params"] and shipped["cpu_minutes"] >= searched[-1]["cpu_minutes"]
        assert 0.0 <= shipped["dice_fg"] <= 1.0
        shipping.append(shipped["ship_wall_minutes"])
    default = result["arms"]["default"][0]
    assert default["points"]  # the preset alone always has a pick, trained for the search's minutes and the shipping's
    assert default["minutes"] == pytest.approx(0.08 + sum(shipping) / len(shipping), abs=2e-3)
    assert all(p["wall_minutes"] <= default["minutes"] for p in default["points"])
    for arm in ("recipe", "local"):
        assert result["arms"][arm][0]["points"][0]["trial"] == 0  # the enqueued preset runs first, and scores
    for arm in searches:
        assert len(result["summary"][arm]["vs_default"]) == 1


def test_an_unknown_arm_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--arms", "recipe,grid"])
    assert "grid" in capsys.readouterr().err


@pytest.mark.slow
def test_a_measurement_resumes_in_pieces_and_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "svd.json"
    common = ["--data", "phantom", "--epochs", "2", "--epoch-slices", "0", "--val-slices", "0", "--patch", "0",
              "--preset", "small", "--threads", "1", "--arms", "default", "--out", str(out)]
    bench.main([*common, "--minutes", "0.03", "--seeds", "1"])
    first = json.loads(out.read_text())["arms"]["default"]
    bench.main([*common, "--minutes", "0.03", "--seeds", "2", "--resume"])
    result = json.loads(out.read_text())
    assert [run["seed"] for run in result["arms"]["default"]] == [0, 1]
    assert result["arms"]["default"][0] == first[0]  # seed 0 kept as measured, not run again
    assert len(result["commands"]) == 2
    with pytest.raises(SystemExit):
        bench.main([*common, "--minutes", "0.05", "--seeds", "3", "--resume"])
    assert "minutes" in capsys.readouterr().err
    assert json.loads(out.read_text()) == result  # the refused run left the measurement alone
