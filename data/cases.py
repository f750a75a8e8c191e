"""Volume datasets: the cases a layout reader found -> preprocessed (cached) slices -> splits.

Both volume layouts (``acdc.py``, ``nnunet.py``) only list their cases; everything after
that is here and shared. Splits are by patient: where the layout brings its own test part
(ACDC's testing/, nnU-Net's imagesTs/) the rest is split train/val ``DEV_FRACTIONS``;
otherwise all of it 50/10/40 like a pool (``SPLIT_FRACTIONS``). Where every patient has an
ACDC pathology group, each part holds every group in proportion.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from . import cache
from .dataset import Dataset, Split
from .errors import DataError
from .split import SPLIT_FRACTIONS, split_groups
from .volumes import SLICE_SIZE, Volume, preprocess_volume, preprocessing

#: train / val fractions of patients where the layout brings its own test split: 20 %
#: held out, nnU-Net's 5-fold share; for ACDC's 100 training patients 4 per group.
DEV_FRACTIONS = (0.8, 0.2)


@dataclass(frozen=True)
class CaseFile:
    """One volume as a layout reader found it (nothing read yet but small text files).

    test: whether the layout puts it in its own test part (testing/, imagesTs/).
    """

    case: str
    patient: str
    image: Path
    label: Path | None
    test: bool
    phase: str | None = None
    group: str | None = None
    height: float | None = None
    weight: float | None = None

    def record(self) -> dict:
        """The JSON-able fields that go into the cache key."""
        d = asdict(self)
        d["image"], d["label"] = str(self.image), None if self.label is None else str(self.label)
        return d


def _check_test_labels(cases: list[CaseFile]) -> None:
    """Test labels are optional, but all or none: a partial set is a forgotten file."""
    test = [c for c in cases if c.test]
    with_labels = [c for c in test if c.label is not None]
    if with_labels and len(with_labels) < len(test):
        missing = next(c for c in test if c.label is None)
        raise DataError(f"{missing.image}: no label volume, though other test cases have one")


def check_identity(cases: list[CaseFile]) -> None:
    """No two volumes share a case name (results are keyed by it, so one would silently replace the
    other), and no patient is both in the layout's own test part and in train/val (a leak across
    splits, e.g. one patient folder name reused in ACDC's training/ and testing/). DataError names
    both paths."""
    parts: dict[str, CaseFile] = {}
    for c in cases:
        first = parts.setdefault(c.patient, c)
        if first.test != c.test:
            test, dev = (c, first) if c.test else (first, c)
            raise DataError(f"{test.image}: patient {c.patient!r} is in the test part and also in train/val "
                            f"({dev.image}); a patient must be in one split only, rename or remove one")

    seen: dict[str, CaseFile] = {}
    for c in cases:
        if c.case in seen:
            raise DataError(f"{c.image}: case {c.case!r} is also {seen[c.case].image}; every volume needs its own name")
        seen[c.case] = c


def _preprocess_all(cases: list[CaseFile]) -> list[cache.Entry]:
    """Preprocess every case (reading its NIfTI files) and attach its metadata."""
    entries = []
    for c in cases:
        images, masks, volume = preprocess_volume(c.image, c.label)
        meta = {key: getattr(c, key) for key in ("case", "patient", "phase", "group", "height", "weight")}
        entries.append((images, masks, replace(volume, **meta)))
    return entries


def _cached_entries(cases: list[CaseFile], extra_files: list[Path]) -> list[cache.Entry]:
    """Entries from the cache, or preprocessed now and cached."""
    files = [p for c in cases for p in (c.image, c.label) if p is not None] + list(extra_files)
    key = cache.cache_key(files, [c.record() for c in cases], preprocessing())
    entries = cache.load(key, len(cases))
    if entries is None:
        entries = _preprocess_all(cases)
        cache.save(key, entries)
    return entries


def _split_of(entries: list[cache.Entry], idx) -> Split:
    """Concatenate the slices of the volumes ``entries[idx]`` (sorted by case id)."""
    chosen = sorted((entries[i] for i in idx), key=lambda e: e[2].case)
    if not chosen:
        return Split.empty((SLICE_SIZE, SLICE_SIZE))
    labelled = all(m is not None for _, m, _ in chosen)
    names, groups, slices = [], [], []
    for _, _, v in chosen:
        for z in range(v.n_slices):
            names.append(f"{v.case}_slice{z:02d}")
            groups.append(v.patient)
            slices.append((v.case, z))
    return Split(
        images=np.concatenate([e[0] for e in chosen]),
        masks=np.concatenate([e[1] for e in chosen]) if labelled else None,
        names=tuple(names), groups=tuple(groups), slices=tuple(slices),
    )


def _split_dev(root: Path, dev: list[CaseFile], seed: int, fractions) -> tuple[np.ndarray, ...]:
    """Indices into ``dev`` of each part; by patient, stratified by group where known."""
    patients = [c.patient for c in dev]
    n, k = len(set(patients)), len(fractions)
    if n < k:
        parts = "train/val/test" if k == 3 else "train/val"
        raise DataError(f"{root}: {n} labelled patient(s) cannot be split {parts}; need at least {k}")
    groups = [c.group for c in dev]
    strata = groups if all(g is not None for g in groups) else None
    return split_groups(patients, seed, fractions, strata)


def volume_dataset(root: Path, layout: str, cases: list[CaseFile], seed: int, extra_files: list[Path]) -> Dataset:
    """Preprocess (or fetch from the cache) ``cases`` and split them by patient.

    extra_files: files besides the volumes whose content shaped ``cases`` (Info.cfg,
    dataset.json), so that editing one invalidates the cache.
    """
    if not cases:
        raise DataError(f"{root}: no volumes found")
    check_identity(cases)
    _check_test_labels(cases)
    entries = _cached_entries(cases, extra_files)
    dev = [i for i, c in enumerate(cases) if not c.test]
    test = [i for i, c in enumerate(cases) if c.test]
    if test:
        train_i, val_i = _split_dev(root, [cases[i] for i in dev], seed, DEV_FRACTIONS)
        test_i = np.arange(0)
    else:
        train_i, val_i, test_i = _split_dev(root, [cases[i] for i in dev], seed, SPLIT_FRACTIONS)
    parts = [[dev[i] for i in part] for part in (train_i, val_i, test_i)]
    parts[2] += test
    splits = [_split_of(entries, part) for part in parts]
    volumes: dict[str, Volume] = {v.case: v for _, _, v in entries}
    return Dataset(str(root), False, layout, *splits, split_seed=seed, volumes=volumes)
