"""Confidence intervals and paired tests for comparing systems on one test set (docs/methods.md section 7).

- :func:`bootstrap_ci`: stratified percentile bootstrap (Efron & Tibshirani, "An Introduction to
  the Bootstrap", 1993), or the basic (reverse-percentile) interval with a bias-corrected point for a
  statistic the plug-in estimate overstates (the binned calibration errors; Davison & Hinkley,
  "Bootstrap Methods and their Application", 1997, section 5.2).
- :func:`normal_ci`: the normal-approximation interval m +- z sqrt(m (1 - m) / n) of study 1.
- :func:`mcnemar`: McNemar's test for paired accuracies (McNemar, Psychometrika 1947).
- :func:`paired_bootstrap`: paired bootstrap test of a metric difference;
  :func:`paired_mean_bootstrap` the same test of a difference of per-item means (per-image Dice),
  and :func:`bootstrap_mean_ci` the interval of a per-item mean.
- :func:`delong` / :func:`delong_ovr`: DeLong's test for correlated AUROCs (DeLong, DeLong &
  Clarke-Pearson, Biometrics 1988), with the fast midrank algorithm of Sun & Xu (IEEE Signal
  Processing Letters 2014).
- :func:`holm`: Holm-Bonferroni step-down adjustment (Holm, Scand. J. Statistics 1979).

Named metrics (``medens.evaluation.metrics.METRICS``) are bootstrapped in a vectorised way: the
resamples become a (B, N) matrix of multiplicities and the metric is evaluated for all of them
with a few sums (see ``metrics.metric_evaluator``). A user callable is evaluated resample by
resample. Results are JSON-ready: Python floats, with None where a value is undefined.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from medens.evaluation.metrics import METRICS, check_classification_inputs, metric_evaluator
from medens.metric_names import canonical_name

MetricArg = str | Callable[[np.ndarray, np.ndarray], float]

# resample rows per chunk are chosen so a chunk holds about this many (resample, sample) cells;
# the chunk size depends on N only, so a seed gives the same resamples for every metric
_CHUNK_CELLS = 1 << 20
EXACT_MCNEMAR_BELOW = 25


def _json(x: float) -> float | None:
    x = float(x)
    return None if not math.isfinite(x) else x


def _check_resampling(n_resamples: int, confidence: float) -> None:
    if not isinstance(n_resamples, int | np.integer) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")


def resample_indices(
    y_true: np.ndarray, n_resamples: int, *, seed: int | np.random.Generator = 0, stratified: bool = True
) -> Iterator[np.ndarray]:
    """Yield bootstrap index arrays in chunks of shape (b, N), ``n_resamples`` rows in all.

    Stratified: each resample draws, with replacement, ``n_c`` samples from the ``n_c`` samples
    of each true class c, so class sizes are those of the test set (the conditioning DeLong's
    variance also uses). Otherwise N draws from all N samples.
    """
    y = np.asarray(y_true)
    n = y.size
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if stratified else [np.arange(n)]
    chunk = max(1, _CHUNK_CELLS // max(n, 1))
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        yield np.concatenate([g[rng.integers(0, g.size, size=(b, g.size))] for g in groups], axis=1)
        done += b


def _multiplicities(idx: np.ndarray, n: int) -> np.ndarray:
    """Turn index rows (b, N) into multiplicity rows (b, N): how often each sample was drawn."""
    b = idx.shape[0]
    flat = (idx + (np.arange(b) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def _resolve(metric: MetricArg) -> tuple[str | None, Callable[[Any, Any], float]]:
    if isinstance(metric, str):
        metric = canonical_name(metric)
        if metric not in METRICS:
            metric_evaluator(metric, [0], [[1.0, 0.0]])  # raises the "did you mean" error
        return metric, METRICS[metric]
    if callable(metric):
        return None, metric
    raise ValueError(f"metric must be a metric name or a callable(y_true, probs), got {metric!r}")


def _bootstrap_values(
    y: np.ndarray,
    probs_list: list[np.ndarray],
    metric: MetricArg,
    n_resamples: int,
    seed: int,
    stratified: bool,
) -> tuple[list[float], list[np.ndarray]]:
    """Point values and bootstrap replicates of ``metric`` for each system, same resamples for all."""
    name, fn = _resolve(metric)
    n = y.size
    if name is not None:
        evaluators = [metric_evaluator(name, y, p) for p in probs_list]
        points = [float(f(np.ones((1, n)))[0]) for f in evaluators]
        reps: list[list[np.ndarray]] = [[] for _ in probs_list]
        for idx in resample_indices(y, n_resamples, seed=seed, stratified=stratified):
            w = _multiplicities(idx, n)
            for r, f in zip(reps, evaluators):
                r.append(f(w))
        return points, [np.concatenate(r) for r in reps]
    points = [float(fn(y, p)) for p in probs_list]
    values = [np.empty(n_resamples) for _ in probs_list]
    row = 0
    for idx in resample_indices(y, n_resamples, seed=seed, stratified=stratified):
        for i in idx:
            for v, p in zip(values, probs_list):
                v[row] = fn(y[i], p[i])
            row += 1
    return points, values


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple[float | None, float | None, float | None]:
    ok = values[np.isfinite(values)]
    if ok.size == 0:
        return None, None, None
    alpha = 1.0 - confidence
    low, high = np.quantile(ok, [alpha / 2, 1 - alpha / 2])
    std = float(ok.std(ddof=1)) if ok.size > 1 else 0.0
    return float(low), float(high), std


def basic_interval(point: float, values: np.ndarray, confidence: float,
                   bounds: tuple[float, float] = (-math.inf, math.inf)) -> dict[str, float | None]:
    """The basic bootstrap interval ``[2 t - q_hi, 2 t - q_lo]`` of a point value ``t`` from its
    replicates (``q`` their percentile bounds), clipped to ``bounds``, and the bias-corrected point
    ``2 t - mean(replicates)`` (clipped too).

    The bootstrap treats ``t - theta`` as distributed like ``t* - t``: when the replicates sit above
    the point (a statistic biased upwards, such as a binned calibration error, whose replicates carry
    the sample's noise twice), the interval moves down by the same amount, and may lie below ``t``.
    """
    q_lo, q_hi, _ = _percentile_interval(values, confidence)
    if q_lo is None or q_hi is None or not math.isfinite(point):
        return {"low": None, "high": None, "debiased": None, "bias": None}
    ok = values[np.isfinite(values)]
    lo_b, hi_b = bounds

    def clip(v: float) -> float:
        return float(min(max(v, lo_b), hi_b))

    return {"low": clip(2 * point - q_hi), "high": clip(2 * point - q_lo),
            "debiased": clip(2 * point - float(ok.mean())), "bias": float(ok.mean() - point)}


INTERVALS = ("percentile", "basic")


def bootstrap_ci(
    y_true: Any,
    probs: Any,
    metric: MetricArg,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    stratified: bool = True,
    interval: str = "percentile",
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> dict[str, Any]:
    """Bootstrap confidence interval of a classification metric.

    Efron & Tibshirani (1993), ch. 13: resample the test set with replacement ``n_resamples``
    times (within each true class when ``stratified``), recompute the metric, and take the
    ``(1 - confidence)/2`` and ``(1 + confidence)/2`` quantiles of the replicates
    (``interval="percentile"``), or reflect them about the point value (``"basic"``, see
    :func:`basic_interval`; the result then also has ``debiased`` and ``bias``, and the interval is
    clipped to ``bounds``).

    Args:
        y_true: integer labels (N,).
        probs: probabilities (N, K).
        metric: a name from ``METRICS`` (vectorised: 2000 resamples of N=600 in milliseconds) or
            a callable ``f(y_true, probs) -> float`` (called once per resample).
        n_resamples: number of bootstrap resamples B.
        confidence: interval coverage, e.g. 0.95.
        seed: seed of the resampling; the same seed and N give the same resamples.
        stratified: keep the class sizes of ``y_true`` in every resample.
        interval: ``"percentile"`` or ``"basic"``.
        bounds: the metric's range, for the basic interval (e.g. ``(0, 1)`` for an ECE).

    Returns:
        ``{"point", "low", "high", "std", "confidence", "n_resamples", "n_valid", "interval"}``:
        the metric on the full set, the interval, the bootstrap standard error, how many
        replicates were finite (replicates where the metric is undefined are dropped) and the
        interval's kind; with ``"basic"`` also ``"debiased"`` and ``"bias"``.

    Raises:
        ValueError: for invalid inputs, an unknown metric name or bad options.
    """
    y, p = check_classification_inputs(y_true, probs)
    _check_resampling(n_resamples, confidence)
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}")
    (point,), (values,) = _bootstrap_values(y, [p], metric, int(n_resamples), seed, stratified)
    low, high, std = _percentile_interval(values, confidence)
    out: dict[str, Any] = {
        "point": _json(point),
        "low": low,
        "high": high,
        "std": std,
        "confidence": float(confidence),
        "n_resamples": int(n_resamples),
        "n_valid": int(np.isfinite(values).sum()),
        "interval": interval,
    }
    if interval == "basic":
        out.update(basic_interval(float(point), values, confidence, bounds))
    return out


def normal_ci(m: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Normal-approximation (Wald) interval ``m +- z sqrt(m (1 - m) / n)`` for a proportion.

    This is the interval study 1 (Rajaraman et al., PLoS ONE 2021) reports, also for MCC; e.g.
    ``normal_ci(0.9068, 624)`` gives (0.8840, 0.9296). Not clipped to [0, 1].

    Raises:
        ValueError: when ``m`` is outside [0, 1], ``n`` < 1 or ``z`` <= 0.
    """
    if not (isinstance(m, int | float | np.floating | np.integer) and 0.0 <= float(m) <= 1.0):
        raise ValueError(f"m must be a proportion in [0, 1], got {m!r}")
    if not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not z > 0:
        raise ValueError(f"z must be positive, got {z!r}")
    half = float(z) * math.sqrt(float(m) * (1.0 - float(m)) / int(n))
    return float(m) - half, float(m) + half


def _as_labels(pred: Any, n: int, what: str) -> np.ndarray:
    a = np.asarray(pred)
    if a.ndim == 2:
        a = a.argmax(axis=1)
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{what} must be labels (N,) or probabilities (N, K) with N={n}, got shape {np.shape(pred)}")
    return a


def mcnemar(y_true: Any, pred_a: Any, pred_b: Any) -> dict[str, Any]:
    """McNemar's test of equal accuracy of two classifiers on the same samples.

    McNemar (Psychometrika 12, 1947). b = samples A gets right and B wrong, c = the reverse.
    With fewer than 25 discordant pairs the exact conditional binomial test is used,
    p = min(1, 2 P[Bin(b + c, 1/2) <= min(b, c)]); otherwise the chi-square test with Edwards'
    continuity correction, statistic max(|b - c| - 1, 0)^2 / (b + c) on 1 degree of freedom (the
    max only matters when b = c, where it gives p = 1).

    Both branches are conservative (discrete): under the null, P(p <= alpha) <= alpha, with the
    p-values close to uniform only when b + c is large.

    Args:
        y_true: labels (N,).
        pred_a, pred_b: predicted labels (N,), or probabilities (N, K) (argmax is taken).

    Returns:
        ``{"b", "c", "statistic", "p_value", "exact"}``; ``statistic`` is min(b, c) for the exact
        test and the chi-square value otherwise.
    """
    from scipy.stats import binom, chi2

    y = np.asarray(y_true)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"y_true must be a non-empty 1-D array of labels, got shape {y.shape}")
    a_right = _as_labels(pred_a, y.size, "pred_a") == y
    b_right = _as_labels(pred_b, y.size, "pred_b") == y
    b = int(np.sum(a_right & ~b_right))
    c = int(np.sum(~a_right & b_right))
    nd = b + c
    if nd < EXACT_MCNEMAR_BELOW:
        statistic = float(min(b, c))
        p = 1.0 if nd == 0 else min(1.0, 2.0 * float(binom.cdf(min(b, c), nd, 0.5)))
        exact = True
    else:
        statistic = max(abs(b - c) - 1, 0) ** 2 / nd
        p = float(chi2.sf(statistic, 1))
        exact = False
    return {"b": b, "c": c, "statistic": float(statistic), "p_value": p, "exact": exact}


