"""Classification metrics (docs/methods.md section 6); the segmentation metrics are
:mod:`medens.evaluation.segmentation`.

Conventions follow scikit-learn: ``y_true`` first, keyword-only options, and every ``*_score`` is
higher-better. Classification metrics take integer labels ``y_true`` (N,) and class probabilities
``probs`` (N, K) with K >= 2 (a binary task has two columns); the predicted class is
``probs.argmax(1)``.

Every named classification metric is implemented once, as a function of *sample weights*: the
bootstrap (``medens.evaluation.stats``) evaluates a metric on B resamples at once by passing the
resample multiplicities as a (B, N) weight matrix, so no per-resample re-sorting or scikit-learn
call is needed. With unit weights each metric equals its scikit-learn counterpart (the tests check
this on random inputs).

Conventions for degenerate cases:

- Accuracy, balanced accuracy, macro-F1 and MCC are :mod:`medens.metrics`, the one definition
  the training monitor, ranking, selection and the gate also use.
- Precision, recall (= sensitivity), specificity and per-class F1 use ``zero_division=0``: a
  ratio whose denominator is 0 is reported as 0, and the macro precision and recall run over all
  K classes, as scikit-learn does with ``labels=range(K), zero_division=0``. Macro-F1 averages
  F1 over the classes present in ``y_true`` or the predictions (scikit-learn's default
  ``f1_score(average="macro")``). Balanced accuracy averages recall over the classes present in
  ``y_true`` (scikit-learn's ``balanced_accuracy_score``).
- MCC is 0 when undefined (scikit-learn). Cohen's kappa is undefined (None / NaN) when the
  chance agreement is 1 (scikit-learn's default ``replace_undefined_by=np.nan``).
- One-vs-rest AUROC/AUPRC of a class without positives (absent from ``y_true``) or without
  negatives is undefined: None in the per-class report, and the macro averages run over the
  defined classes only. Micro averages pool all (sample, class) pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from medens import metrics as metric_defs
from medens.metric_names import EVALUATION_METRICS, canonical_name
from medens.registry import unknown_name_message

ROW_SUM_TOLERANCE = 1e-3
ECE_BINS = 15

Evaluator = Callable[[np.ndarray], np.ndarray]


# ---------------------------------------------------------------------------------------------
# input validation
# ---------------------------------------------------------------------------------------------


def check_classification_inputs(y_true: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels and probabilities; return them as ``int64`` (N,) and ``float64`` (N, K).

    Raises:
        ValueError: naming the problem and the shapes involved: ``probs`` not 2-D or with fewer
            than two columns, ``y_true`` not 1-D or of a different length, labels that are not
            integers or lie outside ``[0, K)``, NaN/inf probabilities, probabilities outside
            [0, 1], or rows that do not sum to 1 within ``ROW_SUM_TOLERANCE``.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be 2-D (N, K), got shape {p.shape}")
    n, k = p.shape
    if k < 2:
        raise ValueError(f"probs must have K >= 2 columns (a binary task uses 2), got shape {p.shape}")
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D (N,), got shape {y.shape} with probs of shape {p.shape}")
    if y.shape[0] != n:
        raise ValueError(f"length mismatch: y_true has shape {y.shape} but probs has shape {p.shape}")
    if n == 0:
        raise ValueError(f"empty input: y_true has shape {y.shape} and probs has shape {p.shape}")
    if y.dtype == bool:
        y = y.astype(np.int64)
    elif not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(f"y_true must hold integer class labels, got dtype {y.dtype} with shape {y.shape}")
    y = y.astype(np.int64)
    bad = (y < 0) | (y >= k)
    if bad.any():
        found = sorted(set(y[bad].tolist()))[:5]
        raise ValueError(f"y_true labels must lie in [0, {k}) for probs of shape {p.shape}; found {found}")
    finite = np.isfinite(p).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise ValueError(
            f"probs contains NaN or inf in {rows.size} row(s) (first: row {rows[0]}); probs shape {p.shape}"
        )
    if p.min() < -ROW_SUM_TOLERANCE or p.max() > 1 + ROW_SUM_TOLERANCE:
        raise ValueError(
            f"probs must lie in [0, 1], got values in [{p.min():.6g}, {p.max():.6g}]; probs shape {p.shape}"
        )
    sums = p.sum(axis=1)
    dev = np.abs(sums - 1.0)
    if dev.max() > ROW_SUM_TOLERANCE:
        i = int(dev.argmax())
        raise ValueError(
            f"probs rows must sum to 1 (tolerance {ROW_SUM_TOLERANCE:g}); row {i} sums to {sums[i]:.6g}; "
            f"probs shape {p.shape} (apply softmax to logits first)"
        )
    return y, p


def _check_class_names(class_names: Sequence[str] | None, k: int) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(k)]
    names = [str(c) for c in class_names]
    if len(names) != k:
        raise ValueError(f"class_names has {len(names)} entries but probs has K={k} columns")
    if len(set(names)) != k:
        raise ValueError(f"class_names must be unique, got {names}")
    return names


# ---------------------------------------------------------------------------------------------
# weighted building blocks: each returns an evaluator W (B, N) -> (B,) or (B, ...)
# ---------------------------------------------------------------------------------------------


def _group_sums(w: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """``out[b, g] = sum(w[b, i] for i with codes[i] == g)``, shape (B, n_groups)."""
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    out = np.zeros((w.shape[0], n_groups))
    out[:, sorted_codes[starts]] = np.add.reduceat(w[:, order], starts, axis=1)
    return out


_safe_div = metric_defs.safe_div


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    """Mean over the non-NaN entries (NaN where there are none), without the empty-slice warning."""
    ok = ~np.isnan(x)
    count = ok.sum(axis=axis)
    total = np.where(ok, x, 0.0).sum(axis=axis)
    return _safe_div(total, count, fill=np.nan)


def _confusion_evaluator(y: np.ndarray, probs: np.ndarray) -> Evaluator:
    """Weighted confusion matrices (B, K, K): rows true class, columns predicted class."""
    k = probs.shape[1]
    codes = y * k + probs.argmax(axis=1)
    return lambda w: _group_sums(w, codes, k * k).reshape(-1, k, k)


def _per_class_counts(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(tp, true count, predicted count, total) from confusion matrices (B, K, K)."""
    tp = np.diagonal(cm, axis1=1, axis2=2)
    return tp, cm.sum(axis=2), cm.sum(axis=1), cm.sum(axis=(1, 2))


