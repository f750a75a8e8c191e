"""Preprocessed volumes, cached once per dataset: ``preprocessed/KEY.npz`` (arrays) + ``KEY.json`` (records).

Decoding and resampling a few hundred ``.nii.gz`` takes long enough to matter when every
trial worker loads the dataset, so the slices are kept in this machine's cache folder, ``cache_dir()``
(``$SEGNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/segnet-sweep``, else ``~/.cache/segnet-sweep``), never
in the data folder, which may be read-only or shared. The entries live in its subfolder
``preprocessed/``; the sweep keeps its local copies of artifacts in other subfolders
(``artifacts/``, ``resume/``). Whatever else is in the cache folder is the user's and is never
read, counted or removed: ``$SEGNET_CACHE_DIR`` may well name a folder that holds other files.

The key is a hash of everything the arrays depend on: each file's resolved path, size and
modification time (so an edited, replaced or moved file is a miss), the case records
(patient, phase, ...), the preprocessing constants and a format version. A hit opens no
NIfTI. Files are written under a temporary name and renamed into place, so concurrent
workers and interrupted writes never leave a half file that a reader would take; the json,
renamed last, is what marks an entry complete. A cache that cannot be written (read-only
home) costs time only: a warning, and the data are returned all the same.

The entries are kept under ``$SEGNET_CACHE_MAX_GB`` (default 10): each save removes the entries
least recently used (a hit refreshes an entry) beyond it, and temporary files that a killed
writer left more than a day ago. Only files named as this module names them (``ENTRY_NAME``,
``TMP_NAME``) inside ``preprocessed/`` are ever removed. Entries of the former layout (in the
cache folder itself) are misses, never read nor removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from .volumes import Volume, from_levels, to_levels

#: Environment variable naming this machine's cache folder (preprocessed slices, copies of artifacts).
CACHE_ENV = "SEGNET_CACHE_DIR"
#: Its former name, still read (with a warning) where CACHE_ENV is not set.
OLD_CACHE_ENV = "SEGNET_CACHE"
#: Environment variable: the most gigabytes the cache folder keeps (default DEFAULT_MAX_GB).
CACHE_MAX_ENV = "SEGNET_CACHE_MAX_GB"
DEFAULT_MAX_GB = 10.0
STALE_TMP_S = 24 * 3600  # a temporary file this old belongs to no live writer
#: Bumped when the cache files' layout changes (2: images as uint16 levels).
CACHE_FORMAT = 2
#: The entries' subfolder of the cache folder: what pruning may remove lives here and nowhere else.
ENTRIES = "preprocessed"
KEY_CHARS = 32  # hex characters of a key (cache_key)
ENTRY_NAME = re.compile(rf"([0-9a-f]{{{KEY_CHARS}}})\.(json|npz)\Z")  # an entry's two files
TMP_NAME = re.compile(rf"\.[0-9a-f]{{{KEY_CHARS}}}\.(json|npz)\.[0-9]+\.tmp\Z")  # _replace_atomically's

Entry = tuple[np.ndarray, "np.ndarray | None", Volume]  # (Z, H, W) images, masks, record


_warned_old_env = False


def cache_dir() -> Path:
    """``$SEGNET_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/segnet-sweep``, else ``~/.cache/segnet-sweep``.
    ``$SEGNET_CACHE``, the artifact cache's former variable, is read in its place, with one warning."""
    global _warned_old_env
    env = os.environ.get(CACHE_ENV, "").strip()
    if not env and os.environ.get(OLD_CACHE_ENV, "").strip():
        env = os.environ[OLD_CACHE_ENV].strip()
        if not _warned_old_env:
            print(f"warning: {OLD_CACHE_ENV} is deprecated; set {CACHE_ENV} instead", file=sys.stderr)
            _warned_old_env = True
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segnet-sweep"


def entries_dir() -> Path:
    """The folder of the preprocessed entries: ``cache_dir()/preprocessed``."""
    return cache_dir() / ENTRIES


def _check_key(key: str) -> str:
    if not re.fullmatch(rf"[0-9a-f]{{{KEY_CHARS}}}", key):
        raise ValueError(f"cache key {key!r}: expected {KEY_CHARS} hex characters (cache_key)")
    return key


def cache_key(files: list[Path], records: list[dict], constants: dict) -> str:
    """32 hex chars of a sha256 over file identities (path, size, mtime), case records and
    preprocessing constants. Only ``stat`` touches the files."""
    stats = []
    for path in files:
        st = Path(path).stat()
        stats.append([str(Path(path).resolve()), st.st_size, st.st_mtime_ns])
    what = {"format": CACHE_FORMAT, "files": stats, "records": records, "constants": constants}
    blob = json.dumps(what, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:KEY_CHARS]


