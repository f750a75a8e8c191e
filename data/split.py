"""Seeded splits and cross-validation folds, of items or of groups of items (patients).

A *group* is what must never be divided between two parts: a patient, whose slices and
volumes are strongly correlated, so a model validated on a patient it also trained on
looks better than it is. With one item per group (no strata) the grouped functions give
exactly the ungrouped ones' parts, so datasets and studies made before grouping existed
keep their splits, folds and fingerprints.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: train / val / test fractions of the contract (50/10/40 per cent).
SPLIT_FRACTIONS = (0.5, 0.1, 0.4)


def _part_sizes(n: int, fractions: Sequence[float], who: str) -> list[int]:
    """Integer sizes of ``len(fractions)`` non-empty parts of ``n`` items.

    Round half up (not Python's half-to-even) for all parts but the last, which takes the
    rounding remainder; an empty part then takes one item from the largest part.
    """
    k = len(fractions)
    if k < 2 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"{who}: fractions must be two or more positive numbers summing to 1, got {tuple(fractions)}")
    if n < k:
        raise ValueError(f"{who}: need n >= {k} to make {k} non-empty parts, got {n}")
    sizes = [int(np.floor(n * f + 0.5)) for f in fractions[:-1]]
    sizes.append(n - sum(sizes))
    # Small pools: an empty part would make training or validation meaningless.
    for i in range(k):
        if sizes[i] < 1:
            sizes[int(np.argmax(sizes))] -= 1
            sizes[i] = 1
    return sizes


def split_indices(
    n: int, seed: int, fractions: tuple[float, float, float] = SPLIT_FRACTIONS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split ``range(n)`` into train, val and test indices by a seeded permutation.

    Sizes are the rounded fractions (200 -> 100/20/80, 120 -> 60/12/48), with test taking
    the rounding remainder; when n >= 3 every part is non-empty. The permutation is
    ``np.random.default_rng(seed).permutation(n)``, so the same (n, seed) always gives the
    same split; each part is returned sorted so that split members keep their load order.

    Returns three int64 arrays, shapes (n_train,), (n_val,), (n_test,), together a
    partition of ``range(n)``.
    """
    if len(fractions) != 3:
        raise ValueError(f"split_indices: fractions must be three positive numbers summing to 1, got {fractions}")
    sizes = _part_sizes(n, fractions, "split_indices")
    order = np.random.default_rng(seed).permutation(n)
    train, val, test = np.split(order, np.cumsum(sizes)[:-1])
    return np.sort(train), np.sort(val), np.sort(test)


def fold_indices(n: int, k: int, seed: int = 0) -> list[np.ndarray]:
    """Split ``range(n)`` into ``k`` folds for cross-validation by a seeded permutation.

    Fold sizes differ by at most one (72 slices, k=5 -> 15, 15, 14, 14, 14); each fold is
    returned sorted. The same (n, k, seed) always gives the same folds.
    """
    if k < 2:
        raise ValueError(f"fold_indices: need k >= 2 folds, got {k}")
    if n < k:
        raise ValueError(f"fold_indices: {n} items cannot make {k} non-empty folds")
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(fold) for fold in np.array_split(order, k)]


def _groups_of(groups: Sequence[str], strata: Sequence[str] | None, who: str):
    """Unique groups in order of first appearance, each item's group number (N,) int, and
    each group's stratum (or None). A group whose items name two strata is an error."""
    first: dict[str, int] = {}
    item_group = np.array([first.setdefault(g, len(first)) for g in groups], dtype=np.int64)
    names = list(first)
    if strata is None:
        return names, item_group, None
    if len(strata) != len(groups):
        raise ValueError(f"{who}: {len(strata)} strata for {len(groups)} items")
    group_stratum: list[str | None] = [None] * len(names)
    for g, s in zip(item_group, strata):
        if group_stratum[g] is None:
            group_stratum[g] = s
        elif group_stratum[g] != s:
            raise ValueError(f"{who}: group {names[g]!r} is in strata {group_stratum[g]!r} and {s!r}")
    return names, item_group, group_stratum


def _apportion(counts: list[int], totals: list[int]) -> np.ndarray:
    """Integer table (strata, parts) with row sums ``counts`` and column sums ``totals``,
    each cell close to its proportional share ``counts[s] * totals[p] / sum(totals)``.

    Floors of the shares first, then the remaining units by largest remainder, a unit
    going only where both its row and its column still lack one (always possible, since
    what rows and columns lack adds up to the same number).
    """
    n = sum(totals)
    share = np.outer(counts, totals) / n
    table = np.floor(share + 1e-9).astype(np.int64)
    row_left = np.asarray(counts) - table.sum(1)
    col_left = np.asarray(totals) - table.sum(0)
    order = np.argsort(-(share - table), axis=None, kind="stable")
    for flat in list(order) * 2:  # a second pass hands out what the remainders did not
        s, p = divmod(int(flat), len(totals))
        if row_left[s] > 0 and col_left[p] > 0:
            table[s, p] += 1
            row_left[s] -= 1
            col_left[p] -= 1
    return table


