"""Storage and study: opening the SQL storage, creating or resuming a study, what a study records."""

from __future__ import annotations

import os
import platform
import random
import re
import shlex
import sqlite3
import tempfile
import time
from pathlib import Path

import optuna
import sqlalchemy
from optuna.exceptions import StorageInternalError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy.engine import make_url

from sweep.core.errors import UsageError

DEFAULT_STORAGE = "sqlite:///studies.db"
DEFAULT_STUDY = "segnet"


PROG = ("python", "-m", "sweep")


# A printed command never shows a password: a --storage URL that holds one is written as this
# variable, so the command still runs as printed where the user has exported it (the shell expands it).
STORAGE_VARIABLE = "SEGNET_STORAGE"


def command_line(*parts: str) -> str:
    """``python -m sweep PARTS...``, quoted for a shell: every command line the tool prints is made here.

    A ``--storage`` URL with a password becomes ``"$SEGNET_STORAGE"``, and a shell comment at the
    end says what to export: the line runs as printed, pasted whole, and shows no secret.
    """
    words, hidden, previous = [], False, None
    for part in (*PROG, *parts):
        if part.startswith("--storage=") and has_password(part.split("=", 1)[1]):
            words.append(f'--storage="${STORAGE_VARIABLE}"')
            hidden = True
        elif previous == "--storage" and has_password(part):
            words.append(f'"${STORAGE_VARIABLE}"')
            hidden = True
        else:
            words.append(shlex.quote(part))
        previous = part
    line = " ".join(words)
    if hidden:
        line += f"  # {STORAGE_VARIABLE}: your --storage URL (not printed: it holds a password)"
    return line


def has_password(url: str) -> bool:
    """Whether ``url`` is a database URL with a password in it."""
    try:
        return bool(make_url(url).password)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return bool(_PASSWORD.search(url))


# user:password@ after a scheme, for a URL SQLAlchemy cannot parse (a bad port, say).
_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")


def sweep_command(command: str, storage: str, study: str | None, *rest: str, after: tuple[str, ...] = ()) -> str:
    """``python -m sweep COMMAND ...`` with the ``--storage`` and ``--study`` that were used (where
    not the defaults), so that a printed next step works as printed (a URL with a password is
    referred to by ``$SEGNET_STORAGE``: ``command_line``). ``rest`` goes before those two flags,
    ``after`` after them."""
    parts = [*command.split(), *rest]
    if storage != DEFAULT_STORAGE:
        parts += ["--storage", storage]
    if study is not None and study != DEFAULT_STUDY:
        parts += ["--study", study]
    return command_line(*parts, *after)

# A killed worker stops beating; its RUNNING trial is failed once the beat is GRACE_PERIOD old
# (checked whenever any worker starts a trial) and re-enqueued with the same params, at most
# MAX_RETRY times. The heartbeat runs in its own thread, so long epochs do not miss beats.
# Environment overrides exist for fault tests, which cannot wait minutes for a dead worker.
HEARTBEAT_INTERVAL = int(os.environ.get("SEGNET_HEARTBEAT_INTERVAL", "20"))  # seconds
GRACE_PERIOD = int(os.environ.get("SEGNET_GRACE_PERIOD", "90"))  # several missed beats: a busy machine is not a dead one
MAX_RETRY = 3
SQLITE_TIMEOUT = 60  # seconds a SQLite writer waits for another worker's lock
# Workers that open an empty database at the same moment each create Optuna's tables and stamp
# its schema version; all but one of them then meet the others' rows. They retry this often.
SCHEMA_RETRIES = 5


