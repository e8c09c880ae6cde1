"""The stages of one experiment as plain functions over a run directory.

The Kubeflow components (``components/``) are thin wrappers around these, and
:func:`run_experiment` calls them in turn for a run on one machine. Run directory layout::

    <run>/spec.yaml
    <run>/data/                       SplitData (train/val/test .npz, dataset.json)
    <run>/members/<model>__<loss>/    model artifacts with predictions/{val,test}.npz
    <run>/ensembles/<name>/           ensemble artifacts with predictions/{val,test}.npz
    <run>/evaluation/                 metrics.json, report.html, report.md, figures
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from medens.config import ComponentSpec, ExperimentSpec
from medens.data.types import SplitData
from medens.storage.atomic import atomic_write_text
from medens.training.predictions import Predictions


def member_id(model: ComponentSpec, loss: ComponentSpec) -> str:
    return f"{model.key}__{loss.key}"


def stage_data(spec: ExperimentSpec, run_dir: str | os.PathLike) -> Path:
    """Build and save the dataset; write the spec beside it."""
    from medens.data import build_dataset

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    spec.save(run / "spec.yaml")
    return build_dataset(spec).save(run / "data")


def training_sets(spec: ExperimentSpec) -> list[str]:
    """``train``, plus ``train_crops`` (study 3's sampling-method model) when the spec asks for it."""
    return ["train", "train_crops"] if spec.task == "segmentation" and spec.data.sampling_method else ["train"]


def member_runs(spec: ExperimentSpec) -> list[tuple[str, ComponentSpec, ComponentSpec, str]]:
    """Every member to train: (id, model, loss, training set); ids of crop models end in ``__sampling``."""
    out = []
    for m, lo in spec.pairs():
        for train_on in training_sets(spec):
            suffix = "" if train_on == "train" else "__sampling"
            out.append((member_id(m, lo) + suffix, m, lo, train_on))
    return out


def stage_train(spec: ExperimentSpec, data_dir: str | os.PathLike, model: ComponentSpec, loss: ComponentSpec,
                out_dir: str | os.PathLike, *, train_on: str = "train", resume: bool = True,
                progress: bool | None = None) -> Path:
    """Train one (model, loss) pair and save its test predictions next to the validation ones.

    ``train_on="train_crops"`` trains on study 3's lesion-centred crops; validation and test are
    the full images either way, so both members of study 3's ensemble are scored alike.
    """
    from medens.training import fit, predict_split

    data = SplitData.load(data_dir)
    res = fit(model, loss, data, spec.training, out_dir, seed=spec.seed, resume=resume,
              normalize=spec.data.normalize, train_on=train_on, progress=progress)
    test_path = res.path / "predictions" / "test.npz"
    if not test_path.is_file():
        predict_split(res.path, data.test).save(test_path)
    return res.path


def _load_member_predictions(member_dirs: dict[str, Path], split: str) -> dict[str, Predictions]:
    return {mid: Predictions.load(Path(d) / "predictions" / f"{split}.npz") for mid, d in member_dirs.items()}


def stage_ensemble(spec: ExperimentSpec, member_dirs: dict[str, str | os.PathLike],
                   out_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                   progress: bool | None = None) -> dict[str, Path]:
    """Fit every ensemble of the spec; prediction-level ones on validation predictions only.

    For each ``top_k`` in the spec (capped at the number of members) and each method, the
    members are ranked by ``ensemble.rank_metric`` on validation; ensembles are fitted on their
    validation predictions and applied to the saved test predictions (no re-inference). With
    ``ensemble.model_level`` (and ``data_dir``), a feature-fusion model of the top-k members is
    trained too (study 1) and stored as an ensemble with one fused member.
    """
    from medens.ensemble import fit_ensemble, fit_seg_ensemble, rank_members
    from medens.ensemble.artifact import write_ensemble

    members = {mid: Path(d) for mid, d in member_dirs.items()}
    val = _load_member_predictions(members, "val")
    test = _load_member_predictions(members, "test")
    out = Path(out_dir)
    made: dict[str, Path] = {}
    if spec.task == "segmentation":
        if len(members) < 2:
            return made
        ids = list(members)
        for method in spec.ensemble.seg_methods:
            ens = fit_seg_ensemble(method, {m: val[m] for m in ids})
            made[method] = _save_ensemble(out / method, method, ens, {m: members[m] for m in ids}, val, test,
                                          write_ensemble)
        return made
    ranking = [mid for mid, _ in rank_members(val, metric=spec.ensemble.rank_metric)]
    ks = sorted({min(k, len(ranking)) for k in spec.ensemble.top_k if min(k, len(ranking)) >= 2})
    for k in ks:
        ids = ranking[:k]
        for method in spec.ensemble.methods:
            name = f"{method}-top{k}"
            ens = fit_ensemble(method, {m: val[m] for m in ids}, member_ids=ids)
            made[name] = _save_ensemble(out / name, name, ens, {m: members[m] for m in ids}, val, test,
                                        write_ensemble, ranking=ranking)
        if spec.ensemble.model_level and data_dir is not None:
            made[f"fusion-top{k}"] = _fusion(spec, data_dir, {m: members[m] for m in ids}, out / f"fusion-top{k}",
                                             write_ensemble, progress)
    return made


def _fusion(spec: ExperimentSpec, data_dir, members: dict[str, Path], path: Path, write_ensemble,
            progress: bool | None) -> Path:
    """Study 1's model-level ensemble: frozen members, 1x1 conv + pooling + dense head trained."""
    from medens.models.fusion import fit_fusion
    from medens.training import predict_split

    data = SplitData.load(data_dir)
    model_dir = path.parent / f".{path.name}-model"
    res = fit_fusion(list(members.values()), data, spec.training, model_dir, kind="feature", seed=spec.seed,
                     progress=progress, extra_manifest={"fused_members": list(members)})
    write_ensemble(path, name=path.name, member_dirs={"fused": res.path}, combiner=None,
                   gate_metrics=res.val_metrics, extra={"fused_members": list(members)})
    (path / "predictions").mkdir(parents=True, exist_ok=True)
    Predictions.load(res.path / "predictions" / "val.npz").save(path / "predictions" / "val.npz")
    predict_split(res.path, data.test).save(path / "predictions" / "test.npz")
    return path


def _save_ensemble(path: Path, name: str, ens: Any, members: dict[str, Path], val: dict, test: dict,
                   write_ensemble, ranking: list[str] | None = None) -> Path:
    ids = list(members)
    write_ensemble(path, name=name, member_dirs=members, combiner=ens.to_dict(),
                   gate_metrics=dict(getattr(ens, "validation_", {}) or {}),
                   extra={"member_ranking": ranking} if ranking else None)
    for split, preds in (("val", val), ("test", test)):
        first = preds[ids[0]]
        probs = ens.predict_proba([preds[m].probs.astype(np.float64) for m in ids])
        Predictions(probs=probs.astype(np.float16 if first.masks is not None else np.float32), ids=first.ids,
                    labels=first.labels, masks=first.masks, class_names=first.class_names
                    ).save(path / "predictions" / f"{split}.npz")
    return path


def run_experiment(spec: ExperimentSpec, run_dir: str | os.PathLike, *, progress: bool | None = None,
                   log=print) -> dict[str, Any]:
    """Every stage in turn on this machine: data, members, ensembles, evaluation and report."""
    from medens.evaluation.report import stage_evaluate

    run = Path(run_dir)
    t0 = time.perf_counter()
    data_dir = stage_data(spec, run)
    log(f"[data] {data_dir}")
    members = {}
    todo = member_runs(spec)
    for i, (mid, m, lo, train_on) in enumerate(todo, 1):
        t = time.perf_counter()
        members[mid] = stage_train(spec, data_dir, m, lo, run / "members" / mid, train_on=train_on, progress=progress)
        log(f"[train {i}/{len(todo)}] {mid} ({time.perf_counter() - t:.0f} s)")
    ensembles = stage_ensemble(spec, members, run / "ensembles", data_dir=data_dir, progress=progress)
    log(f"[ensemble] {', '.join(ensembles) or 'none'}")
    summary = stage_evaluate(spec, data_dir, members, ensembles, run / "evaluation")
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(run / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary
