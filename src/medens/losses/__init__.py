"""Loss library: every loss of the five studies and the imbalance literature (docs/methods.md section 3).

Build a loss by name::

    from medens import losses
    loss = losses.build("focal", gamma=2.0)
    loss = losses.build("ldam", class_counts=[2538, 1349, 1345], drw_epoch=30)
    loss = losses.build("dice_ce", task="segmentation")
    value = loss(logits, target)

Losses that need class frequencies (``needs_class_counts``) take them from ``class_counts``, the
per-class counts of the training split (pixel counts for segmentation), never from the batch.
``medens.losses.format_table()`` (``medens losses list``) prints name, formula, parameters,
defaults and source of every loss; docs/losses.md is the same table (``write_docs``).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from medens.losses._common import (
    BaseLoss,
    LossInfo,
    balanced_class_weights,
    check_choice,
    effective_number_weights,
    frequency_weights,
)
from medens.losses.classification import (
    LOSSES,
    ClassBalancedLoss,
    ClassificationLoss,
    CrossEntropyLoss,
    DCALoss,
    EntropyRegularizedCELoss,
    FocalLoss,
    HingeLoss,
    KLDivergenceLoss,
    LDAMLoss,
    MarginLoss,
    NegativeEntropyCELoss,
)
from medens.losses.segmentation import (
    SEG_LOSSES,
    DiceCELoss,
    DiceFocalLoss,
    DiceLoss,
    ExpLogLoss,
    ExponentialLoss,
    FocalTverskyLoss,
    GeneralizedDiceLoss,
    PixelCrossEntropyLoss,
    PixelFocalLoss,
    SegmentationLoss,
    TverskyLoss,
)
from medens.registry import Registry, check_options

__all__ = [
    "LOSSES",
    "SEG_LOSSES",
    "TASKS",
    "BaseLoss",
    "ClassBalancedLoss",
    "ClassificationLoss",
    "CrossEntropyLoss",
    "DCALoss",
    "DiceCELoss",
    "DiceFocalLoss",
    "DiceLoss",
    "EntropyRegularizedCELoss",
    "ExpLogLoss",
    "ExponentialLoss",
    "FocalLoss",
    "FocalTverskyLoss",
    "GeneralizedDiceLoss",
    "HingeLoss",
    "KLDivergenceLoss",
    "LDAMLoss",
    "MarginLoss",
    "NegativeEntropyCELoss",
    "PixelCrossEntropyLoss",
    "PixelFocalLoss",
    "SegmentationLoss",
    "TverskyLoss",
    "balanced_class_weights",
    "build",
    "default_params",
    "effective_number_weights",
    "format_table",
    "frequency_weights",
    "loss_table",
    "names",
    "needs_class_counts",
    "registry",
    "write_docs",
]

TASKS = ("classification", "segmentation")


def registry(task: str = "classification") -> Registry[BaseLoss]:
    """The registry of ``task``: ``LOSSES`` (classification) or ``SEG_LOSSES`` (segmentation)."""
    check_choice("task", task, TASKS)
    return LOSSES if task == "classification" else SEG_LOSSES


def names(task: str = "classification") -> list[str]:
    """Registered loss names of ``task``, sorted."""
    return registry(task).names()


def default_params(name: str, task: str = "classification") -> dict[str, Any]:
    """The options of loss ``name`` with their defaults (``class_counts`` excluded)."""
    factory = registry(task).get(name)
    return {
        p.name: p.default
        for p in inspect.signature(factory).parameters.values()
        if p.name != "class_counts"
    }


def _info(name: str, task: str) -> LossInfo:
    return registry(task).get(name).loss_info  # type: ignore[attr-defined]


def needs_class_counts(name: str, task: str = "classification", **params: Any) -> bool:
    """Whether loss ``name`` built with ``params`` needs the training split's ``class_counts``.

    Example: ``margin`` needs them with its default ``weight="balanced"``, not with ``weight=None``.
    """
    effective = default_params(name, task)
    effective.update(params)
    return bool(_info(name, task).needs_counts(effective))


def build(name: str, class_counts: Any = None, task: str = "classification", **params: Any) -> BaseLoss:
    """Build the loss registered as ``name`` for ``task``.

    Args:
        name: registry name, e.g. ``"focal"`` or (segmentation) ``"dice_ce"``.
        class_counts: per-class counts of the training split (pixel counts per class for
            segmentation); required by the losses for which ``needs_class_counts`` is true.
        task: ``"classification"`` or ``"segmentation"``.
        **params: the loss's options (see ``format_table``).

    Returns:
        The loss module, called as ``loss(logits, target)``.

    Raises:
        ValueError: unknown loss name or option (with close matches), missing ``class_counts``,
            or an invalid option value.
    """
    factory = registry(task).get(name)
    check_options(name, params, list(default_params(name, task)))
    if class_counts is None and needs_class_counts(name, task, **params):
        raise ValueError(
            f"{name} loss needs class_counts (per-class counts of the training split) with options "
            f"{params or 'at their defaults'}; pass class_counts=[n_0, n_1, ...]"
        )
    return factory(class_counts=class_counts, **params)


def loss_table(task: str | None = None) -> list[dict[str, Any]]:
    """One row per registered loss (both tasks when ``task`` is None).

    Each row has ``name``, ``task``, ``formula``, ``parameters`` (option -> default),
    ``needs_class_counts`` (at the defaults), ``class_counts_note`` and ``source``.
    """
    tasks = TASKS if task is None else (check_choice("task", task, TASKS),)
    rows = []
    for t in tasks:
        for name in names(t):
            info = _info(name, t)
            rows.append(
                {
                    "name": name,
                    "task": t,
                    "formula": info.formula,
                    "parameters": default_params(name, t),
                    "needs_class_counts": needs_class_counts(name, t),
                    "class_counts_note": info.counts_note,
                    "source": info.source,
                }
            )
    return rows


def _fmt_value(value: Any) -> str:
    text = repr(value)
    if isinstance(value, float) and len(text) > 10:
        return f"{value:.6g}"
    return text


def _fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt_value(v)}" for k, v in params.items())


_NOTES = """\
Conventions (all losses):

