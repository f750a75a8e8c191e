"""The time-to-quality benchmark's bookkeeping: held-out folder, budget cut-offs, and its two figures."""

import json
from datetime import datetime, timedelta

import optuna
import pytest

from benchmarks import bench
from benchmarks import time_to_quality as ttq
from data import load_dataset


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return bench.prepare_data("phantom", bench.PROFILES["smoke"], tmp_path_factory.mktemp("ttq-src")).folder


def test_held_out_slices_leave_train_and_become_the_scored_test_split(source, tmp_path):
    held = ttq.make_folder(source, 3, seed=1, dest=tmp_path / "data")
    data = load_dataset(str(tmp_path / "data"))
    assert sorted(data.test.names) == held and data.test.masks is not None
    assert not set(held) & set(data.train.names)
    original = load_dataset(str(source))
    assert sorted(data.train.names + data.test.names) == sorted(original.train.names)
    assert data.val.names == original.val.names
    assert held != ttq.make_folder(source, 3, seed=2, dest=tmp_path / "other")  # a new draw each repeat


def test_a_budget_fraction_sees_only_the_trials_finished_by_then(tmp_path):
    url = f"sqlite:///{tmp_path / 'ours.db'}"
    study = optuna.create_study(study_name="ttq", storage=url, direction="maximize")
    study.set_user_attr("data_source", "somewhere")
    start = datetime(2026, 1, 1, 12, 0, 0)
    for value in (0.5, 0.9, 0.95):
        study.add_trial(optuna.trial.create_trial(
            params={"x": value}, distributions={"x": optuna.distributions.FloatDistribution(0, 1)}, value=value))
    # add_trial stamps "now": rewrite the completion times as minutes after `start`
    trials = study.get_trials(deepcopy=False)
    for trial, minute in zip(trials, (1, 2, 5)):
        trial.datetime_start, trial.datetime_complete = start, start + timedelta(minutes=minute)
    copy = optuna.create_study(study_name="src", storage=url, direction="maximize")
    copy.add_trials(trials)
    copy.set_user_attr("data_source", "somewhere")

    def cut(seconds, name):
        return ttq.truncated_study(url, start, seconds, name, source="src")

    early, best, n = cut(3 * 60, "cut-3")
    assert (n, best) == (2, 1) and len(early.trials) == 2
    assert early.user_attrs == {"data_source": "somewhere"}
    _, best_all, n_all = cut(10 * 60, "cut-10")
    assert (n_all, best_all) == (3, 2)
    _, none, zero = cut(30, "cut-0")
    assert (zero, none) == (0, None)


def run_with(ours, plain):
    return {side: {"checkpoints": {str(f): {"dice_fg": v} for f, v in values.items()}}
            for side, values in (("ours", ours), ("plain", plain))}


def test_gain_and_speedup_from_the_curves():
    fractions = [0.25, 0.4, 0.5, 1.0]
    result = {"minutes": 60, "fractions": fractions, "runs": [
        run_with({0.25: 0.80, 0.4: 0.86, 0.5: 0.87, 1.0: 0.89}, {0.25: 0.80, 0.4: 0.83, 0.5: 0.84, 1.0: 0.86}),
        run_with({0.25: 0.82, 0.4: 0.86, 0.5: 0.87, 1.0: 0.89}, {0.25: 0.82, 0.4: 0.83, 0.5: 0.86, 1.0: 0.86}),
    ]}
    ttq.summarize(result)
    assert result["curves"]["ours"]["1.0"]["mean"] == pytest.approx(0.89)
    assert result["curves"]["plain"]["0.5"]["std"] == pytest.approx(0.01414, abs=1e-4)
    assert result["time_to_quality_gain"] == pytest.approx(0.03)
    # plain reaches its final 0.86 at 60 min; ours passes 0.86 at 40 % = 24 min
    assert result["minutes_to_reach"] == {"ours_to_plain_final": 24.0, "plain_to_plain_final": 60.0,
                                          "plain_to_ours_final": None}
    assert result["time_to_quality_speedup"] == pytest.approx(2.5)


