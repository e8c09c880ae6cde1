"""The evaluation stage: select on validation, score on test once, report, package the selected system."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medens.config import ExperimentSpec
from medens.stages.data import lineage
from medens.stages.ensemble import OOF, ensemble_dirs, read_index
from medens.stages.results import EnsembleIndex, EvaluationResult, EvaluationSummary, SelectionBasis
from medens.stages.train import member_dirs
from medens.storage.atomic import atomic_write_text


def gate_metric(spec: ExperimentSpec) -> str:
    """The metric that selects systems and gates promotion: ``evaluation.gate_metric``; Dice for
    segmentation unless the gate metric is ``dice`` or ``iou``."""
    m = spec.evaluation.gate_metric
    if spec.task == "segmentation":
        return m if m in ("dice", "iou") else "dice"
    return m


def _selection(metric: str, members: dict[str, Path], ensembles: dict[str, Path],
               index: EnsembleIndex, member_basis: str = "validation predictions") -> dict[str, dict[str, Any]]:
    """Each system's selection score on validation data that neither trained nor fitted it, and the
    validation log-loss of the same predictions that breaks ties (classification)."""
    from medens.evaluation.systems import selection_log_loss, selection_score
    from medens.training.collapse import collapse_entry
    from medens.training.predictions import Predictions

    def score(path: Path) -> dict[str, Any]:
        p = Predictions.load(path)
        return {"score": selection_score(metric, probs=p.probs, labels=p.labels, masks=p.masks),
                "log_loss": selection_log_loss(probs=p.probs, labels=p.labels, masks=p.masks),
                # the same predictions: a system that puts every one in one class has collapsed
                **(collapse_entry(p.probs, p.labels, p.class_names) if p.masks is None else {})}

    out: dict[str, dict[str, Any]] = {}
    for name, d in members.items():
        out[name] = {**score(d / "predictions" / "val.npz"), "basis": member_basis}
    for name, d in ensembles.items():
        info = index.selection.get(name) or SelectionBasis()
        if info.basis is None:
            out[name] = {"score": None, "basis": None, "reason": info.reason or "no cross-fitted validation predictions"}
            continue
        oof = d / "predictions" / OOF
        out[name] = {**info.model_dump(exclude_none=True), **score(oof if oof.is_file() else d / "predictions" / "val.npz")}
    for entry in out.values():
        if entry["score"] is None and entry.get("basis") is not None:
            entry["reason"] = f"validation {metric} is undefined"
    return out


def evaluate_systems(spec: ExperimentSpec, data_dir: str | os.PathLike, member_paths: Sequence[str | os.PathLike],
                     ensembles_dir: str | os.PathLike, out_dir: str | os.PathLike,
                     best_dir: str | os.PathLike | None = None) -> EvaluationSummary:
    """Select a system on validation, score every system on test, write the report, package the selection.

    Writes ``metrics.json`` (an :class:`EvaluationResult`: every system's selection score and
    test metrics, the selection and its rule, skipped systems), ``kfp_metrics.json``
    (classification), ``report.html``, ``report.md`` and ``summary.json`` (the returned
    :class:`EvaluationSummary`) into ``out_dir``; with ``best_dir``, the selected system as a
    servable ensemble artifact there.

    Raises:
        ValueError: when no system has a selection score (nothing can be served).
    """
    from medens.data.types import SplitData
    from medens.evaluation.report import write_report
    from medens.stages.cv import complete_test_predictions, cv_info

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    members = member_dirs(member_paths)
    ensembles = ensemble_dirs(ensembles_dir)
    if not members:
        raise ValueError("no trained members to evaluate")
    index = read_index(ensembles_dir)
    cv = cv_info(members)
    chosen = _choose(gate_metric(spec), members, ensembles, index, cv)
    conformal = _calibrate_conformal(spec, chosen, members, ensembles)  # before the test split is read
    # the test split, once, to report
    data = SplitData.load(data_dir)
    if cv:  # cross-validated members: their fold models predict the test split only now
        complete_test_predictions(data, members, ensembles)
    systems = _test_probabilities(members, ensembles)
    before = _before_temperature(members) if spec.task == "classification" else {}  # calibration before/after
    result = _evaluation_result(spec, data, systems, chosen, members, ensembles, index, cv, before)
    if conformal is not None:
        _record_conformal(result, conformal, systems[chosen.selected][1], data.test.labels, out)
    # the report and kfp read the full dict (the statistical comparisons too)
    metrics = result.model_dump()
    result.write(out / "metrics.json")
    if spec.task == "classification":
        _write_kfp_metrics(out / "kfp_metrics.json", data, systems[chosen.selected][1], result)
    rendered = write_report(spec, metrics, data, members, {n: p for n, (_, p) in systems.items()}, out,
                            before={n: p for n, (_, p) in before.items()})
    summary = _summary(result, chosen, rendered["leaderboard"], members, ensembles)
    summary.write(out / "summary.json")
    if best_dir is not None:
        package_best(out, members, ensembles, best_dir, data=data, check_images=_onnx_check_images(data))
    return summary


def _calibrate_conformal(spec: ExperimentSpec, chosen: _Choice, members: dict[str, Path],
                         ensembles: dict[str, Path]) -> Any:
    """The selected classifier's conformal thresholds from its selection predictions
    (:mod:`medens.stages.conformal`); ``None`` for segmentation."""
    from medens.stages.conformal import calibrate_selected

    if spec.task != "classification":
        return None
    c = spec.evaluation.conformal
    return calibrate_selected(chosen.selected, members, ensembles,
                              basis=chosen.selection[chosen.selected].get("basis"), levels=tuple(c.coverage),
                              score=c.score, method=c.method)


def _record_conformal(result: EvaluationResult, sets: Any, test_probs: np.ndarray, test_labels: np.ndarray | None,
                      out: Path) -> None:
    """``conformal.json`` beside ``metrics.json`` (``package_best`` puts it in the artifact), and the
    test coverage it gave in ``metrics.json`` ``conformal`` (reported only)."""
    from medens.stages.conformal import coverage_entry

    sets.write(out)
    result.conformal = coverage_entry(sets, test_probs, test_labels)


def _onnx_check_images(data: Any, n: int = 32) -> np.ndarray | None:
    """Up to ``n`` validation images (spread over the split) that the packaged ONNX export is checked on."""
    split = data.val if len(data.val) else data.train
    if not len(split):
        return None
    idx = np.unique(np.linspace(0, len(split) - 1, min(n, len(split))).round().astype(int))
    return np.asarray(split.images[idx])


@dataclass
class _Choice:
    """The selection on validation: every system's entry, their order, the selected one and the reference."""

    metric: str
    selection: dict[str, dict[str, Any]]
    collapsed: dict[str, Any]
    order: list[str]
    selected: str
    reference: str
    quality: dict[str, str]


