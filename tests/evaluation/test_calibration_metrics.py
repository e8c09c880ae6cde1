"""ECE, classwise ECE and adaptive ECE: hand-computed examples, plain-loop references, limit cases,
and their bootstrap intervals (vectorised by name) against the same intervals of the loops."""

from __future__ import annotations

import numpy as np
import pytest

from medens.evaluation import METRICS, classification_metrics
from medens.evaluation.metrics import reliability_bins
from medens.evaluation.stats import bootstrap_ci

CALIBRATION = ("ece", "classwise_ece", "adaptive_ece")


def binned_error(values: np.ndarray, hits: np.ndarray, groups: list[np.ndarray], n: int) -> float:
    """sum over groups of |B|/N |mean(hits) - mean(values)|, one group at a time."""
    total = 0.0
    for g in groups:
        if len(g):
            total += len(g) / n * abs(float(np.mean(hits[g])) - float(np.mean(values[g])))
    return total


def width_groups(values: np.ndarray, n_bins: int) -> list[np.ndarray]:
    """Equal-width bins (lo, hi], the first one [0, hi]."""
    edges = np.linspace(0, 1, n_bins + 1)
    out = []
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        in_bin = (values > lo) & (values <= hi) if b > 0 else (values >= lo) & (values <= hi)
        out.append(np.flatnonzero(in_bin))
    return out


def classwise_reference(y: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Kull et al. 2019, as a loop over classes and bins."""
    k = probs.shape[1]
    return sum(binned_error(probs[:, c], (y == c).astype(float), width_groups(probs[:, c], n_bins), len(y))
               for c in range(k)) / k


def adaptive_reference(y: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Nixon et al. 2019: sort by confidence, split into equal-count bins (np.array_split)."""
    conf = probs.max(1)
    correct = (probs.argmax(1) == y).astype(float)
    order = np.argsort(conf, kind="stable")
    return binned_error(conf, correct, list(np.array_split(order, n_bins)), len(y))


def random_probs(seed: int, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.choice(k, size=n, p=np.r_[0.6, np.full(k - 1, 0.4 / (k - 1))])
    z = rng.normal(size=(n, k)) * 1.5
    z[np.arange(n), y] += 1.0
    e = np.exp(z - z.max(1, keepdims=True))
    return y, e / e.sum(1, keepdims=True)


# K = 3, N = 4; argmax 0, 0, 2, 0 (correct 1, 0, 1, 1); confidences 0.7, 0.6, 0.6, 0.5
Y = np.array([0, 1, 2, 0])
P = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.5, 0.3, 0.2]])


def test_hand_computed_two_bins() -> None:
    r = classification_metrics(Y, P, n_bins=2)  # bins [0, 0.5] and (0.5, 1]
    # top label: [0, 0.5] holds sample 4 (|1 - 0.5|); (0.5, 1] samples 1-3 (|2 - 1.9|): (0.5 + 0.1) / 4
    assert r["ece"] == pytest.approx(0.15, abs=1e-12)
    # classwise: class 0: p = .7 .6 .2 .5, y = 1 0 0 1: [0, .5] |1 - .7| + (.5, 1] |1 - 1.3| = 0.6
    #            class 1: p = .2 .3 .2 .3 all in [0, .5], one positive: |1 - 1.0| = 0
    #            class 2: p = .1 .1 .6 .2, y = 0 0 1 0: [0, .5] |0 - .4| + (.5, 1] |1 - .6| = 0.8
    assert r["classwise_ece"] == pytest.approx((0.6 / 4 + 0.0 + 0.8 / 4) / 3, abs=1e-12)
    # adaptive: sorted confidences .5 (s4), .6 (s2), .6 (s3), .7 (s1) (ties in input order) split 2 + 2:
    # {s4, s2}: |1 - 1.1| = 0.1; {s3, s1}: |2 - 1.3| = 0.7
    assert r["adaptive_ece"] == pytest.approx(0.8 / 4, abs=1e-12)


