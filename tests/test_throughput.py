"""benchmarks/throughput.py on the phantom: both worker counts train the same configurations to their end."""

from __future__ import annotations

import json

import pytest

from benchmarks import throughput
from sweep.search.space import params_problem
from sweep.search.presets import PRESETS


def test_the_neighbours_are_the_preset_and_valid_draws_of_its_local_space():
    preset = dict(PRESETS["small"])
    configs = throughput.neighbours(preset, 4, 3)
    assert configs[0] == preset and len(configs) == 4
    assert all(params_problem(c, 3) is None for c in configs)
    assert len({json.dumps(c, sort_keys=True) for c in configs}) == 4  # distinct draws ...
    assert throughput.neighbours(preset, 4, 3) == configs  # ... the same every time


@pytest.mark.slow
def test_one_worker_and_two_train_the_same_configurations(tmp_path):
    out = tmp_path / "t.json"
    throughput.main(["--data", "phantom", "--preset", "small", "--configs", "2", "--epochs", "1", "--epoch-slices", "20",
                     "--val-slices", "10", "--patch", "0", "--workers", "1,2", "--out", str(out)])
    result = json.loads(out.read_text())
    one, two = result["runs"]
    assert (one["workers"], two["workers"]) == (1, 2)
    assert one["trials"] == 2 and two["trials"] in (2, 3)  # two workers may finish one trial more, enqueued too
    assert one["epochs"] == one["trials"] and two["epochs"] == two["trials"]  # every trial ran its one epoch
    assert one["trials_per_hour"] == pytest.approx(one["epochs_per_hour"] / 20, rel=1e-3)
    assert one["vs_first"] == 1.0 and two["vs_first"] > 0
    for run in (one, two):  # timed on the same two configurations, by their own trials' clocks
        assert len(run["trial_seconds_per_epoch"]) == 2 and min(run["trial_seconds_per_epoch"]) > 0
        mean = sum(run["trial_seconds_per_epoch"]) / 2
        assert run["epochs_per_hour"] == pytest.approx(run["workers"] / mean * 3600, rel=0.01)