def _choose(metric: str, members: dict[str, Path], ensembles: dict[str, Path], index: EnsembleIndex,
            cv: dict[str, Any] | None) -> _Choice:
    """Score every system on validation and apply the selection rule (collapsed systems last)."""
    from medens.evaluation.systems import selection_order

    selection = _selection(metric, members, ensembles, index,
                           f"out-of-fold predictions of {cv['folds']}-fold cross-validation on train + val"
                           if cv else "validation predictions")
    collapsed = {n: s.get("collapsed_class") for n, s in selection.items() if s.get("collapsed")}
    order = selection_order({n: s["score"] for n, s in selection.items()},
                            {n: s.get("log_loss") for n, s in selection.items()}, set(collapsed))
    if selection[order[0]]["score"] is None:
        raise ValueError(f"no system has a validation {metric}; nothing can be selected to serve: "
                         + "; ".join(f"{n}: {s.get('reason')}" for n, s in selection.items()))
    selected = order[0]
    reference = next(n for n in order if n in members and selection[n]["score"] is not None)
    quality = {"quality": "ok"}
    if selected in collapsed:  # ranked last among the scored: every scored system collapsed
        quality = {"quality": "failed", "quality_reason": (
            f"every system predicts one class on validation; {selected} was selected by the rule but "
            f"predicts only {collapsed[selected]!r}: do not serve it (train longer: training.min_steps, or "
            "with class weights)")}
    return _Choice(metric, selection, collapsed, order, selected, reference, quality)


