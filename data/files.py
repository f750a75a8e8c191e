"""Writing an output file so that it never replaces anything with a partial file.

Every file the tool writes (masks, NIfTI labels, model.pt, summary.json, CSV, the report) goes
through ``output_file``: it is written under a hidden temporary name in the target's folder and
renamed over the target only once it is complete, as git and SQLite do. A crash, Ctrl-C or
SIGTERM mid-write leaves the previous file (or none), never half of one. The file gets the
permissions any file the user creates gets (``0666`` less the umask): a model shared in a
folder is readable by whoever can read its summary.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

PARTIAL_PREFIX = ".partial-"  # hidden, so folder scans (png_files, NIfTI listings) never pick one up


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
    fd, name = tempfile.mkstemp(prefix=PARTIAL_PREFIX, suffix=f"-{path.name}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
