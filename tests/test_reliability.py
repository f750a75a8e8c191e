"""Faults a long sweep meets: kills, interrupts, failing trials, several workers, bad input."""

import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from contextlib import closing
from pathlib import Path

import numpy as np
import optuna
import pytest
import sqlalchemy
import torch
from sqlalchemy.engine import make_url

import sweep.training.objective
from sweep.core import study as st
from sweep.cli import main
from sweep.search.presets import preset
from sweep.core.progress import MAX_CONSECUTIVE_FAILURES
from tests.helpers import random_image, write_coursework, write_png

ROOT = Path(__file__).resolve().parents[1]
SMALL_PARAMS = preset("small")  # a fast configuration that does not depend on what the sampler draws
FAST_HEARTBEAT = {"SEGNET_HEARTBEAT_INTERVAL": "1", "SEGNET_GRACE_PERIOD": "3"}


def sweep_cmd(*args):
    return [sys.executable, "-m", "sweep", *args]


def start(cwd, *args, env=None):
    return subprocess.Popen(
        sweep_cmd(*args), cwd=cwd, env={**os.environ, **FAST_HEARTBEAT, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _has_running_epoch(db: Path) -> bool:
    """Whether a RUNNING trial has an intermediate value, read without writing to the database."""
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
            return con.execute(
                "SELECT 1 FROM trials t JOIN trial_intermediate_values v ON v.trial_id = t.trial_id "
                "WHERE t.state = 'RUNNING' LIMIT 1").fetchone() is not None
    except sqlite3.Error:  # the sweep has not created its tables yet
        return False


def wait_for_running_epoch(db: Path, timeout=240.0, proc=None) -> optuna.trial.FrozenTrial:
    """Block until some trial is RUNNING and has reported at least one epoch (or ``proc`` ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep ended (exit {proc.returncode}) before a trial was seen running: {proc.stderr.read()[-2000:]}")
        if db.exists() and _has_running_epoch(db):
            # Only now open it through Optuna: opening a database that the sweep is still creating
            # would race it to write Optuna's schema.
            study = optuna.load_study(study_name="segnet", storage=f"sqlite:///{db}")
            running = [t for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)) if t.intermediate_values]
            if running:
                return running[0]
        time.sleep(0.3)
    raise AssertionError("no trial reached its first epoch in time")


def small_configs(n):
    """n distinct small configurations, so that a retry is recognisable by its params."""
    return [dict(SMALL_PARAMS, lr=SMALL_PARAMS["lr"] * (1 + i / 10)) for i in range(n)]


def enqueued_study(storage: str, n: int, name: str = "segnet") -> None:
    """A study whose next n trials are small configurations (the sampler's own draws may be slow)."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for params in small_configs(n):
        study.enqueue_trial(params)


def wait_until_stale_trial_failed(url: str, number: int, timeout: float = 300) -> None:
    """Poll (as every worker does when it starts a trial) until the dead worker's trial is failed."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(st, "HEARTBEAT_INTERVAL", 1)
        mp.setattr(st, "GRACE_PERIOD", 3)
        study = optuna.load_study(study_name="segnet", storage=st.make_storage(url))
    deadline = time.monotonic() + timeout
    while study.trials[number].state == optuna.trial.TrialState.RUNNING:
        assert time.monotonic() < deadline, "the killed worker's trial was never failed"
        optuna.storages.fail_stale_trials(study)
        time.sleep(0.2)


def finished_trials(study):
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))


@pytest.mark.slow
def test_killed_worker_trial_fails_and_is_retried_with_its_params(tmp_path):
    enqueued_study(f"sqlite:///{tmp_path / 'studies.db'}", 2)  # then the killed trial's retry: 3 in all
    args = ["run", "--trials", "2", "--epochs", "4", "--quiet"]
    proc = start(tmp_path, *args)
    victim = wait_for_running_epoch(tmp_path / "studies.db")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_until_stale_trial_failed(f"sqlite:///{tmp_path / 'studies.db'}", victim.number)
    rerun = subprocess.run(sweep_cmd(*args), cwd=tmp_path, env={**os.environ, **FAST_HEARTBEAT}, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    study = optuna.load_study(study_name="segnet", storage=f"sqlite:///{tmp_path / 'studies.db'}")
    assert len(finished_trials(study)) == 2
    assert len(study.trials) == 3
    killed = study.trials[victim.number]
    assert killed.state == optuna.trial.TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].params == killed.params
    assert retries[0].state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@pytest.mark.slow
def test_sigterm_exits_130_with_resume_command_and_keeps_storage_consistent(tmp_path):
    # 40 epochs: the enqueued trial is still running when a loaded machine gets round to looking
    args = ["run", "--trials", "2", "--epochs", "40", "--enqueue", json.dumps(SMALL_PARAMS)]
    proc = start(tmp_path, *args)
    wait_for_running_epoch(tmp_path / "studies.db", proc=proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "python -m sweep run --trials 2 --epochs 40" in err
    study = optuna.load_study(study_name="segnet", storage=f"sqlite:///{tmp_path / 'studies.db'}")
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert study.trials[0].state == optuna.trial.TrialState.FAIL


@pytest.mark.slow
def test_two_workers_on_sqlite_reach_the_target_without_lock_errors(tmp_path):
    enqueued_study(f"sqlite:///{tmp_path / 'studies.db'}", 5)
    proc = start(tmp_path, "run", "--trials", "4", "--epochs", "2", "--workers", "2")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "locked" not in err.lower() and "Traceback" not in err
    study = optuna.load_study(study_name="segnet", storage=f"sqlite:///{tmp_path / 'studies.db'}")
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    assert 4 <= len(finished_trials(study)) <= 5  # up to N + W - 1
    assert len({t.user_attrs["worker"] for t in finished_trials(study)}) == 2  # both workers ran trials


SERVERS = ["postgres", "mysql"]  # conftest's postgres_url and mysql_url: fail in CI without the server, else skip


@pytest.fixture
def url(request):
    """The storage URL of the server the test is parametrized with; None for a new SQLite file."""
    return None if request.param == "sqlite" else request.getfixturevalue(f"{request.param}_url")


@pytest.mark.slow
@pytest.mark.parametrize("url", SERVERS, indirect=True)
def test_two_machines_share_one_server_study(tmp_path, url):
    """Two independent `run` commands (as on two machines) against one PostgreSQL or MySQL study."""
    name = f"t{uuid.uuid4().hex[:10]}"
    enqueued_study(url, 5, name)
    args = ["run", "--trials", "4", "--epochs", "2", "--storage", url, "--study", name, "--quiet"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    procs = [start(tmp_path / "a", *args, env={"OMP_NUM_THREADS": "1"}), start(tmp_path / "b", *args, env={"OMP_NUM_THREADS": "1"})]
    try:
        for p in procs:
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, err
        study = optuna.load_study(study_name=name, storage=url)
        numbers = [t.number for t in study.trials]
        assert len(numbers) == len(set(numbers))
        assert 4 <= len(finished_trials(study)) <= 5
        assert len({t.user_attrs["worker"] for t in finished_trials(study)}) == 2
    finally:
        for p in procs:
            p.kill()
        optuna.delete_study(study_name=name, storage=url)


@pytest.mark.slow
@pytest.mark.parametrize("url", SERVERS[:1], indirect=True)
def test_two_workers_interrupted_keep_the_enqueued_baseline_and_resume_it(tmp_path, url):
    """Ctrl-C on `run --workers 2 --enqueue` against PostgreSQL: the baseline is queued again
    with its params, and the rerun continues it from its resume point (it was lost before)."""
    name = f"t{uuid.uuid4().hex[:10]}"
    baseline = json.dumps(dict(SMALL_PARAMS, lr=1.23e-3))
    args = ["run", "--trials", "2", "--epochs", "8", "--workers", "2", "--storage", url, "--study", name,
            "--quiet", "--enqueue", baseline]
    env = {"OMP_NUM_THREADS": "1", "SEGNET_RESUME_SECONDS": "0"}
    enqueued_study(url, 1, name)  # the other worker's trial: small too, whatever the sampler would draw
    proc = start(tmp_path, *args, env=env)
    try:
        deadline = time.monotonic() + 300
        while not any(len(t.intermediate_values) >= 2 and t.params.get("lr") == pytest.approx(1.23e-3)
                      for t in _server_trials(url, name)):  # the baseline itself has run two epochs
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
            time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130 and "Traceback" not in err, err
        rerun = subprocess.run(sweep_cmd(*args), cwd=tmp_path, capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT), **env})
        assert rerun.returncode == 0, rerun.stderr
        study = optuna.load_study(study_name=name, storage=url)
        runs = [t for t in study.trials if t.params.get("lr") == pytest.approx(1.23e-3)]
        assert runs[0].state == optuna.trial.TrialState.FAIL and runs[0].user_attrs["fail_reason"].startswith("interrupted")
        assert runs[-1].state == optuna.trial.TrialState.COMPLETE
        assert runs[-1].user_attrs["resumed_at_epoch"] >= 2  # continued from its point, not restarted
        assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    finally:
        proc.kill()
        optuna.delete_study(study_name=name, storage=url)


def _server_trials(url: str, name: str) -> list:
    try:
        return optuna.load_study(study_name=name, storage=url).trials
    except KeyError:  # not created yet
        return []


@pytest.mark.parametrize("url", SERVERS, indirect=True)
def test_server_is_reachable_when_configured(url):
    """The storage check accepts the server the tests run against (CI fails here without one)."""
    from sweep.core.study import check_storage_url

    check_storage_url(url)


OPEN_AT = """
import sys, time
import optuna
from sweep.core import study as st
url, at = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, at - time.time()))
optuna.create_study(storage=st.make_storage(url), study_name="segnet", direction="maximize", load_if_exists=True)
"""


@contextlib.contextmanager
def empty_database(url: str | None, tmp_path: Path):
    """A new, empty database: a file for SQLite, a database of its own on a server (dropped after)."""
    if url is None:
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"race_{uuid.uuid4().hex[:10]}"
    server = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with server.connect() as con:
        con.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with server.connect() as con:
            con.execute(sqlalchemy.text(f"DROP DATABASE {name}"))
        server.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("url", ["sqlite", *SERVERS], indirect=True)
def test_workers_opening_one_empty_database_at_once_all_start(tmp_path, url):
    """Machines started together against a new database each create Optuna's schema; one wins,
    and the others must go on with its tables instead of failing on a duplicate."""
    with empty_database(url, tmp_path) as fresh:
        at = time.time() + 4.0  # every process has imported by then, and all open at once
        procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT, fresh, str(at)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
        errors = [err for p in procs for _, err in [p.communicate(timeout=300)] if p.returncode != 0]
        assert not errors, errors[0][-2000:]
        storage = optuna.storages.RDBStorage(fresh)
        try:
            assert optuna.load_study(study_name="segnet", storage=storage).trials == []
        finally:
            storage.engine.dispose()  # no connection left open: the database is dropped next


# --- trials that fail do not end the sweep ---------------------------------------------


@pytest.mark.slow
def test_diverging_trial_fails_with_reason_and_sweep_goes_on(in_tmp, monkeypatch):
    real_fit = sweep.training.objective.fit_folds
    calls = []

    def fit_with_nan_first(model_cfg, train_cfg, folds, **kw):
        calls.append(1)
        if len(calls) == 1:
            (train, val), = folds
            bad = sweep.training.train.DeviceSplit(train.images.clone(), train.masks)
            bad.images[0] = float("nan")
            return real_fit(model_cfg, train_cfg, [(bad, val)], **kw)
        return real_fit(model_cfg, train_cfg, folds, **kw)

    monkeypatch.setattr(sweep.training.objective, "fit_folds", fit_with_nan_first)
    enqueued_study("sqlite:///studies.db", 2)
    assert main(["run", "--trials", "1", "--epochs", "1", "--quiet"]) == 0
    study = optuna.load_study(study_name="segnet", storage="sqlite:///studies.db")
    first, second = study.trials
    assert first.state == optuna.trial.TrialState.FAIL
    assert first.user_attrs["fail_reason"].startswith("diverged: training loss became nan")
    assert second.state == optuna.trial.TrialState.COMPLETE


@pytest.mark.slow
def test_out_of_memory_fails_the_trial_with_reason(in_tmp, monkeypatch):
    real_fit = sweep.training.objective.fit_folds
    calls = []

    def fit_oom_first(*a, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_fit(*a, **kw)

    monkeypatch.setattr(sweep.training.objective, "fit_folds", fit_oom_first)
    enqueued_study("sqlite:///studies.db", 2)
    assert main(["run", "--trials", "1", "--epochs", "1", "--quiet"]) == 0
    first, second = optuna.load_study(study_name="segnet", storage="sqlite:///studies.db").trials
    assert first.user_attrs["fail_reason"] == "out of memory: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert second.state == optuna.trial.TrialState.COMPLETE


def test_sweep_stops_after_consecutive_failures_and_says_why(in_tmp, monkeypatch, capsys):
    def broken(*a, **kw):
        raise RuntimeError("something systematic")

    monkeypatch.setattr(sweep.training.objective, "fit_folds", broken)
    assert main(["run", "--trials", "20", "--epochs", "1", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert f"stopped after {MAX_CONSECUTIVE_FAILURES} failed trials in a row" in out
    assert "RuntimeError: something systematic" in out
    study = optuna.load_study(study_name="segnet", storage="sqlite:///studies.db")
    assert len(study.trials) == MAX_CONSECUTIVE_FAILURES


# --- bad input: exit 2, one line naming it, existing study byte-identical -----------------


@pytest.fixture
def existing_study(one_trial_study):
    return one_trial_study


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("studies.db*"))}


def _bad_data(root: Path, kind: str) -> Path:
    data = write_coursework(root / "data", n=(3, 2, 2))
    img = data / "train" / "image" / "train00.png"
    msk = data / "train" / "mask" / "train00_mask.png"
    if kind == "empty split":
        for p in (data / "val" / "image").glob("*.png"):
            p.unlink()
        return data / "val" / "image"
    if kind == "image without mask":
        msk.unlink()
        return msk
    if kind == "mask values":
        write_png(msk, np.full((16, 16), 7, np.uint8))
        return msk
    if kind == "mask shape":
        write_png(msk, np.zeros((16, 12), np.uint8))
        return msk
    if kind == "image sizes":
        write_png(data / "val" / "image" / "val00.png", random_image(0, (20, 20)))
        write_png(data / "val" / "mask" / "val00_mask.png", np.zeros((20, 20), np.uint8))
        return data / "val" / "image" / "val00.png"
    if kind == "colour":
        write_png(img, np.stack([random_image(1), random_image(2), random_image(3)], -1))
        return img
    if kind == "truncated":
        img.write_bytes(img.read_bytes()[:40])
        return img
    if kind == "not an image":
        img.write_bytes(b"hello")
        return img
    raise ValueError(kind)


BAD_DATA = ["empty split", "image without mask", "mask values", "mask shape", "image sizes", "colour", "truncated", "not an image"]


def _assert_refused(argv, named, folder, capsys):
    before = digest(folder)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert named in err[0], err
    assert "Traceback" not in err[0]
    assert digest(folder) == before


@pytest.mark.parametrize("kind", BAD_DATA)
def test_bad_data_is_refused_before_the_study_is_touched(existing_study, monkeypatch, capsys, tmp_path, kind):
    monkeypatch.chdir(existing_study)
    named = _bad_data(tmp_path, kind)
    _assert_refused(["run", "--data", str(tmp_path / "data")], str(named), existing_study, capsys)


@pytest.mark.parametrize(
    "argv,named",
    [
        (["run", "--data", "does/not/exist"], "--data"),
        (["run", "--data", "phantomm"], "--data"),
        (["run", "--storage", "not a url"], "--storage"),
        (["run", "--storage", "postgresql://postgres@127.0.0.1:1/test"], "--storage"),
        (["run", "--storage", "sqlite:///no/such/folder/studies.db"], "--storage"),
        (["run", "--storage", "sqlite:////proc/studies.db"], "not writable"),
        (["run", "--trials", "0"], "--trials"),
        (["run", "--epochs", "0"], "--epochs"),
        (["run", "--workers", "-2"], "--workers"),
        (["best", "--seeds", "0"], "--seeds"),
        (["best", "--study", "nosuch"], "--study"),
        (["best", "--storage", "sqlite:///other.db"], "other.db"),
        (["run", "--data", str(ROOT.parent / "shared" / "data" / "cmri")], "other data"),
        (["run", "--enqueue", '{"lr": 0.1}'], "--enqueue"),
        (["run", "--frobnicate"], "frobnicate"),
        (["run", "--seed", "-1"], "--seed"),
        (["dashboard", "--port", "99999"], "--port"),
        (["run", "--timeout", "nan"], "--timeout"),
        (["run", "--trial", "5"], "--trial"),  # abbreviations are not taken for --trials
        (["run", "--enqueue", json.dumps({**SMALL_PARAMS, "learning_rate": 0.5})], "learning_rate"),
        # a complete configuration with one value outside its range: Optuna only warned and ran it
        (["run", "--trials", "2", "--epochs", "1", "--enqueue", json.dumps({**SMALL_PARAMS, "lr": 5.0})], "lr 5 is outside 0.0001..0.01"),
        (["run", "--trials", "2", "--epochs", "1", "--enqueue", json.dumps({**SMALL_PARAMS, "depth": 99})], "depth 99 is outside 3..5"),
        # an empty --enqueue was ignored (the run went on without it); a mistyped file was reported as bad JSON
        (["run", "--trials", "2", "--epochs", "1", "--enqueue", ""], "--enqueue is empty"),
        (["run", "--enqueue", "params.jsn"], "no such file or preset"),
        # refused before the retraining: a bad --out crashed with a traceback after it, --top beyond the
        # complete trials silently ensembled fewer
        (["best", "--evaluate", "--seeds", "1", "--holdout", "0", "--out", "studies.db"], "--out studies.db"),
        (["best", "--evaluate", "--seeds", "1", "--holdout", "0", "--out", "/proc/best"], "--out /proc/best"),
        (["best", "--evaluate", "--seeds", "1", "--holdout", "0", "--top", "2", "--out", "top2"], "--top 2"),
        (["run", "--trials", "1", "--epochs", "1", "--study", ""], "--study ''"),
        (["run", "--storage", "sqlite:///."], "is a folder"),
        (["status", "--storage", "sqlite:///."], "is a folder"),
        (["run", "--artifacts", "/no/such/folder/artifacts"], "--artifacts"),
        (["run", "--artifacts", "s3://bucket/with/prefix"], "--artifacts"),
        pytest.param(["best", "--evaluate", "--device", "cuda"], "--device",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
        # torch.device parses these, but no trial can train on them: every trial failed, the study grew
        (["run", "--device", "meta"], "--device 'meta'"),
        (["run", "--device", "mps"], "--device 'mps'"),
        (["best", "--evaluate", "--device", "cpu:3"], "--device 'cpu:3'"),
        (["run", "--device", "cuda:99"], "--device 'cuda:99'"),
    ],
)
def test_bad_flags_are_refused_before_the_study_is_touched(existing_study, monkeypatch, capsys, argv, named):
    if "cmri" in " ".join(argv) and not (ROOT.parent / "shared" / "data" / "cmri").is_dir():
        pytest.skip("real data not present")
    monkeypatch.chdir(existing_study)
    _assert_refused(argv, named, existing_study, capsys)
    assert not (existing_study / "other.db").exists()


def test_best_on_a_study_without_complete_trials(in_tmp, capsys):
    optuna.create_study(study_name="empty", storage="sqlite:///studies.db")
    assert main(["best", "--study", "empty"]) == 2
    assert "no complete trial" in capsys.readouterr().err


@pytest.mark.slow
def test_no_traceback_from_the_real_command_line(tmp_path):
    """The same refusal through a real process: exit 2, one line on stderr."""
    res = subprocess.run(sweep_cmd("run", "--trials", "-1"), cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "--trials" in res.stderr and "Traceback" not in res.stderr


CLAIMER = """
import json, sys, time
import optuna
from sweep.core import study as st

optuna.logging.set_verbosity(optuna.logging.ERROR)
study = optuna.load_study(study_name="race", storage=st.make_storage(sys.argv[1], heartbeat=False))
claimed, errors = [], []
while True:
    trial = study.ask()
    x = trial.suggest_float("x", 0, 1)
    if trial.number >= int(sys.argv[2]):  # the queue is empty: this one was sampled, not enqueued
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        break
    time.sleep(0.005)
    try:
        study.tell(trial, x)
        claimed.append(trial.number)
    except Exception as err:
        errors.append(f"trial {trial.number}: {err}")
print(json.dumps({"claimed": claimed, "errors": errors}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("attempt", [0, 1])
def test_workers_never_claim_the_same_enqueued_trial_on_sqlite(tmp_path, attempt):
    """SQLite ignores SELECT ... FOR UPDATE: without BEGIN IMMEDIATE two workers could take one queued trial."""
    url, n = f"sqlite:///{tmp_path / 'race.db'}", 80
    study = optuna.create_study(study_name="race", storage=sweep.core.study.make_storage(url, heartbeat=False))
    for i in range(n):
        study.enqueue_trial({"x": i / n})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, url, str(n)], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    claimed = [number for r in results for number in r["claimed"]]
    assert [e for r in results for e in r["errors"]] == []
    assert sorted(claimed) == list(range(n))  # every queued trial exactly once


def test_sqlite_studies_use_the_rollback_journal_and_leave_wal_behind(tmp_path):
    """WAL's shared-memory index lost a run's writes on a GPU machine; a file left in WAL mode is switched back."""
    import sqlite3

    old = tmp_path / "old.db"
    with sqlite3.connect(old) as con:
        assert con.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    for db in (tmp_path / "new.db", old):
        storage = st.make_storage(f"sqlite:///{db}", heartbeat=False)
        study = optuna.create_study(study_name="s", storage=storage)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        storage.engine.dispose()
        with sqlite3.connect(db) as con:
            assert con.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert not db.with_name(db.name + "-wal").exists()
        assert len(optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials) == 3