def test_hand_computed_adaptive_uneven_split() -> None:
    # 4 samples in 3 equal-mass bins: sizes 2, 1, 1 (np.array_split): {s4, s2} 0.1, {s3} 0.4, {s1} 0.3
    assert classification_metrics(Y, P, n_bins=3)["adaptive_ece"] == pytest.approx(0.8 / 4, abs=1e-12)
    # 6 bins for 4 samples: one sample per bin and two empty bins: the mean |correct - conf|
    assert classification_metrics(Y, P, n_bins=6)["adaptive_ece"] == pytest.approx((0.3 + 0.6 + 0.4 + 0.5) / 4)


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_the_loop_references(seed: int, k: int) -> None:
    y, p = random_probs(seed, k, 257)  # 257 = 17 * 15 + 2: equal-mass bins of 18 and 17
    assert METRICS["classwise_ece"](y, p) == pytest.approx(classwise_reference(y, p), abs=1e-12)
    assert METRICS["adaptive_ece"](y, p) == pytest.approx(adaptive_reference(y, p), abs=1e-12)
    ties = np.round(p, 1)  # many ties on the bin edges and in the sort
    ties /= ties.sum(1, keepdims=True)
    assert METRICS["classwise_ece"](y, ties) == pytest.approx(classwise_reference(y, ties), abs=1e-12)
    assert METRICS["adaptive_ece"](y, ties) == pytest.approx(adaptive_reference(y, ties), abs=1e-12)
    r = classification_metrics(y, p)
    for name in CALIBRATION:
        assert r[name] == pytest.approx(METRICS[name](y, p), abs=1e-15)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_always_confident_and_wrong(k: int) -> None:
    y = np.arange(40) % k
    p = np.eye(k)[(y + 1) % k]  # probability 1 on a wrong class
    assert METRICS["ece"](y, p) == 1.0
    assert METRICS["adaptive_ece"](y, p) == 1.0
    # classwise: for each class, the samples with p_k = 1 are never k (error 1 on their share) and
    # the samples of class k have p_k = 0 (error 1 on theirs): 2/K, which is 1 for a binary task
    assert METRICS["classwise_ece"](y, p) == pytest.approx(2 / k, abs=1e-12)
    right = np.eye(k)[y]  # and probability 1 on the right class: no error at all
    assert all(METRICS[name](y, right) == 0.0 for name in CALIBRATION)


def test_perfectly_calibrated_probabilities_are_near_zero() -> None:
    """Labels drawn from the probabilities themselves: every ECE's expectation is then only the
    sampling noise of the bin means, at most sum_m |B_m|/N * 0.5/sqrt(|B_m|) <= 0.5 sqrt(M/N)
    (Jensen, p(1 - p) <= 1/4): 0.0137 for M = 15 bins and N = 20000."""
    rng = np.random.default_rng(0)
    n, k = 20000, 3
    p = rng.dirichlet(np.ones(k), size=n)
    y = (rng.random(n)[:, None] > np.cumsum(p, 1)).sum(1)  # y ~ Categorical(p)
    tolerance = 0.5 * np.sqrt(15 / n)
    for name in CALIBRATION:
        assert METRICS[name](y, p) < tolerance, name
    # the same probabilities sharpened (temperature 0.5) are over-confident, and every ECE sees it
    sharp = p**2 / (p**2).sum(1, keepdims=True)
    for name in CALIBRATION:
        assert METRICS[name](y, sharp) > 4 * tolerance, name


@pytest.mark.parametrize("name", ["classwise_ece", "adaptive_ece"])
def test_bootstrap_by_name_equals_the_loop_callable(name: str) -> None:
    """The vectorised bootstrap (sample weights) and the loop reference called on each resample
    give the same interval: same seed, same resamples (continuous probabilities: no ties but copies)."""
    y, p = random_probs(3, 3, 120)
    ref = {"classwise_ece": classwise_reference, "adaptive_ece": adaptive_reference}[name]
    fast = bootstrap_ci(y, p, name, n_resamples=60, seed=4)
    slow = bootstrap_ci(y, p, ref, n_resamples=60, seed=4)
    for key in ("point", "low", "high", "std"):
        assert fast[key] == pytest.approx(slow[key], abs=1e-12), key
    assert fast["low"] < fast["high"] and fast["n_valid"] == 60


def test_reliability_bins_are_the_ece_bins() -> None:
    b = reliability_bins(Y, P, n_bins=2)
    assert b["count"].tolist() == [1, 3]
    np.testing.assert_allclose(b["confidence"], [0.5, 1.9 / 3])
    np.testing.assert_allclose(b["accuracy"], [1.0, 2 / 3])
    # ECE is the count-weighted gap of these points
    ece = float((b["count"] * np.abs(b["accuracy"] - b["confidence"])).sum() / 4)
    assert ece == pytest.approx(classification_metrics(Y, P, n_bins=2)["ece"], abs=1e-12)


