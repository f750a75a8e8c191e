"""The in-memory dataset: three splits, where they came from, and a fingerprint."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # volumes.py is light too, but a type needs no import at run time
    from .volumes import Volume

#: Values of ``Dataset.layout``.
LAYOUTS = ("phantom", "coursework", "pool", "acdc", "nnunet")


@dataclass(frozen=True, eq=False)  # arrays make == ambiguous; compare fingerprints
class Split:
    """One split of a dataset, images and masks aligned by index.

    images: (N, H, W) float32 in [0, 1] (8-bit PNG / 255).
    masks:  (N, H, W) uint8 class ids 0..3, or None when the split has no masks.
    names:  the N image stem names (e.g. "patient001_frame01_slice03"), in load order,
            which is sorted by name.
    groups: the patient of each of the N slices; no split or fold divides a patient.
            Defaults to ``names`` (every slice its own patient) where none is known.
    slices: (case, slice index) of each of the N slices, the index along the volume's
            third voxel axis, for slices cut from volumes (``Dataset.volumes[case]``);
            None for PNG data.
    """

    images: np.ndarray
    masks: np.ndarray | None
    names: tuple[str, ...]
    groups: tuple[str, ...] | None = None
    slices: tuple[tuple[str, int], ...] | None = None

    def __post_init__(self) -> None:
        # Checked here so a malformed split fails where it is built, not deep in training.
        if self.images.ndim != 3 or self.images.dtype != np.float32:
            raise ValueError(
                f"Split.images must be (N, H, W) float32, got {self.images.shape} {self.images.dtype}"
            )
        if len(self.names) != len(self.images):
            raise ValueError(f"Split: {len(self.names)} names for {len(self.images)} images")
        if self.masks is not None and (self.masks.shape != self.images.shape or self.masks.dtype != np.uint8):
            raise ValueError(f"Split.masks must be {self.images.shape} uint8, got {self.masks.shape} {self.masks.dtype}")
        # Frozen: the default is filled in once here, so readers never see None.
        object.__setattr__(self, "groups", self.names if self.groups is None else tuple(self.groups))
        if len(self.groups) != len(self.names):
            raise ValueError(f"Split: {len(self.groups)} groups for {len(self.names)} images")
        if self.slices is not None and len(self.slices) != len(self.names):
            raise ValueError(f"Split: {len(self.slices)} slice keys for {len(self.names)} images")

    def __len__(self) -> int:
        return len(self.images)

    def case_indices(self) -> dict[str, np.ndarray]:
        """case -> int64 indices into this split of that volume's slices, in slice order,
        for stacking predictions into a volume (``assemble``); {} for PNG data."""
        out: dict[str, list[tuple[int, int]]] = {}
        for i, (case, z) in enumerate(self.slices or ()):
            out.setdefault(case, []).append((z, i))
        return {case: np.array([i for _, i in sorted(pairs)], np.int64) for case, pairs in out.items()}

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> Split:
        """A split with no images (a coursework folder without test/), masks None."""
        return cls(np.zeros((0, *shape), np.float32), None, ())


@dataclass(frozen=True, eq=False)  # arrays make == ambiguous; compare fingerprints
class Dataset:
    """A loaded, validated dataset.

    source:     "phantom" or the absolute, resolved folder path.
    synthetic:  True for the phantom; output must always say so.
    layout:     one of LAYOUTS: "phantom" | "coursework" | "pool" | "acdc" | "nnunet".
    split_seed: seed of the split permutation for "pool", "phantom" and the volume
                layouts, else None (the coursework layout comes already split).
    volumes:    case id -> Volume for volume data (every case of every split, with what
                maps its slices back onto its grid); empty for PNG data.
    """

    source: str
    synthetic: bool
    layout: str
    train: Split
    val: Split
    test: Split
    split_seed: int | None
    volumes: dict[str, Volume] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"Dataset.layout must be one of {LAYOUTS}, got {self.layout!r}")
        shapes = {s.images.shape[1:] for s in (self.train, self.val, self.test)}
        if len(shapes) != 1:
            raise ValueError(f"Dataset: splits differ in image size: {sorted(shapes)}")

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of every image in the dataset."""
        return tuple(self.train.images.shape[1:])

    @cached_property
    def fingerprint(self) -> str:
        """16 hex chars of a sha256 over the train and val images and masks.

        Covers shapes, dtypes and bytes (explicitly little-endian), so it is the same in
        every process and on every machine for the same data, and changes when any train
        or val pixel or label does. The test split is left out on purpose: adding held-back
        test masks later must not make a study refuse its own data.
        """
        h = hashlib.sha256(b"segnet-sweep data v1")
        for name, split in (("train", self.train), ("val", self.val)):
            arrays = {"images": (split.images, "<f4"), "masks": (split.masks, "u1")}
            for key, (arr, dtype) in arrays.items():
                h.update(f"|{name}.{key}".encode())
                if arr is None:
                    h.update(b":none")
                    continue
                h.update(f":{arr.shape}:{dtype}:".encode())
                h.update(np.ascontiguousarray(arr, dtype=dtype).tobytes())
        return h.hexdigest()[:16]

    def split_patients(self) -> dict[str, list[str]]:
        """``{"train": [...], "val": [...], "test": [...]}``: the sorted unique groups
        (patients; slice names where patients are unknown) of each split."""
        return {name: sorted(set(split.groups)) for name, split in self.splits().items()}

    def splits(self) -> dict[str, Split]:
        """``{"train": ..., "val": ..., "test": ...}``, in that order."""
        return {"train": self.train, "val": self.val, "test": self.test}

    def describe(self) -> str:
        """One line for logs and reports, e.g.
        "phantom (synthetic, seed 0): 100 train / 20 val / 80 test, 96x96", or for volumes
        "/data/ACDC (acdc, split seed 0): 1520 train / 380 val / 1076 test slices of
        80 / 20 / 50 patients, 300 volumes, 192x192"; " (no test masks)" follows the
        counts where the test split has none."""
        if self.synthetic:
            origin = f"{self.source} (synthetic, seed {self.split_seed})"
        elif self.split_seed is not None:
            origin = f"{self.source} ({self.layout}, split seed {self.split_seed})"
        else:
            origin = f"{self.source} ({self.layout})"
        counts = f"{len(self.train)} train / {len(self.val)} val / {len(self.test)} test"
        if self.volumes:
            patients = " / ".join(str(len(set(s.groups))) for s in self.splits().values())
            counts += f" slices of {patients} patients, {len(self.volumes)} volumes"
        if self.test.masks is None:
            counts += " (no test masks)"
        h, w = self.image_shape
        return f"{origin}: {counts}, {h}x{w}"