def _test_probabilities(members: dict[str, Path], ensembles: dict[str, Path]) -> dict[str, tuple[str, np.ndarray]]:
    """``name -> (kind, test probabilities)`` of every system."""
    from medens.training.predictions import Predictions

    systems = {}
    for kind, group in (("member", members), ("ensemble", ensembles)):
        for name, d in group.items():
            systems[name] = (kind, Predictions.load(d / "predictions" / "test.npz").probs.astype(np.float64))
    return systems


def _before_temperature(members: dict[str, Path]) -> dict[str, tuple[Any, np.ndarray]]:
    """``member -> (temperature, test probabilities before temperature scaling)``: the saved (scaled)
    test probabilities unscaled with the temperature in ``model.json``; a cross-validated member's
    are the mean of its fold models' unscaled probabilities (one temperature per fold)."""
    from medens.models.artifact import read_manifest
    from medens.training.calibration import TemperatureScaling
    from medens.training.predictions import Predictions

    def unscaled(d: Path) -> tuple[float, np.ndarray]:
        ts = TemperatureScaling.from_dict({"temperature": read_manifest(d).get("inference", {}).get("temperature", 1.0)})
        return ts.temperature, ts.inverse_transform(Predictions.load(d / "predictions" / "test.npz").probs)

    out: dict[str, tuple[Any, np.ndarray]] = {}
    for name, d in members.items():
        folds = (read_manifest(d).get("cv") or {}).get("fold_dirs")
        if folds:
            parts = [unscaled(Path(fd)) for fd in folds]
            out[name] = ([t for t, _ in parts], np.mean([p for _, p in parts], axis=0))
        else:
            out[name] = unscaled(d)
    return out


def _evaluation_result(spec: ExperimentSpec, data: Any, systems: dict[str, tuple[str, np.ndarray]], chosen: _Choice,
                       members: dict[str, Path], ensembles: dict[str, Path], index: EnsembleIndex,
                       cv: dict[str, Any] | None, before: dict[str, tuple[Any, np.ndarray]]) -> EvaluationResult:
    """Every system scored on the test split, with the selection and its rule (``metrics.json``);
    ``before``: the members' test probabilities before temperature scaling (:func:`_before_temperature`)."""
    from medens.ensemble.crossfit import DEFAULT_FOLDS
    from medens.evaluation.systems import (
        SELECTION_RULE,
        SELECTION_RULE_CV,
        evaluate_classification,
        evaluate_segmentation,
    )
    from medens.stages.cv import classical_share

    ev, metric, selected = spec.evaluation, chosen.metric, chosen.selected
    if spec.task == "segmentation":
        result = evaluate_segmentation(data.test.masks, systems, reference=chosen.reference, n_resamples=ev.bootstrap,
                                       confidence=ev.confidence, seed=spec.seed)
    else:
        result = evaluate_classification(data.test.labels, systems, reference=chosen.reference,
                                         class_names=data.class_names, n_resamples=ev.bootstrap,
                                         confidence=ev.confidence, seed=spec.seed, before=before)
    test_values = {n: result["systems"][n]["metrics"].get(metric) for n in systems}
    finite = {n: v for n, v in test_values.items() if v is not None and v == v}
    return EvaluationResult.model_validate({
        **result, "experiment": spec.name, "task": spec.task, "gate_metric": metric,
        "selection_rule": (SELECTION_RULE_CV.format(metric=metric, folds=DEFAULT_FOLDS, k=cv["folds"]) if cv
                           else SELECTION_RULE.format(metric=metric, folds=DEFAULT_FOLDS)),
        "selection_mode": _selection_mode(spec, cv, members),
        "classical_member": classical_share(selected, members, ensembles),
        "selection": chosen.selection, "selected": selected, "leaderboard": chosen.order,
        "best_kind": result["systems"][selected]["kind"], "best_path": str((members | ensembles)[selected]),
        # reported only, never used to choose: how far the selection is from the test optimum
        "best_on_test": max(finite, key=lambda n: (finite[n], n)) if finite else None,
        "skipped": dict(index.skipped), "n_test": len(data.test),
        "data_source": data.info.get("source"), "collapsed": chosen.collapsed, **chosen.quality,
    })


