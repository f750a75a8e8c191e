"""Failures outside the tool (a lost database, a store that is down, damaged or vanished files,
signals): each ends in one line naming the storage or location, or is survived with a warning."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from sweep.cli import main
from sweep.presets import preset

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
        yield name, make_url(url).set(database=name).render_as_string(hide_password=False), server
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
    assert line.startswith(f"error: --storage {url}: "), line
