"""Confidence intervals and paired tests: hand values, slow references, coverage and null uniformity.

The simulations are seeded, so every test is deterministic; each asserts a statistical property
(coverage within 93-97%, KS on 500 null p-values not rejecting at 0.01, power under a planted
difference) that a wrong implementation would fail.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from medens.evaluation import (
    METRICS,
    bootstrap_ci,
    delong,
    delong_ovr,
    holm,
    mcnemar,
    normal_ci,
    paired_bootstrap,
    resample_indices,
)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def correlated_systems(
    rng: np.random.Generator, y: np.ndarray, k: int, signal_a: float, signal_b: float
) -> tuple[np.ndarray, np.ndarray]:
    """Two classifiers sharing half their noise (so their errors are correlated)."""
    n = y.size
    shared = rng.normal(size=(n, k))
    za = shared + rng.normal(size=(n, k))
    zb = shared + rng.normal(size=(n, k))
    za[np.arange(n), y] += signal_a
    zb[np.arange(n), y] += signal_b
    return softmax(za), softmax(zb)


def ks_uniform(p_values: list[float]) -> float:
    return float(stats.kstest(np.asarray(p_values), "uniform").pvalue)


# ---------------------------------------------------------------------------------------------
# bootstrap CI
# ---------------------------------------------------------------------------------------------


def test_bootstrap_ci_coverage_of_known_accuracy() -> None:
    """95% CI covers the true accuracy 0.85 in 93-97% of 400 simulated test sets (N=300)."""
    rng = np.random.default_rng(0)
    n, true_acc = 300, 0.85
    y = np.repeat([0, 1], [200, 100])
    covered = 0
    for sim in range(400):
        right = rng.random(n) < true_acc
        pred = np.where(right, y, 1 - y)
        p = np.full((n, 2), 0.3)
        p[np.arange(n), pred] = 0.7
        r = bootstrap_ci(y, p, "accuracy", n_resamples=1000, seed=sim)
        covered += r["low"] <= true_acc <= r["high"]
    coverage = covered / 400
    assert 0.93 <= coverage <= 0.97, coverage  # seed 0 gives 0.955


def test_bootstrap_ci_values_and_determinism() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], [120, 60, 20])
    p, _ = correlated_systems(rng, y, 3, 1.5, 1.5)
    r = bootstrap_ci(y, p, "mcc", n_resamples=300, seed=3)
    assert r["point"] == pytest.approx(METRICS["mcc"](y, p))
    assert r["low"] < r["point"] < r["high"] and r["std"] > 0
    assert r["n_resamples"] == 300 and r["n_valid"] == 300 and r["confidence"] == 0.95
    assert bootstrap_ci(y, p, "mcc", n_resamples=300, seed=3) == r
    assert bootstrap_ci(y, p, "mcc", n_resamples=300, seed=4) != r
    # the vectorised path equals calling the metric on each resample (same resamples)
    slow = bootstrap_ci(y, p, lambda yy, pp: METRICS["mcc"](yy, pp), n_resamples=300, seed=3)
    for key in ("point", "low", "high", "std"):
        assert slow[key] == pytest.approx(r[key], abs=1e-12), key
    # percentile interval by hand from the same resamples
    reps = [METRICS["mcc"](y[i], p[i]) for idx in resample_indices(y, 300, seed=3) for i in idx]
    assert r["low"] == pytest.approx(np.quantile(reps, 0.025), abs=1e-12)
    assert r["high"] == pytest.approx(np.quantile(reps, 0.975), abs=1e-12)
    assert r["std"] == pytest.approx(np.std(reps, ddof=1), abs=1e-12)
    narrow = bootstrap_ci(y, p, "mcc", n_resamples=300, seed=3, confidence=0.5)
    assert r["low"] < narrow["low"] < narrow["high"] < r["high"]


def test_resample_indices_stratified_keeps_class_sizes() -> None:
    y = np.repeat([2, 0, 1], [7, 30, 3])
    chunks = list(resample_indices(y, 50, seed=0))
    idx = np.concatenate(chunks)
    assert idx.shape == (50, y.size)
    for row in idx:
        assert np.bincount(y[row], minlength=3).tolist() == [30, 3, 7]
    plain = np.concatenate(list(resample_indices(y, 50, seed=0, stratified=False)))
    assert len({tuple(np.bincount(y[row], minlength=3)) for row in plain}) > 1


def test_named_metrics_bootstrap_like_their_callables_many_times_faster() -> None:
    """A named metric is vectorised over the resamples; the same metric as a callable is called once
    per resample. Same replicates, same interval; the named one at least 5 times faster (measured
    50 to 90 times at 100 resamples of N=600). A ratio, so a loaded machine slows both alike."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 600)
    p, _ = correlated_systems(rng, y, 3, 1.5, 1.5)
    callables = {
        "accuracy": lambda t, q: accuracy_score(t, q.argmax(1)),
        "mcc": lambda t, q: matthews_corrcoef(t, q.argmax(1)),
        "macro_f1": lambda t, q: f1_score(t, q.argmax(1), average="macro"),
        "auroc_macro": lambda t, q: roc_auc_score(t, q, multi_class="ovr", average="macro"),
    }
    for name, fn in callables.items():
        named_s = []
        for _ in range(2):  # the faster of two runs of the named metric (the first warms caches)
            start = time.perf_counter()
            named = bootstrap_ci(y, p, name, n_resamples=100)
            named_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        called = bootstrap_ci(y, p, fn, n_resamples=100)
        called_s = time.perf_counter() - start
        for key in ("point", "low", "high", "std"):
            assert named[key] == pytest.approx(called[key], abs=1e-9), (name, key)
        assert named["n_valid"] == called["n_valid"] == 100
        assert called_s > 5 * min(named_s), (name, called_s, named_s)


