"""``--groups REGEX``: which patient a file or case belongs to."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import DataError


def compile_groups(regex: str | None) -> re.Pattern | None:
    """The ``--groups`` pattern, checked: it must compile and have a capture group."""
    if regex is None:
        return None
    try:
        pattern = re.compile(regex)
    except re.error as err:
        raise DataError(f"--groups: {regex!r} is not a valid regular expression ({err})") from None
    if pattern.groups < 1:
        raise DataError(f"--groups: {regex!r} has no capture group; its first (...) names the patient")
    return pattern


def group_of(pattern: re.Pattern | None, name: str, path: Path) -> str:
    """The patient of ``name`` (a file stem or case id): the first capture group of the
    pattern's first match (``re.search``), or ``name`` itself without a pattern. A name the
    pattern does not match, or whose capture is empty, is a DataError naming ``path``."""
    if pattern is None:
        return name
    match = pattern.search(name)
    if match is None or not match.group(1):
        raise DataError(f"{path}: --groups {pattern.pattern!r} does not match {name!r}")
    return match.group(1)
