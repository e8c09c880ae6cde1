"""Scores of every system: the selection score on validation, then test metrics, CIs and paired tests.

Selection (docs/methods.md section 8) comes first and uses validation data only: a member by
its validation predictions, a prediction-level ensemble by its cross-fitted (out-of-fold)
validation predictions (:mod:`medens.ensemble.crossfit`; it was fitted on validation), a
model-level ensemble by its validation predictions (it was trained on the training split). The
selected system is the one with the highest selection score on the gate metric; systems that tie
on it (a small validation split often scores several at 1.0) are told apart by the validation
log-loss of the same predictions, a proper scoring rule that still sees how sure each system is
of the right class, and only then by name. A system whose selection predictions all fall in one
class (:mod:`medens.training.collapse`) is ranked after every system that did not collapse, so it
is selected only when every system collapsed (and the run then says so). Only then is
every system scored on the test split, once, to report: metrics of docs/methods.md section 6 with 95%
bootstrap CIs (and study 1's normal-approximation CI for accuracy) and paired tests against the
reference (the best single member on validation), Holm-corrected across the comparisons:
McNemar for accuracy, paired bootstrap for the MCC difference and DeLong for macro one-vs-rest
AUROC; for segmentation a paired bootstrap of the per-image Dice difference.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medens.evaluation.metrics import METRICS, classification_metrics
from medens.evaluation.segmentation import segmentation_metrics
from medens.evaluation.stats import (
    bootstrap_ci,
    bootstrap_mean_ci,
    delong_ovr,
    holm,
    mcnemar,
    normal_ci,
    paired_bootstrap,
    paired_mean_bootstrap,
)

CI_METRICS = ("accuracy", "mcc", "macro_f1", "auroc_macro")
CALIBRATION_METRICS = ("ece", "classwise_ece", "adaptive_ece")
NO_BEFORE = ("an ensemble combines its members' temperature-scaled probabilities; no ensemble of the unscaled "
             "members was built, so only its calibration as served is reported")
SELECTION_RULE = ("highest validation {metric}: members on their validation predictions, prediction-level "
                  "ensembles on {folds}-fold cross-fitted (out-of-fold) validation predictions, model-level "
                  "ensembles on their validation predictions; ties by the validation log-loss of the same "
                  "predictions (lower first), then by name; a system that predicts one class on those "
                  "predictions (collapsed) only after every system that does not")

SELECTION_RULE_CV = ("highest {metric} on out-of-fold (OOF) predictions of {k}-fold cross-validation on train + "
                     "validation (medens.stages.cv: the validation split alone could not rank systems): members on "
                     "their fold models' OOF predictions, prediction-level ensembles fitted on OOF predictions and "
                     "scored on {folds}-fold cross-fitted OOF predictions; ties by the OOF log-loss of the same "
                     "predictions (lower first), then by name; a system that predicts one class on those "
                     "predictions (collapsed) only after every system that does not; the selected system is "
                     "served as the {k} fold models of each of its members")


def selection_score(metric: str, *, probs: np.ndarray, labels: np.ndarray | None = None,
                    masks: np.ndarray | None = None) -> float | None:
    """The gate ``metric`` of one system's validation probabilities (``None`` when undefined)."""
    if masks is not None:
        from medens.evaluation.gate import per_image_overlap

        value = float(per_image_overlap(masks, probs, metric if metric in ("dice", "iou") else "dice").mean())
    else:
        value = float(METRICS[metric](labels, np.asarray(probs, dtype=np.float64)))
    return value if math.isfinite(value) else None


