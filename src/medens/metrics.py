"""The one definition of each headline metric: accuracy, balanced accuracy, macro-F1, MCC and Dice.

This module sits in the bottom layer of medens (numpy only), so the training engine's epoch
monitor, member ranking and ensemble selection (``medens.ensemble``), the champion gate and the
evaluation report (``medens.evaluation``) all compute these metrics here and nowhere else.

Classification metrics are functions of confusion matrices ``cm`` with rows the true class and
columns the predicted class: one matrix ``(K, K)`` gives a 0-d array (``float()`` it), a stack
``(..., K, K)`` (for instance a bootstrap's weighted matrices ``(B, K, K)``) gives one value per
matrix. Entries may be counts or non-negative weights. Conventions, as scikit-learn's defaults:

- accuracy: correct predictions over all samples;
- balanced accuracy: mean recall over the classes present in the truth (``balanced_accuracy_score``);
- macro-F1: mean of the per-class F1 = 2 TP / (2 TP + FP + FN) over the classes present in the
  truth or the predictions, i.e. where F1 is defined (``f1_score(average="macro")``); a class
  absent from both is left out rather than counted as 0;
- MCC: the multi-class Matthews correlation coefficient (Matthews 1975; Gorodkin 2004), 0 when
  undefined (``matthews_corrcoef``).

Dice (Dice 1945) of integer label maps is computed per image and per foreground class
``c = 1 .. C-1`` as ``2 |T_c n P_c| / (|T_c| + |P_c|)``; **a class absent from both the truth
and the prediction of an image scores 1** (perfect agreement; MONAI's ``DiceMetric`` with
``ignore_empty=False``). The Dice of a set of images is the mean over foreground classes per
image, averaged over images, which is the mean of :func:`dice`'s ``(N, C - 1)`` matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "accuracy",
    "balanced_accuracy",
    "confusion_matrix",
    "dice",
    "f1_per_class",
    "macro_f1",
    "mcc",
    "safe_div",
]


def safe_div(num: Any, den: Any, fill: float = 0.0) -> np.ndarray:
    """``num / den`` elementwise, ``fill`` where ``den == 0``."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, fill, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nanmean(x: np.ndarray) -> np.ndarray:
    """Mean over the last axis of the non-NaN entries (NaN where there are none), without warnings."""
    ok = ~np.isnan(x)
    return safe_div(np.where(ok, x, 0.0).sum(axis=-1), ok.sum(axis=-1), fill=np.nan)


def confusion_matrix(y_true: Any, y_pred: Any, *, n_classes: int) -> np.ndarray:
    """``C[i, j]`` = number of samples of true class ``i`` predicted as ``j`` (int64, K x K).

    Raises:
        ValueError: labels of different lengths or outside ``[0, n_classes)``.
    """
    t = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.size} and {p.size}")
    for what, v in (("y_true", t), ("y_pred", p)):
        if v.size and (v.min() < 0 or v.max() >= n_classes):
            raise ValueError(f"{what} labels must lie in [0, {n_classes}), got values in [{v.min()}, {v.max()}]")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _counts(cm: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, true counts, predicted counts) per class and the total, from ``(..., K, K)``."""
    c = np.asarray(cm, dtype=np.float64)
    if c.ndim < 2 or c.shape[-1] != c.shape[-2]:
        raise ValueError(f"confusion matrices must have shape (..., K, K), got {c.shape}")
    return np.diagonal(c, axis1=-2, axis2=-1), c.sum(axis=-1), c.sum(axis=-2), c.sum(axis=(-2, -1))


def accuracy(cm: Any) -> np.ndarray:
    """Fraction of correct predictions (NaN for an empty matrix)."""
    tp, _, _, s = _counts(cm)
    return safe_div(tp.sum(axis=-1), s, fill=np.nan)


def balanced_accuracy(cm: Any) -> np.ndarray:
    """Mean recall over the classes present in the truth."""
    tp, t, _, _ = _counts(cm)
    return _nanmean(safe_div(tp, t, fill=np.nan))


def f1_per_class(cm: Any) -> np.ndarray:
    """F1 = 2 TP / (2 TP + FP + FN) per class, ``(..., K)``; 0 for a class absent from truth and
    predictions (scikit-learn's ``zero_division=0``)."""
    tp, t, p, _ = _counts(cm)
    return safe_div(2 * tp, t + p)


def macro_f1(cm: Any) -> np.ndarray:
    """Mean F1 over the classes present in the truth or the predictions (where F1 is defined)."""
    tp, t, p, _ = _counts(cm)
    return _nanmean(safe_div(2 * tp, t + p, fill=np.nan))


def mcc(cm: Any) -> np.ndarray:
    """Multi-class MCC (Gorodkin 2004), 0 when undefined; equals ``sklearn.metrics.matthews_corrcoef``.

    ``(c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t))`` with ``c`` correct predictions, ``s`` samples,
    ``t`` and ``p`` the true and predicted class counts.
    """
    tp, t, p, s = _counts(cm)
    cov_tp = tp.sum(axis=-1) * s - (t * p).sum(axis=-1)
    cov_pp = s**2 - (p * p).sum(axis=-1)
    cov_tt = s**2 - (t * t).sum(axis=-1)
    den = cov_pp * cov_tt
    return safe_div(cov_tp, np.sqrt(np.where(den > 0, den, 0.0)), fill=0.0)


def dice(masks_true: Any, masks_pred: Any, *, n_classes: int) -> np.ndarray:
    """Dice per image and foreground class, ``(N, n_classes - 1)``; 1 where a class is absent
    from both masks of an image.

    Args:
        masks_true: integer (or bool) label maps ``(N, ...)`` with values in ``[0, n_classes)``.
        masks_pred: predicted label maps, same shape (the argmax of probability maps).
        n_classes: C, background included (2 for a binary segmentation).

    The Dice of a set of images is ``dice(...).mean()``: the mean over foreground classes per
    image, averaged over images; column ``c - 1`` is class ``c``'s Dice per image.

    Raises:
        ValueError: shapes that differ, no images, or ``n_classes < 2``.
    """
    t_arr, p_arr = np.asarray(masks_true), np.asarray(masks_pred)
    if t_arr.shape != p_arr.shape:
        raise ValueError(f"masks_true {t_arr.shape} and masks_pred {p_arr.shape} differ in shape")
    if t_arr.ndim < 2 or t_arr.shape[0] == 0:
        raise ValueError(f"masks must have shape (N, H, W[, D]) with N >= 1, got {t_arr.shape}")
    if isinstance(n_classes, bool) or not isinstance(n_classes, int | np.integer) or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2 (background included), got {n_classes!r}")
    t = t_arr.reshape(len(t_arr), -1)
    p = p_arr.reshape(len(p_arr), -1)
    out = np.empty((len(t), int(n_classes) - 1))
    for c in range(1, int(n_classes)):
        tc, pc = t == c, p == c
        inter = np.count_nonzero(tc & pc, axis=1)
        size = np.count_nonzero(tc, axis=1) + np.count_nonzero(pc, axis=1)
        out[:, c - 1] = np.where(size > 0, 2.0 * inter / np.maximum(size, 1), 1.0)
    return out