def paired_bootstrap(
    y_true: Any,
    probs_a: Any,
    probs_b: Any,
    metric: MetricArg,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    stratified: bool = True,
) -> dict[str, Any]:
    """Paired bootstrap test of ``metric(a) - metric(b)`` on one test set.

    Both systems are scored on the same resamples (Efron & Tibshirani 1993, ch. 16), so the
    correlation between them is kept. The interval is the percentile interval of the replicates
    d*_b; the two-sided p-value uses the replicates shifted to the null (centred bootstrap):
    p = (1 + #{|d*_b - d| >= |d|}) / (1 + B), which is close to uniform under H0: the systems
    have equal expected metric.

    Args:
        y_true: labels (N,).
        probs_a, probs_b: probabilities (N, K) of the two systems.
        metric: a name from ``METRICS`` (vectorised) or a callable ``f(y_true, probs) -> float``.
        n_resamples: bootstrap resamples B.
        confidence: coverage of the interval of the difference.
        seed: resampling seed.
        stratified: resample within each true class.

    Returns:
        ``{"metric_a", "metric_b", "diff", "low", "high", "p_value", "n_resamples", "n_valid"}``.
    """
    y, pa = check_classification_inputs(y_true, probs_a)
    _, pb = check_classification_inputs(y_true, probs_b)
    if pa.shape != pb.shape:
        raise ValueError(f"probs_a and probs_b must have the same shape, got {pa.shape} and {pb.shape}")
    _check_resampling(n_resamples, confidence)
    (ma, mb), (va, vb) = _bootstrap_values(y, [pa, pb], metric, int(n_resamples), seed, stratified)
    return _paired_result(ma, mb, ma - mb, va - vb, confidence, n_resamples)


