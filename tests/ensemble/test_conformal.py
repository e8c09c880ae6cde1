"""Conformal prediction sets: the finite-sample quantile rule, APS/RAPS by hand, the sets against
crepes' Mondrian p-values, and the coverage acceptance on a planted imbalanced task."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import beta, betabinom

from medens.ensemble.conformal import (
    ConformalSets,
    calibrate,
    conformal_quantile,
    conformity_scores,
    coverage_table,
    finite_sample_rank,
)

# ---------------------------------------------------------------- the rule


def test_quantile_is_the_ceil_n_plus_1_rank_smallest_score():
    scores = np.array([0.7, 0.1, 1.0, 0.4, 0.3, 0.9, 0.2, 0.6, 0.5, 0.8])  # 0.1 .. 1.0 shuffled, n = 10
    # k = ceil(11 * level): 0.9 -> 10 (1.0), 0.8 -> ceil(8.8) = 9 (0.9), 0.5 -> ceil(5.5) = 6 (0.6)
    assert conformal_quantile(scores, 0.9) == 1.0
    assert conformal_quantile(scores, 0.8) == 0.9
    assert conformal_quantile(scores, 0.5) == 0.6
    # k > n: ceil(10 * 0.95) = 10 > 9 scores -> infinite (the class is always in the set)
    assert conformal_quantile(scores[:9], 0.95) == math.inf
    assert conformal_quantile(scores[:8], 0.9) == math.inf  # ceil(9 * 0.9) = 9 > 8
    assert conformal_quantile(np.array([]), 0.9) == math.inf
    # exact arithmetic: 100 * 0.93 is 93.00000000000001 in floats, whose ceil would be 94
    assert finite_sample_rank(99, 0.93) == 93
    assert finite_sample_rank(19, 0.95) == 19 and finite_sample_rank(9, 0.9) == 9


@pytest.mark.parametrize("n", [9, 10, 19, 20, 57, 99, 500])
@pytest.mark.parametrize("level", [0.8, 0.9, 0.93, 0.95])
def test_quantile_equals_the_k_over_n_empirical_quantile(n, level):
    """Reference: numpy's inverted-CDF quantile at ``k / n`` is the k-th smallest score."""
    s = np.random.default_rng(n).random(n)
    k = math.ceil(round((n + 1) * level, 9))
    expected = math.inf if k > n else np.quantile(s, k / n, method="inverted_cdf")
    assert conformal_quantile(s, level) == expected


def test_aps_and_raps_scores_by_hand():
    p = np.array([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.4, 0.4, 0.2]])
    np.testing.assert_allclose(conformity_scores(p, "aps"), [[0.5, 0.8, 1.0], [1.0, 0.5, 0.8], [0.4, 0.8, 1.0]])
    # RAPS lam = 0.1, k_reg = 1: + 0.1 * (rank - 1) for ranks 1, 2, 3 (ties ranked by class index)
    np.testing.assert_allclose(conformity_scores(p, "raps", lam=0.1, k_reg=1),
                               [[0.5, 0.9, 1.2], [1.2, 0.5, 0.9], [0.4, 0.9, 1.2]])
    np.testing.assert_allclose(conformity_scores(p, "raps", lam=0.1, k_reg=2),
                               [[0.5, 0.8, 1.1], [1.1, 0.5, 0.8], [0.4, 0.8, 1.1]])
    with pytest.raises(ValueError, match="unknown conformity score"):
        conformity_scores(p, "lac")
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        conformity_scores(np.array([0.5, 0.5]))


def test_mondrian_thresholds_per_class_by_hand():
    # class 0: true-class APS scores 0.6, 0.7, 0.8, 0.9 (n=4); class 1: 0.55, 0.65 (n=2)
    p = np.array([[0.6, 0.4], [0.7, 0.3], [0.8, 0.2], [0.9, 0.1], [0.45, 0.55], [0.35, 0.65]])
    y = np.array([0, 0, 0, 0, 1, 1])
    s = calibrate(p, y, ["a", "b"], levels=(0.5, 0.7))
    # level 0.5: class 0 k = ceil(5 * 0.5) = 3 -> 0.8; class 1 k = ceil(1.5) = 2 -> 0.65
    np.testing.assert_allclose(s.thresholds[0.5], [0.8, 0.65])
    # level 0.7: class 0 k = ceil(3.5) = 4 -> 0.9; class 1 k = ceil(2.1) = 3 > 2 -> inf
    assert s.thresholds[0.7][0] == 0.9 and s.thresholds[0.7][1] == math.inf
    assert s.n_per_class == [4, 2] and s.default == 0.5
    # marginal: all six true-class scores 0.55 .. 0.9, level 0.5: k = ceil(3.5) = 4 -> 0.7
    m = calibrate(p, y, ["a", "b"], levels=(0.5,), method="marginal")
    np.testing.assert_allclose(m.thresholds[0.5], [0.7, 0.7])
    # sets at 0.5: [0.9, 0.1] scores a 0.9 > 0.8, b 1.0 > 0.65: empty -> the top class
    assert s.prediction_sets(np.array([[0.75, 0.25], [0.9, 0.1], [0.5, 0.5]])) == [["a"], ["a"], ["a"]]
    # at 0.7, [0.4, 0.6]: b (score 0.6) is always in (inf); a scores 1.0 > 0.9
    assert s.prediction_sets(np.array([[0.4, 0.6]]), 0.7) == [["b"]]
    assert s.prediction_sets(np.array([[0.85, 0.15]]), 0.7) == [["a", "b"]]  # a 0.85 <= 0.9, b inf
    np.testing.assert_array_equal(s.mask(np.array([[0.4, 0.6]]), 0.7), [[False, True]])


