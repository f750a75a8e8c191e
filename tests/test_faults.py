"""Faults outside the tool's control: a damaged database, a read-only mount, a full disk, signals."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from sweep.cli import main
from sweep.search.presets import preset

ROOT = Path(__file__).resolve().parents[1]
SMALL = preset("small")


def copy_study(source: Path, target: Path) -> None:
    """studies.db with its WAL files (recent commits may still live there) and its artifacts."""
    for path in source.glob("studies.db*"):
        shutil.copy(path, target / path.name)
    shutil.copytree(source / "artifacts", target / "artifacts")


@pytest.fixture
def made_study(one_trial_study):
    return one_trial_study


@contextmanager
def tmpfs(mountpoint: Path, size: str):
    """A fresh tmpfs at ``mountpoint`` (skips the test where mounting is not allowed)."""
    mountpoint.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "--lazy", str(mountpoint)], capture_output=True)  # lazy: pooled connections may hold it


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize("argv", [["status"], ["best"], ["export", "--csv", "t.csv"], ["report"], ["run", "--trials", "2"]])
def test_a_truncated_database_is_one_line(made_study, tmp_path, monkeypatch, capsys, argv):
    db = made_study / "studies.db"
    (tmp_path / "studies.db").write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    line = _one_line_error(capsys)
    assert "malformed" in line or "not a database" in line


@pytest.fixture
def read_only_copy(made_study, tmp_path):
    """The study on a real read-only mount (root can write through file permissions, not through ro)."""
    with tmpfs(tmp_path / "ro", "8m") as mnt:
        copy_study(made_study, mnt)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        yield mnt


def test_a_study_on_a_read_only_mount_can_be_inspected(read_only_copy, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(read_only_copy)
    before = hashlib.sha256((read_only_copy / "studies.db").read_bytes()).hexdigest()
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["finished"] == 1
    assert main(["best", "--json"]) == 0
    assert main(["export", "--csv", str(tmp_path / "t.csv")]) == 0
    assert main(["report", "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").stat().st_size > 0
    assert hashlib.sha256((read_only_copy / "studies.db").read_bytes()).hexdigest() == before
    capsys.readouterr()
    assert main(["run", "--trials", "2"]) == 2  # writing is refused in one line
    assert "not writable" in _one_line_error(capsys)


@pytest.mark.slow
def test_a_full_disk_during_run_is_one_line(tmp_path, capsys, monkeypatch):
    # A beat a second: the heartbeat thread then meets the full disk too, and must print nothing of it.
    monkeypatch.setattr("sweep.core.study.HEARTBEAT_INTERVAL", 1)
    with tmpfs(tmp_path / "tiny", "400k") as mnt:
        argv = ["run", "--trials", "50", "--epochs", "1", "--quiet", "--storage", f"sqlite:///{mnt / 'studies.db'}",
                "--artifacts", str(mnt / "artifacts"), "--enqueue", json.dumps(SMALL)]
        thread_errors = []
        monkeypatch.setattr(threading, "excepthook", thread_errors.append)  # (pytest's own hook hides them)
        code = main(argv)
        out = capsys.readouterr()
        assert code == 1, out
        assert "Traceback" not in out.err
        assert thread_errors == []  # the heartbeat thread died printing its tracebacks, before
        [line] = [line for line in out.err.splitlines() if not line.startswith("warning: ")]  # (uploads retried)
        assert "full" in line or "No space left" in line


@pytest.mark.slow
def test_sigterm_during_evaluate_says_how_to_rerun(made_study, tmp_path):
    copy_study(made_study, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "sweep", "best", "--evaluate", "--seeds", "50", "--out", "ev"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    while "retrain best" not in seen:  # the progress bar: retraining has started
        chunk = proc.stderr.read(1)
        assert chunk, f"ended early: {seen}"
        seen += chunk
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=600)
    assert proc.returncode == 130
    assert "Traceback" not in rest
    assert "python -m sweep best --evaluate --seeds 50 --out ev" in rest


def test_other_data_on_a_study_is_refused_in_one_line(tmp_path, capsys):
    """A pool without --groups draws a note on how it is split; refused data must not print it
    before the refusal, so the refusal stays the one line on stderr."""
    import numpy as np
    import optuna
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        for sub, suffix, hi in (("image", "", 256), ("mask", "_mask", 4)):
            (tmp_path / "pool" / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, hi, (32, 32), dtype=np.uint8)).save(tmp_path / "pool" / sub / f"{name}{suffix}.png")
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    optuna.create_study(storage=storage, study_name="segnet").set_user_attr("data_fingerprint", "0123456789abcdef")
    capsys.readouterr()
    assert main(["run", "--data", str(tmp_path / "pool"), "--storage", storage, "--trials", "1", "--quiet"]) == 2
    assert "was run on other data" in _one_line_error(capsys)


def _foreign_study(storage: str, kind: str):
    """A study a plain Optuna script made, without this tool's attributes."""
    import optuna

    if kind == "multi-objective":
        return optuna.create_study(storage=storage, study_name="segnet", directions=["minimize", "maximize"])
    study = optuna.create_study(storage=storage, study_name="segnet", direction="minimize" if kind == "minimise" else "maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    return study


@pytest.mark.parametrize("kind,named", [("other params", "not of this search space"), ("minimise", "minimises"),
                                        ("multi-objective", "2 objectives")])
@pytest.mark.slow
def test_run_refuses_a_study_another_tool_made(tmp_path, monkeypatch, capsys, kind, named):
    """Such a study was taken over: its trials counted toward --trials and could be 'best' (or, minimised,
    the worst Dice won); a multi-objective one crashed with a traceback."""
    monkeypatch.chdir(tmp_path)
    _foreign_study("sqlite:///studies.db", kind)
    before = hashlib.sha256((tmp_path / "studies.db").read_bytes()).hexdigest()
    capsys.readouterr()
    assert main(["run", "--trials", "3", "--epochs", "1", "--quiet", "--enqueue", json.dumps(SMALL)]) == 2
    assert named in _one_line_error(capsys)
    assert hashlib.sha256((tmp_path / "studies.db").read_bytes()).hexdigest() == before
    if kind == "multi-objective":
        for argv in (["status"], ["best"], ["report", "--out", "r.html"]):
            assert main(argv) == 2
            assert named in _one_line_error(capsys)


@pytest.mark.parametrize("argv", [["status"], ["best"], ["export", "--csv", "t.csv"], ["report"], ["best", "--evaluate"]])
@pytest.mark.parametrize("content", ["empty", "another program's"])
def test_a_database_without_optuna_tables_is_named_and_left_alone(tmp_path, monkeypatch, capsys, argv, content):
    """Read-only commands ended with exit 1 and "attempt to write a readonly database"; best --evaluate
    would have added Optuna's tables to the file."""
    import sqlite3

    monkeypatch.chdir(tmp_path)
    db = tmp_path / "studies.db"
    db.touch()
    if content != "empty":
        with sqlite3.connect(db) as con:
            con.execute("CREATE TABLE notes (text)")
    before = db.read_bytes()
    capsys.readouterr()
    assert main(argv) == 2
    assert "holds no Optuna study" in _one_line_error(capsys)
    assert db.read_bytes() == before