def test_an_approach_that_never_reaches_the_figure_has_no_speedup():
    result = {"minutes": 10, "fractions": [0.5, 1.0],
              "runs": [run_with({0.5: 0.70, 1.0: 0.75}, {0.5: 0.80, 1.0: 0.80})]}
    ttq.summarize(result)
    assert result["time_to_quality_gain"] == pytest.approx(-0.05)
    assert result["time_to_quality_speedup"] is None
    assert result["minutes_to_reach"]["plain_to_plain_final"] == 5.0


def fake_side(calls, value):
    def run(folder, work, seconds, fractions, seed, epochs, save, *db, earlier=None):
        calls.append((work.name, seed))
        return {"checkpoints": {str(f): {"dice_fg": value} for f in fractions}}
    return run


def test_resume_keeps_finished_approaches_and_runs_the_rest(source, tmp_path, monkeypatch):
    out = tmp_path / "ttq.json"
    args = ["--minutes", "1", "--fractions", "0.5,1", "--holdout", "3", "--data", str(source), "--out", str(out)]
    calls = []
    monkeypatch.setattr(ttq, "ours", fake_side(calls, 0.9))
    monkeypatch.setattr(ttq, "plain", fake_side(calls, 0.8))
    assert ttq.main(args) == 0
    assert calls == [("ours", 0), ("plain", 0)]
    # repeat 2 was cut off after its first approach (plain goes first in odd repeats)
    result = json.loads(out.read_text())
    held = ttq.make_folder(source, 3, seed=1, dest=tmp_path / "draw")
    result["runs"].append({"repeat": 1, "holdout": held, "order": ["plain", "ours"],
                           "plain": {"checkpoints": {"0.5": {"dice_fg": 0.7}, "1.0": {"dice_fg": 0.8}}}})
    result["repeats"] = 2
    out.write_text(json.dumps(result))
    calls.clear()
    assert ttq.main(args + ["--repeats", "2", "--resume"]) == 0
    assert calls == [("ours", 1)]
    result = json.loads(out.read_text())
    assert [r["repeat"] for r in result["runs"]] == [0, 1]
    assert result["curves"]["plain"]["0.5"]["runs"] == [0.8, 0.7]
    assert result["time_to_quality_gain"] == pytest.approx(0.1)
    # without --resume the file is started afresh
    calls.clear()
    assert ttq.main(args) == 0
    assert len(json.loads(out.read_text())["runs"]) == 1 and len(calls) == 2


def test_resume_refuses_a_run_with_other_settings(source, tmp_path, monkeypatch):
    out = tmp_path / "ttq.json"
    out.write_text(json.dumps({"minutes": 30, "epochs": 50, "fractions": [0.5, 1.0], "holdout": 3,
                               "data": str(source), "runs": []}))
    monkeypatch.setattr(ttq, "ours", fake_side([], 0.9))
    with pytest.raises(SystemExit, match="minutes 30 .now 60"):
        ttq.main(["--minutes", "60", "--fractions", "0.5,1", "--holdout", "3", "--data", str(source),
                  "--out", str(out), "--resume"])


def test_plain_records_its_search_before_shipping_and_a_resumed_run_ships_only_what_is_left(tmp_path, monkeypatch):
    trials = [{"number": 0, "state": "COMPLETE", "value": 0.8, "params": {"a": 0}, "done": 120.0},
              {"number": 1, "state": "COMPLETE", "value": 0.9, "params": {"a": 1}, "done": 150.0}]
    searches, ships, saved = [], [], []
    monkeypatch.setattr(ttq, "plain_search_run", lambda *args: searches.append(args) or (100.0, trials))

    def ship(folder, params, seed, epochs):
        ships.append(params["a"])
        if len(ships) == 2:
            raise KeyboardInterrupt  # cut off while shipping the second pick
        return {"dice_fg": 0.7 + params["a"] / 10, "ship_s": 1}

    monkeypatch.setattr(ttq, "ship_plain", ship)
    with pytest.raises(KeyboardInterrupt):
        ttq.plain(tmp_path, tmp_path, 60, [0.5, 1.0], 0, 5, saved.append)
    record = json.loads(json.dumps(saved[-1]))  # as the results file holds it
    assert record["trials"] == trials and list(record["checkpoints"]) == ["0.5"]  # trial 0 only, by 30 s
    out = ttq.plain(tmp_path, tmp_path, 60, [0.5, 1.0], 0, 5, saved.append, earlier=record)
    assert len(searches) == 1 and ships == [0, 1, 1]  # no second search; trial 1 shipped again
    assert out["checkpoints"]["0.5"]["dice_fg"] == pytest.approx(0.7)
    assert out["checkpoints"]["1.0"]["trial"] == 1 and out["checkpoints"]["1.0"]["dice_fg"] == pytest.approx(0.8)


