"""The training stage: one member of the grid into one model artifact directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from medens.config import ComponentSpec, ExperimentSpec, ModelSpec
from medens.stages.data import dataset_lineage


def train_member(spec: ExperimentSpec, data_dir: str | os.PathLike, member: dict[str, Any] | str,
                 out_dir: str | os.PathLike, *, progress: bool | None = None) -> Path:
    """Train one entry of :func:`~medens.stages.training_grid`; save validation and test predictions.

    Resumes from ``out_dir/checkpoint.pt`` when present, so a retried task continues where the
    failed attempt stopped. ``model.json`` records the member id (``member_id``) and the
    dataset it was trained on (``lineage``: the source fingerprint). ``train_on="train_crops"``
    trains on study 3's lesion-centred crops; validation and test are the full images either
    way, so every member is scored alike.
    """
    from medens.data.types import SplitData
    from medens.training import fit, predict_split

    m = json.loads(member) if isinstance(member, str) else dict(member)
    data = SplitData.load(data_dir)
    model = ModelSpec.model_validate(m["model"])
    res = fit(ComponentSpec(name=model.name, params=model.params), ComponentSpec.model_validate(m["loss"]), data,
              model.training_for(spec.training),
              out_dir, seed=spec.seed, resume=True, normalize=spec.data.normalize, train_on=m.get("train_on", "train"),
              progress=progress, extra_manifest={"member_id": m["id"], "lineage": dataset_lineage(data_dir)})
    test_path = res.path / "predictions" / "test.npz"
    if not test_path.is_file():
        predict_split(res.path, data.test).save(test_path)
    return res.path


def member_dirs(paths: list[str | os.PathLike]) -> dict[str, Path]:
    """``member id -> directory`` for model artifacts (id from ``model.json``, else the folder name)."""
    from medens.models.artifact import read_manifest

    out: dict[str, Path] = {}
    for p in paths:
        d = Path(p)
        mid = read_manifest(d).get("member_id") or d.name
        if mid in out:
            raise ValueError(f"member {mid!r} appears twice: {out[mid]} and {d}")
        out[mid] = d
    return dict(sorted(out.items()))