- Called as `loss(logits, target)`. Classification: logits `B x K`, target class indices `(B,)` or
  one-hot `B x K`. Segmentation: logits `B x K x H x W[ x D]`, target indices `(B,[1,]H,W[,D])` or
  one-hot. `K = 1` is a binary sigmoid output, computed exactly as the softmax over `[0, z]`
  (`ce` is then binary cross-entropy; per-class vectors then have 2 entries).
- `p = softmax(z)` computed with `log_softmax` in float32 (autocast is disabled inside the loss).
- `reduction`: `"none"` gives one value per sample (classification) or per image (segmentation,
  after averaging over classes and pixels); `"mean"` and `"sum"` reduce those over the batch.
  `ce`, `weighted_ce`, `label_smoothing_ce` with `weight` and `ldam` after its re-weighting epoch
  divide the sum by the summed class weights of the samples (as `torch.nn.CrossEntropyLoss`).
- `class_counts`: per-class counts of the training split (pixel counts for segmentation), never
  taken from the batch. "balanced" weights are `w_k = N / (K n_k)`.
- `ldam` with `drw_epoch=E`: the training engine calls `loss.set_epoch(epoch)` (0-based) at the
  start of every epoch; from epoch E on, class-balanced weights (effective number, `drw_beta`
  0.9999) apply (Cao et al. 2019). Every loss has `set_epoch` (a no-op for the others).
- `dca_*`: the DCA term is a batch statistic; `reduction="none"` adds it to every sample.
- Overlap losses (dice, generalized_dice, tversky, focal_tversky, dice part of dice_ce and
  dice_focal) follow MONAI's defaults: per image and class, background included,
  `smooth_nr = smooth_dr = 1e-5`, averaged over classes. `tversky`'s alpha weighs false
  negatives (MONAI's alpha weighs false positives).
"""


def format_table(task: str | None = None, fmt: str = "text") -> str:
    """The loss table as plain text (``medens losses list``) or Markdown (docs/losses.md).

    Args:
        task: ``"classification"``, ``"segmentation"`` or None for both.
        fmt: ``"text"`` or ``"markdown"``.
    """
    check_choice("fmt", fmt, ("text", "markdown"))
    rows = loss_table(task)
    tasks = TASKS if task is None else (task,)
    lines: list[str] = []
    if fmt == "markdown":
        lines += [
            "# medens losses",
            "",
            "<!-- Generated from the loss registry by `python -m medens.losses docs docs/losses.md`; do not edit. -->",
            "",
            "Build with `medens.losses.build(name, class_counts=None, task=..., **params)`; list with",
            "`medens losses list`. Formulas use the notation of docs/methods.md section 1: `p = softmax(z)`, `y` one-hot",
            "targets, `n_k` the training count of class k, `N = sum_k n_k`, K classes.",
            "",
            _NOTES,
        ]
        for t in tasks:
            lines += [
                f"## {t.capitalize()} losses (`task=\"{t}\"`)",
                "",
                "| name | formula | parameters (defaults) | class_counts | source |",
                "|---|---|---|---|---|",
            ]
            for row in rows:
                if row["task"] != t:
                    continue
                cells = [
                    f"`{row['name']}`",
                    row["formula"],
                    f"`{_fmt_params(row['parameters'])}`",
                    row["class_counts_note"],
                    row["source"],
                ]
                lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
            lines.append("")
        return "\n".join(lines).rstrip("\n") + "\n"
    for t in tasks:
        lines += [f"{t} losses", "=" * len(f"{t} losses")]
        for row in rows:
            if row["task"] != t:
                continue
            lines += [
                row["name"],
                f"    formula:      {row['formula']}",
                f"    parameters:   {_fmt_params(row['parameters'])}",
                f"    class_counts: {row['class_counts_note']}",
                f"    source:       {row['source']}",
            ]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def write_docs(path: str | Path) -> Path:
    """Write the Markdown loss table (docs/losses.md) to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(format_table(fmt="markdown"), encoding="utf-8")
    tmp.replace(path)
    return path
