"""Evaluation: metrics (classification, segmentation, KFP), confidence intervals and paired tests.

Import-light: numpy only at import time; scipy and scikit-learn are imported inside the
functions that need them, and nothing here imports torch.
"""

from medens.evaluation.metrics import (
    HIGHER_IS_BETTER,
    METRICS,
    check_classification_inputs,
    classification_metrics,
    kfp_classification_metrics,
    metric_evaluator,
    metric_fn,
)
from medens.evaluation.segmentation import segmentation_metrics
from medens.evaluation.stats import (
    bootstrap_ci,
    delong,
    delong_ovr,
    holm,
    mcnemar,
    normal_ci,
    paired_bootstrap,
    resample_indices,
)

__all__ = [
    "HIGHER_IS_BETTER",
    "METRICS",
    "bootstrap_ci",
    "check_classification_inputs",
    "classification_metrics",
    "delong",
    "delong_ovr",
    "holm",
    "kfp_classification_metrics",
    "mcnemar",
    "metric_evaluator",
    "metric_fn",
    "normal_ci",
    "paired_bootstrap",
    "resample_indices",
    "segmentation_metrics",
]