def split_groups(
    groups: Sequence[str],
    seed: int,
    fractions: Sequence[float] = SPLIT_FRACTIONS,
    strata: Sequence[str] | None = None,
) -> tuple[np.ndarray, ...]:
    """Split items into ``len(fractions)`` parts (train, val[, test]) so that no group is
    in two parts.

    groups:    (N,) the group (patient) of each item.
    fractions: two or three positive fractions summing to 1, applied to the number of
               groups (patients), not of items, with ``split_indices``'s rounding.
    strata:    optional (N,) label of each item's stratum (e.g. the ACDC pathology group),
               one per group; each part then holds every stratum in proportion to its size.

    Without strata the unique groups, in order of first appearance, are split by
    ``split_indices``'s permutation: with one item per group this IS
    ``split_indices(N, seed, fractions)``. Returns one sorted int64 index array into
    ``groups`` per fraction; together a partition of ``range(N)``, each part non-empty.
    """
    names, item_group, group_stratum = _groups_of(groups, strata, "split_groups")
    sizes = _part_sizes(len(names), fractions, "split_groups")
    rng = np.random.default_rng(seed)
    part_of_group = np.empty(len(names), np.int64)
    if group_stratum is None:
        order = rng.permutation(len(names))
        for p, chunk in enumerate(np.split(order, np.cumsum(sizes)[:-1])):
            part_of_group[chunk] = p
    else:
        levels = sorted(set(group_stratum))
        members = [np.flatnonzero([s == level for s in group_stratum]) for level in levels]
        table = _apportion([len(m) for m in members], sizes)
        for m, row in zip(members, table):
            shuffled = rng.permutation(m)
            for p, chunk in enumerate(np.split(shuffled, np.cumsum(row)[:-1])):
                part_of_group[chunk] = p
    item_part = part_of_group[item_group]
    return tuple(np.flatnonzero(item_part == p) for p in range(len(sizes)))


def group_fold_indices(
    groups: Sequence[str], k: int, seed: int = 0, strata: Sequence[str] | None = None
) -> list[np.ndarray]:
    """Split items into ``k`` cross-validation folds so that no group is in two folds.

    groups: (N,) the group (patient) of each item; strata: optional (N,) stratum of each
    item (one per group), balanced across folds in number of groups.

    Groups are shuffled by ``seed``, then dealt in rounds (the largest group of each
    stratum, then the second largest, ...; largest first within a round, ties in shuffled
    order) to the fold that holds fewest groups of their stratum, then fewest items, then
    fewest groups: fold sizes are as even as the group sizes allow. With one item per group and no
    strata this IS ``fold_indices(N, k, seed)``, so ungrouped studies keep their folds.
    Returns ``k`` sorted int64 index arrays into ``groups``, together a partition of
    ``range(N)``.
    """
    if k < 2:
        raise ValueError(f"group_fold_indices: need k >= 2 folds, got {k}")
    names, item_group, group_stratum = _groups_of(groups, strata, "group_fold_indices")
    if len(names) < k:
        raise ValueError(f"group_fold_indices: {len(names)} groups cannot make {k} non-empty folds")
    if group_stratum is None and len(names) == len(groups):
        return fold_indices(len(groups), k, seed)
    sizes = np.bincount(item_group, minlength=len(names))
    shuffled = np.random.default_rng(seed).permutation(len(names))
    stratum = group_stratum or [None] * len(names)
    # Deal in rounds: the largest group of every stratum, then the second largest, ...
    # so that each stratum's surplus groups (more than k) come last and spread by size.
    rank = np.empty(len(names), np.int64)
    for level in set(stratum):
        members = [g for g in shuffled if stratum[g] == level]
        for r, g in enumerate(sorted(members, key=lambda g: -sizes[g])):
            rank[g] = r
    order = sorted(shuffled, key=lambda g: (rank[g], -sizes[g]))
    items, n_groups = np.zeros(k, np.int64), np.zeros(k, np.int64)
    per_stratum: dict[object, np.ndarray] = {s: np.zeros(k, np.int64) for s in set(stratum)}
    fold_of_group = np.empty(len(names), np.int64)
    for g in order:
        counts = per_stratum[stratum[g]]
        f = min(range(k), key=lambda i: (counts[i], items[i], n_groups[i], i))
        fold_of_group[g] = f
        counts[f] += 1
        items[f] += sizes[g]
        n_groups[f] += 1
    item_fold = fold_of_group[item_group]
    return [np.flatnonzero(item_fold == f) for f in range(k)]
