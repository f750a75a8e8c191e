import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CMRI = ROOT.parent / "shared" / "data" / "cmri"

@pytest.fixture(scope="session", autouse=True)
def own_cache(tmp_path_factory):
    """This run of the suite keeps its cache (preprocessed data, local copies of artifacts and
    resume points) in a folder of its own, not in the user's ``~/.cache/segnet-sweep``: two runs
    of the suite at once, or a run beside real work, share no folder (tests/test_side_by_side.py)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEGNET_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("SEGNET_CACHE", raising=False)
        yield


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder, as a new user would (studies.db appears there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def cmri_path():
    if not CMRI.is_dir():
        pytest.skip(f"real data not found at {CMRI}")
    return CMRI


@pytest.fixture(scope="session")
def one_trial_study(tmp_path_factory):
    """A real study of one small trial (studies.db and artifacts); tests copy it or assert it unchanged."""
    import json

    from sweep.cli import main
    from sweep.search.presets import preset

    folder = tmp_path_factory.mktemp("one-trial-study")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        assert main(["run", "--trials", "1", "--epochs", "1", "--quiet", "--enqueue", json.dumps(preset("small"))]) == 0
    return folder


@pytest.fixture
def study_copy(one_trial_study, tmp_path, monkeypatch):
    """A private copy of the one-trial study (its database and artifacts), the working folder."""
    import shutil

    for path in one_trial_study.glob("studies.db*"):
        shutil.copy(path, tmp_path / path.name)
    shutil.copytree(one_trial_study / "artifacts", tmp_path / "artifacts")
    monkeypatch.chdir(tmp_path)
    return tmp_path



POSTGRES_URL = os.environ.get("SEGNET_TEST_POSTGRES_URL") or "postgresql://postgres@127.0.0.1:5432/test"
MYSQL_URL = os.environ.get("SEGNET_TEST_MYSQL_URL") or "mysql+pymysql://root@127.0.0.1:3306/test"


def database_server(name: str, url: str) -> str:
    """``url`` where its server answers. In CI (``CI`` set, as .ci/run sets it) a server that does not
    answer fails the test that needs it; on a developer's machine that test is skipped, saying why."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 5})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as err:  # noqa: BLE001 - no server, no driver: these tests cannot run here
        why = f"no {name} at {url}: {str(err).splitlines()[0]}"
        if os.environ.get("CI"):
            pytest.fail(f"{why} (CI runs the storage tests against a real server)")
        pytest.skip(why)
    return url


@pytest.fixture(scope="session")
def postgres_url():
    """The real PostgreSQL (``SEGNET_TEST_POSTGRES_URL``, else the local test server)."""
    return database_server("PostgreSQL", POSTGRES_URL)


@pytest.fixture(scope="session")
def mysql_url():
    """The real MySQL or MariaDB (``SEGNET_TEST_MYSQL_URL``, else the local test server)."""
    return database_server("MySQL", MYSQL_URL)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API on 127.0.0.1: moto's server, with dummy credentials in the environment that
    boto3 (here and in every subprocess) reads. Yields ``{"endpoint", "env"}``; tests make buckets."""
    pytest.importorskip("boto3")
    pytest.importorskip("moto.server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        for _ in range(300):  # until it accepts connections (a few seconds at most)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, "moto's server did not start"
                time.sleep(0.1)
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            yield {"endpoint": endpoint, "env": env}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def bucket(s3_server):
    """A new, empty bucket on the S3 server; its ``s3://`` location."""
    import uuid

    import boto3

    name = f"segnet-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"
