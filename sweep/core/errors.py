"""Errors a person caused and can fix (the CLI prints them as one line and exits 2), and failures
outside the tool (a lost database, an unreachable store: one line naming it, exit 1)."""

from __future__ import annotations

import errno
import os
import sys
import tempfile
from pathlib import Path

import sqlalchemy
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.exceptions import StorageInternalError


class UsageError(Exception):
    """A bad flag value, a missing study, unreachable storage: ``str(err)`` is one line naming it."""


class OutsideError(Exception):
    """The database or the artifact store failed (lost, unreachable, full): ``str(err)`` is one line
    naming it; the CLI prints it and exits 1."""


def check_writable(out: Path, label: str) -> None:
    """Create ``out`` and a temporary file in it, so an unwritable folder fails before any work."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{label}: {out} is a file, expected a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise UsageError(f"{label}: cannot write in folder {out} ({err.strerror or err})") from None


def _chain(err: BaseException):
    """``err`` and every exception behind it (``__cause__``, ``__context__``, a DBAPI error's ``orig``), once each.

    Optuna re-raises a lost database as its own errors (``StorageInternalError``, even an
    ``UnboundLocalError`` after the connection dropped): the database's words lie deeper.
    """
    seen, queue = set(), [err]
    while queue:
        e = queue.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        queue += [getattr(e, "orig", None), e.__cause__, e.__context__]


def _is_storage_error(err: BaseException) -> bool:
    """SQLAlchemy's, Optuna's storage errors, and the database drivers' own (read only where loaded)."""
    drivers = tuple(m.Error for m in map(sys.modules.get, ("sqlite3", "psycopg", "pymysql")) if m is not None)
    return isinstance(err, (sqlalchemy.exc.SQLAlchemyError, StorageInternalError, *drivers))


def _is_store_error(err: BaseException) -> bool:
    """An object store's client error (botocore, google) or an artifact missing from its location."""
    module = type(err).__module__ or ""
    return module.startswith(("botocore", "google.api_core", "google.auth")) or isinstance(err, ArtifactNotFound)


def outside_failure(err: BaseException, storage: str | None) -> str | None:
    """One line for a failure of the database or the artifact store anywhere in ``err``'s chain, else None.

    ``storage``: the storage URL as it may be shown (``study.display_url``: no password).
    """
    chain = list(_chain(err))
    if any(_is_storage_error(e) for e in chain):
        where = f"--storage {storage}" if storage else "--storage"
        return f"{where}: {_storage_reason(err)}"
    store = next((e for e in chain if _is_store_error(e)), None)
    if store is not None:
        return f"artifact store: {_first_line(store)}"
    full = next((e for e in chain if isinstance(e, OSError) and e.errno in DISK_FULL), None)
    if full is not None:
        return disk_full_line(full)
    return None


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full_line(err: OSError) -> str:
    """A full disk (or quota) while writing an output: the folder, and that nothing was left half-written
    (every output goes through ``data.files.output_file``: its temporary file is removed)."""
    folder = Path(err.filename).parent if err.filename else None
    where = f"{folder}: " if folder else ""
    return (f"{where}{err.strerror or os.strerror(err.errno)}; no file was left half-written, "
            "free some space and rerun")


def _storage_reason(err: BaseException) -> str:
    """The database's own words (e.g. "database or disk is full"), one line: the innermost storage error's."""
    storage = [e for e in _chain(err) if _is_storage_error(e)]
    return _first_line(storage[-1] if storage else err)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def described(err: BaseException) -> str:
    """``TypeName: first line of the message``, for a warning that must stay one line."""
    return f"{type(err).__name__}: {_first_line(err)}"


def is_outage(err: BaseException) -> bool:
    """A store or folder that may answer again soon: an object store client's error (an endpoint
    down, a 5xx) or an OSError (a network mount's hiccup), not a missing artifact."""
    return (_is_store_error(err) and not isinstance(err, ArtifactNotFound)) or isinstance(err, OSError)


def warn(text: str) -> None:
    """One ``warning:`` line on stderr, above a progress bar if one is shown."""
    from tqdm.auto import tqdm  # (here: the views that import this module need no progress bar)

    tqdm.write(f"warning: {text}", file=sys.stderr)
