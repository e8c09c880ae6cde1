"""The name and reader of an ensemble artifact's manifest, ``ensemble.json``.

Kept apart from :mod:`medens.ensemble.artifact` (which loads members, and so torch) so that a
process that only registers or inspects an artifact reads it without importing torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ENSEMBLE_MANIFEST = "ensemble.json"


def read_ensemble_manifest(path: str | os.PathLike) -> dict:
    """The manifest of the ensemble artifact at ``path``; ``ValueError`` when it is not one."""
    p = Path(path) / ENSEMBLE_MANIFEST
    if not p.is_file():
        raise ValueError(f"{Path(path)} is not an ensemble artifact: {ENSEMBLE_MANIFEST} is missing")
    return json.loads(p.read_text())
