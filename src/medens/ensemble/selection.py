"""Member ranking and top-k selection on validation predictions (docs/methods.md section 5.2).

Study 1 (Rajaraman, Zamzmi, Antani, PLoS ONE 16(12) e0261307, 2021) ranks the twelve
loss-specific members by a validation metric and ensembles the top 3 and the top 5; MCC is the
default ranking metric because it stays informative on class-imbalanced data.

The metrics needed here (and by the greedy ensemble) are those of :mod:`medens.metrics`, the one
definition every stage uses, applied to the argmax predictions (``y_true`` first, higher-better
except ``log_loss``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from medens import metrics as _metrics
from medens.metric_names import RANKING_METRICS
from medens.metrics import confusion_matrix
from medens.registry import unknown_name_message

if TYPE_CHECKING:
    from medens.training.predictions import Predictions

__all__ = [
    "HIGHER_IS_BETTER",
    "LOG_EPS",
    "METRICS",
    "accuracy",
    "balanced_accuracy",
    "check_aligned",
    "collapsed_members",
    "confusion_matrix",
    "is_better",
    "log_loss",
    "macro_f1",
    "mcc",
    "metric_score",
    "rank_members",
    "top_k",
]

LOG_EPS = 1e-15
"""Probabilities are clipped to ``[LOG_EPS, 1]`` before taking logs (log-loss, log features)."""


def _labels_metric(name: str, on_confusion: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray, np.ndarray], float]:
    """``f(y_true, probs) -> float``: ``on_confusion`` (from :mod:`medens.metrics`, the one
    definition) of the confusion matrix of the argmax predictions."""

    def score(y_true: np.ndarray, probs: np.ndarray) -> float:
        p = np.asarray(probs)
        return float(on_confusion(confusion_matrix(y_true, p.argmax(axis=1), n_classes=p.shape[1])))

    score.__name__ = score.__qualname__ = name
    score.__doc__ = f"``medens.metrics.{on_confusion.__name__}`` of the argmax predictions of ``probs`` (N, K)."
    return score


accuracy = _labels_metric("accuracy", _metrics.accuracy)
balanced_accuracy = _labels_metric("balanced_accuracy", _metrics.balanced_accuracy)
macro_f1 = _labels_metric("macro_f1", _metrics.macro_f1)
mcc = _labels_metric("mcc", _metrics.mcc)


def log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-probability of the true class, probabilities clipped to ``[LOG_EPS, 1]``.

    Rows are not renormalised: members' softmax outputs already sum to one.
    """
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)[np.arange(len(y)), y]
    return float(-np.mean(np.log(np.clip(p, LOG_EPS, 1.0))))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "balanced_accuracy": balanced_accuracy,
    "log_loss": log_loss,
    "macro_f1": macro_f1,
    "mcc": mcc,
}
"""Validation metrics usable for ranking and greedy selection, ``f(y_true, probs) -> float``."""

HIGHER_IS_BETTER: dict[str, bool] = {name: RANKING_METRICS[name] for name in METRICS}
"""Direction of each metric, from ``medens.metric_names.RANKING_METRICS`` (where ``medens.config``
reads the names; a metric missing there fails here, at import)."""


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(unknown_name_message("metric", metric, list(METRICS)))
    return metric


def metric_score(y_true: np.ndarray, probs: np.ndarray, *, metric: str = "mcc") -> float:
    """Score ``(N, K)`` probabilities against integer labels with ``metric`` (see ``METRICS``)."""
    return METRICS[_check_metric(metric)](np.asarray(y_true), np.asarray(probs))


def is_better(a: float, b: float, *, metric: str) -> bool:
    """Whether score ``a`` is strictly better than ``b`` under ``metric``."""
    return a > b if HIGHER_IS_BETTER[_check_metric(metric)] else a < b


