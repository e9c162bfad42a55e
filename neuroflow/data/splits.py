"""Seeded, stratified subsets: carving missing splits and capping splits (pure numpy)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def stratified_order(labels: Sequence[int] | np.ndarray, seed: int) -> np.ndarray:
    """A seeded permutation whose every prefix is stratified.

    Each class's examples are shuffled and spread evenly over [0, 1) (the j-th of n_c examples at
    `(j + u_c) / n_c`, with a random phase `u_c` per class); sorting by that position interleaves
    the classes, so any prefix of length k holds within one example of `k * n_c / n` of class c.

    Args:
        labels: class index per example.
        seed: the permutation's seed.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    position = np.empty(len(labels), dtype=np.float64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        position[idx] = (np.arange(len(idx)) + rng.random()) / len(idx)
    tiebreak = rng.random(len(labels))
    return np.lexsort((tiebreak, position))


def carve_splits(
    labels: Sequence[int] | np.ndarray, fractions: Mapping[str, float], seed: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Divide a pool into the rest and new splits of the given fractions, stratified by label.

    Args:
        labels: class index per pool example.
        fractions: new split name -> fraction of the pool (rounded to whole examples; sum < 1).
        seed: the division's seed.

    Returns:
        The sorted indices that stay in the pool, and new split name -> sorted indices.
    """
    n = len(labels)
    order = stratified_order(labels, seed)
    made: dict[str, np.ndarray] = {}
    start = 0
    for name, fraction in fractions.items():
        size = int(round(float(fraction) * n))
        made[name] = np.sort(order[start:start + size])
        start += size
    return np.sort(order[start:]), made


def cap_indices(labels: Sequence[int] | np.ndarray, cap: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of a seeded stratified subset of `cap` examples; None when no cap applies."""
    if cap is None or cap >= len(labels):
        return None
    return np.sort(stratified_order(labels, seed)[:cap])