def check_storage_url(url: str, *, writable: bool = True) -> str:
    """Validate a storage URL without creating or changing anything; returns it (normalised).

    ``writable=False`` for commands that only read: a study on a read-only mount can be inspected.
    """
    if not url.strip():  # e.g. "$SEGNET_STORAGE" of a printed command, not exported
        raise UsageError(f"--storage is empty: give a database URL (export {STORAGE_VARIABLE} first where a "
                         f"printed command names ${STORAGE_VARIABLE})")
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as err:
        raise UsageError(f"--storage {display_url(url)!r}: not a database URL ({err})") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        db = parsed.database
        if not db or db == ":memory:":
            raise UsageError(f"--storage {url!r}: give a database file, e.g. sqlite:///studies.db")
        folder = Path(db).resolve().parent
        if not folder.is_dir():
            raise UsageError(f"--storage {url!r}: folder {folder} does not exist")
        if Path(db).is_dir():
            raise UsageError(f"--storage {url!r}: {db} is a folder, expected a database file (e.g. {Path(db) / 'studies.db'})")
        if writable and not _writable(folder):
            raise UsageError(f"--storage {url!r}: folder {folder} is not writable")
        if Path(db).exists() and not _is_sqlite_file(Path(db)):
            raise UsageError(f"--storage {url!r}: {db} exists but is not an SQLite database")
        return url
    try:
        engine = sqlalchemy.create_engine(url, connect_args=_connect_timeout(backend))
        with engine.connect():
            pass
        engine.dispose()
    except ModuleNotFoundError as err:
        raise UsageError(f"--storage {display_url(url)!r}: database driver missing ({err.name}); pip install it") from None
    except Exception as err:  # noqa: BLE001 - any driver error means "cannot use this URL"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"--storage {_hide_password(parsed)}: cannot connect ({reason})") from None
    return url


def _writable(folder: Path) -> bool:
    # A real write, not os.access: root passes access checks on read-only file systems.
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _connect_timeout(backend: str) -> dict:
    if backend == "postgresql":
        return {"connect_timeout": 10}
    if backend in ("mysql", "mariadb"):
        return {"connect_timeout": 10}
    return {}


def _hide_password(parsed) -> str:
    return parsed.render_as_string(hide_password=True)


def display_url(url: str) -> str:
    """``url`` as it may be printed or put in a shared report: a password becomes ***."""
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return _PASSWORD.sub(r"\1***@", url)
    return _hide_password(parsed) if parsed.password else url


def _is_sqlite_file(path: Path) -> bool:
    if path.stat().st_size == 0:
        return True
    with open(path, "rb") as f:
        return f.read(16) == b"SQLite format 3\x00"


def make_storage(url: str, *, heartbeat: bool = True, read_only: bool = False) -> RDBStorage:
    """Optuna RDB storage with heartbeats (a dead worker's trial is failed and retried).

    ``read_only`` opens an SQLite file in SQLite's read-only mode, so that looking at a study
    can never change it, and works where its folder cannot be written.
    """
    backend = make_url(url).get_backend_name()
    if backend == "sqlite" and read_only:
        db = sqlite_path(url)
        # On a read-only mount SQLite cannot create its lock files: "immutable" says none are needed,
        # but it also skips the write-ahead log, so only where that holds no commits.
        wal = db.with_name(db.name + "-wal")
        pending = wal.exists() and wal.stat().st_size > 0
        immutable = "&immutable=1" if not pending and not _writable(db.parent) else ""
        url = f"sqlite:///file:{db}?mode=ro{immutable}&uri=true"
    engine_kwargs: dict = {"pool_pre_ping": True}
    if backend == "sqlite":
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT}}
    else:
        engine_kwargs["connect_args"] = _connect_timeout(backend)
    kwargs = {}
    if heartbeat:
        kwargs = {
            "heartbeat_interval": HEARTBEAT_INTERVAL,
            "grace_period": GRACE_PERIOD,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
        }
    storage = _open_rdb(url, engine_kwargs, kwargs)
    if backend == "sqlite":
        _tune_sqlite(storage.engine, read_only)
    return storage


class _Storage(RDBStorage):
    """Optuna's RDB storage whose heartbeat skips a beat the database refuses, rather than dying.

    The heartbeat runs in its own thread: a beat that fails (a full disk, a server gone for a
    moment) would end that thread with three chained tracebacks on the terminal, above the one
    line the trial's own next write ends the run with (``errors.outside_failure``). A missed beat
    is retried at the next interval; a database that stays away fails the run's writes anyway.
    """

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except (sqlalchemy.exc.SQLAlchemyError, StorageInternalError):
            pass


def _open_rdb(url: str, engine_kwargs: dict, kwargs: dict) -> RDBStorage:
    """``RDBStorage(url)``, retried where another worker was creating Optuna's schema at the same moment."""
    retries = 0
    while True:
        try:
            return _Storage(url, engine_kwargs=engine_kwargs, **kwargs)
        except sqlalchemy.exc.DBAPIError as e:
            retries += 1
            if retries > SCHEMA_RETRIES or not _schema_race(e):
                raise
            time.sleep(random.uniform(0.1, 0.5) * retries)  # apart, so that one of them wins


