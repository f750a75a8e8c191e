"""Several machines for real: resume points in the object store, an S3 server (moto), PostgreSQL.

A machine is simulated honestly: its own folder, HOME and cache, and its own hostname
(``unshare --uts``), sharing only the storage URL and the ``s3://`` artifact location.
"""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import optuna
import pytest
import torch
from optuna.trial import TrialState

from sweep.core import artifacts
from sweep.core import study as st
from sweep.training.resume import POINTER, BucketPoints, ResumeFile, enqueue_retry, open_points, prune_orphans

ROOT = Path(__file__).resolve().parents[1]
# A point every epoch; a killed worker's trial is noticed within seconds.
MACHINE_ENV = {"SEGNET_HEARTBEAT_INTERVAL": "1", "SEGNET_GRACE_PERIOD": "3", "SEGNET_RESUME_SECONDS": "0",
               "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
START_AT = "import sys, time\nfrom sweep.cli import main\ntime.sleep(max(0.0, float(sys.argv[1]) - time.time()))\nsys.exit(main(sys.argv[2:]))"
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "--uts", "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


needs_unshare = pytest.mark.skipif(not _can_unshare(), reason="needs `unshare --uts` (root) to give a machine its hostname")


class Machine:
    """One simulated machine: a folder with its own HOME and cache, and a hostname of its own."""

    def __init__(self, root: Path, name: str, env: dict) -> None:
        self.name, self.folder = name, root / name
        self.env = {**os.environ, **env, **MACHINE_ENV, "HOME": str(self.folder / "home"),
                    "XDG_CACHE_HOME": str(self.folder / "cache")}
        for name in ("SEGNET_CACHE_DIR", "SEGNET_CACHE"):
            self.env.pop(name, None)
        self.make()

    def make(self) -> None:
        for sub in ("home", "cache"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)

    def command(self, *args: str, at: float | None = None) -> list[str]:
        """``python -m sweep ARGS`` under this machine's hostname; with ``at`` (a ``time.time()``), imported
        first and started then, so that machines started together meet the storage in the same instant."""
        python = [sys.executable, "-m", "sweep"] if at is None else [sys.executable, "-c", START_AT, str(at)]
        return ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.name, *python, *args]

    def start(self, *args: str, at: float | None = None) -> subprocess.Popen:
        return subprocess.Popen(self.command(*args, at=at), cwd=self.folder, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def run(self, *args: str) -> str:
        done = subprocess.run(self.command(*args), cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{self.name}: {' '.join(args[:1])} exited {done.returncode}\n{done.stderr[-3000:]}"
        return done.stdout

    def vanish(self) -> None:
        shutil.rmtree(self.folder)

    def files(self) -> list[Path]:
        return [p for p in self.folder.rglob("*") if p.is_file()] if self.folder.exists() else []


def bucket_keys(location: str, prefix: str = "") -> list[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=location[len("s3://"):], Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def stored_point(location: str, name: str) -> dict:
    body = boto3.client("s3").get_object(Bucket=location[len("s3://"):], Key=f"resume/{name}")["Body"].read()
    return torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)["point"]


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, f"no {what} in time"
        time.sleep(0.2)


def fail_stale(url: str, name: str, number: int, timeout: float = 120) -> None:
    """Poll as a starting worker does until the dead machine's trial is failed (and its retry queued)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(st, "HEARTBEAT_INTERVAL", 1)
        mp.setattr(st, "GRACE_PERIOD", 3)
        study = optuna.load_study(study_name=name, storage=st.make_storage(url))
    deadline = time.monotonic() + timeout
    while study.trials[number].state == TrialState.RUNNING:
        assert time.monotonic() < deadline, "the dead machine's trial was never failed"
        optuna.storages.fail_stale_trials(study)
        time.sleep(0.3)


# --- resume points in the object store -------------------------------------------------------


def test_points_in_a_bucket_are_new_objects_the_trial_points_at(bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGNET_CACHE_DIR", str(tmp_path / "cache-a"))
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'db.sqlite'}", direction="maximize")
    trial = study.ask()
    points = open_points(bucket)
    assert isinstance(points, BucketPoints)
    point_file = ResumeFile(points, "s", trial.number, identity={"seed": 1}, trial=trial)
    for epoch in (1, 2):
        point_file.save({"epoch": epoch})
    name, = bucket_keys(bucket, "resume/")  # the previous point is deleted once the trial points at the new one
    assert study.trials[0].system_attrs[POINTER] == name[len("resume/"):]
    assert (tmp_path / "cache-a").rglob(name[len("resume/"):]).__next__().is_file()  # the local copy

    # The machine is lost: its trial is failed, the retry inherits the pointer.
    assert enqueue_retry(trial)
    study.tell(trial, state=TrialState.FAIL)
    with pytest.raises(RuntimeError):  # a worker whose trial was given up cannot point it elsewhere
        point_file.save({"epoch": 3})
    point_file.remove()  # nor delete what the retry works from
    assert bucket_keys(bucket, "resume/") == [name]

    monkeypatch.setenv("SEGNET_CACHE_DIR", str(tmp_path / "cache-b"))  # another machine: nothing local
    retry = study.ask()
    elsewhere = ResumeFile(open_points(bucket), "s", 0, identity={"seed": 1}, trial=retry)
    assert elsewhere.load() == {"epoch": 2}
    assert ResumeFile(open_points(bucket), "s", 0, identity={"seed": 2}, trial=retry).load() is None  # another identity
    elsewhere.save({"epoch": 3})
    elsewhere.remove()  # the chain ended
    assert bucket_keys(bucket, "resume/") == []


def test_points_of_chains_nothing_continues_are_pruned_from_the_bucket_and_the_cache(bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGNET_CACHE_DIR", str(tmp_path / "cache"))
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'db.sqlite'}", direction="maximize")
    ended, running = study.ask(), study.ask()
    points = open_points(bucket)
    for trial in (ended, running):
        ResumeFile(points, "s", trial.number, trial=trial).save({"epoch": 1})
    study.tell(ended, state=TrialState.FAIL)  # no retry queued: its point is an orphan
    ResumeFile(points, "other", ended.number).save({"epoch": 1})  # another study's chain
    removed = prune_orphans(open_points(bucket), study)
    assert [n.split("-")[1] for n in removed] == [f"trial{ended.number}"]
    left = sorted(k[len("resume/"):] for k in bucket_keys(bucket, "resume/"))
    assert left == sorted([study.trials[running.number].system_attrs[POINTER], f"other-trial{ended.number}.pt"])
    assert sorted(p.name for p in points.cache.folder.iterdir()) == left


def test_a_bucket_that_cannot_be_reached_is_refused_before_the_study_is_touched(s3_server, in_tmp, monkeypatch, capsys):
    from sweep.cli import main

    args = ["run", "--trials", "1", "--epochs", "1", "--enqueue", "small", "--quiet"]
    assert main([*args, "--artifacts", f"s3://missing-{uuid.uuid4().hex[:8]}"]) == 2
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(in_tmp / "none"))
    assert main([*args, "--artifacts", "s3://any"]) == 2
    err = capsys.readouterr().err
    assert err.count("cannot reach the bucket") == 2 and "AWS_ENDPOINT_URL" in err and "Traceback" not in err
    assert not (in_tmp / "studies.db").exists()


def test_predict_without_a_model_needs_an_evaluated_study(one_trial_study, monkeypatch):
    from sweep.cli import main

    monkeypatch.chdir(one_trial_study)
    assert main(["predict", "x.png"]) == 2


# --- three machines: a kill on one, the retry on another, shipping on a third ---------------


@needs_unshare
@pytest.mark.slow
def test_a_trial_killed_on_one_machine_continues_on_another_and_a_third_ships_it(tmp_path, postgres_url, bucket, s3_server):
    name = f"m{uuid.uuid4().hex[:10]}"
    a, b, c = (Machine(tmp_path, f"machine-{x}", s3_server["env"]) for x in "abc")
    run = ("run", "--trials", "1", "--epochs", "10", "--storage", postgres_url, "--study", name,
           "--artifacts", bucket, "--enqueue", "small", "--quiet")
    try:
        proc = a.start(*run)
        try:
            def pointed():
                try:
                    trials = optuna.load_study(study_name=name, storage=postgres_url).trials
                except KeyError:
                    return None
                return trials and trials[0].state == TrialState.RUNNING and len(trials[0].intermediate_values) >= 2 \
                    and trials[0].system_attrs.get(POINTER)

            wait_for(pointed, proc, "a resume point of the second epoch")
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
        finally:
            proc.kill()
        killed = optuna.load_study(study_name=name, storage=postgres_url).trials[0]
        last_point = stored_point(bucket, killed.system_attrs[POINTER])["epoch"]
        assert last_point >= 2 and killed.user_attrs["worker"].startswith("machine-a:")
        assert any(p.parent.name.startswith("s3") for p in a.files() if p.suffix == ".pt")  # A kept a local copy
        a.vanish()

        fail_stale(postgres_url, name, killed.number)
        summary = json.loads(b.run(*run[:-1], "--json"))
        assert summary["finished"] == 1
        study = optuna.load_study(study_name=name, storage=postgres_url)
        first, retry = study.trials
        assert first.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
        assert retry.params == first.params and retry.user_attrs["worker"].startswith("machine-b:")
        assert retry.user_attrs["resumed_at_epoch"] == last_point  # from A's last point: no epoch before it retrained
        assert retry.user_attrs["epochs_run"] == 10 and sorted(retry.intermediate_values) == list(range(1, 11))
        assert bucket_keys(bucket, "resume/") == []  # the chain finished: its points are gone from the store
        assert not [p for p in b.files() if p.suffix == ".pt"]  # and from B's cache

        c.run("best", "--evaluate", "--seeds", "1", "--storage", postgres_url, "--study", name, "--out", "shipped", "--quiet")
        c.vanish()  # nothing local: what follows comes from PostgreSQL and the bucket
        c.make()
        slice_png = c.folder / "slice.png"
        from data import make_phantom
        from tests.helpers import write_png

        images, _ = make_phantom(1, seed=3)
        write_png(slice_png, (images[0] * 255).clip(0, 255).astype("uint8"))
        c.run("predict", "--storage", postgres_url, "--study", name, "slice.png", "--out", "pred", "--quiet")
        assert (c.folder / "pred" / "slice_mask.png").is_file()
        c.run("report", "--storage", postgres_url, "--study", name, "--out", "report.html")
        page = (c.folder / "report.html").read_text()
        assert page.count('<img alt="') == 2 and "artifact not readable" not in page  # the trial's picture, the test overlay
        assert "trial 1: validation predictions" in page and "test predictions" in page
    finally:
        optuna.delete_study(study_name=name, storage=postgres_url)


@needs_unshare
@pytest.mark.slow
def test_machines_starting_together_on_an_empty_database_both_run(tmp_path, postgres_url, bucket, s3_server):
    """Two machines open one new PostgreSQL database in the same instant: both create Optuna's
    schema and the study, both record its metadata, and both run (``study._open_rdb``'s retry)."""
    from tests.test_reliability import empty_database

    with empty_database(postgres_url, tmp_path) as fresh:
        machines = [Machine(tmp_path, f"machine-{x}", s3_server["env"]) for x in "ab"]
        at = time.time() + 6.0  # both have imported by then
        procs = [m.start("run", "--trials", "1", "--epochs", "1", "--storage", fresh, "--artifacts", bucket,
                         "--enqueue", "small", "--quiet", "--json", at=at) for m in machines]
        try:
            results = [(p.returncode, out, err) for p in procs for out, err in [p.communicate(timeout=300)]]
        finally:
            for p in procs:
                p.kill()
        for code, _, err in results:
            assert code == 0, err[-3000:]
        storage = optuna.storages.RDBStorage(fresh)
        try:
            study = optuna.load_study(study_name="segnet", storage=storage)
            finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
            assert 1 <= len(finished) <= 2 and not study.get_trials(states=(TrialState.RUNNING,))
            assert study.user_attrs["artifacts"]["location"] == bucket
        finally:
            storage.engine.dispose()
