"""Names and directions of the named metrics, at the bottom layer of medens.

``medens.config`` refuses unknown ranking and gate metrics when a spec is loaded, before any
training; it may not import ``medens.ensemble`` or ``medens.evaluation`` (docs/architecture.md section 2.2), so
the names live here and the implementations derive from them: ``medens.ensemble.selection`` and
``medens.evaluation.metrics`` take each metric's direction from these tables (a metric missing here
fails at import), and tests check that the name sets agree.
"""

from __future__ import annotations

__all__ = ["EVALUATION_METRICS", "RANKING_METRICS", "SEGMENTATION_GATE_METRICS"]

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
            "accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "precision_weighted",
            "recall_weighted", "f1_weighted", "mcc", "kappa", "auroc_micro", "auroc_macro", "auprc_micro",
            "auprc_macro",
        ),
        True,
    ),
    "brier": False,
    "ece": False,
}
"""Named classification metrics of ``medens.evaluation.metrics.METRICS`` -> whether higher is better
(Brier score and ECE are lower-better)."""

SEGMENTATION_GATE_METRICS: tuple[str, ...] = ("dice", "iou")
"""Metrics that can gate a segmentation system (both higher-better)."""
