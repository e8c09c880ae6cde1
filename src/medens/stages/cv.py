"""Cross-validated selection: when the validation split cannot rank systems, k-fold CV on train + val.

The rule (:func:`small_validation_reason`, :func:`tie_reason`): the validation split cannot rank
systems when

1. some class has fewer than :data:`SMALL_CLASS` (10) validation images (checked on the data
   stage's split, before anything trains), or
2. two or more systems tie at the top of the validation ranking on the gate metric (checked
   after the single-split members and ensembles are scored; a small validation split often
   scores several systems at macro-F1 1.0).

``evaluation.selection: validation`` never applies the rule (the single split, as before);
``cv`` always cross-validates; ``auto`` cross-validates when the rule holds.

Cross-validated selection, as nnU-Net picks its configuration (Isensee et al., Nature Methods
2021): train + validation are pooled and cut into ``evaluation.cv_folds`` stratified folds
(group-aware with ``data.group_by``: no group in two folds; oversampled copies always stay with
their original). Each (model, loss) of the grid trains ``k`` fold models, each on the other
folds, with its own held-out fold as the validation split the engine monitors (best epoch,
temperature). That makes a fold model's held-out predictions mildly optimistic for its own
epoch choice, but they are used only to rank after training, as nnU-Net's fold validation is.
Every train + val image gets exactly one out-of-fold (OOF) prediction, from the one fold model
that did not train on it. The OOF predictions replace the validation predictions everywhere
downstream: member ranking for top-k, fitting the prediction-level ensembles (and their
cross-fitted selection scores), and the selection itself, ties broken by the OOF log-loss. The
test split is predicted only after selection (:func:`complete_test_predictions`): a member's
test probabilities are the mean over its fold models. The served artifact of a CV-selected
system holds the fold models of each of its members (:func:`package_cv`).

A CV member's directory (``members/<id>/``) is fold 0's model artifact (its training curve and
Grad-CAM stand for the member in the report) whose ``model.json`` gains ``cv`` (the fold
directories, the rule that triggered) and whose ``predictions/val.npz`` holds the OOF
predictions over train + val; the fold artifacts are in ``members/<id>.folds/fold<i>/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from medens.config import ComponentSpec, ExperimentSpec, ModelSpec
from medens.stages.results import GridEntry

SMALL_CLASS = 10
CLASSICAL_MODEL = "hog_mlp"
RULE = (f"the validation split cannot rank systems when some class has fewer than {SMALL_CLASS} validation "
        "images or two or more systems tie at the top of the validation ranking")
_AUG = re.compile(r":aug\d+$")


# -- the rule ----------------------------------------------------------------------------------


def small_validation_reason(val_labels: np.ndarray, class_names: list[str]) -> str | None:
    """Rule 1: the classes with fewer than :data:`SMALL_CLASS` validation images, or ``None``."""
    counts = np.bincount(np.asarray(val_labels, dtype=np.int64), minlength=len(class_names))
    small = [f"{n} ({int(c)})" for n, c in zip(class_names, counts) if c < SMALL_CLASS]
    if not small:
        return None
    return f"fewer than {SMALL_CLASS} validation images in class {', '.join(small)}"


def tie_reason(scores: dict[str, float | None], collapsed: set[str] | frozenset[str] = frozenset(),
               metric: str = "score") -> str | None:
    """Rule 2: the systems that tie at the top of the ranking (exactly equal gate metric, among the
    scored systems that did not collapse), or ``None``."""
    scored = {n: float(s) for n, s in scores.items() if s is not None and n not in collapsed}
    if len(scored) < 2:
        return None
    top = max(scored.values())
    tied = sorted(n for n, s in scored.items() if s == top)
    if len(tied) < 2:
        return None
    shown = ", ".join(tied[:6]) + (f" and {len(tied) - 6} more" if len(tied) > 6 else "")
    return f"{len(tied)} systems tie at the top of the validation ranking ({metric} {top:.4g}): {shown}"


def plan_selection(spec: ExperimentSpec, data) -> dict[str, Any]:
    """The selection mode before training: ``{"requested", "mode", "reason", "folds", "rule"}``.

    ``mode`` is ``cv`` (requested, or ``auto`` with rule 1), ``validation``, or ``pending``
    (``auto`` without rule 1: the tie rule is checked after the single-split members are scored).
    """
    ev = spec.evaluation
    out = {"requested": ev.selection, "folds": ev.cv_folds, "rule": RULE}
    if ev.selection == "validation":
        small = small_validation_reason(data.val.labels, data.class_names) if spec.task == "classification" else None
        return {**out, "mode": "validation", "reason": "evaluation.selection is validation",
                **({"hint": small} if small else {})}
    if spec.task != "classification":
        if ev.selection == "cv":
            raise ValueError("evaluation.selection cv is implemented for classification only")
        return {**out, "mode": "validation", "reason": "cross-validated selection is for classification only"}
    small = small_validation_reason(data.val.labels, data.class_names)
    if ev.selection == "cv":
        return {**out, "mode": "cv", "reason": "evaluation.selection is cv" + (f" ({small})" if small else "")}
    if small:
        return {**out, "mode": "cv", "reason": small}
    return {**out, "mode": "pending", "reason": "no class has fewer than "
            f"{SMALL_CLASS} validation images; a tie at the top of the validation ranking would trigger cv"}


def cv_spec(spec: ExperimentSpec, plan: dict[str, Any]) -> ExperimentSpec:
    """The spec the cv mode trains: with ``evaluation.classical_member`` and ``auto`` (or ``cv``)
    selection, ``hog_mlp`` joins the models (once) on small data."""
    if plan.get("mode") != "cv" or not spec.evaluation.classical_member:
        return spec
    if any(m.name == CLASSICAL_MODEL for m in spec.models):
        return spec
    return spec.model_copy(update={"models": [*spec.models, ModelSpec(name=CLASSICAL_MODEL)]})


def cost_line(plan: dict[str, Any], n_members: int) -> str:
    """What the selection costs, printed before training starts."""
    k = plan["folds"]
    if plan["mode"] == "cv":
        return (f"[selection] cv ({plan['reason']}): {k}-fold cross-validation on train + val, "
                f"{n_members} members x {k} folds = {n_members * k} fits ({k}x the {n_members} of validation "
                "selection)")
    if plan["mode"] == "pending":
        return (f"[selection] auto: {n_members} fits on the validation split; if systems tie at the top, "
                f"{n_members} x {k} = {n_members * k} more fits for {k}-fold cross-validation")
    hint = plan.get("hint")
    return f"[selection] validation: {n_members} fits" + (
        f" (note: {hint}: the split may not rank systems; evaluation.selection auto or cv cross-validates on "
        f"train + val, {k}x the fits)" if hint else "")


# -- folds -------------------------------------------------------------------------------------


def _spec_groups(spec: ExperimentSpec, ids: list[str]) -> list[str] | None:
    """The ``data.group_by`` group of each pooled id (``None`` without ``group_by``)."""
    if not spec.data.group_by:
        return None
    from medens.config import parse_group_by

    base = [_AUG.sub("", i) for i in ids]
    kind, arg = parse_group_by(spec.data.group_by)
    if kind == "pattern":
        from medens.data.groups import groups_from_pattern

        groups, problems = groups_from_pattern(base, arg)
        if problems:
            raise ValueError("; ".join(problems))
        return [str(g) for g in groups]
    # DICOM tags and manifest columns: read again from the source, by sample id
    from medens.data.build import load_pool, pool_groups

    pool = load_pool(spec.data, spec.seed)
    by_id: dict[str, str] = {}
    for part, gs in pool_groups(pool, spec.data.group_by, "cross-validation").items():
        for i, g in zip(pool.parts[part].ids, gs):
            by_id.setdefault(i, g)
    missing = [i for i in base if i not in by_id]
    if missing:
        raise ValueError(f"cross-validation folds: no {spec.data.group_by} group found for {len(missing)} sample(s), "
                         f"e.g. {missing[:3]}")
    return [by_id[i] for i in base]


def fold_assignment(labels: np.ndarray, ids: list[str], k: int, *, seed: int = 0,
                    groups: list[str] | None = None) -> np.ndarray:
    """The fold (``0..k-1``) of each pooled sample: stratified by label, and group-disjoint by
    ``groups`` and by original image (an oversampled copy ``<id>:augN`` stays with ``<id>``).
    A class with fewer images than folds is spread as far as it goes."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.asarray(labels, dtype=np.int64)
    base = [_AUG.sub("", i) for i in ids]
    # spec groups are read from the original ids, so a copy already shares its original's group
    g = np.asarray(groups if groups is not None else base, dtype=object)
    n_groups = len(set(g.tolist()))
    if n_groups < k:
        raise ValueError(f"{k}-fold cross-validation needs at least {k} groups (or images); train + val have "
                         f"{n_groups}")
    fold_of = np.full(len(y), -1, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the least populated class has only m members"
        if n_groups == len(y):
            splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
        else:
            splits = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y, g)
        for f, (_, held) in enumerate(splits):
            fold_of[held] = f
    assert (fold_of >= 0).all()
    return fold_of


