"""benchmarks/search_vs_default.py at a tiny budget on the phantom: every arm runs, is paired, and draws."""

from __future__ import annotations

import json

import pytest

from benchmarks import search_vs_default as bench


@pytest.mark.slow
def test_every_arm_runs_at_a_tiny_budget_and_is_set_against_the_default(tmp_path):
    out = tmp_path / "svd.json"
    bench.main(["--data", "phantom", "--minutes", "0.08", "--seeds", "1", "--epochs", "2", "--epoch-slices", "0",
                "--val-slices", "0", "--patch", "0", "--preset", "small", "--threads", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["arms"]) == set(bench.ARMS) and out.with_suffix(".png").stat().st_size > 0
    for arm, runs in result["arms"].items():
        for p in runs[0]["points"]:
            assert p["wall_minutes"] <= 0.08 and 0.0 <= p["dice_fg"] <= 1.0  # nothing past the budget counts
    assert result["arms"]["default"][0]["points"]  # the preset alone always has a pick
    for arm in ("recipe", "local"):
        assert result["arms"][arm][0]["points"][0]["trial"] == 0  # the enqueued preset runs first, and scores
    for arm in ("recipe", "local", "plain"):
        assert len(result["summary"][arm]["vs_default"]) == 1


def test_an_unknown_arm_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--arms", "recipe,grid"])
    assert "grid" in capsys.readouterr().err
