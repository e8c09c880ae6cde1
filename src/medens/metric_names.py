"""Names and directions of the named metrics, at the bottom layer of medens.

``medens.config`` refuses unknown ranking and gate metrics when a spec is loaded, before any
training; it may not import ``medens.ensemble`` or ``medens.evaluation`` (docs/architecture.md section 2.2), so
the names live here and the implementations derive from them: ``medens.ensemble.selection`` and
``medens.evaluation.metrics`` take each metric's direction from these tables (a metric missing here
fails at import), and tests check that the name sets agree.

Each metric has one name. Older spellings are aliases (:data:`ALIASES`): :func:`canonical_name`
maps them to the canonical name with a ``FutureWarning`` naming it, so saved specs still load,
and :func:`metric_value` reads a metric from a dict written under either spelling (old
``metrics.json`` files).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ALIASES",
    "EVALUATION_METRICS",
    "RANKING_METRICS",
    "SEGMENTATION_GATE_METRICS",
    "canonical_name",
    "metric_value",
]

ALIASES: dict[str, str] = {"f1_macro": "macro_f1"}
"""Deprecated spelling -> canonical metric name (``f1_macro`` was the evaluation report's name for
macro-F1 while training and ranking called it ``macro_f1``)."""

RANKING_METRICS: dict[str, bool] = {
    "accuracy": True,
    "balanced_accuracy": True,
    "log_loss": False,
    "macro_f1": True,
    "mcc": True,
}
"""Validation metrics that rank members and drive greedy selection (``medens.ensemble.selection.METRICS``)
-> whether higher is better."""

EVALUATION_METRICS: dict[str, bool] = {
    **dict.fromkeys(
        (
            "accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "macro_f1", "precision_weighted",
            "recall_weighted", "f1_weighted", "mcc", "kappa", "auroc_micro", "auroc_macro", "auprc_micro",
            "auprc_macro",
        ),
        True,
    ),
    "brier": False,
    "ece": False,
    "classwise_ece": False,
    "adaptive_ece": False,
}
"""Named classification metrics of ``medens.evaluation.metrics.METRICS`` -> whether higher is better
(Brier score and the three ECEs are lower-better)."""

SEGMENTATION_GATE_METRICS: tuple[str, ...] = ("dice", "iou")
"""Metrics that can gate a segmentation system (both higher-better)."""


def canonical_name(name: str) -> str:
    """The canonical spelling of metric ``name``; an old spelling (:data:`ALIASES`) is mapped
    with a ``FutureWarning`` that names the canonical one. Unknown names pass through unchanged
    (the caller reports them against its own list)."""
    canonical = ALIASES.get(name)
    if canonical is None:
        return name
    warnings.warn(f"metric name {name!r} is deprecated; use {canonical!r}", FutureWarning, stacklevel=2)
    return canonical


def metric_value(metrics: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """``metrics[name]`` under the canonical name or any old spelling of it (artifacts written
    before the rename), without a warning; ``default`` when absent."""
    canonical = ALIASES.get(name, name)
    for key in (canonical, *(old for old, new in ALIASES.items() if new == canonical)):
        if key in metrics:
            return metrics[key]
    return default
