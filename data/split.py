"""Seeded train/val/test split of a labelled pool."""

from __future__ import annotations

import numpy as np

#: train / val / test fractions of the contract (50/10/40 per cent).
SPLIT_FRACTIONS = (0.5, 0.1, 0.4)


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
    if n < 3:
        raise ValueError(f"split_indices: need n >= 3 to make three non-empty parts, got {n}")
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split_indices: fractions must be three positive numbers summing to 1, got {fractions}")
    # Round half up (not Python's half-to-even) so the sizes are what a reader expects.
    sizes = [int(np.floor(n * f + 0.5)) for f in fractions[:2]]
    sizes.append(n - sum(sizes))
    # Small pools: an empty part would make training or validation meaningless, so take
    # one item from the largest part for each empty one.
    for i in range(3):
        if sizes[i] < 1:
            sizes[int(np.argmax(sizes))] -= 1
            sizes[i] = 1
    order = np.random.default_rng(seed).permutation(n)
    train, val, test = np.split(order, [sizes[0], sizes[0] + sizes[1]])
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
