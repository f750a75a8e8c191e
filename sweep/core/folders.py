"""One evaluation per output folder: a folder of outputs is built beside its target and swapped in whole.

``best --evaluate --out DIR`` writes masks, model.pt, summary.json and a picture; written into
DIR one by one, an interrupted run left two evaluations mixed there (new masks, old model.pt and
summary.json). Here the new folder is built as a hidden sibling, ``.DIR.evaluating-PID-ID``, and
swapped in at the end: DIR is renamed to ``.DIR.replaced-PID-ID``, the new folder to DIR, and the
old one is removed. A kill between the two renames leaves DIR missing and the old evaluation
beside it: the next write to DIR (``recover``) puts it back. So DIR holds the old evaluation whole
or the new one whole, and a folder left by a killed run is removed by the next one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from sweep.core import interrupts
from sweep.core.errors import UsageError

BUILDING, REPLACED = "evaluating", "replaced"  # the hidden siblings' kinds


def _sibling(target: Path, kind: str) -> Path:
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _leftovers(target: Path) -> Iterator[tuple[Path, str, int]]:
    """The hidden siblings of ``target`` that some run made: (path, kind, pid)."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.({BUILDING}|{REPLACED})-(\d+)-[0-9a-f]+")
    with contextlib.suppress(OSError):
        for path in target.parent.iterdir():
            match = pattern.fullmatch(path.name)
            if match:
                yield path, match[1], int(match[2])


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def recover(target: Path) -> None:
    """Undo or finish what a killed run left beside ``target``: the old folder back where the run was
    killed between the two renames, its unfinished new folder and removed old one deleted.
    A run that is still going (its process alive) is left alone."""
    dead = [(path, kind) for path, kind, pid in _leftovers(target) if not _alive(pid)]
    with interrupts.held():
        for path, kind in sorted(dead, key=lambda p: p[1] != REPLACED):  # the old folder back first
            if kind == REPLACED and not target.exists():
                _rename(path, target)
            else:
                shutil.rmtree(path, ignore_errors=True)


def _rename(src: Path, dst: Path) -> None:
    os.rename(src, dst)


@contextlib.contextmanager
def building(target: Path) -> Iterator[Path]:
    """A new, empty hidden folder beside ``target`` to build its next content in; removed again
    if the block ends by an exception (Ctrl-C, SIGTERM or an error): ``target`` is then untouched."""
    recover(target)
    stage = _sibling(target, BUILDING)
    stage.mkdir(parents=True)
    try:
        yield stage
    except BaseException:
        with interrupts.held():
            shutil.rmtree(stage, ignore_errors=True)
        raise


def swap_in(stage: Path, target: Path) -> None:
    """Make ``stage`` the folder ``target``, the old one removed; call it inside ``interrupts.held()``."""
    old = _sibling(target, REPLACED) if target.exists() else None
    try:
        if old is not None:
            _rename(target, old)
        try:
            _rename(stage, target)
        except BaseException:
            if old is not None:
                _rename(old, target)
            raise
    except OSError as err:
        raise UsageError(f"--out {target}: cannot replace it ({err.strerror or err})") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def foreign_entries(folder: Path, ours: Iterable[str], summary: str) -> list[str]:
    """What in ``folder`` a previous evaluation did not make: entries not named in ``ours`` (hidden
    temporary files aside), or everything where its ``summary`` file is not one this tool wrote.
    Empty for a folder that is missing or empty."""
    if not folder.is_dir():
        return [folder.name] if folder.exists() else []
    names = sorted(p.name for p in folder.iterdir())
    if not names:
        return []
    try:
        record = json.loads((folder / summary).read_text())
    except (OSError, ValueError):
        record = None
    if not (isinstance(record, dict) and "study" in record and "seeds" in record):
        return names
    return [n for n in names if n not in ours and not n.startswith(".partial-")]