def load(key: str, n: int) -> list[Entry] | None:
    """The ``n`` cached entries of ``key``, or None on a miss (absent, stale or unreadable).

    A damaged entry (a truncated or emptied ``.npz``, a garbled ``.json``) is a miss too, said in
    one line on stderr: the caller preprocesses again and its save replaces the entry.
    """
    folder = entries_dir()
    meta_path, arrays_path = folder / f"{_check_key(key)}.json", folder / f"{key}.npz"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        return None  # never cached (the json, renamed last, marks an entry complete)
    except Exception as err:  # noqa: BLE001 - whatever the damage, the entry is only rebuilt
        return _damaged(meta_path, err)
    try:
        if meta.get("key") != key or len(meta["volumes"]) != n:
            return None
        with np.load(arrays_path, allow_pickle=False) as arrays:
            entries = []
            for i, record in enumerate(meta["volumes"]):
                masks = arrays[f"masks_{i}"] if f"masks_{i}" in arrays.files else None
                entries.append((from_levels(arrays[f"images_{i}"]), masks, Volume.from_dict(record)))
    # Any damage (BadZipFile, EOFError, ValueError, OSError, KeyError, an unpickling error in a
    # foreign file, an old format): only a miss, never an error that lasts until someone deletes it.
    except Exception as err:  # noqa: BLE001
        return _damaged(arrays_path, err)
    _touch(meta_path)
    return entries


def _damaged(path: Path, err: Exception) -> None:
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    print(f"note: cached preprocessing {path} is damaged ({type(err).__name__}: {reason}); preprocessing again",
          file=sys.stderr)
    return None


def _replace_atomically(target: Path, write) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def save(key: str, entries: list[Entry]) -> None:
    """Store ``entries`` under ``key``; on an unwritable cache, warn and go on."""
    folder = entries_dir()
    _check_key(key)
    arrays = {}
    for i, (images, masks, _) in enumerate(entries):
        arrays[f"images_{i}"] = to_levels(images)  # exact: images are 16-bit levels already
        if masks is not None:
            arrays[f"masks_{i}"] = masks
    meta = {"key": key, "format": CACHE_FORMAT, "volumes": [v.to_dict() for _, _, v in entries]}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Uncompressed: loading speed is the point, and float images compress poorly.
        _replace_atomically(folder / f"{key}.npz", lambda fh: np.savez(fh, **arrays))
        _replace_atomically(folder / f"{key}.json", lambda fh: fh.write(json.dumps(meta).encode()))
        prune(folder, keep=key)
    except OSError as err:
        warnings.warn(
            f"{folder}: cannot cache preprocessed volumes ({err}); they will be preprocessed again next time",
            stacklevel=2,
        )


def max_bytes() -> int:
    try:
        return int(float(os.environ.get(CACHE_MAX_ENV, DEFAULT_MAX_GB)) * 1e9)
    except ValueError:
        return int(DEFAULT_MAX_GB * 1e9)


def _touch(path: Path) -> None:
    """Mark an entry as used now (least recently used goes first); a read-only cache just skips it."""
    try:
        os.utime(path)
    except OSError:
        pass


def prune(folder: Path | None = None, keep: str | None = None, limit: int | None = None) -> list[str]:
    """Remove the least recently used entries of ``folder`` (default ``entries_dir()``) beyond
    ``limit`` bytes (default ``max_bytes()``), never ``keep``, and stale temporary files; returns
    the keys removed. Only files named as this module names them are counted or removed."""
    folder = entries_dir() if folder is None else Path(folder)
    limit = max_bytes() if limit is None else limit
    now, files = time.time(), {}
    for path in folder.iterdir():
        entry = ENTRY_NAME.match(path.name)
        try:
            st = path.lstat()
        except FileNotFoundError:  # (removed by another worker's pruning meanwhile)
            continue
        if not stat.S_ISREG(st.st_mode):  # (a symlink or folder of that name is not one this module made)
            continue
        if TMP_NAME.match(path.name) and now - st.st_mtime > STALE_TMP_S:
            path.unlink(missing_ok=True)
        elif entry:
            files.setdefault(entry[1], {})[entry[2]] = st
    entries = []
    for key, parts in files.items():
        if "json" in parts:
            entries.append((parts["json"].st_mtime, key, sum(p.st_size for p in parts.values())))
        elif now - parts["npz"].st_mtime > STALE_TMP_S:  # arrays whose json a killed writer never renamed
            (folder / f"{key}.npz").unlink(missing_ok=True)
    removed, total = [], 0
    for _, key, size in sorted(entries, reverse=True):  # most recently used first
        total += size
        if total > limit and key != keep:
            (folder / f"{key}.json").unlink(missing_ok=True)  # first: an entry without it is a miss
            (folder / f"{key}.npz").unlink(missing_ok=True)
            removed.append(key)
    return removed