# -- training ----------------------------------------------------------------------------------


def _pool(data):
    from medens.data.types import Split

    return Split.concat([data.train, data.val])


def train_cv_member(spec: ExperimentSpec, data_dir: str | os.PathLike, member: GridEntry | dict[str, Any] | str,
                    out_dir: str | os.PathLike, plan: dict[str, Any], *, progress: bool | None = None) -> Path:
    """Train the ``k`` fold models of one grid member and write its CV member directory (module
    docstring): fold 0's artifact with ``cv`` in ``model.json`` and the OOF predictions as
    ``predictions/val.npz``. No test prediction is made here."""
    from medens.data.types import SplitData
    from medens.models.artifact import read_manifest, write_manifest
    from medens.stages.data import dataset_lineage
    from medens.training import fit
    from medens.training.collapse import collapse_entry
    from medens.training.predictions import Predictions

    data = SplitData.load(data_dir)
    pool = _pool(data)
    k = int(plan["folds"])
    fold_of = fold_assignment(pool.labels, pool.ids, k, seed=spec.seed, groups=_spec_groups(spec, pool.ids))
    out = Path(out_dir)
    folds_dir = out.with_name(out.name + ".folds")
    member = GridEntry.parse(member)
    model = member.model
    lineage = dataset_lineage(data_dir)
    oof = None
    fold_names = []
    for f in range(k):
        held, kept = np.flatnonzero(fold_of == f), np.flatnonzero(fold_of != f)
        fold = SplitData(task=data.task, class_names=data.class_names, train=pool.subset(kept),
                         val=pool.subset(held), test=data.test.subset([]), info=data.info)
        fid = f"{member.id}__fold{f}"
        res = fit(ComponentSpec(name=model.name, params=model.params), member.loss,
                  fold, model.training_for(spec.training), folds_dir / f"fold{f}", seed=spec.seed, resume=True,
                  normalize=spec.data.normalize, progress=progress,
                  extra_manifest={"member_id": fid, "lineage": lineage,
                                  "cv_fold": {"member": member.id, "fold": f, "folds": k,
                                              "held_out": len(held), "trained_on": len(kept)}})
        p = Predictions.load(res.path / "predictions" / "val.npz")
        if list(p.ids) != [pool.ids[i] for i in held]:
            raise RuntimeError(f"{fid}: held-out predictions are not in the fold's order")
        if oof is None:
            oof = np.zeros((len(pool), p.probs.shape[1]), dtype=np.float32)
        oof[held] = p.probs
        fold_names.append(f"fold{f}")
    assert oof is not None
    if out.exists():
        shutil.rmtree(out)
    (out / "predictions").mkdir(parents=True)
    first = folds_dir / "fold0"
    for name in ("weights.pt",):
        shutil.copy2(first / name, out / name)
    Predictions(probs=oof, ids=list(pool.ids), labels=pool.labels,
                class_names=data.class_names).save(out / "predictions" / "val.npz")
    manifest = read_manifest(first)
    manifest.pop("files", None)
    manifest.update({"member_id": member.id, **collapse_entry(oof, pool.labels, data.class_names),
                     "cv": {"folds": k, "fold_dirs": [str(folds_dir / n) for n in fold_names],
                            "fold_of": {i: int(f) for i, f in zip(pool.ids, fold_of)},
                            "mode": plan["mode"], "requested": plan["requested"], "reason": plan["reason"],
                            "note": "weights.pt is fold 0's; predictions/val.npz are out-of-fold over train + val"}})
    write_manifest(out, manifest)
    return out