def _cm_precision(cm: np.ndarray) -> np.ndarray:
    tp, _, p, _ = _per_class_counts(cm)
    return _safe_div(tp, p)


def _cm_recall(cm: np.ndarray) -> np.ndarray:
    tp, t, _, _ = _per_class_counts(cm)
    return _safe_div(tp, t)


def _cm_specificity(cm: np.ndarray) -> np.ndarray:
    tp, t, p, s = _per_class_counts(cm)
    tn = s[:, None] - t - p + tp
    fp = p - tp
    return _safe_div(tn, tn + fp)


def _weighted_by_support(values: np.ndarray, cm: np.ndarray) -> np.ndarray:
    _, t, _, s = _per_class_counts(cm)
    return (values * t).sum(1) / s


def _cm_kappa(cm: np.ndarray) -> np.ndarray:
    """Cohen's kappa (Cohen 1960), written as scikit-learn does; NaN when chance agreement is 1."""
    tp, t, p, s = _per_class_counts(cm)
    observed_disagreement = s - tp.sum(1)
    expected_disagreement = s - (t * p).sum(1) / s
    return 1.0 - _safe_div(observed_disagreement, expected_disagreement, fill=np.nan)


def _auroc_evaluator(scores: np.ndarray, positive: np.ndarray) -> Evaluator:
    """Weighted Mann-Whitney AUROC, ties counted 1/2 (equals the trapezoidal ROC area).

    Each positive contributes its weight times the weight of negatives scored below it plus half
    the weight of negatives tied with it. The sort happens once; each evaluation is cumulative
    sums over the fixed order. NaN where the weighted sample has no positives or no negatives.
    """
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    pos = positive[order]
    m = s.size
    new = np.r_[True, s[1:] != s[:-1]]
    group = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], m]
    pidx = np.flatnonzero(pos)
    below_col = starts[group[pidx]]  # cumulative negatives strictly below: column start in padded cumsum
    upto_col = ends[group[pidx]]  # cumulative negatives below or tied
    negf = (~pos).astype(np.float64)

    def evaluate(w: np.ndarray) -> np.ndarray:
        ws = w[:, order]
        cn = np.zeros((w.shape[0], m + 1))
        np.cumsum(ws * negf, axis=1, out=cn[:, 1:])
        wp = ws[:, pidx]
        num = (wp * (cn[:, below_col] + cn[:, upto_col])).sum(1) * 0.5
        return _safe_div(num, wp.sum(1) * cn[:, -1], fill=np.nan)

    return evaluate


