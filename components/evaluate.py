"""Evaluation stage: a system selected on validation, every system scored on test once, the selection packaged."""

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components._image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def evaluate(spec: str, dataset: Input[Dataset], members: Input[list[Model]], ensembles: Input[Model],
             evaluation: Output[Artifact], best: Output[Model], metrics: Output[Metrics],
             classification_metrics: Output[ClassificationMetrics]) -> str:
    """Select a system on validation, score all systems on test; log the selected one's test metrics.

    Args:
        spec: the experiment spec as YAML text.
        dataset: the dataset directory.
        members: the trained members.
        ensembles: the directory of ensemble artifacts.
        evaluation: metrics.json, kfp_metrics.json, report.html, report.md, summary.json.
        best: the selected system (highest validation gate metric; ensembles fitted on validation
            scored out-of-fold) as a servable ensemble artifact.
        metrics: scalar test metrics of the selected system.
        classification_metrics: its confusion matrix and micro-average ROC curve
            (classification only; empty for segmentation).

    Returns:
        The name of the selected system.
    """
    import json
    import os

    from medens.stages import evaluate_systems, spec_from_text

    summary = evaluate_systems(spec_from_text(spec), dataset.path, [m.path for m in members], ensembles.path,
                               evaluation.path, best.path)
    for name, value in summary.best_metrics.items():
        metrics.log_metric(name, value)
    kfp_path = os.path.join(evaluation.path, "kfp_metrics.json")
    if os.path.isfile(kfp_path):
        kfp = json.load(open(kfp_path))
        classification_metrics.log_confusion_matrix(**kfp["confusion_matrix"])
        classification_metrics.log_roc_curve(**kfp["roc"])
    best.metadata.update({"system": summary.selected, "gate_metric": summary.gate_metric})
    print(f"selected: {summary.selected} (validation {summary.gate_metric} {summary.selection_score:.4f}); "
          f"reference: {summary.reference}")
    return summary.selected


@dsl.component(**COMPONENT_OPTIONS)
def evaluate_segmentation(spec: str, dataset: Input[Dataset], members: Input[list[Model]], ensembles: Input[Model],
                          evaluation: Output[Artifact], best: Output[Model], metrics: Output[Metrics]) -> str:
    """Score all segmentation systems on test (Dice, IoU, HD95, paired per-image tests).

    Args:
        spec: the experiment spec as YAML text.
        dataset: the dataset directory.
        members: the trained members (main and sampling-method models).
        ensembles: the directory of ensemble artifacts (weighted, majority, intersection).
        evaluation: metrics.json, report.html, report.md, summary.json.
        best: the selected system (highest validation Dice; ensembles scored out-of-fold) as a
            servable ensemble artifact.
        metrics: scalar test metrics of the selected system.

    Returns:
        The name of the selected system.
    """
    from medens.stages import evaluate_systems, spec_from_text

    summary = evaluate_systems(spec_from_text(spec), dataset.path, [m.path for m in members], ensembles.path,
                               evaluation.path, best.path)
    for name, value in summary.best_metrics.items():
        metrics.log_metric(name, value)
    best.metadata.update({"system": summary.selected, "gate_metric": summary.gate_metric})
    print(f"selected: {summary.selected} (validation {summary.gate_metric} {summary.selection_score:.4f}); "
          f"reference: {summary.reference}")
    return summary.selected