def test_bootstrap_errors() -> None:
    y, p = [0, 1, 1], [[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]
    with pytest.raises(ValueError, match=r"unknown metric 'acuracy'; did you mean 'accuracy'"):
        bootstrap_ci(y, p, "acuracy")
    with pytest.raises(ValueError, match=r"n_resamples must be a positive integer, got 0"):
        bootstrap_ci(y, p, "accuracy", n_resamples=0)
    with pytest.raises(ValueError, match=r"confidence must lie in \(0, 1\), got 95"):
        bootstrap_ci(y, p, "accuracy", confidence=95)
    with pytest.raises(ValueError, match=r"length mismatch: y_true has shape \(2,\) but probs has shape \(3, 2\)"):
        bootstrap_ci([0, 1], p, "accuracy")


# ---------------------------------------------------------------------------------------------
# normal CI
# ---------------------------------------------------------------------------------------------


def test_normal_ci_reproduces_study_1() -> None:
    # Rajaraman et al. 2021: MCC 0.9068 on 624 test images, 95% CI (0.8839, 0.9297)
    low, high = normal_ci(0.9068, 624)
    half = 1.96 * math.sqrt(0.9068 * 0.0932 / 624)
    assert (low, high) == pytest.approx((0.9068 - half, 0.9068 + half))
    assert low == pytest.approx(0.8839, abs=2e-4) and high == pytest.approx(0.9297, abs=2e-4)
    assert normal_ci(0.5, 100, z=1.0) == pytest.approx((0.45, 0.55))
    with pytest.raises(ValueError, match=r"m must be a proportion in \[0, 1\], got 1.2"):
        normal_ci(1.2, 10)
    with pytest.raises(ValueError, match=r"n must be a positive integer, got 0"):
        normal_ci(0.5, 0)


# ---------------------------------------------------------------------------------------------
# McNemar
# ---------------------------------------------------------------------------------------------


def paired_predictions(b: int, c: int, both_right: int = 5, both_wrong: int = 3):
    y = np.zeros(b + c + both_right + both_wrong, dtype=int)
    a = np.r_[np.zeros(b), np.ones(c), np.zeros(both_right), np.ones(both_wrong)].astype(int)
    bb = np.r_[np.ones(b), np.zeros(c), np.zeros(both_right), np.ones(both_wrong)].astype(int)
    return y, a, bb


def test_mcnemar_hand_values() -> None:
    r = mcnemar(*paired_predictions(2, 8))
    # exact: 2 P[Bin(10, 1/2) <= 2] = 2 (1 + 10 + 45) / 1024
    assert r == {"b": 2, "c": 8, "statistic": 2.0, "p_value": pytest.approx(112 / 1024), "exact": True}
    r = mcnemar(*paired_predictions(30, 10))
    assert r["exact"] is False and (r["b"], r["c"]) == (30, 10)
    assert r["statistic"] == pytest.approx(19**2 / 40)
    assert r["p_value"] == pytest.approx(stats.chi2.sf(9.025, 1))
    assert r["p_value"] == pytest.approx(0.0026636, abs=1e-6)
    assert mcnemar(*paired_predictions(0, 0))["p_value"] == 1.0
    assert mcnemar(*paired_predictions(15, 15))["p_value"] == 1.0
    assert mcnemar(*paired_predictions(12, 12))["exact"] is True  # 24 < 25
    # probabilities are accepted and argmax-ed
    y, a, b = paired_predictions(2, 8)
    assert mcnemar(y, np.eye(2)[a], b)["p_value"] == pytest.approx(112 / 1024)
    with pytest.raises(ValueError, match=r"pred_b must be labels \(N,\) or probabilities \(N, K\) with N=18"):
        mcnemar(y, a, b[:-1])


def null_mcnemar_p_values(n_sims: int, n: int, q: float, seed: int) -> np.ndarray:
    """Both systems right w.p. 0.5, only A right w.p. q, only B right w.p. q."""
    rng = np.random.default_rng(seed)
    cuts = np.cumsum([0.5, q, q])
    y = np.zeros(n, dtype=int)
    out = []
    for _ in range(n_sims):
        cat = np.searchsorted(cuts, rng.random(n), side="right")
        pred_a = np.where((cat == 0) | (cat == 1), 0, 1)
        pred_b = np.where((cat == 0) | (cat == 2), 0, 1)
        out.append(mcnemar(y, pred_a, pred_b)["p_value"])
    return np.array(out)


def test_mcnemar_null_uniform_when_many_discordant_pairs() -> None:
    """KS on 500 null p-values does not reject at 0.01.

    McNemar p-values are discrete and conservative: P(b = c) ~ sqrt(2 / (pi (b + c))) is an atom
    at p = 1, and the KS distance is about that atom. With a few hundred discordant pairs KS
    rejects (checked: KS p < 0.05 for b + c ~ 400); with b + c ~ 5000 (N = 10000, half the
    pairs discordant; the chi-square branch) the atoms are ~1% and the p-values near uniform.
    """
    p = null_mcnemar_p_values(500, 10_000, 0.25, seed=0)
    assert ks_uniform(p) > 0.01  # seed 0: 0.67


def test_mcnemar_exact_branch_is_valid_and_tests_have_power() -> None:
    # few discordant pairs (exact branch): conservative, P(p <= alpha) <= alpha
    p = null_mcnemar_p_values(2000, 60, 0.1, seed=1)
    for alpha in (0.01, 0.05, 0.1, 0.2):
        assert np.mean(p <= alpha) <= alpha + 2 * math.sqrt(alpha * (1 - alpha) / 2000), alpha
    # planted difference: A right on 10% more samples
    rng = np.random.default_rng(2)
    y = np.zeros(300, dtype=int)
    rejections = 0
    for _ in range(100):
        a_right = rng.random(300) < 0.9
        b_right = np.where(rng.random(300) < 0.5, a_right, rng.random(300) < 0.7)
        rejections += mcnemar(y, np.where(a_right, 0, 1), np.where(b_right, 0, 1))["p_value"] < 0.01
    assert rejections >= 80


# ---------------------------------------------------------------------------------------------
# paired bootstrap
# ---------------------------------------------------------------------------------------------


def paired_bootstrap_p_values(n_sims: int, delta: float, metric: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 2], [150, 100, 50])
    out = []
    for sim in range(n_sims):
        pa, pb = correlated_systems(rng, y, 3, 1.5 + delta, 1.5)
        out.append(paired_bootstrap(y, pa, pb, metric, n_resamples=200, seed=sim)["p_value"])
    return np.array(out)