def test_an_approach_cut_off_while_shipping_is_left_out_of_the_curves():
    result = {"minutes": 60, "fractions": [0.5, 1.0], "runs": [
        run_with({0.5: 0.85, 1.0: 0.87}, {0.5: 0.82, 1.0: 0.84}),
        {"ours": {"checkpoints": {"0.5": {"dice_fg": 0.86}}}, "plain": {"checkpoints": {"0.5": {"dice_fg": 0.80}}}},
    ]}
    ttq.summarize(result)
    assert result["curves"]["ours"]["0.5"]["runs"] == [0.85] and result["curves"]["plain"]["1.0"]["runs"] == [0.84]
    assert result["time_to_quality_gain"] == pytest.approx(0.03)


def test_ours_records_its_search_before_shipping_and_a_resumed_run_ships_only_what_is_left(tmp_path, monkeypatch):
    db = tmp_path / "results" / "ttq-repeat1-ours.db"
    db.parent.mkdir()
    start = datetime(2026, 1, 1, 12, 0, 0)
    searches, ships, saved = [], [], []

    def search(folder, work, seconds, seed, epochs, db_path):
        searches.append(db_path)
        url = f"sqlite:///{db_path}"
        study = optuna.create_study(study_name="ttq", storage=url, direction="maximize")
        distribution = {"x": optuna.distributions.FloatDistribution(0, 1)}
        for value, minute in ((0.8, 0.5), (0.9, 1.5)):  # trial 1 finishes after half the budget
            trial = optuna.trial.create_trial(params={"x": value}, distributions=distribution, value=value)
            trial.datetime_start, trial.datetime_complete = start, start + timedelta(minutes=minute)
            study.add_trial(trial)
        return url, start

    def ship(url, study, work, folder):
        ships.append(study)
        if len(ships) == 2:
            raise KeyboardInterrupt  # cut off while shipping the second pick
        return {"dice_fg": 0.85, "estimate": 0.84, "ship_s": 1}

    monkeypatch.setattr(ttq, "run_ours", search)
    monkeypatch.setattr(ttq, "ship_ours", ship)
    with pytest.raises(KeyboardInterrupt):
        ttq.ours(tmp_path, tmp_path, 120, [0.5, 1.0], 0, 5, saved.append, db)
    record = json.loads(json.dumps(saved[-1]))  # as the results file holds it
    assert record["db"] == str(db) and datetime.fromisoformat(record["start"]) == start
    assert [(t["number"], t["state"], t["value"], t["done"]) for t in record["trials"]] == [
        (0, "COMPLETE", 0.8, 30.0), (1, "COMPLETE", 0.9, 90.0)]
    assert record["checkpoints"] == {"0.5": {"trials": 1, "trial": 0, "dice_fg": 0.85, "estimate": 0.84, "ship_s": 1}}
    out = ttq.ours(tmp_path / "new-tmp", tmp_path, 120, [0.5, 1.0], 0, 5, saved.append, db, earlier=record)
    assert len(searches) == 1 and ships == ["ttq-50", "ttq-100", "ttq-100"]  # no second search
    assert out["checkpoints"]["1.0"]["trial"] == 1 and out["checkpoints"]["1.0"]["trials"] == 2
    # a record whose database is gone searches again
    db.unlink()
    ships.clear()
    monkeypatch.setattr(ttq, "ship_ours", lambda *args: {"dice_fg": 0.8, "estimate": 0.8, "ship_s": 1})
    ttq.ours(tmp_path, tmp_path, 120, [0.5, 1.0], 0, 5, saved.append, db, earlier=record)
    assert len(searches) == 2
