"""Ensembles built from saved member predictions, fitted on validation only (docs/methods.md section 5).

- ``prediction``: classification ensembles ``vote``, ``mean``, ``weighted``, ``greedy`` and
  ``stacking`` (registry ``ENSEMBLES``; ``fit_ensemble(method, val_predictions)``).
- ``selection``: rank members by a validation metric and keep the top k (study 1: k = 3 and 5).
- ``segmentation``: ``weighted`` (Dice-searched weights, study 3's 1.01/1.0 included),
  ``majority`` and ``intersection`` of probability maps (registry ``SEG_ENSEMBLES``).

Every fitted ensemble serialises to plain JSON with ``to_dict()`` and is rebuilt with
``from_dict()``; prediction then needs numpy only.
"""

from __future__ import annotations

from medens.ensemble.prediction import (
    ENSEMBLES,
    GreedyEnsemble,
    MeanEnsemble,
    PredictionEnsemble,
    StackingEnsemble,
    VoteEnsemble,
    WeightedEnsemble,
    build_ensemble,
    ensemble_options,
    fit_ensemble,
)
from medens.ensemble.segmentation import (
    SEG_ENSEMBLES,
    STUDY3_WEIGHTS,
    IntersectionSegEnsemble,
    MajoritySegEnsemble,
    SegmentationEnsemble,
    WeightedSegEnsemble,
    build_seg_ensemble,
    fit_seg_ensemble,
    study3_weights,
)
from medens.ensemble.selection import METRICS, check_aligned, metric_score, rank_members, top_k

__all__ = [
    "ENSEMBLES",
    "METRICS",
    "SEG_ENSEMBLES",
    "STUDY3_WEIGHTS",
    "GreedyEnsemble",
    "IntersectionSegEnsemble",
    "MajoritySegEnsemble",
    "MeanEnsemble",
    "PredictionEnsemble",
    "SegmentationEnsemble",
    "StackingEnsemble",
    "VoteEnsemble",
    "WeightedEnsemble",
    "WeightedSegEnsemble",
    "build_ensemble",
    "build_seg_ensemble",
    "check_aligned",
    "ensemble_options",
    "fit_ensemble",
    "fit_seg_ensemble",
    "metric_score",
    "rank_members",
    "study3_weights",
    "top_k",
]