def test_basic_interval_hand_computed() -> None:
    """Replicates spread evenly over [0.018, 0.054] around a plug-in ECE of 0.016 (the demo's case:
    every replicate above the point): the 95% quantiles are 0.0189 and 0.0531, so the basic
    interval is [2(0.016) - 0.0531, 2(0.016) - 0.0189] = [-0.0211, 0.0131], clipped to [0, 0.0131];
    the replicates' mean 0.036 gives the bias 0.020 and the debiased value max(0, 0.032 - 0.036) = 0."""
    from medens.evaluation.stats import basic_interval

    values = np.linspace(0.018, 0.054, 1001)
    b = basic_interval(0.016, values, 0.95, bounds=(0.0, 1.0))
    assert b["low"] == 0.0
    assert b["high"] == pytest.approx(0.032 - (0.018 + 0.025 * 0.036), abs=1e-12)
    assert b["bias"] == pytest.approx(0.020, abs=1e-12) and b["debiased"] == 0.0
    unclipped = basic_interval(0.016, values, 0.95)
    assert unclipped["low"] == pytest.approx(0.032 - (0.018 + 0.975 * 0.036), abs=1e-12)
    assert basic_interval(0.5, np.array([np.nan]), 0.95)["low"] is None
    with pytest.raises(ValueError, match="interval must be one of"):
        bootstrap_ci(Y, P, "ece", interval="bca")


def _overconfident(rng: np.random.Generator, n: int, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Two classes, confidence c ~ U(0.5, 1) on class 0, correct with probability c - delta: the
    population's calibration error is exactly ``delta`` in every bin, so its ECE is ``delta``."""
    c = rng.uniform(0.5, 1.0, n)
    y = (rng.random(n) >= c - delta).astype(int)
    return y, np.stack([c, 1 - c], 1)


def test_the_reports_ece_interval_covers_the_true_calibration_error() -> None:
    """Coverage of the true ECE (0.1) over 120 samples of 400 images, 400 resamples each: the
    report's interval (plain resamples, basic interval) covers it in 0.86 of them (at least 0.80
    asserted; the nominal level is 0.95), the class-stratified percentile interval it replaced in
    0.67 (the class mix is part of an ECE's noise, and the plug-in bias pushes the percentiles up)."""
    from medens.evaluation.systems import calibration_entry

    rng = np.random.default_rng(7)
    delta, hits, old_hits, plug, debiased = 0.1, 0, 0, [], []
    for r in range(120):
        y, p = _overconfident(rng, 400, delta)
        ci = calibration_entry(y, p, None, n_resamples=400, seed=r)["after"]["ece"]
        assert ci["interval"] == "basic" and 0.0 <= ci["low"] <= ci["high"] <= 1.0
        hits += ci["low"] <= delta <= ci["high"]
        old = bootstrap_ci(y, p, "ece", n_resamples=400, seed=r)
        old_hits += old["low"] <= delta <= old["high"]
        plug.append(ci["point"])
        debiased.append(ci["debiased"])
    assert hits / 120 >= 0.8, hits
    assert old_hits + 12 <= hits  # at least 10 points of coverage more
    # away from zero the correction overshoots a little (mean 0.095 here against the plug-in's 0.103)
    assert abs(np.mean(debiased) - delta) < 0.01 and abs(np.mean(plug) - delta) < 0.01


def test_a_calibrated_models_ece_interval_reaches_zero_more_often_than_the_percentiles() -> None:
    """Labels drawn from the probabilities (true ECE 0): the percentile interval never covers 0
    (every replicate is a positive binned error), the basic interval does in 0.67 of 60 samples
    (at least 0.4 asserted; at the boundary no bootstrap interval reaches the nominal level), and
    the debiased value is smaller than the plug-in one in every sample."""
    from medens.evaluation.systems import calibration_entry

    rng = np.random.default_rng(8)
    hits = 0
    for r in range(60):
        y, p = _overconfident(rng, 400, 0.0)
        ci = calibration_entry(y, p, None, n_resamples=400, seed=r)["after"]["ece"]
        hits += ci["low"] == 0.0
        assert ci["debiased"] < ci["point"]
    assert hits / 60 >= 0.4, hits
