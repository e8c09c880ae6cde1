"""Class collapse: a classifier whose predictions all fall in one class.

On a small long-tailed set a member trained for too few optimiser steps (or stopped early on a
noisy validation loss) can predict the majority class for every image: accuracy looks fine, MCC
is 0 and balanced accuracy 1/K (issue 22). Such a system is flagged (``model.json``, the CLI,
the report), never selected while another system is not, and never promoted by the champion gate.

The rule, one for members and ensembles: a system has collapsed when its argmax predictions on
validation take fewer than two distinct classes while the validation labels hold at least two.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def collapsed_class(probs: np.ndarray, labels: np.ndarray | None = None) -> int | None:
    """The one class a collapsed classifier predicts, else ``None``.

    Args:
        probs: ``(N, K)`` probabilities (or logits) of one system on validation images.
        labels: their true classes; when given and they hold fewer than two classes, predicting
            one class is no sign of collapse and ``None`` is returned.

    Returns:
        The index of the single predicted class when ``K >= 2`` and every prediction is that
        class; ``None`` otherwise (also for an empty split).
    """
    p = np.asarray(probs)
    if p.ndim != 2 or p.shape[1] < 2 or len(p) == 0:
        return None
    if labels is not None and len(np.unique(np.asarray(labels))) < 2:
        return None
    predicted = np.unique(p.argmax(1))
    return int(predicted[0]) if len(predicted) < 2 else None


def collapse_entry(probs: np.ndarray, labels: np.ndarray | None, class_names: Sequence[str] | None) -> dict:
    """``{"collapsed": bool}`` plus ``collapsed_class`` (its name, or index without names) and
    ``predicted_classes`` (how many distinct classes the predictions take): what ``model.json``,
    the evaluation's selection entries and the ensemble artifact record."""
    c = collapsed_class(probs, labels)
    out: dict = {"collapsed": c is not None,
                 "predicted_classes": int(len(np.unique(np.asarray(probs).argmax(1)))) if len(probs) else 0}
    if c is not None:
        out["collapsed_class"] = str(class_names[c]) if class_names else c
    return out


def collapse_warning(name: str, entry: dict, what: str = "member") -> str:
    """The one-line warning the CLI and the report print for a collapsed system."""
    return (f"WARNING: {what} {name} has collapsed: every validation image is predicted as class "
            f"{entry.get('collapsed_class')!r}; it is not selected while another system is not (more "
            "optimiser steps, training.min_steps, or class weights usually help)")