def _write_kfp_metrics(path: Path, data: Any, probs: np.ndarray, result: EvaluationResult) -> None:
    """The selected system's confusion matrix, ROC curve and scalars in KFP's shapes."""
    from medens.evaluation.metrics import kfp_classification_metrics

    kfp = kfp_classification_metrics(data.test.labels, probs, data.class_names)
    kfp["scalar"] = {k: result.systems[result.selected]["metrics"][k]
                     for k in ("accuracy", "mcc", "macro_f1", "auroc_macro")}
    atomic_write_text(path, json.dumps(kfp, indent=2))


def _summary(result: EvaluationResult, chosen: _Choice, leaderboard: list[dict[str, Any]], members: dict[str, Path],
             ensembles: dict[str, Path]) -> EvaluationSummary:
    """``summary.json``: the selection, where it is, its test metrics and the rendered leaderboard."""
    best = result.systems[chosen.selected]["metrics"]
    return EvaluationSummary.model_validate({
        "selected": chosen.selected, "best_path": result.best_path, "gate_metric": chosen.metric,
        "reference": chosen.reference, "selection_rule": result.selection_rule,
        "selection_score": chosen.selection[chosen.selected]["score"], "selection_mode": result.selection_mode,
        "classical_member": result.classical_member, "best_on_test": result.best_on_test, "skipped": result.skipped,
        "leaderboard": leaderboard, "report": "report.html", "members": list(members),
        "ensembles": list(ensembles), "data_source": result.data_source, "collapsed": chosen.collapsed,
        **chosen.quality,
        "best_metrics": {k: float(v) for k, v in best.items()
                         if isinstance(v, int | float) and not isinstance(v, bool) and v == v}})


def _selection_mode(spec: ExperimentSpec, cv: dict[str, Any] | None, members: dict[str, Path]) -> dict[str, Any]:
    """Which selection ran and why (``metrics.json`` ``selection_mode``; the report says it)."""
    from medens.stages.cv import RULE

    if cv:
        return {"mode": "cv", "requested": cv.get("requested"), "reason": cv.get("reason"), "folds": cv["folds"],
                "fits": cv["folds"] * len(members), "rule": RULE}
    ev = spec.evaluation
    reason = ("evaluation.selection is validation" if ev.selection == "validation" else
              "the rule did not trigger: no class has fewer than 10 validation images and no tie at the top"
              if ev.selection == "auto" else ev.selection)
    return {"mode": "validation", "requested": ev.selection, "reason": reason, "folds": None,
            "fits": len(members), "rule": RULE}


def package_best(evaluation_dir: str | os.PathLike, members: dict[str, Path], ensembles: dict[str, Path],
                 out_dir: str | os.PathLike, data: Any = None, check_images: np.ndarray | None = None) -> Path:
    """The selected system of ``evaluation_dir/metrics.json`` as an ensemble artifact in ``out_dir``
    (:func:`_package`), with the evaluation's ``conformal.json`` (classification), checksummed; with
    ``data`` (the run's ``SplitData``), a classifier's content-drift reference too: the embeddings of a
    stratified sample of validation images, ``drift_reference.npz``
    (:mod:`medens.ensemble.drift_reference`; the test split is not read). Every member is then
    exported to ONNX and checked against PyTorch on ``check_images`` (validation pixels; none: no
    ONNX, recorded) by :func:`medens.ensemble.onnx_members.export_onnx`; the checksums cover every file."""
    from medens.ensemble.onnx_members import export_onnx
    from medens.stages.conformal import attach_from

    out = _package(evaluation_dir, members, ensembles, out_dir)
    attach_from(evaluation_dir, out)
    if data is not None:
        from medens.ensemble.drift_reference import write_drift_reference

        write_drift_reference(out, data.val.images, data.val.labels, data.train.images, data.train.labels)
    export_onnx(out, check_images)
    return out


