"""Errors a person caused and can fix: the CLI prints them as one line and exits 2."""

from __future__ import annotations

import tempfile
from pathlib import Path


class UsageError(Exception):
    """A bad flag value, a missing study, unreachable storage: ``str(err)`` is one line naming it."""


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