def selection_order(scores: dict[str, float | None], tiebreak: dict[str, float | None] | None = None,
                    collapsed: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Systems by selection score, best first; equal scores by ``tiebreak`` (lower first: the
    validation log-loss; a system without one after those with one), then by name; systems in
    ``collapsed`` (predicting one class) after every scored system that is not; systems without
    a score last, by name."""
    tb = tiebreak or {}

    def key(n: str) -> tuple[bool, float, float, str]:
        t = tb.get(n)
        return n in collapsed, -float(scores[n]), float(t) if t is not None and math.isfinite(t) else math.inf, n

    scored = sorted((n for n, s in scores.items() if s is not None), key=key)
    return scored + sorted(n for n, s in scores.items() if s is None)


def selection_log_loss(*, probs: np.ndarray, labels: np.ndarray | None = None,
                       masks: np.ndarray | None = None) -> float | None:
    """The selection tie-break of one system's validation predictions: classification log-loss
    (``None`` for segmentation, whose ties stay by name)."""
    if masks is not None or labels is None:
        return None
    from medens.ensemble.selection import log_loss

    value = log_loss(labels, probs)
    return value if math.isfinite(value) else None


def calibration_entry(y_true: np.ndarray, probs: np.ndarray, before: tuple[Any, np.ndarray] | None, *,
                      n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """The three ECEs (docs/methods.md section 6.2) with bootstrap CIs, after temperature scaling
    (``probs``, as served) and before it (``before``: the temperature(s) and the unscaled
    probabilities; None for an ensemble, with the reason).

    The intervals are basic bootstrap intervals over plain (not class-stratified) resamples, clipped
    to [0, 1], with the bias-corrected ``debiased`` value beside the plug-in ``point``: binning noise
    makes the plug-in ECE overstate the calibration error and a resample overstates it again, so
    percentile intervals sit above the truth; and an ECE moves with the sample's class mix, which a
    stratified resample holds fixed (section 7.1 of the methods gives the coverage measured)."""
    def cis(p: np.ndarray) -> dict[str, Any]:
        return {m: bootstrap_ci(y_true, p, m, n_resamples=n_resamples, confidence=confidence, seed=seed,
                                stratified=False, interval="basic", bounds=(0.0, 1.0))
                for m in CALIBRATION_METRICS}

    if before is None:
        return {"temperature": None, "before": None, "after": cis(probs), "before_reason": NO_BEFORE}
    return {"temperature": before[0], "before": cis(before[1]), "after": cis(probs)}


def evaluate_classification(y_true: np.ndarray, systems: dict[str, tuple[str, np.ndarray]], *, reference: str,
                            class_names: list[str], n_resamples: int = 2000, confidence: float = 0.95,
                            seed: int = 0, before: dict[str, tuple[Any, np.ndarray]] | None = None) -> dict[str, Any]:
    """Metrics, CIs and Holm-corrected paired tests of every system against ``reference``, and
    each system's calibration (:func:`calibration_entry`; ``before``: system name -> temperature
    and probabilities before temperature scaling, for the members)."""
    ref_probs = systems[reference][1]
    out: dict[str, Any] = {"reference": reference, "systems": {}}
    raw: dict[str, dict[str, float | None]] = {"mcnemar": {}, "mcc": {}, "auroc": {}}
    for name, (kind, probs) in systems.items():
        m = classification_metrics(y_true, probs, class_names=class_names)
        cis = {metric: bootstrap_ci(y_true, probs, metric, n_resamples=n_resamples, confidence=confidence, seed=seed)
               for metric in CI_METRICS}
        entry: dict[str, Any] = {"kind": kind, "metrics": m, "ci": cis,
                                 "accuracy_normal_ci": list(normal_ci(m["accuracy"], len(y_true)))}
        entry["calibration"] = calibration_entry(y_true, probs, (before or {}).get(name), n_resamples=n_resamples,
                                                 confidence=confidence, seed=seed)
        cis.update(entry["calibration"]["after"])
        if name != reference:
            mc = mcnemar(y_true, probs.argmax(1), ref_probs.argmax(1))
            pb = paired_bootstrap(y_true, probs, ref_probs, "mcc", n_resamples=n_resamples, confidence=confidence,
                                  seed=seed)
            dl = delong_ovr(y_true, probs, ref_probs)["macro"]
            entry["vs_reference"] = {"mcnemar": mc, "mcc_difference": pb, "auroc_delong": dl}
            raw["mcnemar"][name], raw["mcc"][name], raw["auroc"][name] = mc["p_value"], pb["p_value"], dl["p_value"]
        out["systems"][name] = entry
    for test, ps in raw.items():
        names = [n for n, p in ps.items() if p is not None]
        for n, adj in zip(names, holm([ps[n] for n in names])):
            out["systems"][n]["vs_reference"][f"{test}_p_holm"] = adj
    return out


def evaluate_segmentation(masks_true: np.ndarray, systems: dict[str, tuple[str, np.ndarray]], *, reference: str,
                          n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Dice/IoU/HD95 per system with a bootstrap CI of the mean Dice over images, and a paired
    bootstrap test of the Dice difference against ``reference`` (Holm-corrected)."""
    out: dict[str, Any] = {"reference": reference, "systems": {}}
    per_image = {}
    for name, (kind, probs) in systems.items():
        m = segmentation_metrics(masks_true, probs.argmax(1), n_classes=probs.shape[1])
        dice = np.array([r["dice"] for r in m["per_image"]], dtype=float)
        per_image[name] = dice
        ci = bootstrap_mean_ci(dice, n_resamples=n_resamples, confidence=confidence, seed=seed)
        out["systems"][name] = {"kind": kind, "metrics": {k: v for k, v in m.items() if k != "per_image"},
                                "ci": {"dice": {"point": float(dice.mean()), "low": ci["low"], "high": ci["high"]}}}
    ref = per_image[reference]
    ps = {}
    for name, dice in per_image.items():
        if name == reference:
            continue
        pb = paired_mean_bootstrap(dice, ref, n_resamples=n_resamples, confidence=confidence, seed=seed)
        out["systems"][name]["vs_reference"] = {"dice_difference": pb["diff"], "p_value": pb["p_value"]}
        ps[name] = pb["p_value"]
    for n, adj in zip(ps, holm(list(ps.values()))):
        out["systems"][n]["vs_reference"]["p_holm"] = adj
    return out