def _ap_evaluator(scores: np.ndarray, positive: np.ndarray) -> Evaluator:
    """Weighted average precision, as scikit-learn's ``average_precision_score``.

    AP = sum_n (R_n - R_{n-1}) P_n over distinct thresholds, which equals the mean, over positives,
    of the precision at the lowest threshold that still includes the positive's whole tie group.
    NaN where the weighted sample has no positives.
    """
    order = np.argsort(-scores, kind="mergesort")
    s = scores[order]
    pos = positive[order]
    m = s.size
    new = np.r_[True, s[1:] != s[:-1]]
    group = np.cumsum(new) - 1
    last = np.r_[np.flatnonzero(new)[1:], m] - 1
    pidx = np.flatnonzero(pos)
    end_col = last[group[pidx]]
    posf = pos.astype(np.float64)

    def evaluate(w: np.ndarray) -> np.ndarray:
        ws = w[:, order]
        tp = np.cumsum(ws * posf, axis=1)
        total = np.cumsum(ws, axis=1)
        precision = _safe_div(tp[:, end_col], total[:, end_col])
        return _safe_div((ws[:, pidx] * precision).sum(1), tp[:, -1], fill=np.nan)

    return evaluate


def _per_class_evaluators(y: np.ndarray, probs: np.ndarray, maker: Callable) -> list[Evaluator]:
    return [maker(probs[:, c], y == c) for c in range(probs.shape[1])]


def _micro(y: np.ndarray, probs: np.ndarray, maker: Callable) -> Evaluator:
    k = probs.shape[1]
    onehot = np.eye(k, dtype=bool)[y]
    inner = maker(probs.ravel(), onehot.ravel())
    return lambda w: inner(np.repeat(w, k, axis=1))


def _macro(y: np.ndarray, probs: np.ndarray, maker: Callable) -> Evaluator:
    per_class = _per_class_evaluators(y, probs, maker)
    return lambda w: _nanmean(np.stack([f(w) for f in per_class], axis=1), axis=1)