# -- after selection ---------------------------------------------------------------------------


def is_cv_member(directory: str | os.PathLike) -> bool:
    from medens.models.artifact import read_manifest

    return bool(read_manifest(directory).get("cv"))


def cv_info(members: dict[str, Path]) -> dict[str, Any] | None:
    """The ``cv`` entry of the first CV member (``None`` when the run selected on validation)."""
    from medens.models.artifact import read_manifest

    for d in members.values():
        cv = read_manifest(d).get("cv")
        if cv:
            return cv
    return None


def complete_test_predictions(data, members: dict[str, Path], ensembles: dict[str, Path]) -> None:
    """After selection: the test predictions a CV run has not made yet. A CV member's are the mean
    of its fold models' probabilities (each fold's also saved in its folder); an ensemble's come
    from its saved combiner applied to its members' test predictions."""
    from medens.ensemble.prediction import PredictionEnsemble
    from medens.models.artifact import read_manifest
    from medens.training import predict_split
    from medens.training.predictions import Predictions

    for d in members.values():
        target = d / "predictions" / "test.npz"
        cv = read_manifest(d).get("cv")
        if target.is_file() or not cv:
            continue
        probs = []
        for fd in cv["fold_dirs"]:
            p = predict_split(fd, data.test)
            p.save(Path(fd) / "predictions" / "test.npz")
            probs.append(p.probs.astype(np.float64))
        Predictions(probs=np.mean(probs, axis=0).astype(np.float32), ids=list(data.test.ids), labels=data.test.labels,
                    class_names=data.class_names).save(target)
    for d in ensembles.values():
        target = d / "predictions" / "test.npz"
        if target.is_file():
            continue
        manifest = json.loads((d / "ensemble.json").read_text())
        ens = PredictionEnsemble.from_dict(manifest["combiner"])
        member_probs = [Predictions.load(members[m] / "predictions" / "test.npz").probs.astype(np.float64)
                        for m in ens.member_ids]
        Predictions(probs=ens.predict_proba(member_probs).astype(np.float32), ids=list(data.test.ids),
                    labels=data.test.labels, class_names=data.class_names).save(target)