def check_aligned(val: Mapping[str, Predictions], *, target: str = "labels") -> None:
    """Check that members were evaluated on the same samples in the same order.

    Args:
        val: member id -> validation ``Predictions``.
        target: ``"labels"`` (classification) or ``"masks"`` (segmentation): the ground truth
            every member must carry and agree on.

    Raises:
        ValueError: no members, a member without ``target``, or a member whose ids, ground truth
            or probability shape disagrees with the first member's; the message names the member.
    """
    if target not in ("labels", "masks"):
        raise ValueError(f"target must be 'labels' or 'masks', got {target!r}")
    if not val:
        raise ValueError("no members given")
    items = list(val.items())
    ref_id, ref = items[0]
    for mid, p in items:
        truth = getattr(p, target)
        if truth is None:
            raise ValueError(f"member {mid!r} has no {target}")
        if mid == ref_id:
            continue
        if list(p.ids) != list(ref.ids):
            raise ValueError(
                f"member {mid!r} was evaluated on different validation samples than {ref_id!r} "
                f"(ids differ in content or order); members must share the same validation ids"
            )
        ref_truth = getattr(ref, target)
        if np.shape(truth) != np.shape(ref_truth) or not np.array_equal(truth, ref_truth):
            raise ValueError(f"member {mid!r} has {target} that differ from those of {ref_id!r} on the same ids")
        if np.shape(p.probs)[1:] != np.shape(ref.probs)[1:]:
            raise ValueError(
                f"member {mid!r} has probabilities of shape {np.shape(p.probs)}, "
                f"{ref_id!r} has {np.shape(ref.probs)}"
            )


def collapsed_members(val: Mapping[str, Predictions]) -> dict[str, int]:
    """Members whose validation predictions all fall in one class while the labels hold several
    (:func:`medens.training.collapse.collapsed_class`): member id -> that class's index."""
    from medens.training.collapse import collapsed_class

    out = {}
    for mid, p in val.items():
        c = collapsed_class(p.probs, p.labels)
        if c is not None:
            out[mid] = c
    return out


def rank_members(val: Mapping[str, Predictions], metric: str = "mcc", *,
                 collapsed: str = "last") -> list[tuple[str, float]]:
    """Rank members by a validation metric, best first (Rajaraman et al., PLoS ONE 2021).

    Args:
        val: member id -> validation ``Predictions`` (same ids and labels for every member).
        metric: one of ``mcc`` (default), ``accuracy``, ``macro_f1``, ``balanced_accuracy``
            (higher is better) or ``log_loss`` (lower is better).
        collapsed: where members that predict one class on these predictions go
            (:func:`collapsed_members`): ``last`` (default: after every other member, so a top-k
            takes one only when too few others are left), ``drop`` (left out; all kept when every
            member collapsed) or ``keep`` (ranked by the metric like the rest).

    Returns:
        ``[(member_id, score), ...]`` best first; equal scores are ordered by member id so the
        ranking is deterministic.

    Raises:
        ValueError: unknown metric, or members that disagree on ids or labels (see ``check_aligned``).
    """
    _check_metric(metric)
    if collapsed not in ("last", "drop", "keep"):
        raise ValueError(f"collapsed must be 'last', 'drop' or 'keep', got {collapsed!r}")
    check_aligned(val, target="labels")
    bad = set() if collapsed == "keep" else set(collapsed_members(val))
    if collapsed == "drop" and len(bad) < len(val):
        val = {m: p for m, p in val.items() if m not in bad}
    scores = [(mid, metric_score(p.labels, p.probs, metric=metric)) for mid, p in val.items()]
    sign = -1.0 if HIGHER_IS_BETTER[metric] else 1.0
    return sorted(scores, key=lambda item: (item[0] in bad, sign * item[1], item[0]))


def top_k(val: Mapping[str, Predictions], k: int, metric: str = "mcc") -> list[str]:
    """The ids of the ``k`` best members by ``metric`` (best first); study 1 uses k = 3 and 5.

    Raises:
        ValueError: ``k`` < 1 or larger than the number of members, or any ``rank_members`` error.
    """
    n = len(val)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer between 1 and the number of members ({n}), got {k!r}")
    return [mid for mid, _ in rank_members(val, metric)[: int(k)]]
