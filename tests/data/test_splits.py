import numpy as np
import pytest

from medens.data import stratified_kfold, stratified_split


def test_stratified_split_fractions_and_strata():
    y = np.array([0] * 800 + [1] * 100 + [2] * 100)
    tr, va, te = stratified_split(y, (0.7, 0.15, 0.15), seed=0)
    assert len(tr) + len(va) + len(te) == 1000
    assert len(set(tr) | set(va) | set(te)) == 1000
    for part, n in ((tr, 700), (va, 150), (te, 150)):
        assert abs(len(part) - n) <= 1
        frac = np.bincount(y[part], minlength=3) / len(part)
        assert np.allclose(frac, [0.8, 0.1, 0.1], atol=0.01)


def test_split_is_seeded_and_works_without_labels():
    y = np.arange(100) % 2
    a = stratified_split(y, seed=1)
    b = stratified_split(y, seed=1)
    c = stratified_split(y, seed=2)
    assert all(np.array_equal(x, z) for x, z in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    tr, va, te = stratified_split(None, (0.8, 0.1, 0.1), seed=0, n=50)
    assert (len(tr), len(va), len(te)) == (40, 5, 5)


def test_split_errors():
    with pytest.raises(ValueError, match="sum"):
        stratified_split(np.zeros(10, int), (0.5, 0.1, 0.1))


def test_kfold_stratified():
    y = np.array([0] * 50 + [1] * 10)
    folds = stratified_kfold(y, k=5, seed=0)
    assert len(folds) == 5
    all_val = np.concatenate([va for _, va in folds])
    assert sorted(all_val.tolist()) == list(range(60))
    for tr, va in folds:
        assert np.bincount(y[va]).tolist() == [10, 2]
        assert not set(tr) & set(va)
    with pytest.raises(ValueError, match="at least 5 samples per class; the smallest class has 3"):
        stratified_kfold(np.array([0] * 10 + [1] * 3), k=5)