def _spreadable(combiner: dict[str, Any]) -> bool:
    from medens.ensemble.prediction import PredictionEnsemble, _WeightedAverage

    return isinstance(PredictionEnsemble.from_dict(combiner), _WeightedAverage)


def served_combiner(combiner: dict[str, Any] | None, folds: dict[str, list[str]],
                    n_classes: int, class_names: list[str]) -> tuple[dict[str, Any], dict[str, list[str]] | None]:
    """The combiner of a CV-selected system over its fold models, and the ``fold_members`` map
    when the combiner is not a weighted average.

    A single member becomes the mean of its ``k`` fold models; a weighted average (mean,
    weighted, greedy, logit-adjusted mean) spreads each member's weight evenly over its folds
    (``w_m / k`` each), which equals applying it to the fold means. Vote and stacking are not
    linear in the member probabilities: they keep their members, and the artifact's
    ``fold_members`` tells :func:`~medens.ensemble.artifact.load_ensemble` to average each
    member's fold models first.
    """
    from medens.ensemble.prediction import FORMAT

    if combiner is None:
        (mid, fids), = folds.items()
        return ({"format": FORMAT, "kind": "prediction", "method": "mean", "member_ids": list(fids),
                 "n_classes": n_classes, "class_names": class_names, "options": {},
                 "params": {"weights": [1.0 / len(fids)] * len(fids)}, "validation": {}}, None)
    if _spreadable(combiner):
        ids, weights = [], []
        for m, w in zip(combiner["member_ids"], combiner["params"]["weights"]):
            ids += folds[m]
            weights += [float(w) / len(folds[m])] * len(folds[m])
        return {**combiner, "member_ids": ids, "params": {**combiner["params"], "weights": weights}}, None
    return dict(combiner), {m: list(folds[m]) for m in combiner["member_ids"]}


