"""The ensemble stage: every ensemble of the spec from the members' saved predictions.

Prediction-level ensembles are fitted on validation predictions only and applied to the saved
test predictions (no re-inference); each also gets cross-fitted validation predictions
(``predictions/val_oof.npz``), the only honest validation score of something fitted on
validation, which selection uses. The model-level ensemble (study 1's feature fusion) is
trained on the training split. A system that cannot be built for this data (a method's
precondition, too few members) is skipped with its reason; the rest go on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medens.config import ExperimentSpec
from medens.data.types import SplitData
from medens.stages.data import dataset_lineage
from medens.stages.results import EnsembleIndex, MemberResult, SelectionBasis
from medens.stages.train import member_dirs

if TYPE_CHECKING:  # imported where used: torch and MONAI are not needed to read an ensemble index
    from medens.training.predictions import Predictions

INDEX = "ensembles.json"
OOF = "val_oof.npz"


def ensemble_dirs(directory: str | os.PathLike) -> dict[str, Path]:
    """``name -> directory`` of the ensemble artifacts directly under ``directory``."""
    d = Path(directory)
    if not d.is_dir():
        return {}
    return {p.name: p for p in sorted(d.iterdir()) if (p / "ensemble.json").is_file()}


def read_index(directory: str | os.PathLike) -> EnsembleIndex:
    """The :class:`EnsembleIndex` (``ensembles.json``) of an ensembles directory; empty when there is none."""
    p = Path(directory) / INDEX
    return EnsembleIndex.read(p) if p.is_file() else EnsembleIndex()


def _class_name(names: list[str] | None, c: int) -> str | int:
    return names[c] if names else c


def _load(members: dict[str, Path], split: str) -> dict[str, Predictions]:
    from medens.training.predictions import Predictions

    return {mid: Predictions.load(Path(d) / "predictions" / f"{split}.npz") for mid, d in members.items()}


def _reason(e: Exception) -> str:
    return f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)


def build_ensembles(spec: ExperimentSpec, data_dir: str | os.PathLike, member_paths: Sequence[str | os.PathLike],
                    out_dir: str | os.PathLike, *, progress: bool | None = None) -> dict[str, Path]:
    """Fit every ensemble of the spec into ``out_dir/<name>/`` and write ``out_dir/ensembles.json``.

    Classification: for each ``top_k`` (capped at the number of members) and each method, the
    members ranked by ``ensemble.rank_metric`` on validation; with ``ensemble.model_level``, a
    feature-fusion model of the top-k members too. Segmentation: each of ``seg_methods`` over
    all members (study 3: main and sampling-method networks). ``ensembles.json`` (an
    :class:`EnsembleIndex`) lists what was made, what was skipped and why, and how each
    ensemble's selection score is to be computed.
    """
    run = _EnsembleRun.start(spec, data_dir, member_paths, out_dir, progress)
    if len(run.members) < 2 or len(run.eligible) < 2:
        run.too_few()
    elif spec.task == "segmentation":
        run.segmentation()
    else:
        run.classification()
    return run.finish()


@dataclass
class _EnsembleRun:
    """One run of the ensemble stage: the members' saved predictions, and what is made or skipped."""

    spec: ExperimentSpec
    data_dir: Path
    out: Path
    members: dict[str, Path]
    val: dict[str, Predictions]
    test: dict[str, Predictions]
    cv: bool
    lineage: dict[str, Any]
    collapsed: dict[str, int]
    eligible: list[str]
    progress: bool | None = None
    made: dict[str, Path] = field(default_factory=dict)
    index: EnsembleIndex = field(default_factory=EnsembleIndex)

    @classmethod
    def start(cls, spec: ExperimentSpec, data_dir: str | os.PathLike, member_paths: Sequence[str | os.PathLike],
              out_dir: str | os.PathLike, progress: bool | None) -> _EnsembleRun:
        from medens.ensemble.selection import collapsed_members

        members = member_dirs(member_paths)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        # cross-validated members (medens.stages.cv): val.npz holds out-of-fold predictions over
        # train + val, and the test split is predicted only after selection
        cv = any(MemberResult.load(d).cv for d in members.values())
        val = _load(members, "val")
        collapsed = {} if spec.task == "segmentation" else collapsed_members(val)
        # members that collapsed onto one class never enter a top-k while enough others are left
        eligible = [m for m in val if m not in collapsed] or list(val)
        return cls(spec, Path(data_dir), out, members, val, {} if cv else _load(members, "test"), cv,
                   dataset_lineage(data_dir), collapsed, eligible, progress)

    def too_few(self) -> None:
        names = self.spec.ensemble.seg_methods if self.spec.task == "segmentation" else self.spec.ensemble.methods
        n = len(self.members)
        for method in names:
            self.index.skipped[method] = (
                f"needs at least 2 members, this run has {n}" if n < 2 else
                f"needs at least 2 members that did not collapse onto one class; only "
                f"{', '.join(self.eligible)} did not")

    def segmentation(self) -> None:
        from medens.ensemble import fit_seg_ensemble

        ids = list(self.members)
        for method in self.spec.ensemble.seg_methods:
            self.prediction_level(method, method, ids, partial(fit_seg_ensemble, method, {i: self.val[i] for i in ids}),
                                  None)

    def classification(self) -> None:
        from medens.ensemble import fit_ensemble, rank_members

        ens = self.spec.ensemble
        ranking = [mid for mid, _ in rank_members({m: self.val[m] for m in self.eligible}, metric=ens.rank_metric)]
        ks = sorted({min(k, len(ranking)) for k in ens.top_k if min(k, len(ranking)) >= 2})
        for k in ks:
            ids = ranking[:k]
            for method in ens.methods:
                self.prediction_level(
                    f"{method}-top{k}", method, ids,
                    partial(fit_ensemble, method, {i: self.val[i] for i in ids}, member_ids=ids), k,
                    member_ranking=ranking)
            if ens.model_level:
                self.model_level(k, ids)

    def prediction_level(self, name: str, method: str, ids: list[str], fit: Callable[[], Any], top_k: int | None,
                         **extra: Any) -> None:
        """Fit one prediction-level ensemble, save it, and its cross-fitted validation predictions."""
        from medens.ensemble.crossfit import DEFAULT_FOLDS, crossfit_predictions
        from medens.training.predictions import Predictions

        try:
            ens = fit()
        except (ValueError, RuntimeError) as e:
            self.index.skipped[name] = _reason(e)
            return
        path = self.made[name] = _save(self.out / name, name, ens, {m: self.members[m] for m in ids}, self.val,
                                       self.test, self.lineage, extra)
        try:
            oof = crossfit_predictions(method, {m: self.val[m] for m in (ids if top_k is None else self.eligible)},
                                       top_k=top_k, rank_metric=self.spec.ensemble.rank_metric, seed=self.spec.seed)
        except (ValueError, RuntimeError) as e:
            self.index.selection[name] = SelectionBasis(basis=None, reason=f"cross-fitting failed: {_reason(e)}")
            return
        first = self.val[ids[0]]
        Predictions(probs=oof, ids=first.ids, labels=first.labels, masks=first.masks,
                    class_names=first.class_names).save(path / "predictions" / OOF)
        basis = "out-of-fold" if self.cv else "validation"
        self.index.selection[name] = SelectionBasis(basis=f"{DEFAULT_FOLDS}-fold cross-fitted {basis} predictions",
                                                    folds=DEFAULT_FOLDS)

    def model_level(self, k: int, ids: list[str]) -> None:
        """The model-level ensemble of the top ``k`` (not under cross-validated selection)."""
        kind = self.spec.ensemble.model_level_kind
        name = f"fusion-top{k}" if kind == "feature" else f"{kind}-fusion-top{k}"
        if self.cv:
            self.index.skipped[name] = (
                "model-level ensembles are not built under cross-validated selection (their head trains on "
                "the training split, which the fold models share)")
            return
        try:
            self.made[name] = _fusion(self.spec, self.data_dir, {m: self.members[m] for m in ids}, self.out / name,
                                      self.lineage, self.progress, kind)
            self.index.selection[name] = SelectionBasis(
                basis="validation predictions (trained on the training split)")
        except (ValueError, RuntimeError) as e:
            self.index.skipped[name] = _reason(e)

    def finish(self) -> dict[str, Path]:
        """Write ``ensembles.json``; return what was made."""
        self.index.made = sorted(self.made)
        self.index.collapsed_members = {m: _class_name(self.val[m].class_names, c) for m, c in self.collapsed.items()}
        self.index.write(self.out / INDEX)
        return self.made


def _fusion(spec: ExperimentSpec, data_dir, members: dict[str, Path], path: Path, lineage: dict,
            progress: bool | None, kind: str = "feature") -> Path:
    """A model-level ensemble of frozen members with a trained head: ``feature`` (study 1: 1x1 conv
    + pooling + dense head) or ``embedding`` (study 4: concatenated embeddings, dense head)."""
    from medens.ensemble.artifact import write_ensemble
    from medens.training import predict_split
    from medens.training.fusion import fit_fusion
    from medens.training.predictions import Predictions

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
    from medens.training.predictions import Predictions

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
