"""No output replaces an input or the study: every command that writes checks its outputs first.

nnU-Net's predict refuses to write into its input folder; git and SQLite never let an output
replace the thing being read. Here every writing command (``export``, ``report``, ``predict``,
``best --evaluate``) names the files it will write and what it reads, and this module refuses,
with exit 2 and one line, an output that is the study's SQLite file (or its journal), a file the
command reads, or a folder that holds the data. The files themselves are then written under a
temporary name and renamed (``data.files.output_file``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from data.files import same_file
from sweep.core.errors import UsageError
from sweep.core.study import sqlite_path

SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")  # SQLite's own files beside the database


def storage_files(storage_url: str | None) -> list[Path]:
    """The files that hold the study: the SQLite database and its journals (none for a server)."""
    db = sqlite_path(storage_url) if storage_url else None
    return [] if db is None else [db, *(db.with_name(db.name + s) for s in SQLITE_SIDE_FILES)]


def refuse_overwrite(flag: str, outputs: Iterable[str | Path], *, storage: str | None = None,
                     inputs: Iterable[str | Path] = ()) -> None:
    """UsageError (exit 2) naming ``flag`` where an output would replace the study or an input.

    ``outputs``: every file the command will write; ``inputs``: every file it reads.
    """
    protected = [(p, "the study's database (--storage)") for p in storage_files(storage)]
    protected += [(Path(p), "an input of this command") for p in inputs]
    for out in outputs:
        for path, what in protected:
            if same_file(out, path):
                raise UsageError(f"{flag}: {out} is {what}; writing it would replace it. Choose another name")


def refuse_inside(flag: str, out: str | Path, folder: str | Path | None, what: str) -> None:
    """UsageError where the output folder ``out`` is ``folder`` or inside it (``folder`` None: no check)."""
    if folder is None or not Path(folder).is_dir():
        return
    out, folder = Path(out).resolve(), Path(folder).resolve()
    if out == folder or folder in out.parents:
        raise UsageError(f"{flag} {out}: inside {what} {folder}; outputs go outside the folders they are made from")
