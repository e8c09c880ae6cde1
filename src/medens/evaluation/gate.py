"""The champion gate: promote a retrained ensemble only when it beats the serving one.

docs/architecture.md section 3.5: retraining promotes the challenger only when it is better than the
champion on the gate metric *and* a paired test on the same test images says the difference is
unlikely to be chance (docs/methods.md section 9):

- ``accuracy``: McNemar's test on the discordant pairs (McNemar, Psychometrika 1947), exact
  binomial when they are few (:func:`medens.evaluation.stats.mcnemar`);
- ``mcc``, ``macro_f1``, ``auroc_macro`` and the other named classification metrics: a paired
  stratified bootstrap of the metric difference (Efron & Tibshirani 1993, ch. 16;
  :func:`medens.evaluation.stats.paired_bootstrap`);
- ``dice`` / ``iou`` (segmentation): a paired bootstrap over images of the per-image difference,
  the test :func:`medens.evaluation.systems.evaluate_segmentation` uses.

With no champion (the first deployment) the challenger is promoted. A challenger that has
collapsed onto one class (:mod:`medens.training.collapse`: so recorded by the evaluation stage on
validation, or predicting one class on the gate's own images while they hold several) is never
promoted, champion or not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from medens.evaluation.metrics import HIGHER_IS_BETTER, METRICS
from medens.metric_names import canonical_name

METRIC_ALIASES = {"f1": "macro_f1", "auroc": "auroc_macro", "auprc": "auprc_macro", "acc": "accuracy"}
SEGMENTATION_METRICS = ("dice", "iou")


def _metric_name(metric: str) -> str:
    name = METRIC_ALIASES.get(metric) or canonical_name(metric)
    if name not in METRICS and name not in SEGMENTATION_METRICS:
        from medens.registry import close_matches

        known = sorted([*METRICS, *SEGMENTATION_METRICS])
        hint = close_matches(name, known)
        raise ValueError(f"unknown gate metric {metric!r}" + (f"; did you mean {', '.join(map(repr, hint))}?" if hint
                                                              else f" (known: {', '.join(known)})"))
    return name


def per_image_overlap(masks_true: np.ndarray, probs: np.ndarray, metric: str) -> np.ndarray:
    """Dice (or IoU = Dice / (2 - Dice)) per image, averaged over foreground classes
    (:func:`medens.metrics.dice`, the definition every stage uses)."""
    from medens.metrics import dice

    p = np.asarray(probs)
    per_class = dice(masks_true, p.argmax(1), n_classes=p.shape[1])
    values = per_class if metric == "dice" else per_class / (2.0 - per_class)
    return values.mean(axis=1)


def _collapse_refusal(y: np.ndarray, chal: np.ndarray, seg: bool, recorded: str | None) -> str | None:
    """Why a collapsed challenger is refused, or ``None``."""
    from medens.training.collapse import collapsed_class

    if recorded:
        return f"the challenger has collapsed: it predicts only {recorded} on validation"
    c = None if seg else collapsed_class(chal, y)
    return None if c is None else f"the challenger has collapsed: it predicts only class {c} on these {len(y)} images"


def gate_decision(y_true: Any, champion_probs: Any | None, challenger_probs: Any, *, metric: str = "mcc",
                  alpha: float = 0.05, n_resamples: int = 2000, seed: int = 0,
                  challenger_collapsed: str | None = None) -> dict[str, Any]:
    """Decide whether the challenger replaces the champion.

    The challenger is promoted only when it is better on ``metric`` and the paired test gives
    ``p < alpha``; a tie or a difference the test cannot tell from chance keeps the champion.

    Args:
        y_true: labels ``(N,)`` (classification) or masks ``(N, H, W)`` (segmentation).
        champion_probs: the serving system's probabilities on the same images, ``(N, K)`` or
            ``(N, K, H, W)``; ``None`` when nothing is serving yet.
        challenger_probs: the new system's probabilities, same shape.
        metric: the gate metric: ``accuracy`` (McNemar), a classification metric name such as
            ``mcc``, ``macro_f1`` / ``f1`` (``f1_macro``: the old spelling, with a warning), ``auroc_macro`` / ``auroc`` (paired bootstrap), or
            ``dice`` / ``iou`` (per-image paired bootstrap).
        alpha: significance level of the paired test.
        n_resamples: bootstrap resamples.
        seed: bootstrap seed.
        challenger_collapsed: what the challenger collapsed onto on validation (e.g. ``"class
            'normal'"``), as the evaluation stage recorded it; it is refused whatever its score.
            Without it a challenger predicting one class on ``y_true``'s images is refused too.

    Returns:
        ``{"promote", "reason", "metric", "champion", "challenger", "difference", "p_value",
        "test", "alpha", "n", "collapsed"}``; values are the metric of each system on these images.

    Raises:
        ValueError: for an unknown metric, bad ``alpha`` or mismatched shapes.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    name = _metric_name(metric)
    y = np.asarray(y_true)
    chal = np.asarray(challenger_probs, dtype=np.float64)
    seg = _check_shapes(name, y, chal)
    out: dict[str, Any] = {"metric": name, "alpha": float(alpha), "n": int(len(y))}
    chal_value, chal_per = _gate_score(name, y, chal, seg)
    refusal = _collapse_refusal(y, chal, seg, challenger_collapsed)
    out["collapsed"] = refusal is not None
    if champion_probs is None:
        return {**out, "promote": refusal is None, "champion": None, "challenger": chal_value, "difference": None,
                "p_value": None, "test": None,
                "reason": f"not promoted: {refusal}" if refusal else
                f"no champion is serving; the challenger ({name} {chal_value:.4f}) is promoted"}
    champ = np.asarray(champion_probs, dtype=np.float64)
    if champ.shape != chal.shape:
        raise ValueError(f"champion_probs {champ.shape} and challenger_probs {chal.shape} differ in shape")
    champ_value, champ_per = _gate_score(name, y, champ, seg)
    if seg:
        test, p = _paired_image_test(chal_per, champ_per, n_resamples, seed)
    else:
        test, p = _paired_label_test(name, y, chal, champ, n_resamples, seed)
    diff = chal_value - champ_value
    better = diff > 0 if HIGHER_IS_BETTER.get(name, True) else diff < 0
    promote = bool(better and p < alpha and refusal is None)
    values = f"challenger {name} {chal_value:.4f} vs champion {champ_value:.4f}, {test} p = {p:.4g}"
    return {**out, "promote": promote, "champion": champ_value, "challenger": chal_value, "difference": diff,
            "p_value": float(p), "test": test, "reason": _reason(values, refusal, promote, better, alpha)}


def _check_shapes(name: str, y: np.ndarray, chal: np.ndarray) -> bool:
    """Whether the gate is a segmentation one; refuses truth of the wrong kind for ``name``."""
    seg = name in SEGMENTATION_METRICS
    if seg != (y.ndim >= 2):
        kind = "masks (N, H, W)" if seg else "labels (N,)"
        raise ValueError(f"gate metric {name!r} needs {kind} as y_true, got shape {y.shape}")
    if len(chal) != len(y):
        raise ValueError(f"challenger_probs has {len(chal)} rows for {len(y)} samples")
    return seg


def _gate_score(name: str, y: np.ndarray, probs: np.ndarray, seg: bool) -> tuple[float, np.ndarray | None]:
    """The gate metric of one system, and its per-image values for a segmentation gate."""
    if seg:
        per = per_image_overlap(y, probs, name)
        return float(per.mean()), per
    return float(METRICS[name](y, probs)), None


def _paired_image_test(chal_per: np.ndarray, champ_per: np.ndarray, n_resamples: int, seed: int) -> tuple[str, float]:
    """Paired bootstrap over images of the per-image difference (:func:`paired_mean_bootstrap`)."""
    from medens.evaluation.stats import paired_mean_bootstrap

    p = paired_mean_bootstrap(chal_per, champ_per, n_resamples=n_resamples, seed=seed)["p_value"]
    return f"paired bootstrap over images ({n_resamples} resamples)", p


def _paired_label_test(name: str, y: np.ndarray, chal: np.ndarray, champ: np.ndarray, n_resamples: int,
                       seed: int) -> tuple[str, float]:
    """McNemar for accuracy, the paired stratified bootstrap for every other classification metric."""
    if name == "accuracy":
        from medens.evaluation.stats import mcnemar

        mc = mcnemar(y, chal, champ)
        return ("McNemar (exact)" if mc["exact"] else "McNemar (chi-square, continuity-corrected)"), mc["p_value"]
    from medens.evaluation.stats import paired_bootstrap

    pb = paired_bootstrap(y, chal, champ, name, n_resamples=n_resamples, seed=seed)
    return f"paired stratified bootstrap ({n_resamples} resamples)", 1.0 if pb["p_value"] is None else pb["p_value"]


def _reason(values: str, refusal: str | None, promote: bool, better: bool, alpha: float) -> str:
    if refusal:
        return f"champion kept: {refusal} ({values})"
    if promote:
        return f"challenger wins: {values} < alpha {alpha:g}"
    if not better:
        return f"champion kept: the challenger is not better ({values})"
    return f"champion kept: the improvement is not significant ({values} >= alpha {alpha:g})"


def ensemble_predictions(artifact_dir: str | os.PathLike, data_dir: str | os.PathLike, split: str = "test", *,
                         batch_size: int = 128, device: str | None = None):
    """Run an ensemble artifact (or a single model artifact) on one split of a dataset directory.

    The artifact's own input spec preprocesses the images, exactly as serving does.

    Returns:
        :class:`medens.training.Predictions` with the split's ids, labels or masks.
    """
    import torch

    from medens.data.transforms import preprocess
    from medens.data.types import SplitData
    from medens.ensemble.artifact import ENSEMBLE_MANIFEST, load_ensemble
    from medens.training.device import select_device
    from medens.training.predictions import Predictions

    d = Path(artifact_dir)
    part = SplitData.load(data_dir).split(split)
    if not (d / ENSEMBLE_MANIFEST).is_file():
        from medens.training import predict_split

        return predict_split(d, part, batch_size=batch_size, device=device)
    dev = select_device("auto") if device is None else torch.device(device)
    ens = load_ensemble(d, map_location=dev)
    from medens.data.filearray import iter_rows

    chunks = []
    for rows in iter_rows(part.images, 8 * 2**20):  # bounded memory when the images are on disk
        x = preprocess(rows, ens.input_spec)
        chunks += [ens.predict(x[i:i + batch_size], device=dev)[0] for i in range(0, len(x), batch_size)]
    k = len(ens.class_names)
    probs = np.concatenate(chunks) if chunks else np.empty((0, k), np.float64)
    # float32 for maps too (not the members' float16): the argmax must be the ensemble's own mask
    return Predictions(probs=probs.astype(np.float32), ids=list(part.ids), labels=part.labels,
                       masks=part.masks, class_names=ens.class_names)


def _recorded_collapse(artifact_dir: str | os.PathLike) -> str | None:
    """What a challenger artifact records it collapsed onto on validation: an ensemble artifact's
    ``evaluation.collapsed`` (the evaluation stage), a model artifact's ``collapsed_class``."""
    import json

    d = Path(artifact_dir)
    if (d / "ensemble.json").is_file():
        ev = json.loads((d / "ensemble.json").read_text()).get("evaluation") or {}
        if ev.get("collapsed"):
            return f"one class ({ev.get('system')} was selected although every system collapsed)"
        return None
    if (d / "model.json").is_file():
        m = json.loads((d / "model.json").read_text())
        return f"class {m.get('collapsed_class')!r}" if m.get("collapsed") else None
    return None


def compare_ensembles(champion_dir: str | os.PathLike | None, challenger_dir: str | os.PathLike,
                      data_dir: str | os.PathLike, split: str = "test", *, metric: str | None = None,
                      alpha: float = 0.05, n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Run the champion and the challenger on the same images and apply :func:`gate_decision`.

    Args:
        champion_dir: the serving ensemble artifact; ``None`` (or a missing directory) means no champion.
        challenger_dir: the new ensemble artifact.
        data_dir: a dataset directory (``SplitData.save``); ``split`` of it is scored.
        metric: the gate metric; default ``mcc`` for classification and ``dice`` for segmentation.

    Returns:
        The gate decision plus ``split``.
    """
    chal = ensemble_predictions(challenger_dir, data_dir, split)
    seg = chal.masks is not None
    truth = chal.masks if seg else chal.labels
    metric = metric or ("dice" if seg else "mcc")
    champ = None
    if champion_dir is not None and Path(champion_dir).is_dir():
        cp = ensemble_predictions(champion_dir, data_dir, split)
        if cp.class_names and chal.class_names and list(cp.class_names) != list(chal.class_names):
            raise ValueError(f"champion classes {cp.class_names} differ from challenger classes {chal.class_names}")
        champ = cp.probs
    out = gate_decision(truth, champ, chal.probs, metric=metric, alpha=alpha, n_resamples=n_resamples, seed=seed,
                        challenger_collapsed=_recorded_collapse(challenger_dir))
    out["split"] = split
    return out
