"""Data validation: every problem found in one ``ValueError``, with file names or indices."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

MAX_LISTED = 20


class DataProblems:
    """Collects problems and raises them together."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.items: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(message)

    def extend(self, messages: Sequence[str]) -> None:
        self.items.extend(messages)

    def raise_if_any(self) -> None:
        if not self.items:
            return
        shown = self.items[:MAX_LISTED]
        more = len(self.items) - len(shown)
        text = "\n  ".join(shown) + (f"\n  ... and {more} more" if more else "")
        n = len(self.items)
        raise ValueError(f"invalid data in {self.where} ({n} problem{'s' if n != 1 else ''}):\n  {text}")


def _index_list(idx: np.ndarray, ids: Sequence[str] | None) -> str:
    idx = np.asarray(idx)
    names = [ids[i] for i in idx[:5]] if ids is not None else [str(i) for i in idx[:5]]
    more = f" and {idx.size - 5} more" if idx.size > 5 else ""
    return ", ".join(names) + more


def check_arrays(
    images: np.ndarray,
    *,
    ids: Sequence[str] | None = None,
    labels: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    split: str = "",
    require_all_classes: bool = False,
) -> list[str]:
    """Problems in one split's arrays (empty list when clean).

    Checks: image rank, NaN or inf pixels, image/mask shape mismatch, labels or mask values
    outside the class list, duplicate ids, and (optionally) classes with no sample.
    """
    p = f"{split}: " if split else ""
    problems: list[str] = []
    from medens.data.filearray import FileArray

    if not isinstance(images, FileArray):  # on disk: uint8 rows of a known shape, nothing to scan
        images = np.asarray(images)
    n = len(images)
    if images.ndim != 4:
        problems.append(f"{p}images must have shape (N, H, W, C), got {tuple(images.shape)}")
    if np.issubdtype(images.dtype, np.floating):
        bad = ~np.isfinite(images.reshape(n, -1)).all(axis=1) if n else np.zeros(0, bool)
        if bad.any():
            problems.append(f"{p}NaN or inf pixels in {bad.sum()} image(s): {_index_list(np.flatnonzero(bad), ids)}")
    if ids is not None:
        if len(ids) != n:
            problems.append(f"{p}{len(ids)} ids for {n} images")
        dupes = [i for i, c in Counter(ids).items() if c > 1]
        if dupes:
            problems.append(f"{p}duplicate ids: {', '.join(sorted(map(str, dupes))[:10])}")
    k = len(class_names) if class_names is not None else None
    if labels is not None:
        y = np.asarray(labels)
        if y.shape != (n,):
            problems.append(f"{p}labels shape {tuple(y.shape)} does not match {n} images")
        elif k is not None:
            out = np.flatnonzero((y < 0) | (y >= k))
            if out.size:
                problems.append(
                    f"{p}label(s) outside the {k} classes [0, {k}) at {_index_list(out, ids)} (values {sorted(set(y[out].tolist()))[:10]})"
                )
            elif require_all_classes:
                counts = np.bincount(y.astype(np.int64), minlength=k)
                for c in np.flatnonzero(counts == 0):
                    problems.append(f"{p}class {class_names[c]!r} has no samples")
    if masks is not None:
        from medens.data.filearray import iter_rows

        m = masks if isinstance(masks, FileArray) else np.asarray(masks)  # on disk: checked in row chunks
        if images.ndim == 4 and tuple(m.shape) != tuple(images.shape[:3]):
            problems.append(f"{p}masks shape {tuple(m.shape)} does not match images {tuple(images.shape[:3])}")
        elif k is not None and len(m):
            bad, start = [], 0
            for c in iter_rows(m, 16 * 2**20):
                bad += (start + np.flatnonzero(((c < 0) | (c >= k)).reshape(len(c), -1).any(axis=1))).tolist()
                start += len(c)
            if bad:
                problems.append(f"{p}mask value(s) outside the {k} classes in {_index_list(np.asarray(bad), ids)}")
    return problems