def _package(evaluation_dir: str | os.PathLike, members: dict[str, Path], ensembles: dict[str, Path],
             out_dir: str | os.PathLike) -> Path:
    """The selected system of ``evaluation_dir/metrics.json`` as an ensemble artifact in ``out_dir``
    (:func:`package_best` before the conformal sets, the drift reference and the ONNX export).

    An ensemble is copied without its saved predictions; a single member is wrapped with
    ``write_ensemble(combiner=None)``. ``ensemble.json`` gains ``evaluation`` (the experiment,
    the selection rule and score, the test metrics reported for it) and ``lineage`` (the data
    fingerprint)."""
    from medens.ensemble.artifact import ENSEMBLE_MANIFEST, write_ensemble

    metrics = EvaluationResult.read(Path(evaluation_dir) / "metrics.json")
    best = metrics.selected
    if best not in ensembles and best not in members:
        raise ValueError(f"selected system {best!r} is neither a member nor an ensemble of this run")
    entry = metrics.systems[best]
    test_metrics = {k: v for k, v in entry["metrics"].items() if isinstance(v, int | float) or v is None}
    data_lineage = lineage(metrics.data_source)
    evaluation = {"experiment": metrics.experiment, "system": best, "kind": entry["kind"],
                  "gate_metric": metrics.gate_metric, "selection_rule": metrics.selection_rule,
                  "selection_score": metrics.selection[best]["score"], "test_metrics": test_metrics,
                  "n_test": metrics.n_test, "collapsed": bool(metrics.selection[best].get("collapsed")),
                  "quality": metrics.quality}
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    if (metrics.selection_mode or {}).get("mode") == "cv":
        from medens.stages.cv import package_cv

        return package_cv(best, members, ensembles, out, {"evaluation": evaluation, "lineage": data_lineage},
                          test_metrics)
    if best in ensembles:
        shutil.copytree(Path(ensembles[best]), out, ignore=shutil.ignore_patterns("predictions"))
        manifest = json.loads((out / ENSEMBLE_MANIFEST).read_text())
        manifest.update({"evaluation": evaluation, "lineage": data_lineage})
        atomic_write_text(out / ENSEMBLE_MANIFEST, json.dumps(manifest, indent=2))
    else:
        write_ensemble(out, name=best, member_dirs={best: members[best]}, combiner=None, gate_metrics=test_metrics,
                       extra={"evaluation": evaluation, "lineage": data_lineage})
    return out


def leaderboard_text(summary: EvaluationSummary | dict[str, Any], limit: int = 15) -> str:
    """The leaderboard of :func:`evaluate_systems`'s summary (or its dict) as aligned text columns."""
    rows = (summary.leaderboard if isinstance(summary, EvaluationSummary) else summary.get("leaderboard", []))[:limit]
    if not rows:
        return "(no systems)"
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys).rstrip()]
    lines += ["  ".join(str(r[k]).ljust(widths[k]) for k in keys).rstrip() for r in rows]
    if any("ECE" in k for k in keys):
        lines.append(ECE_INTERVAL_NOTE)
    return "\n".join(lines)


ECE_INTERVAL_NOTE = ("ECE intervals are for the true calibration error, which binning noise makes a measured ECE "
                     "overstate: an interval may lie below its measured value (docs/methods.md section 7.1; "
                     "bias-corrected values in metrics.json).")


def export_report(evaluation_dir: str | os.PathLike, html_path: str | os.PathLike,
                  markdown_path: str | os.PathLike | None = None) -> str:
    """Copy the report out of an evaluation directory (for KFP's HTML/Markdown artifacts).

    Returns:
        The leaderboard as text.
    """
    d = Path(evaluation_dir)
    for src, dest in (("report.html", html_path), ("report.md", markdown_path)):
        if dest is not None:
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(d / src, dest)
    return leaderboard_text(EvaluationSummary.read(d / "summary.json"))