def test_sets_match_crepes_mondrian_p_values():
    """crepes (an independent implementation): class k is in the set iff its non-smoothed Mondrian
    p-value, (#{calibration scores of class k >= score} + 1) / (n_k + 1), exceeds alpha. Class
    sizes are chosen so that (n_k + 1) * alpha is never an integer (crepes keeps p == alpha)."""
    from crepes import ConformalClassifier

    rng = np.random.default_rng(3)
    n = {0: 300, 1: 120, 2: 41}
    y = np.concatenate([np.full(v, k) for k, v in n.items()])
    p = rng.dirichlet([2.0, 1.0, 1.0], size=len(y))
    p[np.arange(len(y)), y] += 0.3
    p /= p.sum(1, keepdims=True)
    test = rng.dirichlet([1.0, 1.0, 1.0], size=400)
    for score in ("aps", "raps"):
        sets = calibrate(p, y, ["a", "b", "c"], levels=(0.9, 0.95), score=score)
        true = sets.scores(p)[np.arange(len(y)), y]
        ts = sets.scores(test)
        for level in (0.9, 0.95):
            expected = np.zeros_like(ts, dtype=bool)
            for k in range(3):
                cc = ConformalClassifier().fit(true[y == k])
                pv = cc.predict_p(ts[:, k:k + 1], smoothing=False)[:, 0]
                expected[:, k] = pv > 1 - level
            np.testing.assert_array_equal(ts <= sets.thresholds[level][None, :], expected)


def test_json_round_trip_and_levels():
    p = np.random.default_rng(0).dirichlet([1, 1, 1], size=30)
    y = np.arange(30) % 3
    s = calibrate(p, y, ["a", "b", "c"], levels=(0.9, 0.95), score="raps", source="x")
    d = json.loads(json.dumps(s.to_dict()))
    assert d["thresholds"]["0.95"] == [None, None, None]  # n = 10 per class: ceil(11 * 0.95) = 11 > 10
    back = ConformalSets.from_dict(d)
    assert back.levels == [0.9, 0.95] and back.params == {"lam": 0.01, "k_reg": 1}
    np.testing.assert_array_equal(back.mask(p, 0.9), s.mask(p, 0.9))
    assert back.level(None) == 0.9 and back.level("0.95") == 0.95 and back.level(0.95) == 0.95
    for bad in (0.8, "x", True, float("nan")):
        with pytest.raises(ValueError, match="0.9, 0.95"):
            back.level(bad)
    with pytest.raises(ValueError, match="malformed"):
        ConformalSets.from_dict({**d, "method": "other"})


# ---------------------------------------------------------------- acceptance: a planted imbalanced task

COUNTS = np.array([500, 300, 150, 60, 20])  # calibration images per class: 500:20 imbalance


def _planted(rng, counts, sharpness, overlap=0.7):
    """Five classes, x ~ N(mu_y, I) in 5 dimensions with mu_k = sharpness * e_k, except the minority
    class 4, whose mean lies ``overlap`` of the way towards class 0's (a subtle finding that looks
    like the commonest class). The model's probabilities are the exact posterior under the
    imbalanced training prior, which under-predicts the minority class."""
    mu = sharpness * np.eye(5)
    mu[4] = sharpness * (overlap * np.eye(5)[0] + (1 - overlap) * np.eye(5)[4])
    y = np.concatenate([np.full(c, k) for k, c in enumerate(counts)])
    x = rng.normal(size=(len(y), 5)) + mu[y]
    logits = x @ mu.T - 0.5 * (mu ** 2).sum(1) + np.log(COUNTS / COUNTS.sum())
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True), y


def _covered(sets, p, y, level):
    return sets.mask(p, level)[np.arange(len(y)), y]


