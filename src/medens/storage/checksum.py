"""sha256 of files and directory trees (the manifests of artifacts and of the store)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checksums(directory: Path, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under ``directory`` (relative posix paths), except ``exclude`` and hidden files."""
    out = {}
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory).as_posix()
        if p.is_file() and rel not in exclude and not any(part.startswith(".") for part in Path(rel).parts):
            out[rel] = sha256_file(p)
    return out


def checksum_problems(directory: Path, files: dict[str, str], mismatch: str) -> list[str]:
    """One line per file of ``files`` that is missing under ``directory`` or whose sha256 differs."""
    problems = []
    for rel, digest in files.items():
        p = directory / rel
        if not p.is_file():
            problems.append(f"{rel} is missing")
        elif sha256_file(p) != digest:
            problems.append(f"{rel} {mismatch}")
    return problems