def _schema_race(error: sqlalchemy.exc.DBAPIError) -> bool:
    """True for what two workers creating the same tables or version row meet: a duplicate."""
    if isinstance(error, sqlalchemy.exc.IntegrityError):
        return True
    text = str(error.orig).lower()
    return "already exists" in text or "duplicate" in text


def _tune_sqlite(engine: sqlalchemy.Engine, read_only: bool = False) -> None:
    """Make SQLite safe and quick for several worker processes.

    - Every transaction starts with ``BEGIN IMMEDIATE`` (it takes the write lock before its first
      read). SQLite ignores ``SELECT ... FOR UPDATE``, so with Python's default deferred
      transactions two workers could both read an enqueued trial as WAITING and both claim it
      (then one fails with "Cannot tell a COMPLETE trial"); this serialises the claim, as
      PostgreSQL's row lock does. Waits are covered by the busy timeout.
    - The rollback journal, not WAL. WAL keeps its index in a memory-mapped ``-shm`` file that
      every process must see coherently; SQLite documents that it fails on network file systems,
      and on an H100 machine 4 workers sharing one GPU lost every write of a run or left a
      "malformed" file in 4 runs of 12 with WAL, none of 4 with the rollback journal
      (docs/RELIABILITY.md). A file left in WAL mode by an older version is switched back once no
      other connection holds it. Readers wait out a write (milliseconds) in the busy timeout.
    A read-only connection takes no write lock and changes no setting.
    """
    if read_only:
        return

    def on_connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # no implicit BEGIN from the driver: "begin" below does it
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.OperationalError:
            pass  # a WAL file another connection still holds: it stays WAL, which works where it did
        cursor.close()

    sqlalchemy.event.listen(engine, "connect", on_connect)
    sqlalchemy.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    engine.dispose()  # the constructor's connection predates the listeners


def study_exists(storage: RDBStorage, name: str) -> bool:
    try:
        storage.get_study_id_from_name(name)
        return True
    except KeyError:
        return False


def load_study(storage: RDBStorage, name: str, sampler=None, pruner=None) -> optuna.Study:
    if not study_exists(storage, name):
        names = [s.study_name for s in storage.get_all_studies()]
        hint = f" (studies here: {', '.join(names)})" if names else " (no studies here yet: run `python -m sweep run` first)"
        raise UsageError(f"--study {name!r}: no such study{hint}")
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    if len(study.directions) != 1:  # Optuna's best_trial, and every view here, then raise
        raise UsageError(f"--study {name!r}: has {len(study.directions)} objectives, not made by this tool "
                         "(its studies have one, val dice_fg); use another --study")
    return study


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    return Path(parsed.database).resolve() if parsed.get_backend_name() == "sqlite" else None


def default_artifact_dir(url: str) -> Path:
    """Artifacts (checkpoints, pictures) live beside an SQLite file, else in ./artifacts."""
    db = sqlite_path(url)
    return (db.parent if db else Path.cwd()) / "artifacts"


def versions() -> dict[str, str]:
    import numpy
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "numpy": numpy.__version__,
        "sqlite": sqlite3.sqlite_version,
    }


def require_existing_sqlite(url: str) -> None:
    """A read-only command on an SQLite file that does not exist would create an empty one."""
    db = sqlite_path(url)
    if db is not None and not db.exists():
        raise UsageError(f"--storage {url!r}: {db} does not exist (run `python -m sweep run` first)")
    if db is not None and not _has_optuna_tables(db):
        # Opening it would create Optuna's tables: refused in read-only mode, a change to someone's file otherwise.
        raise UsageError(f"--storage {url!r}: {db} holds no Optuna study (run `python -m sweep run` first)")


def _has_optuna_tables(db: Path) -> bool:
    """False for an empty file or another program's SQLite database; True where it cannot tell
    (a damaged file: the storage then says what is wrong)."""
    try:
        con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
        try:
            return con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'studies'").fetchone() is not None
        finally:
            con.close()
    except sqlite3.Error:
        return True


def open_study_readonly(url: str, name: str) -> optuna.Study:
    """The study for commands that only read it (status, best, export, report): no heartbeat."""
    check_storage_url(url, writable=False)
    require_existing_sqlite(url)
    return load_study(make_storage(url, heartbeat=False, read_only=True), name)
