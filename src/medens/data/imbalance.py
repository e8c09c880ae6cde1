"""Class imbalance: measuring it, controlling it, and compensating for it.

Sources:
- Imbalance ratio rho = max_k n_k / min_k n_k (Buda, Maki, Mazurowski, Neural Networks 2018).
- ``resample_to_ratio``: the imbalance sweep of Pasupa, Vatathanavaro and Tungjitnob (focal loss
  for red-blood-cell morphology, their Table 2): keep the minority classes and drop majority
  samples, or keep the majority and drop minority samples, to reach a target distribution.
- Class-balanced weights from the effective number of samples (Cui et al., CVPR 2019).
- The segmentation sampling method of Roshan et al. (Computers in Biology and Medicine 2024,
  doi 10.1016/j.compbiomed.2024.108305): lesion-centred crops for a second ensemble member.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np


def _labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {tuple(y.shape)}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0):
        raise ValueError("labels must be non-negative integers")
    return y.astype(np.int64)


def class_counts(labels: Sequence[int] | np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Samples per class, length ``num_classes`` (default max label + 1)."""
    y = _labels(labels)
    k = num_classes if num_classes is not None else (int(y.max()) + 1 if y.size else 0)
    return np.bincount(y, minlength=k)


def imbalance_ratio(labels: Sequence[int] | np.ndarray, num_classes: int | None = None) -> float:
    """rho = max_k n_k / min_k n_k (Buda et al. 2018).

    With ``num_classes`` given, a class with no sample gives ``inf``.
    """
    n = class_counts(labels, num_classes)
    if n.size == 0:
        raise ValueError("imbalance_ratio needs at least one label")
    if n.min() == 0:
        return math.inf
    return float(n.max() / n.min())


def _round_half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


def target_counts(counts: Sequence[int], fractions: Sequence[float], tolerance: float = 0.01) -> list[int]:
    """Per-class counts reaching ``fractions`` by study 2's procedure (Pasupa et al., Table 2).

    The majority class is the one with the largest target fraction. First try to keep every
    minority sample and drop majority samples: the majority becomes
    ``round(sum(minority counts) * f_major / sum(minority fractions))``. If there are not enough
    majority samples for that, keep the majority and drop minority samples instead: minority
    class k becomes ``round(n_major * f_k / f_major)``. Counts already within ``tolerance`` of the
    target fractions are kept unchanged (the study calls its original 345/356/2691 "10:10:80").

    Args:
        counts: available samples per class.
        fractions: target fraction (or any proportional weights) per class.
        tolerance: largest absolute difference between current and target fractions that
            counts as already reached.

    Returns:
        The per-class counts to keep.
    """
    n = np.asarray(counts, dtype=np.int64)
    f = np.asarray(fractions, dtype=float)
    if n.shape != f.shape:
        raise ValueError(f"counts and fractions differ in length: {n.size} vs {f.size}")
    if (f <= 0).any() or not np.isfinite(f).all():
        raise ValueError(f"fractions must be positive and finite, got {f.tolist()}")
    if (n <= 0).any():
        raise ValueError(f"every class needs at least one sample, got counts {n.tolist()}")
    f = f / f.sum()
    if np.abs(n / n.sum() - f).max() <= tolerance:
        return n.tolist()
    major = int(np.argmax(f))
    minor = [k for k in range(n.size) if k != major]
    if not minor:
        return n.tolist()
    # Exact decimal arithmetic: 701 * 60 / 40 is 1051.5 and must round up, not to 1051.
    fr = [Fraction(repr(float(x))) for x in fractions]
    need_major = _round_half_up(Fraction(int(n[minor].sum())) * fr[major] / sum(fr[k] for k in minor))
    if need_major <= n[major]:
        out = n.copy()
        out[major] = need_major
        return out.tolist()
    out = n.copy()
    for k in minor:
        out[k] = min(int(n[k]), _round_half_up(Fraction(int(n[major])) * fr[k] / fr[major]))
    return out.tolist()


