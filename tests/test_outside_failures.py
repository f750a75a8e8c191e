"""Failures outside the tool (a lost database, a store that is down, damaged or vanished files,
signals): each ends in one line naming the storage or location, or is survived with a warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from sweep.cli import main
from sweep.search.presets import preset

ROOT = Path(__file__).resolve().parents[1]
SMALL = json.dumps(preset("small"))


def start(cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sweep", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})})


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if proc.poll() is not None:
            raise AssertionError(f"ended (exit {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, f"no {what} in time"
        time.sleep(0.2)
    return value


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err
    return lines[0]


# --- 4: the database dropped mid-run --------------------------------------------------------------


@contextmanager
def own_database(url: str):
    """A database of this test's own on the server (terminating its connections harms no one else)."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    name = f"outside_{uuid.uuid4().hex[:10]}"
    server = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with server.connect() as con:
        con.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    try:
        # A password (the server trusts the test's connections, so any will do) must not be shown.
        yield name, make_url(url).set(database=name, password="s3cret").render_as_string(hide_password=False), server
    finally:
        with server.connect() as con:
            con.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        server.dispose()


def drop_connections(server, name: str) -> None:
    """The database goes away: no new connection is let in, and every open one is terminated."""
    import sqlalchemy

    with server.connect() as con:
        con.execute(sqlalchemy.text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        con.execute(sqlalchemy.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": name})


def running_epoch(server, name: str) -> bool:
    import sqlalchemy

    db = server.execution_options(isolation_level="AUTOCOMMIT")
    url = db.url.set(database=name)
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as con:
            return con.execute(sqlalchemy.text(
                "SELECT 1 FROM trials t JOIN trial_intermediate_values v ON v.trial_id = t.trial_id "
                "WHERE t.state = 'RUNNING' LIMIT 1")).first() is not None
    except sqlalchemy.exc.SQLAlchemyError:  # the run has not made its tables yet
        return False
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_database_dropped_mid_run_is_one_line(tmp_path, postgres_url, workers):
    with own_database(postgres_url) as (name, url, server):
        proc = start(tmp_path, "run", "--storage", url, "--trials", "3", "--epochs", "3", "--workers", str(workers),
                     "--enqueue", SMALL, "--quiet", env={"SEGNET_RESUME_SECONDS": "0"})
        wait_for(lambda: running_epoch(server, name), proc, "a running trial's first epoch")
        drop_connections(server, name)
        _, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err[-3000:]
    line = one_line(err)
    assert line.startswith(f"error: --storage {url.replace('s3cret', '***')}: "), line


# --- 5: the S3 endpoint down when a study's recorded store is used -------------------------------


def closed_port() -> str:
    """An endpoint nothing listens on: the store is down."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def study_copy(one_trial_study, tmp_path, monkeypatch):
    """The one-trial study (its database and artifacts) in an empty folder, with a cache of its own."""
    import shutil

    for path in one_trial_study.glob("studies.db*"):
        shutil.copy(path, tmp_path / path.name)
    shutil.copytree(one_trial_study / "artifacts", tmp_path / "artifacts")
    record_location(tmp_path, str(tmp_path / "artifacts"))  # (the original records its own, absolute)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEGNET_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def record_location(folder: Path, location: str, model: bytes | None = None) -> None:
    """Record ``location`` as the study's artifact location, with a ``model.pt`` there if given."""
    import optuna

    from sweep.core import artifacts

    study = optuna.load_study(study_name="segnet", storage=f"sqlite:///{folder / 'studies.db'}")
    artifacts.record(study, location)
    if model is not None:
        (folder / "model.pt").write_bytes(model)
        optuna.artifacts.upload_artifact(artifact_store=artifacts.open_store(location), file_path=str(folder / "model.pt"),
                                         study_or_trial=study)


@pytest.mark.parametrize("argv", [["run", "--trials", "2", "--epochs", "1", "--quiet"], ["predict", "--study", "segnet", "x.png"],
                                  ["best", "--evaluate", "--seeds", "1", "--quiet"]])
def test_a_recorded_store_that_is_down_is_one_line(study_copy, bucket, monkeypatch, capsys, argv):
    record_location(study_copy, bucket, model=b"a model")
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed_port())
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # botocore's backoff is not what is tested
    capsys.readouterr()
    assert main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert bucket in line and "cannot reach the bucket" in line, line


# --- 8: the artifact folder deleted ---------------------------------------------------------------


def test_predict_from_a_study_whose_artifact_folder_was_deleted_is_one_line(study_copy, capsys):
    import shutil

    record_location(study_copy, str(study_copy / "artifacts"), model=b"a model")
    shutil.rmtree(study_copy / "artifacts")
    capsys.readouterr()
    assert main(["predict", "--study", "segnet", "x.png"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "model.pt is missing from its artifact location" in line and str(study_copy / "artifacts") in line


def test_report_without_its_artifact_folder_notes_the_missing_pictures(study_copy, capsys):
    import shutil

    shutil.rmtree(study_copy / "artifacts")
    assert main(["report", "--out", "r.html"]) == 0
    assert f"not in the artifact location {study_copy / 'artifacts'}" in (study_copy / "r.html").read_text()


@pytest.mark.parametrize("argv", [["report", "--out", "r.html"], ["run", "--trials", "2", "--epochs", "1", "--quiet"]])
def test_an_artifact_location_that_became_a_file_is_one_line(study_copy, capsys, argv):
    import shutil

    shutil.rmtree(study_copy / "artifacts")
    (study_copy / "artifacts").write_text("not a folder")
    capsys.readouterr()
    assert main(argv) == 2
    assert str(study_copy / "artifacts") in one_line(capsys.readouterr().err)
    assert not (study_copy / "r.html").exists()


@pytest.mark.slow
def test_an_artifact_folder_deleted_mid_run_is_made_again(tmp_path):
    import shutil

    import optuna

    from sweep.core.records import TrialKey

    proc = start(tmp_path, "run", "--trials", "1", "--epochs", "5", "--quiet", "--enqueue", SMALL,
                 env={"SEGNET_RESUME_SECONDS": "3600"})  # no resume point remakes the folder first
    wait_for(lambda: running_trial_epoch(tmp_path / "studies.db"), proc, "the trial's first epoch")
    shutil.rmtree(tmp_path / "artifacts")
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0 and "warning" not in err, err[-3000:]
    trial = finished_trial(tmp_path)
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert (tmp_path / "artifacts" / trial.user_attrs[TrialKey.CHECKPOINT]).is_file()


# --- 9: a store with no bucket; local locations recorded absolute --------------------------------


@pytest.mark.parametrize("location", ["s3://", "gs://", "s3:///", "http://example.org/x"])
def test_an_artifact_location_without_a_bucket_is_refused(in_tmp, capsys, location):
    assert main(["run", "--trials", "1", "--epochs", "1", "--quiet", "--artifacts", location]) == 2
    assert "--artifacts" in one_line(capsys.readouterr().err)
    assert not list(in_tmp.iterdir())  # no study, no folder "s3:"


def test_a_relative_artifact_folder_is_recorded_absolute(in_tmp):
    import optuna

    from sweep.core.records import StudyKey

    assert main(["run", "--trials", "1", "--epochs", "1", "--quiet", "--enqueue", SMALL, "--artifacts", "arts"]) == 0
    study = optuna.load_study(study_name="segnet", storage="sqlite:///studies.db")
    assert study.user_attrs[StudyKey.ARTIFACTS]["location"] == str(in_tmp / "arts")


# --- 7: a damaged preprocessing cache -------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated npz", "emptied npz", "garbage npz", "emptied json"])
def test_a_damaged_cache_entry_is_rebuilt_with_one_line(tmp_path, monkeypatch, capsys, damage):
    from data import load_dataset
    from data.volume_phantom import write_acdc_phantom

    root = write_acdc_phantom(tmp_path / "data", 2, n_test=1, size_range=(60, 68))
    cache = tmp_path / "cache"
    monkeypatch.setenv("SEGNET_CACHE_DIR", str(cache))
    first = load_dataset(str(root))
    npz, meta = next(cache.rglob("*.npz")), next(cache.rglob("*.json"))
    damaged = {"truncated npz": (npz, npz.read_bytes()[: npz.stat().st_size // 2]), "emptied npz": (npz, b""),
               "garbage npz": (npz, b"PK\x03\x04" + os.urandom(4000)), "emptied json": (meta, b"")}[damage]
    damaged[0].write_bytes(damaged[1])
    capsys.readouterr()
    again = load_dataset(str(root))
    line = one_line(capsys.readouterr().err)
    assert "damaged" in line and str(damaged[0]) in line
    assert again.fingerprint == first.fingerprint
    load_dataset(str(root))  # rebuilt: a hit, silent
    assert capsys.readouterr().err == ""


# --- 6: a store outage during a trial ------------------------------------------------------------


def finished_trial(folder: Path):
    import optuna

    study = optuna.load_study(study_name="segnet", storage=f"sqlite:///{folder / 'studies.db'}")
    (trial,) = study.trials
    return trial


class Relay:
    """A TCP relay to the S3 server that can go down (cutting its open connections, refusing new
    ones) and come back on the same port: the store's endpoint in an outage."""

    def __init__(self, endpoint: str) -> None:
        import socket
        import threading

        self.target = ("127.0.0.1", int(endpoint.rsplit(":", 1)[1]))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.up, self.refused, self.open = threading.Event(), 0, set()
        self.up.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def down(self) -> None:
        self.up.clear()
        for conn in list(self.open):
            conn.close()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            conn, _ = self.listener.accept()
            if not self.up.is_set():
                self.refused += 1
                conn.close()
                continue
            upstream = socket.create_connection(self.target)
            self.open |= {conn, upstream}
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a, b) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for conn in (a, b):
                self.open.discard(conn)
                conn.close()


def running_trial_epoch(db: Path) -> bool:
    import sqlite3
    from contextlib import closing

    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
            return con.execute("SELECT 1 FROM trials t JOIN trial_intermediate_values v ON v.trial_id = t.trial_id "
                               "WHERE t.state = 'RUNNING' LIMIT 1").fetchone() is not None
    except sqlite3.Error:  # not made yet
        return False


@pytest.mark.slow
def test_a_store_outage_during_a_trial_costs_no_trial(tmp_path, bucket, s3_server):
    """The store's endpoint goes down after the trial's first epoch and comes back once the run has
    been refused a few times: warnings, and the trial trains to its end, its checkpoint uploaded."""
    import optuna

    from sweep.core.records import TrialKey

    relay = Relay(s3_server["endpoint"])
    proc = start(tmp_path, "run", "--trials", "1", "--epochs", "4", "--quiet", "--enqueue", SMALL, "--artifacts", bucket,
                 env={"AWS_ENDPOINT_URL": relay.endpoint, "AWS_MAX_ATTEMPTS": "1", "SEGNET_RESUME_SECONDS": "0",
                      "SEGNET_CACHE_DIR": str(tmp_path / "cache")})
    wait_for(lambda: running_trial_epoch(tmp_path / "studies.db"), proc, "the trial's first epoch")
    relay.down()
    wait_for(lambda: relay.refused >= 3, proc, "the run meeting the outage")
    relay.up.set()
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "warning: " in err, err
    trial = finished_trial(tmp_path)
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.user_attrs[TrialKey.EPOCHS_RUN] == 4
    assert trial.user_attrs.get(TrialKey.CHECKPOINT)


@pytest.mark.slow
def test_an_unwritable_resume_folder_costs_no_trial(in_tmp, monkeypatch, capsys):
    import optuna

    from sweep.core.records import TrialKey

    (in_tmp / "artifacts").mkdir()
    (in_tmp / "artifacts" / "resume").write_text("a file where the resume folder goes")
    monkeypatch.setenv("SEGNET_RESUME_SECONDS", "0")
    assert main(["run", "--trials", "1", "--epochs", "2", "--quiet", "--enqueue", SMALL]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "resume point not written" in err, err
    trial = finished_trial(in_tmp)
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.user_attrs[TrialKey.EPOCHS_RUN] == 2


# --- 10: SIGTERM during predict, report, export, status ------------------------------------------

# The command runs in a process of its own; where it writes (or reads) the patched function sends
# that process a real SIGTERM, after writing half of its output where it writes one.
SIGNALLED = """
import os, signal, sys
from pathlib import Path
import pandas as pd
import sweep.views.report, sweep.views.status, sweep.shipping.predict
from sweep.cli import main

def term(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)

def half_csv(frame, path, **kwargs):
    Path(path).write_text(frame.to_string()[:20])
    term()

pd.DataFrame.to_csv = half_csv
sweep.views.report._Page.render = term
sweep.views.status.study_status = term
sweep.shipping.predict.load_bundle = term
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("argv, output", [(["export", "--csv", "t.csv"], "t.csv"), (["report", "--out", "r.html"], "r.html"),
                                          (["status"], None), (["predict", "--model", "m.pt", "x.png"], "predictions")])
@pytest.mark.slow
def test_sigterm_ends_every_command_in_one_line(study_copy, argv, output):
    proc = subprocess.run([sys.executable, "-c", SIGNALLED, *argv], cwd=study_copy, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert one_line(proc.stderr).startswith("interrupted; no output was left half-written; rerun with: python -m sweep")
    if output is not None:
        assert not (study_copy / output).exists()
    assert not list(study_copy.glob(".*part*"))  # nor a temporary file


@pytest.mark.slow
def test_sigterm_while_predict_writes_leaves_no_half_file(tmp_path):
    """Two images: the first mask is written whole, the second is cut off mid-write by SIGTERM."""
    import numpy as np
    import torch
    from PIL import Image

    from model import SegNet, SegNetConfig
    from sweep.nn.model_file import ModelBundle, save_bundle

    from tests.helpers import random_image, write_png

    config = SegNetConfig(depth=2, base_width=4, convs_per_stage=(1, 1))
    torch.manual_seed(0)
    bundle = ModelBundle(members=[[SegNet.from_config(config).state_dict()]], model_config=config.to_dict(), tta=False,
                         largest_component=False, class_names=["background", "RV", "myocardium", "LV"], params={},
                         preprocessing={"kind": "slices", "image_size": (32, 32), "intensity": "[0,1] then per-slice z-score"})
    save_bundle(bundle, tmp_path / "model.pt")
    for name in ("a", "b"):
        write_png(tmp_path / "in" / f"{name}.png", random_image(ord(name), (32, 32)))
    cut = SIGNALLED.replace("sweep.shipping.predict.load_bundle = term", """
from PIL import Image
real_save = Image.Image.save
def save(self, path, *args, **kwargs):
    if "b_mask" in str(path):
        Path(path).write_bytes(b"half a PNG")
        term()
    real_save(self, path, *args, **kwargs)
Image.Image.save = save""")
    proc = subprocess.run([sys.executable, "-c", cut, "predict", "--model", "model.pt", "in", "--quiet"], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert one_line(proc.stderr).startswith("interrupted; ")
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == [".segnet-outputs.json", "a_mask.png"]
    assert list(json.loads((tmp_path / "predictions" / ".segnet-outputs.json").read_text())["files"]) == ["a_mask.png"]
    assert np.asarray(Image.open(tmp_path / "predictions" / "a_mask.png")).shape == (32, 32)
