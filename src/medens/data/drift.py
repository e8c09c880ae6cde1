"""Input drift: the pixel-intensity histogram of the training images and the population stability index.

The training reference is stored in every model artifact (``model.json`` ``reference``) and
carried into ensemble artifacts, so a server compares what it receives with what the model was
trained on without the training data. Intensities of every channel are pooled into ``BINS``
equal bins over [0, 256).

Population stability index (Siddiqi, Credit Risk Scorecards, 2006):
``PSI = sum_i (a_i - e_i) * ln(a_i / e_i)`` for expected (reference) fractions ``e`` and actual
fractions ``a``, each floored at ``EPS`` so empty bins stay finite. Usual reading: below 0.1 no
shift, 0.1 to 0.25 a moderate shift, above 0.25 a significant shift.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BINS = 32
EPS = 1e-4


COUNT_CHUNK_BYTES = 4 * 2**20
"""Pixels counted per chunk (bincount copies them to 8-byte integers: 32 MiB of scratch)."""


def intensity_counts(images: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Counts of pixel intensities (all channels pooled) in ``bins`` equal bins over [0, 256);
    16-bit pixels count in 8-bit units (their high byte), so a 16-bit model's reference and its
    uploads are binned alike."""
    from medens.data.filearray import FileArray, iter_rows

    if isinstance(images, FileArray) or (hasattr(images, "nbytes") and images.nbytes > COUNT_CHUNK_BYTES):
        # in row chunks: the images may be on disk, and bincount works on an 8-byte copy of its input
        return sum((intensity_counts(c, bins) for c in iter_rows(images, COUNT_CHUNK_BYTES)),
                   np.zeros(bins, dtype=np.int64))
    a = np.asarray(images)
    if a.size == 0:
        return np.zeros(bins, dtype=np.int64)
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    if a.dtype == np.uint8 and 256 % bins == 0:  # fast path: integer division into equal bins
        return np.bincount((a.reshape(-1) // (256 // bins)).astype(np.intp), minlength=bins).astype(np.int64)
    counts, _ = np.histogram(np.clip(a, 0, 255.999), bins=bins, range=(0.0, 256.0))
    return counts.astype(np.int64)


def intensity_reference(images: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    """The training reference stored in artifacts: bin edges' range, bin count and fractions."""
    counts = intensity_counts(images, bins)
    total = int(counts.sum())
    if total == 0:
        raise ValueError("cannot build an intensity reference from no pixels")
    return {"kind": "intensity_histogram", "bins": bins, "range": [0, 256],
            "fractions": (counts / total).round(8).tolist(), "pixels": total}


def psi(expected: np.ndarray, actual: np.ndarray, eps: float = EPS) -> float:
    """Population stability index of ``actual`` against ``expected`` (counts or fractions, same bins)."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1:
        raise ValueError(f"histograms must be 1-D with the same bins, got {e.shape} and {a.shape}")
    if e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("histograms must not be empty")
    e = np.maximum(e / e.sum(), eps)
    a = np.maximum(a / a.sum(), eps)
    return float(np.sum((a - e) * np.log(a / e)))
