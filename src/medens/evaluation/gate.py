"""The champion gate: promote a retrained ensemble only when it beats the serving one.

docs/architecture.md section 3.5: retraining promotes the challenger only when it is better than the
champion on the gate metric *and* a paired test on the same test images says the difference is
unlikely to be chance (docs/methods.md section 9):

- ``accuracy``: McNemar's test on the discordant pairs (McNemar, Psychometrika 1947), exact
  binomial when they are few (:func:`medens.evaluation.stats.mcnemar`);
- ``mcc``, ``f1_macro``, ``auroc_macro`` and the other named classification metrics: a paired
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

METRIC_ALIASES = {"f1": "f1_macro", "auroc": "auroc_macro", "auprc": "auprc_macro", "acc": "accuracy"}
SEGMENTATION_METRICS = ("dice", "iou")


def _metric_name(metric: str) -> str:
    name = METRIC_ALIASES.get(metric, metric)
    if name not in METRICS and name not in SEGMENTATION_METRICS:
        from medens.registry import close_matches

        known = sorted([*METRICS, *SEGMENTATION_METRICS])
        hint = close_matches(name, known)
        raise ValueError(f"unknown gate metric {metric!r}" + (f"; did you mean {', '.join(map(repr, hint))}?" if hint
                                                              else f" (known: {', '.join(known)})"))
    return name


def per_image_overlap(masks_true: np.ndarray, probs: np.ndarray, metric: str) -> np.ndarray:
    """Dice (or IoU = Dice / (2 - Dice)) per image, averaged over foreground classes."""
    from medens.ensemble.segmentation import dice_per_image

    p = np.asarray(probs)
    dice = dice_per_image(masks_true, p.argmax(1), n_classes=p.shape[1])
    values = dice if metric == "dice" else dice / (2.0 - dice)
    return values.mean(axis=1)


def _paired_image_bootstrap(a: np.ndarray, b: np.ndarray, n_resamples: int, seed: int) -> float:
    """Two-sided p of mean(a - b) = 0 from a centred paired bootstrap over images."""
    d = a - b
    if d.size == 0 or np.all(d == 0):
        return 1.0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_resamples, d.size))
    boot = d[idx].mean(axis=1)
    return float((1 + np.sum(np.abs(boot - d.mean()) >= abs(d.mean()))) / (1 + n_resamples))


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
            ``mcc``, ``f1_macro`` / ``f1``, ``auroc_macro`` / ``auroc`` (paired bootstrap), or
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
    seg = name in SEGMENTATION_METRICS
    if seg != (y.ndim >= 2):
        kind = "masks (N, H, W)" if seg else "labels (N,)"
        raise ValueError(f"gate metric {name!r} needs {kind} as y_true, got shape {y.shape}")
    if len(chal) != len(y):
        raise ValueError(f"challenger_probs has {len(chal)} rows for {len(y)} samples")
    out: dict[str, Any] = {"metric": name, "alpha": float(alpha), "n": int(len(y))}

    def score(probs: np.ndarray) -> tuple[float, np.ndarray | None]:
        if seg:
            per = per_image_overlap(y, probs, name)
            return float(per.mean()), per
        return float(METRICS[name](y, probs)), None

    chal_value, chal_per = score(chal)
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
    champ_value, champ_per = score(champ)
    if seg:
        test = f"paired bootstrap over images ({n_resamples} resamples)"
        p = _paired_image_bootstrap(chal_per, champ_per, n_resamples, seed)
    elif name == "accuracy":
        from medens.evaluation.stats import mcnemar

        mc = mcnemar(y, chal, champ)
        test = "McNemar (exact)" if mc["exact"] else "McNemar (chi-square, continuity-corrected)"
        p = mc["p_value"]
    else:
        from medens.evaluation.stats import paired_bootstrap

        pb = paired_bootstrap(y, chal, champ, name, n_resamples=n_resamples, seed=seed)
        test = f"paired stratified bootstrap ({n_resamples} resamples)"
        p = 1.0 if pb["p_value"] is None else pb["p_value"]
    higher = HIGHER_IS_BETTER.get(name, True)
    diff = chal_value - champ_value
    better = diff > 0 if higher else diff < 0
    significant = p < alpha
    promote = bool(better and significant and refusal is None)
    values = f"challenger {name} {chal_value:.4f} vs champion {champ_value:.4f}, {test} p = {p:.4g}"
    if refusal:
        reason = f"champion kept: {refusal} ({values})"
    elif promote:
        reason = f"challenger wins: {values} < alpha {alpha:g}"
    elif not better:
        reason = f"champion kept: the challenger is not better ({values})"
    else:
        reason = f"champion kept: the improvement is not significant ({values} >= alpha {alpha:g})"
    return {**out, "promote": promote, "champion": champ_value, "challenger": chal_value, "difference": diff,
            "p_value": float(p), "test": test, "reason": reason}


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
