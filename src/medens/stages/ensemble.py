"""The ensemble stage: every ensemble of the spec from the members' saved predictions.

Prediction-level ensembles are fitted on validation predictions only and applied to the saved
test predictions (no re-inference); each also gets cross-fitted validation predictions
(``predictions/val_oof.npz``), the only honest validation score of something fitted on
validation, which selection uses. The model-level ensemble (study 1's feature fusion) is
trained on the training split. A system that cannot be built for this data (a method's
precondition, too few members) is skipped with its reason; the rest go on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from medens.config import ExperimentSpec
from medens.data.types import SplitData
from medens.stages.data import dataset_lineage
from medens.stages.train import member_dirs
from medens.storage.atomic import atomic_write_text
from medens.training.predictions import Predictions

INDEX = "ensembles.json"
OOF = "val_oof.npz"


def ensemble_dirs(directory: str | os.PathLike) -> dict[str, Path]:
    """``name -> directory`` of the ensemble artifacts directly under ``directory``."""
    d = Path(directory)
    if not d.is_dir():
        return {}
    return {p.name: p for p in sorted(d.iterdir()) if (p / "ensemble.json").is_file()}


def read_index(directory: str | os.PathLike) -> dict[str, Any]:
    """``{"made": [...], "skipped": {name: reason}, "selection": {name: {...}}}`` of an ensembles directory."""
    p = Path(directory) / INDEX
    return json.loads(p.read_text()) if p.is_file() else {"made": [], "skipped": {}, "selection": {}}


def _load(members: dict[str, Path], split: str) -> dict[str, Predictions]:
    return {mid: Predictions.load(Path(d) / "predictions" / f"{split}.npz") for mid, d in members.items()}


def _reason(e: Exception) -> str:
    return f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)


def build_ensembles(spec: ExperimentSpec, data_dir: str | os.PathLike, member_paths: list[str | os.PathLike],
                    out_dir: str | os.PathLike, *, progress: bool | None = None) -> dict[str, Path]:
    """Fit every ensemble of the spec into ``out_dir/<name>/`` and write ``out_dir/ensembles.json``.

    Classification: for each ``top_k`` (capped at the number of members) and each method, the
    members ranked by ``ensemble.rank_metric`` on validation; with ``ensemble.model_level``, a
    feature-fusion model of the top-k members too. Segmentation: each of ``seg_methods`` over
    all members (study 3: main and sampling-method networks). ``ensembles.json`` lists what was
    made, what was skipped and why, and how each ensemble's selection score is to be computed.
    """
    from medens.ensemble import fit_ensemble, fit_seg_ensemble, rank_members
    from medens.ensemble.crossfit import DEFAULT_FOLDS, crossfit_predictions
    from medens.ensemble.selection import collapsed_members

    members = member_dirs(member_paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # cross-validated members (medens.stages.cv): val.npz holds out-of-fold predictions over
    # train + val, and the test split is predicted only after selection
    cv = any(json.loads((d / "model.json").read_text()).get("cv") for d in members.values())
    val = _load(members, "val")
    test = {} if cv else _load(members, "test")
    basis = "out-of-fold" if cv else "validation"
    lineage = dataset_lineage(data_dir)
    made: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    selection: dict[str, dict[str, Any]] = {}
    collapsed = {} if spec.task == "segmentation" else collapsed_members(val)
    # members that collapsed onto one class never enter a top-k while enough others are left
    eligible = [m for m in val if m not in collapsed] or list(val)

    def prediction_level(name: str, method: str, ids: list[str], fit, top_k: int | None, **extra) -> None:
        try:
            ens = fit()
        except (ValueError, RuntimeError) as e:
            skipped[name] = _reason(e)
            return
        made[name] = _save(out / name, name, ens, {m: members[m] for m in ids}, val, test, lineage, extra)
        try:
            oof = crossfit_predictions(method, {m: val[m] for m in (ids if top_k is None else eligible)}, top_k=top_k,
                                       rank_metric=spec.ensemble.rank_metric, seed=spec.seed)
        except (ValueError, RuntimeError) as e:
            selection[name] = {"basis": None, "reason": f"cross-fitting failed: {_reason(e)}"}
            return
        first = val[ids[0]]
        Predictions(probs=oof, ids=first.ids, labels=first.labels, masks=first.masks,
                    class_names=first.class_names).save(made[name] / "predictions" / OOF)
        selection[name] = {"basis": f"{DEFAULT_FOLDS}-fold cross-fitted {basis} predictions", "folds": DEFAULT_FOLDS}

    if len(members) < 2 or len(eligible) < 2:
        names = spec.ensemble.seg_methods if spec.task == "segmentation" else spec.ensemble.methods
        for method in names:
            skipped[method] = (f"needs at least 2 members, this run has {len(members)}" if len(members) < 2 else
                               f"needs at least 2 members that did not collapse onto one class; only "
                               f"{', '.join(eligible)} did not")
    elif spec.task == "segmentation":
        ids = list(members)
        for method in spec.ensemble.seg_methods:
            prediction_level(method, method, ids, lambda m=method: fit_seg_ensemble(m, {i: val[i] for i in ids}), None)
    else:
        ranking = [mid for mid, _ in rank_members({m: val[m] for m in eligible}, metric=spec.ensemble.rank_metric)]
        ks = sorted({min(k, len(ranking)) for k in spec.ensemble.top_k if min(k, len(ranking)) >= 2})
        for k in ks:
            ids = ranking[:k]
            for method in spec.ensemble.methods:
                prediction_level(f"{method}-top{k}", method, ids,
                                 lambda m=method, ids=ids: fit_ensemble(m, {i: val[i] for i in ids}, member_ids=ids),
                                 k, member_ranking=ranking)
            if spec.ensemble.model_level and cv:
                kind = spec.ensemble.model_level_kind
                skipped[f"fusion-top{k}" if kind == "feature" else f"{kind}-fusion-top{k}"] = (
                    "model-level ensembles are not built under cross-validated selection (their head trains on "
                    "the training split, which the fold models share)")
            elif spec.ensemble.model_level:
                kind = spec.ensemble.model_level_kind
                name = f"fusion-top{k}" if kind == "feature" else f"{kind}-fusion-top{k}"
                try:
                    made[name] = _fusion(spec, data_dir, {m: members[m] for m in ids}, out / name, lineage, progress,
                                         kind)
                    selection[name] = {"basis": "validation predictions (trained on the training split)"}
                except (ValueError, RuntimeError) as e:
                    skipped[name] = _reason(e)
    atomic_write_text(out / INDEX, json.dumps({"made": sorted(made), "skipped": skipped, "selection": selection,
                                               "collapsed_members": {m: val[m].class_names[c] if val[m].class_names
                                                                     else c for m, c in collapsed.items()}},
                                              indent=2))
    return made


def _fusion(spec: ExperimentSpec, data_dir, members: dict[str, Path], path: Path, lineage: dict,
            progress: bool | None, kind: str = "feature") -> Path:
    """A model-level ensemble of frozen members with a trained head: ``feature`` (study 1: 1x1 conv
    + pooling + dense head) or ``embedding`` (study 4: concatenated embeddings, dense head)."""
    from medens.ensemble.artifact import write_ensemble
    from medens.training import predict_split
    from medens.training.fusion import fit_fusion

    data = SplitData.load(data_dir)
    model_dir = path.parent / f".{path.name}-model"
    res = fit_fusion(list(members.values()), data, spec.training, model_dir, kind=kind, seed=spec.seed,
                     progress=progress, extra_manifest={"fused_members": list(members), "lineage": lineage})
    write_ensemble(path, name=path.name, member_dirs={"fused": res.path}, combiner=None,
                   gate_metrics=res.val_metrics, extra={"fused_members": list(members), "lineage": lineage})
    (path / "predictions").mkdir(parents=True, exist_ok=True)
    Predictions.load(res.path / "predictions" / "val.npz").save(path / "predictions" / "val.npz")
    predict_split(res.path, data.test).save(path / "predictions" / "test.npz")
    return path


def _save(path: Path, name: str, ens: Any, members: dict[str, Path], val: dict, test: dict, lineage: dict,
          extra: dict) -> Path:
    from medens.ensemble.artifact import write_ensemble

    ids = list(members)
    write_ensemble(path, name=name, member_dirs=members, combiner=ens.to_dict(),
                   gate_metrics=dict(getattr(ens, "validation_", {}) or {}), extra={**extra, "lineage": lineage})
    for split, preds in (("val", val), ("test", test)):
        if not preds:  # cross-validated members: test predictions come after selection
            continue
        first = preds[ids[0]]
        dtype = np.float32 if first.masks is not None else np.float64
        probs = ens.predict_proba([preds[m].probs.astype(dtype) for m in ids])
        # float32 maps (not the members' float16): the evaluated argmax is the ensemble's own mask
        Predictions(probs=probs.astype(np.float32), ids=first.ids, labels=first.labels, masks=first.masks,
                    class_names=first.class_names).save(path / "predictions" / f"{split}.npz")
    return path
