"""The training stage: one member of the grid into one model artifact directory."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medens.config import ComponentSpec, ExperimentSpec
from medens.stages.data import dataset_lineage
from medens.stages.results import GridEntry


def checkpoint_location(spec: ExperimentSpec, *, checkpoint_uri: str = "", store_uri: str = "",
                        model_name: str = "", run_id: str = "") -> str:
    """Where a run's training checkpoints go: ``checkpoint_uri`` when given, else
    ``<store_uri or spec.store.uri>/<model_name or spec.name>/checkpoints/<run_id>`` when a run id
    is given (the pipelines pass the KFP run's id), else ``""`` (no store checkpoints).

    One folder per run: a retried task of the same run finds its member's checkpoint there
    (``<location>/<member id>/epoch-NNNN``), a new run starts afresh.
    """
    if checkpoint_uri:
        return checkpoint_uri.rstrip("/")
    if not run_id:
        return ""
    if "/" in run_id or run_id.startswith("."):
        raise ValueError(f"run id {run_id!r} cannot name a checkpoint folder")
    return f"{(store_uri or spec.store.uri).rstrip('/')}/{model_name or spec.name}/checkpoints/{run_id}"


def train_member(spec: ExperimentSpec, data_dir: str | os.PathLike, member: GridEntry | dict[str, Any] | str,
                 out_dir: str | os.PathLike, *, progress: bool | None = None, checkpoint_uri: str = "",
                 store_endpoint: str | None = None, checkpoint_every: str | int | None = None) -> Path:
    """Train one entry of :func:`~medens.stages.training_grid` (a :class:`GridEntry`, its dict or its
    JSON); save validation and test predictions.

    Resumes from ``out_dir/checkpoint.pt`` when present. With ``checkpoint_uri`` (a local folder
    or ``s3://``, see :func:`checkpoint_location`) the checkpoint is also published to
    ``<checkpoint_uri>/<member id>`` after every epoch (``checkpoint_every``: ``"N"`` epochs or
    ``"Ms"`` seconds; default every epoch), and a task whose ``out_dir`` holds no checkpoint (a
    retried pod: the killed one never uploaded its output) resumes from the store's; a member
    whose artifact is already complete in ``out_dir`` is returned as is. ``model.json`` records
    the member id (``member_id``) and the dataset it was trained on (``lineage``: the source fingerprint). ``train_on="train_crops"``
    trains on study 3's lesion-centred crops; validation and test are the full images either
    way, so every member is scored alike.
    """
    from medens.data.types import SplitData
    from medens.training import fit, predict_split
    from medens.training.checkpoints import StoreCheckpoints, parse_frequency

    m = GridEntry.parse(member)
    data = SplitData.load(data_dir)
    model = m.model
    store = None
    if checkpoint_uri:
        every_epochs, every_seconds = parse_frequency(checkpoint_every)
        store = StoreCheckpoints(checkpoint_uri, m.id, endpoint=store_endpoint or spec.store.endpoint,
                                 every_epochs=every_epochs, every_seconds=every_seconds)
    res = fit(ComponentSpec(name=model.name, params=model.params), m.loss, data, model.training_for(spec.training),
              out_dir, seed=spec.seed, resume=True, normalize=spec.data.normalize, train_on=m.train_on,
              progress=progress, extra_manifest={"member_id": m.id, "lineage": dataset_lineage(data_dir)},
              checkpoint_store=store)
    test_path = res.path / "predictions" / "test.npz"
    if not test_path.is_file():
        predict_split(res.path, data.test).save(test_path)
    return res.path


def member_dirs(paths: Sequence[str | os.PathLike]) -> dict[str, Path]:
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