def resample_to_ratio(
    labels: Sequence[int] | np.ndarray,
    fractions: Sequence[float],
    seed: int = 0,
    tolerance: float = 0.01,
) -> np.ndarray:
    """Indices to keep so the label distribution reaches ``fractions`` (study 2 procedure).

    See :func:`target_counts` for the rule. Samples dropped within a class are chosen at
    random with ``seed``; the returned indices are sorted.
    """
    y = _labels(labels)
    counts = class_counts(y, len(fractions))
    if counts.size != len(fractions):
        raise ValueError(f"labels have {counts.size} classes but {len(fractions)} fractions were given")
    keep_n = target_counts(counts, fractions, tolerance=tolerance)
    rng = np.random.default_rng(seed)
    kept = []
    for k, m in enumerate(keep_n):
        idx = np.flatnonzero(y == k)
        kept.append(np.sort(rng.choice(idx, size=m, replace=False)) if m < idx.size else idx)
    return np.sort(np.concatenate(kept))


def undersample_indices(labels: Sequence[int] | np.ndarray, seed: int = 0) -> np.ndarray:
    """Drop samples of every class down to the smallest class count (seeded); sorted indices."""
    y = _labels(labels)
    counts = class_counts(y)
    present = counts[counts > 0]
    m = int(present.min())
    rng = np.random.default_rng(seed)
    kept = [rng.choice(np.flatnonzero(y == k), size=m, replace=False) for k in np.flatnonzero(counts)]
    return np.sort(np.concatenate(kept))


