"""MMD^2 with a Gaussian kernel, its permutation p-value and the standardised reference: against hand
computations and a loop reference implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medens.data.embedding_drift import (
    EmbeddingReference,
    gaussian_kernel,
    median_sigma2,
    mmd2_biased,
    mmd_permutation_test,
)


def _mmd2_loop(x: np.ndarray, y: np.ndarray, sigma2: float) -> float:
    def k(a, b):
        return math.exp(-sum((ai - bi) ** 2 for ai, bi in zip(a, b)) / (2 * sigma2))

    kxx = sum(k(a, b) for a in x for b in x) / len(x) ** 2
    kyy = sum(k(a, b) for a in y for b in y) / len(y) ** 2
    kxy = sum(k(a, b) for a in x for b in y) / (len(x) * len(y))
    return kxx + kyy - 2 * kxy


def test_mmd_of_two_points_by_hand():
    # x = {0}, y = {1}, sigma^2 = 1: 1 + 1 - 2 exp(-1/2) = 0.7869386...
    assert mmd2_biased(np.array([[0.0]]), np.array([[1.0]]), 1.0) == pytest.approx(2 - 2 * math.exp(-0.5), abs=1e-12)
    stat, p = mmd_permutation_test(np.array([[0.0]]), np.array([[1.0]]), 1.0, permutations=20)
    assert stat == pytest.approx(0.7869386805747332, abs=1e-12)
    assert p == 1.0  # both labellings of two points give the same statistic


def test_mmd_matches_a_loop_implementation():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 3)), rng.normal(0.5, 1.0, size=(5, 3))
    assert mmd2_biased(x, y, 2.5) == pytest.approx(_mmd2_loop(x, y, 2.5), abs=1e-12)
    stat, _ = mmd_permutation_test(x, y, 2.5, permutations=5)
    assert stat == pytest.approx(_mmd2_loop(x, y, 2.5), abs=1e-12)
    assert gaussian_kernel(x[:1], y[:1], 2.5)[0, 0] == pytest.approx(
        math.exp(-np.sum((x[0] - y[0]) ** 2) / 5.0), abs=1e-12)


def test_the_permutation_p_value_is_the_rank_of_the_observed_statistic():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(6, 2)), rng.normal(1.0, 1.0, size=(4, 2))
    pooled = np.concatenate([x, y])
    stat, p = mmd_permutation_test(x, y, 1.5, permutations=50, rng=np.random.default_rng(9))
    # the same relabellings, recomputed one by one with the loop implementation
    gen = np.random.default_rng(9)
    w = np.concatenate([np.full(6, 1 / 6), np.full(4, -1 / 4)])
    null = []
    for _ in range(50):
        perm = gen.permutation(10)
        wp = w[perm]
        null.append(_mmd2_loop(pooled[wp > 0], pooled[wp < 0], 1.5))
    assert p == pytest.approx((1 + sum(s >= stat - 1e-12 for s in null)) / 51, abs=1e-12)


def test_separated_samples_get_the_smallest_p_value_and_same_distribution_is_calibrated():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(100, 4))
    _, p = mmd_permutation_test(ref, rng.normal(3.0, 1.0, size=(40, 4)), median_sigma2(ref), permutations=99)
    assert p == pytest.approx(1 / 100)
    # under the null the p-value is uniform: P(p <= 0.05) <= 0.05 (60 windows: at most 9 below, a
    # binomial(60, 0.05) exceeds 9 with probability 0.0007)
    ps = [mmd_permutation_test(ref, rng.normal(size=(30, 4)), median_sigma2(ref), permutations=99, rng=i)[1]
          for i in range(60)]
    assert sum(q <= 0.05 for q in ps) <= 9
    assert 0.35 < float(np.mean(ps)) < 0.65  # uniform mean 0.5, sd of the mean 0.037


def test_the_median_heuristic_by_hand():
    z = np.array([[0.0], [1.0], [3.0]])  # squared distances 1, 9, 4: median 4
    assert median_sigma2(z) == 4.0
    with pytest.raises(ValueError, match="at least 2"):
        median_sigma2(z[:1])


def test_each_block_is_standardised_and_weighs_the_same(tmp_path):
    # block "a": 1 column of std 2; block "b": 4 columns of std 1
    rng = np.random.default_rng(0)
    a = rng.normal(5.0, 2.0, size=(200, 1))
    b = rng.normal(0.0, 1.0, size=(200, 4))
    ref = EmbeddingReference.build(np.concatenate([a, b], axis=1), [("a", 1), ("b", 4)], labels=np.zeros(200))
    z = ref.standardise(ref.embeddings)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), [1.0, 0.5, 0.5, 0.5, 0.5], rtol=1e-5)  # 1/sqrt(1), 1/sqrt(4)
    assert ref.sigma2 == pytest.approx(median_sigma2(z))
    again = EmbeddingReference.load(ref.save(tmp_path / "r.npz"))
    assert again.blocks == [("a", 1), ("b", 4)] and again.sigma2 == ref.sigma2
    np.testing.assert_array_equal(again.embeddings, ref.embeddings)
    with pytest.raises(ValueError, match="width 3 against a reference of width 5"):
        ref.standardise(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="do not match the blocks"):
        EmbeddingReference.build(np.zeros((3, 4)), [("a", 1), ("b", 4)])