def test_paired_bootstrap_null_uniform_and_power() -> None:
    # MCC is near-continuous; accuracy differences have an atom at d = 0 (p = 1), like McNemar
    p = paired_bootstrap_p_values(500, 0.0, "mcc", seed=0)
    assert ks_uniform(p) > 0.01  # seed 0: 0.09 (seeds 1, 2: 0.87, 0.87)
    p = paired_bootstrap_p_values(100, 0.8, "mcc", seed=1)
    assert np.mean(p < 0.01) >= 0.8  # ~0.98


def test_paired_bootstrap_values() -> None:
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], [80, 40])
    pa, pb = correlated_systems(rng, y, 2, 2.0, 1.0)
    r = paired_bootstrap(y, pa, pb, "macro_f1", n_resamples=400, seed=5)
    assert r["diff"] == pytest.approx(METRICS["macro_f1"](y, pa) - METRICS["macro_f1"](y, pb))
    assert r["metric_a"] == pytest.approx(METRICS["macro_f1"](y, pa))
    # the same resamples as the per-system bootstrap: the replicates are differences of those
    slow = paired_bootstrap(y, pa, pb, lambda yy, pp: METRICS["macro_f1"](yy, pp), n_resamples=400, seed=5)
    assert slow == pytest.approx(r)
    reps_a, reps_b = [], []
    for idx in resample_indices(y, 400, seed=5):
        for i in idx:
            reps_a.append(METRICS["macro_f1"](y[i], pa[i]))
            reps_b.append(METRICS["macro_f1"](y[i], pb[i]))
    d_star = np.array(reps_a) - np.array(reps_b)
    d = r["diff"]
    assert r["p_value"] == pytest.approx((1 + np.sum(np.abs(d_star - d) >= abs(d))) / 401)
    assert r["low"] == pytest.approx(np.quantile(d_star, 0.025))
    same = paired_bootstrap(y, pa, pa, "macro_f1", n_resamples=100)
    assert (same["diff"], same["low"], same["high"], same["p_value"]) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(
        ValueError, match=r"probs_a and probs_b must have the same shape, got \(120, 2\) and \(120, 3\)"
    ):
        paired_bootstrap(y, pa, np.c_[pb, np.zeros(120)], "mcc")


