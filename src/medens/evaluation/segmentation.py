"""Segmentation metrics: Dice, IoU, HD95, pixel sensitivity and precision per image and class
(docs/methods.md section 6). Dice is :func:`medens.metrics.dice`, the one definition the training
monitor and ensemble selection also use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medens import metrics as metric_defs


def _foreground(masks: Any, class_index: int, what: str) -> np.ndarray:
    m = np.asarray(masks)
    if m.dtype == bool:
        return m
    if np.issubdtype(m.dtype, np.floating):
        if not np.all(np.isfinite(m)) or np.any(m != np.round(m)):
            raise ValueError(
                f"{what} must be binary masks or integer label maps, got non-integer values "
                f"(dtype {m.dtype}, shape {m.shape}); threshold probabilities first"
            )
    elif not np.issubdtype(m.dtype, np.integer):
        raise ValueError(f"{what} must be binary masks or integer label maps, got dtype {m.dtype}")
    return m == class_index


def _spacing(spacing: float | Sequence[float] | None, dims: int) -> np.ndarray:
    if spacing is None:
        return np.ones(dims)
    s = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if s.size == 1:
        s = np.repeat(s, dims)
    if s.size != dims:
        raise ValueError(f"spacing must be a number or have {dims} entries (one per spatial axis), got {spacing!r}")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"spacing must be positive and finite, got {spacing!r}")
    return s


def _surface_coords(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    edges = mask & ~binary_erosion(mask)
    return np.argwhere(edges) * spacing


def _hd95(true: np.ndarray, pred: np.ndarray, spacing: np.ndarray) -> float:
    """Symmetric 95th-percentile Hausdorff distance between the mask surfaces (both non-empty).

    As MONAI's ``compute_hausdorff_distance(percentile=95)``: surfaces are the voxels removed by
    one binary erosion (cross-shaped structuring element, zero border); the 95th percentile
    (linear interpolation) of the pred->true and of the true->pred surface distances; the larger.
    """
    from scipy.spatial import cKDTree

    ct = _surface_coords(true, spacing)
    cp = _surface_coords(pred, spacing)
    d_pt = cKDTree(ct).query(cp, k=1)[0]
    d_tp = cKDTree(cp).query(ct, k=1)[0]
    return float(max(np.quantile(d_pt, 0.95), np.quantile(d_tp, 0.95)))


def _summary(values: list[float | None]) -> tuple[float | None, float | None]:
    defined = np.array([v for v in values if v is not None], dtype=np.float64)
    if defined.size == 0:
        return None, None
    return float(defined.mean()), float(np.median(defined))


_SEG_KEYS = ("dice", "iou", "hd95", "sensitivity", "precision")


def _binary_image(t: np.ndarray, p: np.ndarray, overlap: float, sp: np.ndarray) -> dict[str, Any]:
    """Overlap and boundary metrics of one image's binary masks (conventions: segmentation_metrics);
    ``overlap`` is their Dice, from :func:`medens.metrics.dice`."""
    nt, npred = int(t.sum()), int(p.sum())
    tp = int(np.logical_and(t, p).sum())
    if nt == 0 and npred == 0:
        iou, hd95 = 1.0, 0.0
    elif nt == 0 or npred == 0:
        iou, hd95 = 0.0, None
    else:
        iou, hd95 = tp / (nt + npred - tp), _hd95(t, p, sp)
    return {
        "dice": overlap,
        "iou": iou,
        "hd95": hd95,
        "sensitivity": tp / nt if nt else None,
        "precision": tp / npred if npred else None,
        "true_pixels": nt,
        "pred_pixels": npred,
    }


def _aggregate(per_image: list[dict[str, Any]]) -> dict[str, Any]:
    """Means and medians over the images' defined values, and how many images have no HD95."""
    out: dict[str, Any] = {}
    for key in _SEG_KEYS:
        out[key], out[f"{key}_median"] = _summary([r[key] for r in per_image])
    out["hd95_undefined"] = sum(r["hd95"] is None for r in per_image)
    return out


def _mean_over_classes(rows: list[dict[str, Any]], overlap: float) -> dict[str, Any]:
    """One image's metrics over its foreground classes: ``overlap`` (the Dice, the mean of the
    classes' Dice, given), and the mean of each other metric over the classes where it is defined."""
    out: dict[str, Any] = {"dice": overlap}
    for key in _SEG_KEYS[1:]:
        defined = [r[key] for r in rows if r[key] is not None]
        out[key] = float(np.mean(defined)) if defined else None
    out["true_pixels"] = sum(r["true_pixels"] for r in rows)
    out["pred_pixels"] = sum(r["pred_pixels"] for r in rows)
    return out


