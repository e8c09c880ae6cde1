"""Fingerprints of a data source: what a dataset was built from, so that a cache or a registry
entry can tell new data from old at the same URI (docs/architecture.md section 3.1).

- a folder: every file's relative name, size and sha256 (hidden files skipped);
- a single file: its name, size and sha256;
- an S3/MinIO prefix: every object's relative name, size and ETag (no download);
- a generated (synthetic) source: the canonical JSON of what generates it.

Each gives ``{"kind", "uri", "n_files", "sha256"}``; ``sha256`` is the fingerprint proper.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medens.storage.checksum import sha256_file


def _digest(entries: Iterable[Any]) -> str:
    return hashlib.sha256(json.dumps(list(entries), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def listing_fingerprint(kind: str, uri: str, entries: Iterable[tuple[str, int, str]]) -> dict[str, Any]:
    """The fingerprint of ``(relative name, size, content tag)`` entries (order does not matter)."""
    rows = sorted((str(n), int(s), str(t)) for n, s, t in entries)
    return {"kind": kind, "uri": uri, "n_files": len(rows), "sha256": _digest(rows)}


def path_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """Names, sizes and sha256 of a folder's files (or of one file).

    Raises:
        ValueError: the path does not exist.
    """
    p = Path(path)
    if p.is_file():
        return listing_fingerprint("file", str(p), [(p.name, p.stat().st_size, sha256_file(p))])
    if not p.is_dir():
        raise ValueError(f"data path {p} does not exist")
    files = [f for f in sorted(p.rglob("*")) if f.is_file()
             and not any(part.startswith(".") for part in f.relative_to(p).parts)]
    return listing_fingerprint("folder", str(p), [(f.relative_to(p).as_posix(), f.stat().st_size, sha256_file(f))
                                                  for f in files])


def value_fingerprint(kind: str, value: Any) -> dict[str, Any]:
    """The fingerprint of a JSON-ready description (a generated data source)."""
    return {"kind": kind, "uri": "", "n_files": 0, "sha256": _digest([value])}