@pytest.mark.parametrize("score", ["aps", "raps"])
@pytest.mark.parametrize("level", [0.9, 0.95])
def test_mondrian_covers_every_class_marginal_does_not(level, score):
    """One calibration draw: the count of covered test images of class k is Beta-Binomial(m_k, r,
    n_k + 1 - r) with r = ceil((n_k + 1) * level) (exchangeable, continuous scores; ties and the
    top-class fill only add coverage). Tolerance: its 0.1% quantile, so a correct method fails a
    class with probability under 1/1000; at the minority's n = 20 that is wide (the guarantee is
    an average over calibration draws), which the repeated-draw test below narrows."""
    rng = np.random.default_rng(11)
    p_cal, y_cal = _planted(rng, COUNTS, 2.0)
    p_test, y_test = _planted(rng, COUNTS * 10, 2.0)
    mondrian = calibrate(p_cal, y_cal, list("abcde"), levels=(level,), score=score)
    marginal = calibrate(p_cal, y_cal, list("abcde"), levels=(level,), method="marginal", score=score)
    cov_m, cov_g = _covered(mondrian, p_test, y_test, level), _covered(marginal, p_test, y_test, level)
    for k, n in enumerate(COUNTS):
        m = int(np.sum(y_test == k))
        r = finite_sample_rank(int(n), level)
        floor = betabinom.ppf(0.001, m, r, n + 1 - r)
        assert cov_m[y_test == k].sum() >= floor, (k, cov_m[y_test == k].mean(), floor / m)
    # marginal conformal covers on average but not the minority class (as on the published MRI task)
    assert cov_g.mean() >= level - 0.02
    minority = y_test == 4
    assert cov_g[minority].mean() < level - 0.15 and cov_m[minority].mean() - cov_g[minority].mean() > 0.15


def test_mondrian_per_class_coverage_over_repeated_draws():
    """200 independent calibration/test draws: every class's mean coverage is at least the level
    minus 3 standard errors of the mean of a Beta(r, n + 1 - r) coverage (the exact law of the
    conditional coverage), and the minority's marginal-conformal coverage stays far below it."""
    rng = np.random.default_rng(5)
    reps, mondrian_cov, marginal_min = 200, [], []
    for _ in range(reps):
        p_cal, y_cal = _planted(rng, COUNTS, 2.0)
        p_test, y_test = _planted(rng, COUNTS * 2, 2.0)
        s = calibrate(p_cal, y_cal, list("abcde"), levels=(0.9, 0.95))
        g = calibrate(p_cal, y_cal, list("abcde"), levels=(0.9,), method="marginal")
        mondrian_cov.append([[_covered(s, p_test, y_test, lv)[y_test == k].mean() for k in range(5)]
                             for lv in (0.9, 0.95)])
        marginal_min.append(_covered(g, p_test, y_test, 0.9)[y_test == 4].mean())
    mean = np.mean(mondrian_cov, axis=0)
    for i, level in enumerate((0.9, 0.95)):
        for k, n in enumerate(COUNTS):
            r = finite_sample_rank(int(n), level)
            # Beta's sd plus the test-sample binomial sd, over sqrt(reps) draws
            sd = math.sqrt(beta.var(r, n + 1 - r) + level * (1 - level) / (2 * n))
            assert mean[i, k] >= level - 3 * sd / math.sqrt(reps), (level, k, mean[i, k])
    assert np.mean(marginal_min) < 0.75


def test_a_better_model_gives_smaller_sets():
    rng = np.random.default_rng(2)
    sizes = {}
    for sharpness in (1.5, 2.0, 3.0):  # a sharper, more accurate model
        p_cal, y_cal = _planted(rng, COUNTS, sharpness)
        p_test, y_test = _planted(rng, COUNTS * 4, sharpness)
        for score in ("aps", "raps"):
            s = calibrate(p_cal, y_cal, list("abcde"), levels=(0.9, 0.95), score=score)
            t = coverage_table(s, p_test, y_test)
            sizes[sharpness, score] = [t["0.9"]["mean_set_size"], t["0.95"]["mean_set_size"]]
    for score in ("aps", "raps"):
        for i in range(2):
            assert sizes[1.5, score][i] > sizes[2.0, score][i] > sizes[3.0, score][i], sizes


def test_coverage_table_by_hand():
    s = calibrate(np.array([[0.6, 0.4], [0.3, 0.7]]), np.array([0, 1]), ["a", "b"], levels=(0.5,))
    # thresholds: class a k = ceil(2 * 0.5) = 1 -> 0.6; class b -> 0.7
    t = coverage_table(s, np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]), np.array([0, 1, 1]))
    # [0.5, 0.5]: a 0.5 <= 0.6 in, b 1.0 out -> {a}; [0.9, 0.1]: a 0.9 out, b 1.0 out -> top {a};
    # [0.2, 0.8]: a 1.0 out, b 0.8 out -> top {b}
    assert t["0.5"]["coverage"] == pytest.approx(2 / 3) and t["0.5"]["mean_set_size"] == 1.0
    assert t["0.5"]["per_class"] == {"a": {"n": 1, "coverage": 1.0, "mean_set_size": 1.0},
                                     "b": {"n": 2, "coverage": 0.5, "mean_set_size": 1.0}}
