"""Patient-level (group-disjoint) splits and the leakage check.

A hospital dataset has many images per patient; splitting by image puts the same patient in
training and test and inflates every test figure. ``data.group_by`` names the group of each
sample:

- ``pattern:<regex>``: searched in the sample id (for file sources, the file's path relative to
  the source root); the group is the first capture group, or the whole match without one. The
  Kermany release names its files ``person<N>_bacteria_<M>.jpeg``: ``pattern:(person\\d+)``.
  ``NORMAL`` files are ``IM-<patient>-<image>.jpeg`` or ``NORMAL2-IM-<patient>-<image>.jpeg``:
  ``pattern:(person\\d+|IM-\\d+)``.
- ``column:<name>``: a column of a CSV manifest (``data.source: csv``), e.g. ``column:patient_id``.
- ``dicom:<keyword>``: a tag of each DICOM file, e.g. ``dicom:PatientID`` (read from the header
  only; every sample must be a DICOM file with the tag).

With groups, every split the data stage makes is group-disjoint and as stratified as the groups
allow (scikit-learn's ``StratifiedGroupKFold``; one fold is held out, so a fraction ``f`` is
realised as ``1 / round(1 / f)`` of the groups' images, approximately). Splits a source gives
(a manifest's ``split`` column, ``train/`` and ``test/`` folders) are checked instead: a group in
two splits is refused with an error naming the groups.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medens.config import GROUP_BY_PREFIXES, parse_group_by

__all__ = ["GROUP_BY_PREFIXES", "group_split", "groups_from_dicom", "groups_from_pattern", "leakage_problem", "parse_group_by",
           "shared_groups"]

def groups_from_pattern(ids: Sequence[str], pattern: str) -> tuple[list[str | None], list[str]]:
    """The group of each id by ``pattern`` (``None`` where it does not match) and the problems."""
    rx = re.compile(pattern)
    out: list[str | None] = []
    missing = []
    for i in ids:
        m = rx.search(i)
        if m is None:
            out.append(None)
            missing.append(i)
        else:
            out.append(m.group(1) if rx.groups else m.group(0))
    problems = []
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        problems.append(f"missing group id: {len(missing)} sample(s) do not match data.group_by pattern "
                        f"{pattern!r}: {shown}")
    return out, problems


def _holdout(idx: np.ndarray, labels: np.ndarray | None, groups: np.ndarray, fraction: float,
             seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (kept, held out), the held-out part one fold of ``round(1 / fraction)``."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    n_splits = max(2, int(round(1.0 / fraction)))
    g = groups[idx]
    n_groups = len(set(g.tolist()))
    if n_groups < n_splits:
        raise ValueError(f"a group-disjoint split holding out {fraction:g} needs at least {n_splits} groups; "
                         f"the data have {n_groups}")
    if labels is None:
        cv = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        kept, held = next(cv.split(idx, groups=g))
    else:
        cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        kept, held = next(cv.split(idx, labels[idx], groups=g))
    return np.sort(idx[kept]), np.sort(idx[held])


def group_split(labels: np.ndarray | None, groups: Sequence[str], fractions: tuple[float, float, float],
                seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of a group-disjoint train/val/test split, stratified as far as the groups allow.

    Args:
        labels: class per sample, or ``None`` (segmentation: groups only).
        groups: group id per sample.
        fractions: train, val, test fractions (a zero val or test gives an empty split).
        seed: random seed.
    """
    g = np.asarray(groups, dtype=object)
    y = None if labels is None else np.asarray(labels)
    if y is not None and len(y) != len(g):
        raise ValueError(f"{len(g)} group ids for {len(y)} labels")
    f_train, f_val, f_test = (float(v) for v in fractions)
    idx = np.arange(len(g))
    empty = np.empty(0, np.int64)
    rest, test = (idx, empty) if f_test == 0 else _holdout(idx, y, g, f_test, seed)
    if f_val == 0:
        return rest, empty, test
    train, val = _holdout(rest, y, g, f_val / (f_train + f_val), seed + 1)
    return train, val, test


def shared_groups(split_groups: dict[str, Sequence[str]]) -> dict[str, list[str]]:
    """Groups found in more than one split: group -> the splits it is in (sorted)."""
    where: dict[str, set[str]] = {}
    for name, gs in split_groups.items():
        for grp in set(gs):
            where.setdefault(grp, set()).add(name)
    return {grp: sorted(s) for grp, s in sorted(where.items()) if len(s) > 1}


def leakage_problem(split_groups: dict[str, Sequence[str]], group_by: str) -> str | None:
    """The error line for groups that are in two splits, or ``None``."""
    shared = shared_groups(split_groups)
    if not shared:
        return None
    items = list(shared.items())
    shown = "; ".join(f"{grp} in {' and '.join(s)}" for grp, s in items[:10])
    more = f" and {len(items) - 10} more" if len(items) > 10 else ""
    return (f"group leakage: {len(items)} group(s) of data.group_by {group_by!r} are in more than one split "
            f"({shown}{more}); every image of a patient must be in one split")


def groups_from_dicom(paths: Sequence[Path], keyword: str) -> tuple[list[str | None], list[str]]:
    """The value of DICOM tag ``keyword`` in each file's header (``None`` where missing) and the problems."""
    import pydicom

    out: list[str | None] = []
    problems = []
    for p in paths:
        if not Path(p).is_file():
            out.append(None)
            problems.append(f"missing group id: file {p} is missing (cannot read {keyword} from it)")
            continue
        try:
            value = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=[keyword]).get(keyword)
        except Exception as e:
            out.append(None)
            problems.append(f"missing group id: {p} has no DICOM header to read {keyword} from ({type(e).__name__})")
            continue
        text = "" if value is None else str(value).strip()
        out.append(text or None)
        if not text:
            problems.append(f"missing group id: {p} has no {keyword}")
    return out, problems
