"""Writing an output file so that it never replaces anything with a partial file.

Every file the tool writes (masks, NIfTI labels, model.pt, summary.json, CSV, the report) goes
through ``output_file``: it is written under a hidden temporary name in the target's folder and
renamed over the target only once it is complete, as git and SQLite do. A crash, Ctrl-C or
SIGTERM mid-write leaves the previous file (or none), never half of one. The file gets the
permissions any file the user creates gets (``0666`` less the umask): a model shared in a
folder is readable by whoever can read its summary.

A writer holds a lock on its temporary file until the rename. A write killed outright (kill -9,
a power cut) leaves its temporary file, which no one holds: the next write into that folder
removes it. Only names of exactly this module's pattern are touched, and only unlocked ones, so a
user's file and a writer at work in another process are left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # (not on Windows: temporary files left by a killed write then stay)
    fcntl = None

PARTIAL_PREFIX = ".partial-"  # hidden, so folder scans (png_files, NIfTI listings) never pick one up
# What tempfile.mkstemp makes of PARTIAL_PREFIX and "-NAME": 8 characters of its own alphabet between.
PARTIAL_NAME = re.compile(re.escape(PARTIAL_PREFIX) + r"[a-z0-9_]{8}-.+\Z", re.DOTALL)


def umask() -> int:
    """The process's umask, read without changing it where Linux reports it (no race with threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def output_file(path: os.PathLike | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it becomes ``path``.

    The temporary name keeps ``path``'s name as its end, so writers that choose the format by
    the ending (nibabel's ``.nii.gz``) write the same format. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path.parent)
    fd, name = tempfile.mkstemp(prefix=PARTIAL_PREFIX, suffix=f"-{path.name}", dir=path.parent)
    tmp = Path(name)
    try:
        _lock(fd)  # held until the rename: the file of a live writer is never taken for a killed one's
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def _lock(fd: int) -> None:
    if fcntl is not None:
        with contextlib.suppress(OSError):  # a filesystem without locks: nothing there is removed as stale
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def remove_stale_partials(folder: os.PathLike | str) -> list[Path]:
    """Remove the temporary files of ``output_file`` in ``folder`` that no writer holds (left by a
    killed write); returns them. Anything else, including a file whose lock cannot be taken, stays."""
    if fcntl is None:
        return []
    try:
        names = [n for n in os.listdir(folder) if n.startswith(PARTIAL_PREFIX) and PARTIAL_NAME.match(n)]
    except OSError:
        return []
    removed = []
    for name in names:
        path = Path(folder) / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue  # gone (renamed into place), a symlink, unreadable: not ours to remove
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by a live writer: OSError, left alone
            if os.path.samestat(st, os.lstat(path)):  # still that file under that name
                os.unlink(path)
                removed.append(path)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def same_file(a: os.PathLike | str, b: os.PathLike | str) -> bool:
    """Whether two paths name one file: the same resolved path, or (both existing) the same inode,
    so a hard link or a symlink to the study counts as the study."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
