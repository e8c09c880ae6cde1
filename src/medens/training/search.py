"""Hyper-parameter search by stratified k-fold cross-validation on the training split.

Study 2 (Pasupa, Vatathanavaro, Tungjitnob) picks the focal-loss alpha in {0.25, ..., 1.75}
with gamma 2 by 5-fold cross-validation; :func:`search` does that for any (model, loss) and
any grid over model, loss or training parameters.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medens.config import ComponentSpec, ModelSpec, TrainingSpec
from medens.data.splits import stratified_kfold
from medens.data.types import Split, SplitData
from medens.storage.atomic import atomic_write_text

STUDY2_FOCAL_GRID = {"loss.alpha": [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75], "loss.gamma": [2.0]}


@dataclass
class SearchResult:
    best: dict[str, Any]
    rows: list[dict]
    metric: str
    csv_path: Path
    markdown_path: Path


def _apply(setting: dict[str, Any], model: ComponentSpec, loss: ComponentSpec,
           training: TrainingSpec) -> tuple[ComponentSpec, ComponentSpec, TrainingSpec]:
    m, lo, t = dict(model.params), dict(loss.params), training.model_dump()
    for key, value in setting.items():
        scope, _, name = key.partition(".")
        if scope == "model":
            m[name] = value
        elif scope == "loss":
            lo[name] = value
        elif scope == "training":
            if name not in t:
                raise ValueError(f"search grid key {key!r}: training has no field {name!r}")
            t[name] = value
        else:
            raise ValueError(f"search grid key {key!r} must start with model., loss. or training.")
    return (ComponentSpec(name=model.name, params=m), ComponentSpec(name=loss.name, params=lo),
            TrainingSpec.model_validate(t))


def spec_with_setting(spec, model: ComponentSpec, loss: ComponentSpec, setting: dict[str, Any]):
    """``spec`` with a search result written back: the searched model and loss entries (matched by
    equality) get the setting's ``model.*`` / ``loss.*`` parameters, ``training`` its ``training.*``.

    Returns:
        A new :class:`~medens.config.ExperimentSpec`; the other models and losses are unchanged.

    Raises:
        ValueError: the model or loss is not one of the spec's.
    """
    m, lo, t = _apply(setting, model, loss, spec.training)
    if model not in spec.models:
        raise ValueError(f"model {model.key!r} is not one of the spec's models {[x.key for x in spec.models]}")
    if loss not in spec.losses:
        raise ValueError(f"loss {loss.key!r} is not one of the spec's losses {[x.key for x in spec.losses]}")
    m = ModelSpec(name=m.name, params=m.params, training=dict(getattr(model, "training", {}) or {}))
    models = [m if x == model else x for x in spec.models]
    losses = [lo if x == loss else x for x in spec.losses]
    return spec.model_copy(update={"models": models, "losses": losses, "training": t})


def grid_settings(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of a grid ``{"loss.alpha": [..], "training.lr": [..]}``."""
    if not grid:
        return [{}]
    for key, values in grid.items():
        if not isinstance(values, list | tuple) or not values:
            raise ValueError(f"search grid {key!r} needs a non-empty list of values")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def search(
    model: ComponentSpec | str,
    loss: ComponentSpec | str,
    data: SplitData,
    grid: dict[str, list],
    training: TrainingSpec | None = None,
    out_dir: str | os.PathLike = "search",
    *,
    k: int = 5,
    metric: str = "macro_f1",
    seed: int = 0,
    progress: bool | None = None,
) -> SearchResult:
    """Stratified ``k``-fold cross-validation of every grid setting on ``data.train``.

    Each fold trains on k-1 folds and validates (best epoch and score) on the held-out fold;
    ``data.val`` and ``data.test`` are not used. Writes ``search.csv`` (one row per setting and
    fold) and ``search.md`` (mean and std per setting, best first); returns the best setting by
    the mean of ``metric`` (``val_loss`` is minimised, other metrics maximised).
    """
    from medens.training.engine import fit

    if data.task != "classification":
        raise ValueError("search uses stratified folds and applies to classification")
    model = model if isinstance(model, ComponentSpec) else ComponentSpec(name=model)
    loss = loss if isinstance(loss, ComponentSpec) else ComponentSpec(name=loss)
    training = training or TrainingSpec()
    settings = grid_settings(grid)
    for s in settings:
        _apply(s, model, loss, training)  # fail fast on a bad key, before any training
    folds = stratified_kfold(data.train.labels, k=k, seed=seed)
    out = Path(out_dir)
    rows: list[dict] = []
    for si, setting in enumerate(settings):
        m, lo, t = _apply(setting, model, loss, training)
        for fi, (tr, va) in enumerate(folds):
            fold = SplitData(task=data.task, class_names=data.class_names, train=data.train.subset(tr),
                             val=data.train.subset(va), test=Split(images=data.train.images[:0], ids=[],
                                                                   labels=data.train.labels[:0]))
            res = fit(m, lo, fold, t, out / f"setting{si:02d}" / f"fold{fi}", seed=seed + fi, progress=progress)
            score = res.val_metrics["val_loss"] if metric == "val_loss" else res.val_metrics.get(metric)
            if score is None:
                raise ValueError(f"unknown search metric {metric!r}; have {', '.join(res.val_metrics)}")
            rows.append({"setting": si, **setting, "fold": fi, metric: score, "best_epoch": res.best_epoch})
    summary = summarise(rows, settings, metric)
    keys = list(settings[0])
    csv_path = out / "search.csv"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["setting", *keys, "fold", metric, "best_epoch"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(csv_path, buf.getvalue())
    md_path = atomic_write_text(out / "search.md", markdown_table(summary, keys, metric, k))
    return SearchResult(best=summary[0]["setting"], rows=rows, metric=metric, csv_path=csv_path, markdown_path=md_path)


def summarise(rows: list[dict], settings: list[dict], metric: str) -> list[dict]:
    """Mean and standard deviation (ddof=1) of ``metric`` per setting, best first."""
    out = []
    for si, s in enumerate(settings):
        vals = np.array([r[metric] for r in rows if r["setting"] == si], dtype=float)
        out.append({"setting": s, "mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if vals.size > 1 else 0.0,
                    "n": int(vals.size)})
    out.sort(key=lambda r: r["mean"], reverse=metric != "val_loss")
    return out


def markdown_table(summary: list[dict], keys: list[str], metric: str, k: int) -> str:
    head = "| " + " | ".join([*keys, f"{metric} mean", "std", "folds"]) + " |"
    sep = "|" + "---|" * (len(keys) + 3)
    lines = [f"# {k}-fold cross-validation ({metric}; best first)", "", head, sep]
    for r in summary:
        lines.append("| " + " | ".join([*(str(r["setting"][key]) for key in keys), f"{r['mean']:.4f}",
                                         f"{r['std']:.4f}", str(r["n"])]) + " |")
    return "\n".join(lines) + "\n"
