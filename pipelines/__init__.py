"""Kubeflow pipelines of medens: classification, segmentation and retraining.

``python -m pipelines run|compile|submit|schedule`` (see ``pipelines/__main__.py``). The
pipelines take the experiment spec as YAML text, so a run is reproducible from the compiled
package and its parameters; presets are resolved when a run is submitted or started.
"""

from __future__ import annotations

from pipelines.classification import classification_pipeline
from pipelines.retraining import retraining_pipeline
from pipelines.segmentation import segmentation_pipeline

PIPELINES = {
    "classification": classification_pipeline,
    "segmentation": segmentation_pipeline,
    "retraining": retraining_pipeline,
}


def pipeline_for(task: str, kind: str = "auto"):
    """The pipeline function for ``kind``; ``auto`` picks by the spec's task."""
    if kind == "auto":
        kind = "segmentation" if task == "segmentation" else "classification"
    if kind not in PIPELINES:
        raise ValueError(f"unknown pipeline {kind!r}; expected auto, {', '.join(PIPELINES)}")
    return PIPELINES[kind]


__all__ = ["PIPELINES", "classification_pipeline", "pipeline_for", "retraining_pipeline", "segmentation_pipeline"]
