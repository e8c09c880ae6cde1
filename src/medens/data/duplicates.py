"""The same image in two splits: byte-identical samples in train, val and test are a leak.

A copy of a test image in the training split lets a model score on test what it memorised in
training, and nothing in the figures shows it. The data stage hashes every sample (sha256 of each
file for the file sources, as the source fingerprint does; of each image's pixels, shape and dtype
for the in-memory sources: synthetic, MedMNIST) and refuses, by default, samples whose hash is in
more than one split (``data.allow_duplicates: true`` allows them). Copies inside one split are no
leak; they are counted and logged. What the check found goes into the dataset's ``info``
(``duplicates``) and the report.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from medens.data.types import Split
from medens.data.validate import DataProblems

__all__ = ["check_duplicates", "duplicate_notes", "sample_hashes"]

_log = logging.getLogger(__name__)
SHOWN = 5
"""How many duplicated images an error or the dataset info names."""


def sample_hashes(parts: dict[str, Split], roots: dict[str, Path] | None) -> tuple[dict[str, str], str]:
    """sha256 of every sample, by id, and what was hashed. Parts with a root (file sources) hash
    their files; the others each image's array."""
    from medens.storage.checksum import sha256_file

    out: dict[str, str] = {}
    files = bool(roots) and all(name in roots for name in parts)
    for name, part in parts.items():
        for i, sample_id in enumerate(part.ids):
            if files:
                out[sample_id] = sha256_file(roots[name] / sample_id)
            else:
                a = np.ascontiguousarray(part.images[i])
                out[sample_id] = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()
    return out, "sha256 of every file" if files else "sha256 of every image's pixels"


def check_duplicates(splits: dict[str, Split], hashes: dict[str, str], what: str, *, allow: bool,
                     where: str) -> dict[str, Any]:
    """Find samples with the same hash in two splits (a leak) or in one (counted).

    Args:
        splits: the final splits (``train``, ``val``, ``test``), before any over-sampling.
        hashes: sample id -> hash (:func:`sample_hashes` of the pool the splits came from).
        what: what was hashed, for the record.
        allow: ``data.allow_duplicates``: record duplicates across splits instead of refusing them.
        where: the data source, for the error.

    Returns:
        The record for the dataset's ``info``: ``checked``, ``across_splits`` (the number of
        images found in more than one split), ``within_splits`` (per split, the copies beyond the
        first), ``allowed``, and up to five ``examples`` (each the ids with the split they are in).

    Raises:
        ValueError: images in more than one split and ``allow`` is false, naming the first few.
    """
    by_hash: dict[str, list[tuple[str, str]]] = {}
    for name, part in splits.items():
        for sample_id in part.ids:
            by_hash.setdefault(hashes[sample_id], []).append((name, sample_id))
    across = [items for items in by_hash.values() if len({s for s, _ in items}) > 1]
    within = {name: 0 for name in splits}
    for items in by_hash.values():
        for name in {s for s, _ in items}:
            within[name] += sum(1 for s, _ in items if s == name) - 1
    examples = [" = ".join(f"{i} ({s})" for s, i in items) for items in across[:SHOWN]]
    if across and not allow:
        more = f"; and {len(across) - SHOWN} more" if len(across) > SHOWN else ""
        problems = DataProblems(where)
        problems.add(f"the same image in two splits: {len(across)} image(s) are byte-identical in more than one "
                     f"split ({what}): {'; '.join(examples)}{more}. A model tested on copies of its training "
                     f"images scores what it memorised: remove the copies, or set data.allow_duplicates: true")
        problems.raise_if_any()
    copies = {s: n for s, n in within.items() if n}
    if copies:
        _log.warning("byte-identical images inside one split (not a leak): %s",
                     ", ".join(f"{n} extra cop{'y' if n == 1 else 'ies'} in {s}" for s, n in copies.items()))
    record: dict[str, Any] = {"checked": what, "across_splits": len(across), "within_splits": within,
                              "allowed": allow}
    if across:
        record["examples"] = examples
    return record


def duplicate_notes(info: dict[str, Any]) -> list[str]:
    """The report's line on the duplicate check (none for a dataset built before it existed)."""
    d = info.get("duplicates")
    if not d:
        return []
    within = sum(d.get("within_splits", {}).values())
    inside = f"; {within} extra copies inside a split (not a leak)" if within else ""
    if not d["across_splits"]:
        return [f"Duplicate check ({d['checked']}): no image is in two splits{inside}."]
    return [f"Duplicate check ({d['checked']}): {d['across_splits']} image(s) are byte-identical in more than one "
            f"split, allowed by data.allow_duplicates (test figures may be optimistic){inside}."]