def package_cv(best: str, members: dict[str, Path], ensembles: dict[str, Path], out_dir: Path,
               extra: dict[str, Any], gate_metrics: dict[str, Any]) -> Path:
    """The served artifact of a CV-selected system: every fold model of each of its members."""
    from medens.ensemble.artifact import write_ensemble
    from medens.models.artifact import read_manifest

    if best in ensembles:
        manifest = json.loads((Path(ensembles[best]) / "ensemble.json").read_text())
        combiner, ids = manifest.get("combiner"), manifest["members"]
        if combiner is None:
            raise ValueError(f"{best}: a model-level ensemble cannot be served from fold models")
        keep = {k: v for k, v in manifest.items() if k not in (
            "kind", "name", "task", "method", "members", "combiner", "class_names", "input", "reference",
            "gate_metrics", "medens_version", "files")}
    else:
        combiner, ids, keep = None, [best], {}
    fold_dirs: dict[str, Path] = {}
    folds: dict[str, list[str]] = {}
    for m in ids:
        cv = read_manifest(members[m])["cv"]
        folds[m] = []
        for i, fd in enumerate(cv["fold_dirs"]):
            fid = f"{m}__fold{i}"
            fold_dirs[fid] = Path(fd)
            folds[m].append(fid)
    first = read_manifest(members[ids[0]])
    served, fold_members = served_combiner(combiner, folds, len(first["class_names"]), list(first["class_names"]))
    return write_ensemble(out_dir, name=best, member_dirs=fold_dirs, combiner=served, gate_metrics=gate_metrics,
                          extra={**keep, **extra, "cv_selected": {"system": best, "members": ids,
                                                                  "folds": len(folds[ids[0]])}},
                          fold_members=fold_members)


def classical_share(system: str, members: dict[str, Path], ensembles: dict[str, Path]) -> dict[str, Any]:
    """How much of ``system`` the classical member(s) (``hog_*`` architectures) carry: their
    combiner weight share (by member count for vote and stacking, which have no weights)."""
    from medens.models.artifact import read_manifest

    classical = {m for m, d in members.items()
                 if str(read_manifest(d).get("architecture", {}).get("name", "")).startswith("hog_")}
    if not classical:
        return {"members": [], "share": None, "basis": "no classical member in the grid"}
    if system in members:
        return {"members": sorted(classical), "share": 1.0 if system in classical else 0.0,
                "basis": "the selected system is a single member"}
    manifest = json.loads((Path(ensembles[system]) / "ensemble.json").read_text())
    comb = manifest.get("combiner") or {}
    ids = list(comb.get("member_ids") or manifest.get("fused_members") or manifest["members"])
    weights = (comb.get("params") or {}).get("weights")
    if weights is not None and len(weights) == len(ids):
        share = float(sum(w for m, w in zip(ids, weights) if m in classical) / max(sum(weights), 1e-12))
        basis = f"weight share in {comb.get('method')}"
    else:
        share = sum(m in classical for m in ids) / len(ids)
        basis = f"share of members ({comb.get('method') or 'fusion'} has no per-member weights)"
    return {"members": sorted(classical), "share": share, "basis": basis}
