"""Stratified, seeded splits and k-fold cross-validation (scikit-learn underneath)."""

from __future__ import annotations

import numpy as np


def _strata(labels: np.ndarray | None, n: int) -> np.ndarray | None:
    if labels is None:
        return None
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"labels shape {tuple(y.shape)} does not match {n} samples")
    return y


def stratified_split(
    labels: np.ndarray | None,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    n: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of a stratified train/val/test split with the given fractions (seeded).

    Args:
        labels: class index per sample, or ``None`` (segmentation) for a plain shuffled split.
        fractions: train, val, test fractions; must be non-negative and sum to 1.
            A zero val or test fraction gives an empty split.
        seed: random seed.
        n: number of samples when ``labels`` is ``None``.
    """
    from sklearn.model_selection import train_test_split

    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or (f < 0).any() or abs(f.sum() - 1.0) > 1e-6 or f[0] <= 0:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1 with train > 0, got {list(fractions)}")
    total = len(labels) if labels is not None else n
    if total is None:
        raise ValueError("stratified_split needs labels or n")
    y = _strata(labels, total)
    idx = np.arange(total)
    rest_frac = f[1] + f[2]
    if rest_frac == 0:
        return idx, np.empty(0, np.int64), np.empty(0, np.int64)
    train, rest = train_test_split(idx, test_size=rest_frac, random_state=seed, stratify=y)
    if f[1] == 0:
        return np.sort(train), np.empty(0, np.int64), np.sort(rest)
    if f[2] == 0:
        return np.sort(train), np.sort(rest), np.empty(0, np.int64)
    val, test = train_test_split(rest, test_size=f[2] / rest_frac, random_state=seed + 1,
                                 stratify=None if y is None else y[rest])
    return np.sort(train), np.sort(val), np.sort(test)


def stratified_kfold(labels: np.ndarray, k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (train_idx, val_idx) pairs, shuffled with ``seed``."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(labels)
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    smallest = np.bincount(y).min() if y.size else 0
    if smallest < k:
        raise ValueError(f"stratified {k}-fold needs at least {k} samples per class; the smallest class has {smallest}")
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(tr, va) for tr, va in skf.split(np.zeros(y.size), y)]