# ---------------------------------------------------------------------------------------------
# DeLong
# ---------------------------------------------------------------------------------------------


def delong_slow(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """DeLong et al. 1988 written out: structural components V10, V01 by double loops."""
    pos = [i for i in range(len(y)) if y[i] == 1]
    neg = [j for j in range(len(y)) if y[j] == 0]
    m, n = len(pos), len(neg)

    def psi(x: float, z: float) -> float:
        return 1.0 if x > z else (0.5 if x == z else 0.0)

    v10 = [[sum(psi(s[i], s[j]) for j in neg) / n for i in pos] for s in (a, b)]
    v01 = [[sum(psi(s[i], s[j]) for i in pos) / m for j in neg] for s in (a, b)]
    auc = [sum(v) / m for v in v10]

    def cov(v: list[list[float]], r: int, s: int, size: int) -> float:
        mean_r, mean_s = sum(v[r]) / size, sum(v[s]) / size
        return sum((v[r][i] - mean_r) * (v[s][i] - mean_s) for i in range(size)) / (size - 1)

    s10 = [[cov(v10, r, s, m) for s in (0, 1)] for r in (0, 1)]
    s01 = [[cov(v01, r, s, n) for s in (0, 1)] for r in (0, 1)]
    var = (s10[0][0] + s10[1][1] - 2 * s10[0][1]) / m + (s01[0][0] + s01[1][1] - 2 * s01[0][1]) / n
    return auc[0], auc[1], var


def test_delong_equals_slow_reference_and_sklearn() -> None:
    rng = np.random.default_rng(4)
    y = np.r_[np.ones(13), np.zeros(19)].astype(int)
    a = np.round(rng.normal(size=32) + y, 1)  # rounding makes ties
    b = np.round(0.5 * a + rng.normal(size=32) + 0.5 * y, 1)
    r = delong(y, a, b)
    auc_a, auc_b, var = delong_slow(y, a, b)
    assert r["auc_a"] == pytest.approx(roc_auc_score(y, a), abs=1e-12) == pytest.approx(auc_a, abs=1e-12)
    assert r["auc_b"] == pytest.approx(roc_auc_score(y, b), abs=1e-12) == pytest.approx(auc_b, abs=1e-12)
    assert r["var"] == pytest.approx(var, rel=1e-10)
    assert r["z"] == pytest.approx((auc_a - auc_b) / math.sqrt(var), rel=1e-10)
    assert r["p_value"] == pytest.approx(2 * stats.norm.sf(abs(r["z"])), rel=1e-10)
    same = delong(y, a, a)
    assert (same["diff"], same["z"], same["p_value"]) == (0.0, 0.0, 1.0)


def test_delong_null_uniform_and_power() -> None:
    def p_values(n_sims: int, delta: float, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        y = np.repeat([1, 0], [80, 120])
        out = []
        for _ in range(n_sims):
            shared = rng.normal(size=y.size)
            a = shared + rng.normal(size=y.size) + (1.0 + delta) * y
            b = shared + rng.normal(size=y.size) + 1.0 * y
            out.append(delong(y, a, b)["p_value"])
        return np.array(out)

    assert ks_uniform(p_values(500, 0.0, seed=0)) > 0.01  # seed 0: 0.34
    assert np.mean(p_values(100, 1.0, seed=1) < 0.01) >= 0.8


def test_delong_ovr_binary_equals_delong_and_macro_null_uniform() -> None:
    rng = np.random.default_rng(5)
    y = np.repeat([0, 1], [70, 50])
    pa, pb = correlated_systems(rng, y, 2, 1.0, 0.6)
    ovr = delong_ovr(y, pa, pb, class_names=["neg", "pos"])
    binary = delong(y, pa[:, 1], pb[:, 1])
    assert ovr["per_class"]["pos"] == pytest.approx(binary)
    for key in ("auc_a", "auc_b", "diff", "var", "z", "p_value"):
        assert ovr["macro"][key] == pytest.approx(binary[key], rel=1e-9), key
    assert ovr["p_values_holm"]["pos"] == pytest.approx(min(1.0, 2 * binary["p_value"]))

    def macro_p_values(n_sims: int, delta: float, seed: int) -> np.ndarray:
        g = np.random.default_rng(seed)
        labels = np.repeat([0, 1, 2], [100, 60, 40])
        out = []
        for _ in range(n_sims):
            a, b = correlated_systems(g, labels, 3, 1.0 + delta, 1.0)
            out.append(delong_ovr(labels, a, b)["macro"]["p_value"])
        return np.array(out)

    assert ks_uniform(macro_p_values(500, 0.0, seed=0)) > 0.01  # seed 0: 0.72
    assert np.mean(macro_p_values(60, 0.8, seed=1) < 0.01) >= 0.8


def test_delong_ovr_skips_undefined_classes_and_errors() -> None:
    rng = np.random.default_rng(6)
    y = np.r_[np.repeat([0, 1], [40, 30]), 2]  # class 2 has one sample, class 3 none
    pa, pb = correlated_systems(rng, y, 4, 1.0, 1.0)
    r = delong_ovr(y, pa, pb)
    assert r["per_class"]["2"] is None and r["per_class"]["3"] is None
    assert r["macro"]["classes"] == ["0", "1"]
    assert r["macro"]["auc_a"] == pytest.approx(np.mean([roc_auc_score(y == c, pa[:, c]) for c in (0, 1)]))
    with pytest.raises(ValueError, match=r"delong needs at least 2 positives and 2 negatives, got 1 positives"):
        delong([1, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match=r"y_true must be binary \(0/1\) for delong, found labels \[0, 1, 2\]"):
        delong([0, 1, 2, 1], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match=r"must be 1-D of one length, got shapes \(4,\), \(3,\), \(4,\)"):
        delong([0, 1, 0, 1], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match=r"must be finite"):
        delong([0, 1, 0, 1], [0.1, np.nan, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4])


# ---------------------------------------------------------------------------------------------
# Holm
# ---------------------------------------------------------------------------------------------


def holm_reference(p: list[float]) -> list[float]:
    """Holm 1979 step-down, written out: adjusted p_(i) = max_{j<=i} min(1, (m - j + 1) p_(j))."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order, start=1):
        running = max(running, min(1.0, (m - rank + 1) * p[i]))
        adjusted[i] = running
    return adjusted


def test_holm_hand_example_and_reference() -> None:
    # sorted: 0.005 x4 = 0.02; 0.01 x3 = 0.03; 0.03 x2 = 0.06; 0.04 x1 = 0.04 -> max(0.06, 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([0.2]) == [0.2]
    assert holm([]) == []
    rng = np.random.default_rng(7)
    p = np.r_[rng.random(12) ** 3, 0.01, 0.01].tolist()  # includes a tie
    assert holm(p) == pytest.approx(holm_reference(p))
    adjusted = np.array(holm(p))
    order = np.argsort(p)
    assert np.all(np.diff(adjusted[order]) >= 0) and np.all(adjusted >= np.array(p)) and adjusted.max() <= 1.0
    with pytest.raises(ValueError, match=r"p_values must lie in \[0, 1\] \(no NaN\)"):
        holm([0.1, float("nan")])
    with pytest.raises(ValueError, match=r"p_values must be 1-D, got shape \(1, 2\)"):
        holm([[0.1, 0.2]])