def _label_maps(t_arr: np.ndarray, p_arr: np.ndarray, class_index: int | None,
                n_classes: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Label maps and C (background included) to score: ``class_index`` -> that class against the
    rest as a binary mask; bool masks -> binary; integer maps -> classes ``0 .. C-1``."""
    if class_index is not None:
        return _foreground(t_arr, class_index, "masks_true"), _foreground(p_arr, class_index, "masks_pred"), 2
    _foreground(t_arr, 1, "masks_true"), _foreground(p_arr, 1, "masks_pred")  # validates the encoding
    t, p = t_arr.astype(np.int64), p_arr.astype(np.int64)
    if t.min() < 0 or p.min() < 0:
        raise ValueError(f"label maps must be non-negative, got minimum {min(t.min(), p.min())}")
    seen = int(max(t.max(), p.max())) + 1
    if n_classes is None:
        return t, p, max(2, seen)
    if seen > n_classes:
        raise ValueError(f"label maps hold class {seen - 1} but n_classes is {n_classes}")
    return t, p, int(n_classes)


def segmentation_metrics(
    masks_true: Any,
    masks_pred: Any,
    *,
    spacing: float | Sequence[float] | None = None,
    class_index: int | None = None,
    n_classes: int | None = None,
) -> dict[str, Any]:
    """Per-image, per-class and aggregated overlap and boundary metrics of segmentations.

    Dice (Dice 1945; :func:`medens.metrics.dice`, the definition the engine's epoch monitor and
    ensemble selection use), IoU (Jaccard), HD95 (95th-percentile symmetric Hausdorff distance,
    as in MONAI's ``compute_hausdorff_distance(percentile=95)``; Huttenlocher et al., IEEE TPAMI
    1993), pixel sensitivity TP/(TP+FN) and precision TP/(TP+FP), for each foreground class
    ``c = 1 .. C-1`` of each image. An image's value is the mean over its foreground classes (over
    the classes where the metric is defined, for HD95, sensitivity and precision); with one
    foreground class (binary masks) that is the class's value.

    Empty-mask conventions per image and class (MONAI-compatible where MONAI defines a value):

    - class absent from both masks: dice 1, iou 1 (MONAI ``DiceMetric``/``compute_iou`` with
      ``ignore_empty=False``), hd95 0 (perfect agreement; MONAI returns NaN here);
    - class absent from exactly one mask: dice 0, iou 0, hd95 undefined -> None (MONAI returns
      NaN/inf), left out of the means and medians and counted in ``hd95_undefined``;
    - sensitivity is None when the true mask is empty and precision is None when the predicted
      mask is empty (0/0); aggregates run over the defined values.

    Args:
        masks_true: ground truth, shape (N, H, W) or (N, H, W, D); bool masks (foreground True) or
            integer label maps (0 background, 1 .. C-1 foreground classes).
        masks_pred: predictions, same shape and encoding.
        spacing: pixel/voxel size, a number or one per spatial axis; HD95 is in these units
            (pixels when None).
        class_index: score only this class, against all others as background (a binary view).
        n_classes: C, background included (the probability maps' K); default: the largest label
            in either mask + 1, at least 2.

    Returns:
        ``{"per_image": [{"dice", "iou", "hd95", "sensitivity", "precision", "true_pixels",
        "pred_pixels"}, ...], "dice", "iou", "hd95", "sensitivity", "precision" (means over
        defined values), the same with a ``_median`` suffix, "hd95_undefined", "per_class"
        (foreground class "1" .. "C-1" -> the same aggregates of that class alone), "n"}``.
        ``dice`` is the mean over images of each image's mean over foreground classes.

    Raises:
        ValueError: for mismatched shapes, wrong dimensionality, non-integer or negative masks,
            labels >= ``n_classes``, or bad spacing.
    """
    t_arr = np.asarray(masks_true)
    p_arr = np.asarray(masks_pred)
    if t_arr.shape != p_arr.shape:
        raise ValueError(f"masks_true and masks_pred must have the same shape, got {t_arr.shape} and {p_arr.shape}")
    if t_arr.ndim not in (3, 4):
        raise ValueError(f"masks must have shape (N, H, W) or (N, H, W, D), got {t_arr.shape}")
    if t_arr.shape[0] == 0:
        raise ValueError(f"empty input: masks have shape {t_arr.shape}")
    true, pred, c = _label_maps(t_arr, p_arr, class_index, n_classes)
    sp = _spacing(spacing, t_arr.ndim - 1)
    dice = metric_defs.dice(true, pred, n_classes=c)
    by_class = {k: [_binary_image(t == k, p == k, float(dice[i, k - 1]), sp) for i, (t, p) in enumerate(zip(true, pred))]
                for k in range(1, c)}
    if c == 2:
        per_image = by_class[1]
    else:
        per_image = [_mean_over_classes([by_class[k][i] for k in by_class], float(dice[i].mean()))
                     for i in range(len(true))]
    out: dict[str, Any] = {"per_image": per_image, **_aggregate(per_image)}
    out["per_class"] = {str(k): _aggregate(rows) for k, rows in by_class.items()}
    out["n"] = len(per_image)
    return out