def equal_width_bins(values: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Bin index (0-based, same shape as ``values``) of probabilities in ``n_bins`` equal-width bins:
    bin m (1-based) holds ((m-1)/M, m/M]; a value of exactly 0 goes to the first bin."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, values, side="left") - 1, 0, n_bins - 1)


def _top_label(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confidence ``max_k p_k`` and whether the argmax is the true class (as 0/1 floats)."""
    return probs.max(axis=1), (probs.argmax(axis=1) == y).astype(np.float64)


def _ece_evaluator(y: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> Evaluator:
    """Expected calibration error (Guo et al., ICML 2017) with ``n_bins`` equal-width bins.

    Confidence is the max probability; bin m holds confidences in ((m-1)/M, m/M] (a confidence of
    exactly 0 goes to the first bin). ECE = sum_m |B_m|/N |acc(B_m) - conf(B_m)|.
    """
    conf, correct = _top_label(y, probs)
    bins = equal_width_bins(conf, n_bins)
    gap = correct - conf

    def evaluate(w: np.ndarray) -> np.ndarray:
        return np.abs(_group_sums(w * gap, bins, n_bins)).sum(1) / w.sum(1)

    return evaluate


def _classwise_ece_evaluator(y: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> Evaluator:
    """Classwise ECE (Kull et al., NeurIPS 2019): the mean over classes k of the binned calibration
    error of ``p_k`` alone.

    For each class k, ``p_k`` of every sample goes into ``n_bins`` equal-width bins B_{m,k} (as in
    :func:`equal_width_bins`), and classwise-ECE = (1/K) sum_k sum_m |B_{m,k}|/N
    |freq_k(B_{m,k}) - conf_k(B_{m,k})|, with freq_k the fraction of the bin's samples whose true
    class is k and conf_k the bin's mean ``p_k``. Unlike the top-label ECE it sees the
    probabilities of the classes that were not predicted (the minority classes' scores).
    """
    n, k = probs.shape
    codes = (np.arange(k)[None, :] * n_bins + equal_width_bins(probs, n_bins)).ravel()
    gap = (np.eye(k)[y] - probs).ravel()

    def evaluate(w: np.ndarray) -> np.ndarray:
        return np.abs(_group_sums(np.repeat(w, k, axis=1) * gap, codes, k * n_bins)).sum(1) / (k * w.sum(1))

    return evaluate


def _equal_mass_edges(total: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin boundaries (B, M+1) of ``np.array_split`` of ``total`` (rounded) sorted items into M bins:
    the first ``total % M`` bins hold one item more."""
    size = np.rint(total).astype(np.int64)[:, None]
    m = np.arange(n_bins + 1)[None, :]
    return (m * (size // n_bins) + np.minimum(m, size % n_bins)).astype(np.float64)


def _adaptive_ece_evaluator(y: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> Evaluator:
    """Adaptive ECE (Nixon et al., CVPR Workshops 2019): the top-label ECE over equal-mass bins.

    The samples are sorted by confidence ``max_k p_k`` (ties in input order) and split into
    ``n_bins`` consecutive bins of equal count, as ``np.array_split`` does (the first N mod M bins
    hold one sample more); adaptive-ECE = sum_m |B_m|/N |acc(B_m) - conf(B_m)|. Under bootstrap
    weights (integer multiplicities) the bins are those of the resample: each sample counts as
    ``w_i`` copies in the sorted order, so a sample's copies may fall into two adjacent bins.
    """
    conf, correct = _top_label(y, probs)
    order = np.argsort(conf, kind="stable")
    gap = (correct - conf)[order]
    n = gap.size

    def evaluate(w: np.ndarray) -> np.ndarray:
        ws = w[:, order]
        b = ws.shape[0]
        pos = np.zeros((b, n + 1))  # pos[:, j]: copies before sorted sample j
        np.cumsum(ws, axis=1, out=pos[:, 1:])
        cum_gap = np.zeros((b, n + 1))
        np.cumsum(ws * gap, axis=1, out=cum_gap[:, 1:])
        edges = _equal_mass_edges(pos[:, -1], n_bins)
        # row-wise searchsorted through one flat search: rows offset by more than any row's total
        offset = (np.arange(b) * (pos[:, -1].max() + 1.0))[:, None]
        j = np.searchsorted((pos[:, 1:] + offset).ravel(), (edges + offset).ravel(), side="right").reshape(b, -1)
        j -= (np.arange(b) * n)[:, None]  # samples wholly before each edge
        rows = np.arange(b)[:, None]
        at_edge = cum_gap[rows, j] + (edges - pos[rows, j]) * gap[np.minimum(j, n - 1)]
        return np.abs(np.diff(at_edge, axis=1)).sum(1) / pos[:, -1]

    return evaluate


def reliability_bins(y_true: Any, probs: Any, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """The top-label reliability diagram's points: for each non-empty equal-width confidence bin
    (the bins of ``ece``), the mean confidence, the accuracy and the count."""
    y, p = check_classification_inputs(y_true, probs)
    conf, correct = _top_label(y, p)
    bins = equal_width_bins(conf, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    keep = count > 0
    return {"confidence": np.bincount(bins, conf, n_bins)[keep] / count[keep],
            "accuracy": np.bincount(bins, correct, n_bins)[keep] / count[keep], "count": count[keep]}


def _brier_evaluator(y: np.ndarray, probs: np.ndarray) -> Evaluator:
    """Multi-class Brier score (Brier 1950): mean over samples of sum_k (p_k - y_k)^2."""
    onehot = np.eye(probs.shape[1])[y]
    per_sample = ((probs - onehot) ** 2).sum(axis=1)
    return lambda w: (w @ per_sample) / w.sum(1)


def _from_cm(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray, np.ndarray], Evaluator]:
    def make(y: np.ndarray, probs: np.ndarray) -> Evaluator:
        confusion = _confusion_evaluator(y, probs)
        return lambda w: fn(confusion(w))

    return make


_EVALUATORS: dict[str, Callable[[np.ndarray, np.ndarray], Evaluator]] = {
    "accuracy": _from_cm(metric_defs.accuracy),
    "balanced_accuracy": _from_cm(metric_defs.balanced_accuracy),
    "precision_macro": _from_cm(lambda cm: _cm_precision(cm).mean(1)),
    "recall_macro": _from_cm(lambda cm: _cm_recall(cm).mean(1)),
    "macro_f1": _from_cm(metric_defs.macro_f1),
    "precision_weighted": _from_cm(lambda cm: _weighted_by_support(_cm_precision(cm), cm)),
    "recall_weighted": _from_cm(lambda cm: _weighted_by_support(_cm_recall(cm), cm)),
    "f1_weighted": _from_cm(lambda cm: _weighted_by_support(metric_defs.f1_per_class(cm), cm)),
    "mcc": _from_cm(metric_defs.mcc),
    "kappa": _from_cm(_cm_kappa),
    "auroc_micro": lambda y, p: _micro(y, p, _auroc_evaluator),
    "auroc_macro": lambda y, p: _macro(y, p, _auroc_evaluator),
    "auprc_micro": lambda y, p: _micro(y, p, _ap_evaluator),
    "auprc_macro": lambda y, p: _macro(y, p, _ap_evaluator),
    "brier": _brier_evaluator,
    "ece": _ece_evaluator,
    "classwise_ece": _classwise_ece_evaluator,
    "adaptive_ece": _adaptive_ece_evaluator,
}

HIGHER_IS_BETTER: dict[str, bool] = {name: EVALUATION_METRICS[name] for name in _EVALUATORS}
"""Direction of each named metric: Brier score and the ECEs are lower-better, all others higher-better.
Taken from ``medens.metric_names.EVALUATION_METRICS`` (where ``medens.config`` reads the names; a
metric missing there fails here, at import)."""


def _unknown(name: str) -> ValueError:
    return ValueError(unknown_name_message("metric", name, list(_EVALUATORS)))


def metric_evaluator(name: str, y_true: Any, probs: Any) -> Evaluator:
    """Prepare metric ``name`` on fixed data; return ``f(weights (B, N)) -> values (B,)``.

    The expensive part (sorting scores, binning confidences) happens once here; each call of the
    returned function is a few vectorised sums, which is what makes the bootstrap fast. Integer
    weights are resample multiplicities: ``f(np.ones((1, N)))[0]`` is the plain metric.

    Raises:
        ValueError: for an unknown name (with close matches) or invalid inputs.
    """
    name = canonical_name(name)
    if name not in _EVALUATORS:
        raise _unknown(name)
    y, p = check_classification_inputs(y_true, probs)
    return _EVALUATORS[name](y, p)


def _scalar_metric(name: str) -> Callable[[Any, Any], float]:
    def metric(y_true: Any, probs: Any) -> float:
        y, p = check_classification_inputs(y_true, probs)
        return float(_EVALUATORS[name](y, p)(np.ones((1, y.size)))[0])

    metric.__name__ = name
    metric.__qualname__ = name
    metric.__doc__ = (
        f"``{name}`` of labels ``y_true`` (N,) and probabilities ``probs`` (N, K); NaN when undefined "
        f"({'higher' if HIGHER_IS_BETTER[name] else 'lower'} is better)."
    )
    return metric


METRICS: dict[str, Callable[[Any, Any], float]] = {name: _scalar_metric(name) for name in _EVALUATORS}
"""Scalar metrics by name, each ``f(y_true, probs) -> float`` (NaN when undefined)."""


def metric_fn(name: str) -> Callable[[Any, Any], float]:
    """Return the scalar metric ``name`` from :data:`METRICS`.

    Raises:
        ValueError: for an unknown name, suggesting the closest known names.
    """
    try:
        return METRICS[canonical_name(name)]
    except KeyError:
        raise _unknown(name) from None


# ---------------------------------------------------------------------------------------------
# the classification report
# ---------------------------------------------------------------------------------------------


def _json_float(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def _confusion_metrics(cm: np.ndarray) -> dict[str, float | None]:
    """The metrics of one confusion matrix (1, K, K): accuracy, balanced accuracy, MCC, kappa and
    the macro and support-weighted precision, recall and F1."""
    precision, recall, f1 = _cm_precision(cm), _cm_recall(cm), metric_defs.f1_per_class(cm)
    return {
        "accuracy": _json_float(metric_defs.accuracy(cm)[0]),
        "balanced_accuracy": _json_float(metric_defs.balanced_accuracy(cm)[0]),
        "precision_macro": _json_float(precision.mean()),
        "recall_macro": _json_float(recall.mean()),
        "macro_f1": _json_float(metric_defs.macro_f1(cm)[0]),
        "precision_weighted": _json_float(_weighted_by_support(precision, cm)[0]),
        "recall_weighted": _json_float(_weighted_by_support(recall, cm)[0]),
        "f1_weighted": _json_float(_weighted_by_support(f1, cm)[0]),
        "mcc": _json_float(metric_defs.mcc(cm)[0]),
        "kappa": _json_float(_cm_kappa(cm)[0]),
    }


def _score_metrics(y: np.ndarray, p: np.ndarray, n_bins: int) -> tuple[dict[str, float | None], np.ndarray, np.ndarray]:
    """The metrics of the probabilities themselves: micro/macro AUROC and AUPRC, ECE and Brier;
    and the per-class AUROC and AUPRC (NaN where undefined)."""
    ones = np.ones((1, y.size))
    auroc = np.array([f(ones)[0] for f in _per_class_evaluators(y, p, _auroc_evaluator)])
    auprc = np.array([f(ones)[0] for f in _per_class_evaluators(y, p, _ap_evaluator)])
    out = {
        "auroc_micro": _json_float(_micro(y, p, _auroc_evaluator)(ones)[0]),
        "auroc_macro": _json_float(_nanmean(auroc, axis=0)),
        "auprc_micro": _json_float(_micro(y, p, _ap_evaluator)(ones)[0]),
        "auprc_macro": _json_float(_nanmean(auprc, axis=0)),
        "ece": _json_float(_ece_evaluator(y, p, n_bins)(ones)[0]),
        "classwise_ece": _json_float(_classwise_ece_evaluator(y, p, n_bins)(ones)[0]),
        "adaptive_ece": _json_float(_adaptive_ece_evaluator(y, p, n_bins)(ones)[0]),
        "brier": _json_float(_brier_evaluator(y, p)(ones)[0]),
    }
    return out, auroc, auprc


def _per_class(names: list[str], cm: np.ndarray, auroc: np.ndarray, auprc: np.ndarray) -> dict[str, Any]:
    """``sensitivity`` and ``specificity`` lists and the ``per_class`` table of the report."""
    precision, recall, f1 = _cm_precision(cm)[0], _cm_recall(cm)[0], metric_defs.f1_per_class(cm)[0]
    specificity = _cm_specificity(cm)[0]
    support = cm[0].sum(axis=1).astype(int)
    return {
        "sensitivity": [_json_float(v) for v in recall],
        "specificity": [_json_float(v) for v in specificity],
        "per_class": {
            name: {
                "precision": _json_float(precision[c]),
                "recall": _json_float(recall[c]),
                "f1": _json_float(f1[c]),
                "sensitivity": _json_float(recall[c]),
                "specificity": _json_float(specificity[c]),
                "auroc": _json_float(auroc[c]),
                "auprc": _json_float(auprc[c]),
                "support": int(support[c]),
            }
            for c, name in enumerate(names)
        },
    }


def classification_metrics(
    y_true: Any,
    probs: Any,
    *,
    class_names: Sequence[str] | None = None,
    n_bins: int = ECE_BINS,
) -> dict[str, Any]:
    """Every classification metric of docs/methods.md section 6.1, as a JSON-ready dict.

    Args:
        y_true: integer labels, shape (N,), in ``[0, K)``.
        probs: class probabilities, shape (N, K), K >= 2, rows summing to 1 (tolerance 1e-3).
        class_names: K names (default ``"0" ... "K-1"``); keys of ``per_class``.
        n_bins: bins of the expected calibration errors: equal-width for ``ece`` (Guo et al.,
            "On Calibration of Modern Neural Networks", ICML 2017) and ``classwise_ece``,
            equal-mass for ``adaptive_ece``.

    Returns:
        ``accuracy``, ``balanced_accuracy``, ``precision/recall`` ``_macro`` and ``_weighted``,
        ``macro_f1`` and ``f1_weighted``, ``mcc`` (Matthews 1975; multi-class form of Gorodkin
        2004), ``kappa`` (Cohen 1960), ``auroc_micro/macro`` and ``auprc_micro/macro``
        (one-vs-rest; AUPRC is average precision), ``ece``, ``classwise_ece``, ``adaptive_ece``
        (docs/methods.md section 6.2), ``brier`` (Brier 1950, multi-class:
        mean over samples of sum_k (p_k - y_k)^2), ``sensitivity`` and ``specificity`` (lists, one
        per class), ``per_class`` (name -> precision, recall, f1, sensitivity, specificity, auroc,
        auprc, support), ``confusion_matrix`` (K x K, rows true, columns predicted), ``n`` and
        ``class_names``. Accuracy, balanced accuracy, macro-F1 and MCC are those of
        :mod:`medens.metrics`. Undefined values (see the module docstring) are None, so the dict
        is valid JSON; the macro AUROC/AUPRC average the classes where the metric is defined.
        (Reports written before macro-F1 had one name call it ``f1_macro``;
        :func:`medens.metric_names.metric_value` reads either.)

    Raises:
        ValueError: for invalid inputs (see :func:`check_classification_inputs`) or class names.
    """
    y, p = check_classification_inputs(y_true, probs)
    n, k = p.shape
    names = _check_class_names(class_names, k)
    if not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    cm = _confusion_evaluator(y, p)(np.ones((1, n)))
    scores, auroc, auprc = _score_metrics(y, p, n_bins)
    return {
        "n": int(n),
        "class_names": names,
        **_confusion_metrics(cm),
        **scores,
        **_per_class(names, cm, auroc, auprc),
        "confusion_matrix": cm[0].astype(int).tolist(),
    }


def kfp_classification_metrics(
    y_true: Any, probs: Any, class_names: Sequence[str] | None = None, *, max_points: int = 200
) -> dict[str, Any]:
    """Arguments for Kubeflow's ``ClassificationMetrics`` artifact.

    ``log_confusion_matrix(**out["confusion_matrix"])`` and ``log_roc_curve(**out["roc"])`` take
    the two parts as they are. The ROC is the micro-average one-vs-rest curve (scikit-learn's
    ``roc_curve`` on the pooled (sample, class) pairs), thinned to at most ``max_points`` points
    (first and last kept). Its first threshold, infinite in scikit-learn, is replaced by
    ``max(1, max prob) + 1e-6`` so the result is valid JSON.

    Returns:
        ``{"confusion_matrix": {"categories": [...], "matrix": [[...]]},
        "roc": {"fpr": [...], "tpr": [...], "threshold": [...]}}``.
    """
    from sklearn.metrics import roc_curve

    y, p = check_classification_inputs(y_true, probs)
    k = p.shape[1]
    names = _check_class_names(class_names, k)
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    cm = _confusion_evaluator(y, p)(np.ones((1, y.size)))[0].astype(int)
    fpr, tpr, thresholds = roc_curve(np.eye(k, dtype=int)[y].ravel(), p.ravel())
    if fpr.size > max_points:
        keep = np.unique(np.round(np.linspace(0, fpr.size - 1, max_points)).astype(int))
        fpr, tpr, thresholds = fpr[keep], tpr[keep], thresholds[keep]
    thresholds = np.where(np.isfinite(thresholds), thresholds, max(1.0, float(p.max())) + 1e-6)
    return {
        "confusion_matrix": {"categories": names, "matrix": cm.tolist()},
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "threshold": thresholds.tolist()},
    }
