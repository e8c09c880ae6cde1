"""Ensemble artifacts of untrained (seeded, fixed) members, written in milliseconds: planted combiners."""

from __future__ import annotations

from pathlib import Path

import torch

from medens.data.transforms import InputSpec
from medens.ensemble.artifact import write_ensemble
from medens.ensemble.prediction import FORMAT
from medens.models import build
from medens.models.artifact import save_state_dict, write_manifest

CLASSES = ["a", "b", "c"]


def member_artifact(directory: Path, seed: int, *, arch: str = "compact_cnn", size: int = 32, channels: int = 3,
                    classes: list[str] = CLASSES) -> Path:
    """A model artifact of ``arch`` with seeded random weights (no training)."""
    torch.manual_seed(seed)
    model = build(arch, in_channels=channels, num_classes=len(classes))
    directory.mkdir(parents=True, exist_ok=True)
    save_state_dict(directory / "weights.pt", model.state_dict())
    kwargs = {k: v for k, v in model.build_kwargs.items() if k not in ("name", "task")}
    write_manifest(directory, {"architecture": {"name": arch, "kwargs": kwargs}, "task": "classification",
                               "class_names": list(classes), "input": InputSpec(channels, size).to_dict()})
    return directory


def planted_ensemble(root: Path, combiner: dict | None, seeds: tuple[int, ...] = (1, 2), **kw) -> Path:
    """An ensemble artifact of members ``m<seed>`` with the given combiner dict (``to_dict()`` form)."""
    members = {f"m{s}": member_artifact(root / "members-src" / f"m{s}", s, **kw) for s in seeds}
    return write_ensemble(root / "ens", name="planted", member_dirs=members, combiner=combiner)


def mean_combiner(ids: list[str]) -> dict:
    """A mean combiner of ``ids`` (equal weights, 3 classes) in ``to_dict()`` form."""
    return {"format": FORMAT, "kind": "prediction", "method": "mean", "member_ids": ids, "n_classes": 3,
            "class_names": None, "options": {}, "params": {"weights": [1 / len(ids)] * len(ids)}}