def _paired_result(ma: float, mb: float, d: float, reps: np.ndarray, confidence: float,
                   n_resamples: int) -> dict[str, Any]:
    """The paired bootstrap's interval and centred two-sided p from the replicates ``reps`` of
    the difference ``d`` (non-finite replicates left out)."""
    reps = reps[np.isfinite(reps)]
    low, high, _ = _percentile_interval(reps, confidence)
    if not math.isfinite(d) or reps.size == 0:
        p = None
    else:
        p = float((1 + np.sum(np.abs(reps - d) >= abs(d))) / (1 + reps.size))
    return {
        "metric_a": _json(ma),
        "metric_b": _json(mb),
        "diff": _json(d),
        "low": low,
        "high": high,
        "p_value": p,
        "n_resamples": int(n_resamples),
        "n_valid": int(reps.size),
    }


def _per_item(values: Any, what: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D array of per-item values, got shape {v.shape}")
    return v


def _mean_replicates(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Bootstrap replicates of the mean of per-item ``values``: N draws from all N items."""
    return np.concatenate([values[idx].mean(axis=1) for idx in
                           resample_indices(np.zeros(values.size), n_resamples, seed=seed, stratified=False)])


def paired_mean_bootstrap(
    values_a: Any, values_b: Any, *, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """Paired bootstrap test of ``mean(a) - mean(b)`` over items (e.g. two systems' per-image Dice).

    The same test as :func:`paired_bootstrap` (same resampler and the same centred p-value), on
    the per-item differences ``a_i - b_i`` with unstratified resamples of the N items.

    Returns:
        ``{"metric_a", "metric_b", "diff", "low", "high", "p_value", "n_resamples", "n_valid"}``.

    Raises:
        ValueError: values that are not non-empty 1-D arrays of one length, or bad resampling options.
    """
    a, b = _per_item(values_a, "values_a"), _per_item(values_b, "values_b")
    if a.shape != b.shape:
        raise ValueError(f"values_a and values_b must have the same shape, got {a.shape} and {b.shape}")
    _check_resampling(n_resamples, confidence)
    d = a - b
    reps = _mean_replicates(d, int(n_resamples), seed)
    return _paired_result(float(a.mean()), float(b.mean()), float(d.mean()), reps, confidence, n_resamples)


def bootstrap_mean_ci(values: Any, *, n_resamples: int = 2000, confidence: float = 0.95,
                      seed: int = 0) -> dict[str, float | None]:
    """Percentile bootstrap interval of the mean of per-item ``values`` (resamples as
    :func:`paired_mean_bootstrap`): ``{"point", "low", "high"}``."""
    v = _per_item(values, "values")
    _check_resampling(n_resamples, confidence)
    low, high, _ = _percentile_interval(_mean_replicates(v, int(n_resamples), seed), confidence)
    return {"point": _json(v.mean()), "low": low, "high": high}


# ---------------------------------------------------------------------------------------------
# DeLong
# ---------------------------------------------------------------------------------------------


def _structural_components(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and DeLong structural components of several scorers, by Sun & Xu's midrank algorithm.

    Args:
        scores: (S, N) scores of S scorers.
        positive: (N,) bool.

    Returns:
        auc (S,), v10 (S, m): for each positive the fraction of negatives scored below it (ties
        1/2), v01 (S, n): for each negative the fraction of positives scored above it.
    """
    from scipy.stats import rankdata

    x = scores[:, positive]
    yneg = scores[:, ~positive]
    m, n = x.shape[1], yneg.shape[1]
    tx = rankdata(x, axis=1)
    ty = rankdata(yneg, axis=1)
    tz = rankdata(np.concatenate([x, yneg], axis=1), axis=1)
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return auc, v10, v01


def _z_test(diff: float, var: float) -> tuple[float | None, float]:
    from scipy.stats import norm

    if var <= 0 or not math.isfinite(var):
        return (0.0, 1.0) if diff == 0 else (None, 0.0)
    z = diff / math.sqrt(var)
    return float(z), float(2.0 * norm.sf(abs(z)))


def _check_binary_scores(y_true: Any, score_a: Any, score_b: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    sa = np.asarray(score_a, dtype=np.float64)
    sb = np.asarray(score_b, dtype=np.float64)
    if y.ndim != 1 or sa.ndim != 1 or sb.ndim != 1 or not (y.size == sa.size == sb.size):
        raise ValueError(
            f"y_true, score_a and score_b must be 1-D of one length, got shapes {y.shape}, {sa.shape}, {sb.shape}"
        )
    if not np.all(np.isin(y, [0, 1])):
        found = np.unique(y).tolist()[:5]
        raise ValueError(f"y_true must be binary (0/1) for delong, found labels {found}")
    if not (np.all(np.isfinite(sa)) and np.all(np.isfinite(sb))):
        raise ValueError("score_a and score_b must be finite (found NaN or inf)")
    pos = y.astype(bool)
    m, n = int(pos.sum()), int((~pos).sum())
    if m < 2 or n < 2:
        raise ValueError(f"delong needs at least 2 positives and 2 negatives, got {m} positives and {n} negatives")
    return pos, np.stack([sa, sb])


def delong(y_true: Any, score_a: Any, score_b: Any) -> dict[str, Any]:
    """DeLong's test of the difference of two correlated AUROCs on the same samples.

    DeLong, DeLong & Clarke-Pearson, "Comparing the areas under two or more correlated receiver
    operating characteristic curves: a nonparametric approach", Biometrics 44, 1988; computed
    with the O(N log N) midrank algorithm of Sun & Xu, "Fast implementation of DeLong's algorithm
    for comparing the areas under correlated receiver operating characteristic curves", IEEE
    Signal Processing Letters 21, 2014. Var(A_a - A_b) = (S10_aa + S10_bb - 2 S10_ab) / m +
    (S01_aa + S01_bb - 2 S01_ab) / n with S10, S01 the covariance matrices (ddof 1) of the
    structural components over the m positives and n negatives; z = diff / sqrt(var), two-sided.

    Args:
        y_true: binary labels (N,), 1 = positive; at least 2 of each class.
        score_a, score_b: scores (N,) of the two systems, higher = more positive.

    Returns:
        ``{"auc_a", "auc_b", "diff", "var", "se", "z", "p_value"}``. With zero variance, z is 0
        and p 1 when the AUCs are equal, else z is None and p 0.
    """
    pos, scores = _check_binary_scores(y_true, score_a, score_b)
    auc, v10, v01 = _structural_components(scores, pos)
    m, n = v10.shape[1], v01.shape[1]
    cov = np.cov(v10) / m + np.cov(v01) / n
    contrast = np.array([1.0, -1.0])
    var = float(contrast @ cov @ contrast)
    diff = float(auc[0] - auc[1])
    z, p = _z_test(diff, var)
    return {
        "auc_a": float(auc[0]),
        "auc_b": float(auc[1]),
        "diff": diff,
        "var": max(var, 0.0),
        "se": math.sqrt(max(var, 0.0)),
        "z": z,
        "p_value": p,
    }


def delong_ovr(y_true: Any, probs_a: Any, probs_b: Any, *, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """DeLong tests of one-vs-rest AUROCs of two multi-class systems, per class and macro.

    Per class k: :func:`delong` on (y == k, probs_a[:, k], probs_b[:, k]); classes with fewer than
    2 positives or 2 negatives are None and left out. Per-class p-values are also given Holm-
    adjusted across the tested classes.

    Macro: the difference of the macro (unweighted mean over tested classes) AUROCs, with the
    DeLong variance generalised to this linear combination of OvR AUCs. Each AUC is asymptotically
    a sum of per-sample terms (its structural components minus the AUC, divided by the number of
    positives or negatives of that class); the macro difference is the sum over samples of
    psi_i = mean_k [(a-term) - (b-term)]. Treating the samples of each true class as an i.i.d.
    stratum of fixed size (as DeLong does for positives and negatives), Var = sum_c n_c
    s_c^2(psi) with s_c^2 the ddof-1 variance within true class c (a class with one sample
    contributes 0). For K = 2 this equals :func:`delong` exactly.

    Args:
        y_true: labels (N,) in [0, K).
        probs_a, probs_b: probabilities (N, K) of the two systems.
        class_names: optional K names for ``per_class``.

    Returns:
        ``{"per_class": {name: delong result or None}, "p_values_holm": {name: p or None},
        "macro": {"auc_a", "auc_b", "diff", "var", "se", "z", "p_value", "classes"}}``.
    """
    y, pa = check_classification_inputs(y_true, probs_a)
    _, pb = check_classification_inputs(y_true, probs_b)
    if pa.shape != pb.shape:
        raise ValueError(f"probs_a and probs_b must have the same shape, got {pa.shape} and {pb.shape}")
    k = pa.shape[1]
    names = [str(c) for c in range(k)] if class_names is None else [str(c) for c in class_names]
    if len(names) != k:
        raise ValueError(f"class_names has {len(names)} entries but probs has K={k} columns")

    per_class, tested, psi, aucs = _ovr_per_class(y, pa, pb, names)
    adjusted = holm([per_class[names[c]]["p_value"] for c in tested]) if tested else []
    p_holm: dict[str, float | None] = dict.fromkeys(names)
    for c, p in zip(tested, adjusted):
        p_holm[names[c]] = p

    if not tested:
        macro: dict[str, Any] = dict.fromkeys(("auc_a", "auc_b", "diff", "var", "se", "z", "p_value"))
        macro["classes"] = []
        return {"per_class": per_class, "p_values_holm": p_holm, "macro": macro}
    macro = _macro_delong(y, psi / len(tested), aucs)
    macro["classes"] = [names[c] for c in tested]
    return {"per_class": per_class, "p_values_holm": p_holm, "macro": macro}


def _ovr_per_class(
    y: np.ndarray, pa: np.ndarray, pb: np.ndarray, names: Sequence[str]
) -> tuple[dict[str, Any], list[int], np.ndarray, list[np.ndarray]]:
    """The per-class part of :func:`delong_ovr`.

    Returns the :func:`delong` result per class name (None for a class with fewer than 2
    positives or 2 negatives), the tested class indices, the per-sample terms summed over the
    tested classes (``psi`` before dividing by their number) and the (2,) AUCs of each tested class.
    """
    per_class: dict[str, Any] = {}
    tested: list[int] = []
    psi = np.zeros(y.size)
    aucs = []
    for c in range(pa.shape[1]):
        pos = y == c
        if pos.sum() < 2 or (~pos).sum() < 2:
            per_class[names[c]] = None
            continue
        per_class[names[c]] = delong(pos.astype(int), pa[:, c], pb[:, c])
        tested.append(c)
        auc, v10, v01 = _structural_components(np.stack([pa[:, c], pb[:, c]]), pos)
        aucs.append(auc)
        m, n = v10.shape[1], v01.shape[1]
        term = np.empty(y.size)
        term[pos] = ((v10[0] - auc[0]) - (v10[1] - auc[1])) / m
        term[~pos] = ((v01[0] - auc[0]) - (v01[1] - auc[1])) / n
        psi += term
    return per_class, tested, psi, aucs


def _macro_delong(y: np.ndarray, psi: np.ndarray, aucs: Sequence[np.ndarray]) -> dict[str, Any]:
    """The macro test of :func:`delong_ovr` from the per-sample terms ``psi`` (averaged over the
    tested classes) and the tested classes' AUCs: Var = sum over true classes c of n_c times the
    ddof-1 variance of psi within c; the z-test of the difference of the mean AUCs."""
    var = 0.0
    for c in np.unique(y):
        members = psi[y == c]
        if members.size > 1:
            var += members.size * float(members.var(ddof=1))
    auc_arr = np.mean(aucs, axis=0)
    diff = float(auc_arr[0] - auc_arr[1])
    z, p = _z_test(diff, var)
    return {
        "auc_a": float(auc_arr[0]),
        "auc_b": float(auc_arr[1]),
        "diff": diff,
        "var": var,
        "se": math.sqrt(var),
        "z": z,
        "p_value": p,
    }


def holm(p_values: Sequence[float] | np.ndarray) -> list[float]:
    """Holm-Bonferroni step-down adjusted p-values (Holm, Scand. J. Statistics 6, 1979).

    Sort the m p-values ascending, p_(1) <= ... <= p_(m); the adjusted value of p_(i) is
    max_{j <= i} min(1, (m - j + 1) p_(j)). Returned in the input order; rejecting where the
    adjusted value is <= alpha controls the family-wise error rate at alpha.

    Raises:
        ValueError: when the input is not 1-D or holds values outside [0, 1] (NaN included).
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_values must be 1-D, got shape {p.shape}")
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1):
        raise ValueError(f"p_values must lie in [0, 1] (no NaN), got {p.tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted.tolist()
