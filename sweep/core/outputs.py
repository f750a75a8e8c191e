"""No output replaces an input, the study, its data or anything the user owns: every command that
writes checks its outputs first.

nnU-Net's predict refuses to write into its input folder; git and SQLite never let an output
replace the thing being read. Here every writing command (``export``, ``report``, ``predict``,
``best --evaluate``) names the files and folders it will write and what it reads, and
``refuse_outputs`` refuses, with exit 2 and one line and before anything is created, an output
that

- is the study's SQLite file, or a file the command reads (the same file by path, symlink or
  hard link);
- lies inside the study's data folder (recorded on the study, or given with ``--data``), the
  study's artifact store, or this machine's cache folder (``$SEGNET_CACHE_DIR``);
- takes, beside the study's SQLite file, a name SQLite keeps for itself (``studies.db-journal``,
  ``-wal``, ``-shm``, or anything starting so): SQLite would read it as its own, and a folder there
  stops every later command with "disk I/O error".

Paths are compared resolved (symlinks followed). The files themselves are then written under a
temporary name and renamed (``data.files.output_file``); ``OwnedFiles`` keeps a folder's list of
the files a command wrote there, so that a rerun replaces those and nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import optuna
from sqlalchemy.engine import make_url

from data.files import output_file
from sweep.core.errors import UsageError
from sweep.core.records import ArtifactLocation, StudyKey
from sweep.core.study import default_artifact_dir, sqlite_path

SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")  # SQLite's own files beside the database
MANIFEST = ".segnet-outputs.json"  # OwnedFiles: the files a command wrote into its output folder


def storage_files(storage_url: str | None) -> list[Path]:
    """The files that hold the study: the SQLite database and its journals (none for a server)."""
    db = sqlite_path(storage_url) if storage_url else None
    return [] if db is None else [db, *(db.with_name(db.name + s) for s in SQLITE_SIDE_FILES)]


def refuse_outputs(flag: str, outputs: Iterable[str | Path], *, storage: str | None = None,
                   study: optuna.Study | None = None, data: str | None = None,
                   inputs: Iterable[str | Path] = ()) -> None:
    """UsageError (exit 2) naming ``flag`` where any of ``outputs`` (the files and folders the
    command will write) would replace the study, an input, or anything in a protected place.

    ``storage``: the study's URL; ``study``: the study, where the command has it (its recorded
    data folder and artifact location are protected); ``data``: a data folder given on the command
    line; ``inputs``: every file the command reads. Nothing is created or changed.
    """
    outputs = [Path(p) for p in outputs]
    journals = journal_names(storage)
    for out in outputs:
        for path in {Path(os.path.realpath(out)), Path(os.path.abspath(out))}:
            for part in (path, *path.parents):
                db = next((d for d in journals if part.parent == d.parent
                           and part.name.startswith(tuple(d.name + s for s in SQLITE_SIDE_FILES))), None)
                if db is not None:
                    raise UsageError(f"{flag}: {out} takes a name SQLite keeps for the study's database {db} "
                                     f"({part.name}): SQLite would read it as its journal. Choose another name")
    refuse_overwrite(flag, outputs, storage=storage, inputs=inputs)
    places = protected_folders(storage, study, data)
    for out in outputs:
        real = Path(os.path.realpath(out))
        for folder, what in places:
            if real == folder or folder in real.parents:
                raise UsageError(f"{flag}: {out} is inside {what} {folder}; writing there could replace "
                                 "what it holds. Choose a path outside it")


def protected_folders(storage: str | None, study: optuna.Study | None = None,
                      data: str | None = None) -> list[tuple[Path, str]]:
    """(resolved folder, what it is) for every folder no output may go into: the data folders,
    the artifact store (the study's, or the default one beside an existing SQLite file), the cache."""
    from data.cache import cache_dir  # here: the views that import this module load no data package otherwise

    places = []
    recorded = study.user_attrs.get(StudyKey.DATA_SOURCE) if study is not None else None
    for source, what in ((recorded, "the data folder the study was made on"), (data, "the data folder (--data)")):
        if source and source != "phantom":
            places.append((source, what))
    recorded = ArtifactLocation.of_study(study) if study is not None else None  # (artifacts.location_of)
    if recorded is not None and "://" not in recorded.location:  # a folder, not s3:// or gs://
        places.append((recorded.location, "the study's artifact store"))
    db = sqlite_path(storage) if storage else None
    if db is not None and db.is_file():  # the default store, and that of studies made before the record
        places.append((default_artifact_dir(storage), "the artifact store beside the study's database"))
    places.append((cache_dir(), "this machine's cache folder (SEGNET_CACHE_DIR)"))
    return [(Path(os.path.realpath(Path(folder).expanduser())), what) for folder, what in places]


def journal_names(storage: str | None) -> list[Path]:
    """The study's SQLite file, as given and resolved: beside it, names starting with its own and
    a SQLITE_SIDE_FILES ending are SQLite's (none for a server)."""
    db = sqlite_path(storage) if storage else None
    if db is None:
        return []
    given = Path(os.path.abspath(make_url(storage).database))
    return sorted({db, given})


def refuse_overwrite(flag: str, outputs: Iterable[str | Path], *, storage: str | None = None,
                     inputs: Iterable[str | Path] = ()) -> None:
    """UsageError (exit 2) naming ``flag`` where an output would replace the study or an input.

    ``outputs``: every file the command will write; ``inputs``: every file it reads.
    """
    protected = [(p, "the study's database (--storage)") for p in storage_files(storage)]
    protected += [(Path(p), "an input of this command") for p in inputs]
    # data.files.same_file for every pair, with each path resolved and stat'ed once (a folder of
    # a thousand slices is a thousand outputs and a thousand inputs).
    by_path = {os.path.realpath(path): what for path, what in reversed(protected)}
    by_inode = {}
    for path, what in reversed(protected):
        with contextlib.suppress(OSError):
            st = os.stat(path)
            by_inode[(st.st_dev, st.st_ino)] = what
    for out in outputs:
        what = by_path.get(os.path.realpath(out))
        if what is None:
            with contextlib.suppress(OSError):
                st = os.stat(out)
                what = by_inode.get((st.st_dev, st.st_ino))
        if what is not None:
            raise UsageError(f"{flag}: {out} is {what}; writing it would replace it. Choose another name")


def check_can_write(folder: str | Path, label: str) -> None:
    """Refuse a folder that cannot be made or written in, creating nothing: the folder, or where it
    does not exist yet its nearest existing parent, takes a temporary file that never has a name."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.absolute().parents) if p.exists()), None)
    if existing is None:
        raise UsageError(f"{label}: no existing folder above {folder}")
    if not existing.is_dir():
        raise UsageError(f"{label}: {existing} is a file, expected a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UsageError(f"{label}: cannot write in folder {existing} ({err.strerror or err})") from None


class OwnedFiles:
    """The files a command wrote into a folder, with each one's sha256, in the folder's ``MANIFEST``:
    a rerun replaces those, and a file of any other name or content is refused.

    Whether a name looks like an output says nothing of who wrote it (``cmr1_mask.png`` is a ground
    truth in ``cmri/val/mask`` and a prediction in ``predictions``); the manifest says. Names about
    to be written are listed first with no digest (``claim``), so a rerun after a kill -9 may
    replace them; ``close`` lists each with what it now holds, and removes the folders it made if
    nothing was written (a refusal or failure leaves no empty output folder).
    """

    FORMAT = "segnet-sweep outputs 1"

    def __init__(self, folder: str | Path, flag: str, command: str) -> None:
        self.folder, self.flag, self.command = Path(folder), flag, command
        self.path = self.folder / MANIFEST
        self.made = [p for p in (self.folder, *self.folder.absolute().parents) if not p.exists() and not p.is_symlink()]
        self.before = self._read()
        self.files = dict(self.before)
        self.claimed: list[str] = []

    def _read(self) -> dict[str, str | None]:
        if not self.path.exists() and not self.path.is_symlink():
            return {}
        try:
            listed = json.loads(self.path.read_text())
            files = listed["files"] if listed.get("format") == self.FORMAT else None
        except (OSError, ValueError, AttributeError, KeyError):
            files = None
        if not isinstance(files, dict) or not self.path.is_file() or self.path.is_symlink():
            raise UsageError(f"{self.flag}: {self.path} is not a list of {self.command}'s outputs; "
                             f"{self.command} into another folder")
        return files

    def refuse_others(self, names: Iterable[str]) -> None:
        """UsageError where a file to be written exists and is not one this command wrote (unchanged)."""
        for name in names:
            path = self.folder / name
            if not path.exists() and not path.is_symlink():
                continue
            if name not in self.before or not path.is_file() or self.before[name] not in (None, _digest(path)):
                why = "changed since" if name in self.before and path.is_file() else "not"
                raise UsageError(f"{self.flag}: {path} exists and was {why} written by {self.command} "
                                 f"(see {MANIFEST}); {self.command} into another folder, or move it away")

    def claim(self, names: Iterable[str]) -> None:
        """List ``names`` before writing them (creates the folder)."""
        self.claimed = list(names)
        self.files.update(dict.fromkeys(self.claimed))  # (None: being written; a kill leaves them replaceable)
        self._write()

    def close(self) -> None:
        """List what each claimed name now holds; remove the folders made, where nothing was written."""
        if not self.claimed:
            return
        for name in self.claimed:
            path = self.folder / name
            if path.is_file() and not path.is_symlink():
                self.files[name] = _digest(path)
            elif name in self.before:
                self.files[name] = self.before[name]
            else:
                self.files.pop(name, None)
        if self.files or self.before:
            self._write()
        elif self.path.exists():
            self.path.unlink()
        for folder in self.made:  # innermost first
            try:
                folder.rmdir()  # only where empty
            except OSError:
                break

    def _write(self) -> None:
        body = {"format": self.FORMAT, "written_by": self.command,
                "files": dict(sorted(self.files.items()))}
        with output_file(self.path) as tmp:
            tmp.write_text(json.dumps(body, indent=1) + "\n")


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