def oversample_indices(labels: Sequence[int] | np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Repeat minority samples until every class matches the majority count.

    Returns ``(indices, is_copy)``: all original indices once, then the drawn repeats, and a
    boolean mask marking the repeats (which :func:`oversample` augments).
    """
    y = _labels(labels)
    counts = class_counts(y)
    target = int(counts.max())
    rng = np.random.default_rng(seed)
    extra = []
    for k in np.flatnonzero(counts):
        idx = np.flatnonzero(y == k)
        if idx.size < target:
            extra.append(rng.choice(idx, size=target - idx.size, replace=True))
    extra_idx = np.concatenate(extra) if extra else np.empty(0, dtype=np.int64)
    indices = np.concatenate([np.arange(y.size), extra_idx]).astype(np.int64)
    is_copy = np.zeros(indices.size, dtype=bool)
    is_copy[y.size:] = True
    return indices, is_copy


def augment_image(image: np.ndarray, rng: np.random.Generator, max_degrees: float = 15.0) -> np.ndarray:
    """Random rotation within +-``max_degrees`` and random horizontal/vertical flips (study 2).

    ``image`` is ``(H, W, C)`` or ``(H, W)`` uint8 or uint16; the result has the same shape and dtype.
    """
    from scipy import ndimage

    angle = float(rng.uniform(-max_degrees, max_degrees))
    out = ndimage.rotate(image.astype(np.float32), angle, axes=(0, 1), reshape=False, order=1, mode="reflect")
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.5:
        out = out[::-1]
    return np.clip(np.rint(out), 0, np.iinfo(image.dtype).max).astype(image.dtype)


def oversample(images: np.ndarray, labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Over-sample to the majority count with augmented copies; returns images, labels, source indices."""
    indices, is_copy = oversample_indices(labels, seed=seed)
    rng = np.random.default_rng(seed + 1)
    out = images[indices].copy()
    for j in np.flatnonzero(is_copy):
        out[j] = augment_image(out[j], rng)
    return out, np.asarray(labels)[indices], indices


def balanced_class_weights(counts: Sequence[int]) -> np.ndarray:
    """w_k = N / (K n_k) (scikit-learn's "balanced"); a class with no sample raises."""
    n = np.asarray(counts, dtype=float)
    if n.size == 0 or (n <= 0).any():
        raise ValueError(f"balanced class weights need a positive count for every class, got {n.tolist()}")
    return n.sum() / (n.size * n)


def effective_number_weights(counts: Sequence[int], beta: float = 0.9999) -> np.ndarray:
    """Class-balanced weights (Cui et al. 2019): (1 - beta) / (1 - beta^n_k), rescaled to sum to K.

    ``beta = 0`` gives equal weights.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    n = np.asarray(counts, dtype=float)
    if n.size == 0 or (n <= 0).any():
        raise ValueError(f"class-balanced weights need a positive count for every class, got {n.tolist()}")
    w = (1.0 - beta) / (1.0 - np.power(beta, n))
    return w * n.size / w.sum()


def sample_weights(labels: Sequence[int] | np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Per-sample weights 1 / n_k, for a class-balanced ``WeightedRandomSampler``."""
    y = _labels(labels)
    counts = class_counts(y, num_classes).astype(float)
    return 1.0 / counts[y]


def weighted_sampler(labels: Sequence[int] | np.ndarray, seed: int = 0, num_samples: int | None = None):
    """A seeded ``torch.utils.data.WeightedRandomSampler`` drawing classes equally often."""
    import torch

    w = sample_weights(labels)
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.WeightedRandomSampler(
        torch.as_tensor(w, dtype=torch.double), num_samples=num_samples or len(w), replacement=True, generator=g
    )


def lesion_crop_box(mask: np.ndarray, min_ratio: float = 3.0, margins: Sequence[int] = (20, 10)) -> tuple | None:
    """The study 3 sampling-method crop for one mask, or ``None`` when it is not sampled.

    A mask with lesion pixels is kept when background / lesion pixels >= ``min_ratio``; the crop
    is the lesion bounding box plus a 20 px margin, or 10 px if 20 leaves the image, else no
    margin (Roshan et al. 2024). Returns ``(r0, r1, c0, c1)`` (end exclusive).
    """
    m = np.asarray(mask) > 0
    lesion = int(m.sum())
    if lesion == 0:
        return None
    if (m.size - lesion) / lesion < min_ratio:
        return None
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    h, w = m.shape
    for margin in (*margins, 0):
        if r0 - margin >= 0 and c0 - margin >= 0 and r1 + margin <= h and c1 + margin <= w:
            return (int(r0 - margin), int(r1 + margin), int(c0 - margin), int(c1 + margin))
    raise AssertionError("unreachable: margin 0 always fits")  # pragma: no cover


def lesion_crops(images: np.ndarray, masks: np.ndarray, size: int, ids: Sequence[str] | None = None,
                 min_ratio: float = 3.0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Apply the study 3 sampling method to a training split and resize crops to ``size``.

    Returns the second training set: images ``(M, size, size, C)``, masks ``(M, size, size)``
    and ids (``<id>:crop``).
    """
    from skimage.transform import resize

    out_img, out_mask, out_ids = [], [], []
    ids = list(ids) if ids is not None else [str(i) for i in range(len(images))]
    for img, mask, sid in zip(images, masks, ids):
        box = lesion_crop_box(mask, min_ratio=min_ratio)
        if box is None:
            continue
        r0, r1, c0, c1 = box
        ci = resize(img[r0:r1, c0:c1].astype(np.float32), (size, size, img.shape[-1]), order=1,
                    preserve_range=True, anti_aliasing=False)
        cm = resize(mask[r0:r1, c0:c1].astype(np.float32), (size, size), order=0, preserve_range=True,
                    anti_aliasing=False)
        out_img.append(np.clip(np.rint(ci), 0, np.iinfo(images.dtype).max).astype(images.dtype))
        out_mask.append(cm.astype(masks.dtype))
        out_ids.append(f"{sid}:crop")
    c = images.shape[-1]
    if not out_img:
        return np.empty((0, size, size, c), images.dtype), np.empty((0, size, size), masks.dtype), []
    return np.stack(out_img), np.stack(out_mask), out_ids
