"""The report: renders what :mod:`medens.evaluation.systems` computed, computes nothing it ranks by.

:func:`write_report` writes ``report.md`` and a self-contained ``report.html`` (images embedded
as base64 PNG): the leaderboard with each system's selection score (validation) beside its test
metrics, which system was selected and by what rule, the systems that were skipped and why, ROC
and precision-recall curves, confusion matrices, a reliability diagram, the calibration of every
system before and after temperature scaling (three ECEs with CIs, one small reliability diagram per
system), training curves and a Grad-CAM grid per class.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from medens.config import ExperimentSpec
from medens.data.duplicates import duplicate_notes
from medens.metric_names import metric_value
from medens.storage.atomic import atomic_write_bytes, atomic_write_text

MAX_CURVES = 8


# ---------------------------------------------------------------- figures


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fig_curves(y_true: np.ndarray, systems: dict[str, np.ndarray]) -> tuple[str, str]:
    """Micro-averaged ROC and precision-recall curves of up to 8 systems."""
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    plt = _plt()
    k = next(iter(systems.values())).shape[1]
    onehot = np.eye(k)[y_true].ravel()
    roc, ax1 = plt.subplots(figsize=(5.5, 4.5))
    pr, ax2 = plt.subplots(figsize=(5.5, 4.5))
    for name, probs in list(systems.items())[:MAX_CURVES]:
        fpr, tpr, _ = roc_curve(onehot, probs.ravel())
        ax1.plot(fpr, tpr, label=f"{name} ({auc(fpr, tpr):.3f})")
        prec, rec, _ = precision_recall_curve(onehot, probs.ravel())
        ax2.plot(rec, prec, label=name)
    ax1.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax1.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (micro-average, AUROC)")
    ax2.set(xlabel="recall", ylabel="precision", title="Precision-recall (micro-average)")
    for ax in (ax1, ax2):
        ax.legend(fontsize=7, loc="lower right" if ax is ax1 else "lower left")
        ax.grid(alpha=0.3)
    return _png(roc), _png(pr)


def fig_confusion(result: dict[str, Any], names: list[str], class_names: list[str]) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        cm = np.asarray(result["systems"][name]["metrics"]["confusion_matrix"])
        ax.imshow(cm, cmap="Blues")
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=9)
        ax.set_xticks(range(len(class_names)), class_names, rotation=30, fontsize=8)
        ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
        ax.set(xlabel="predicted", ylabel="true", title=name)
    return _png(fig)


def fig_reliability(y_true: np.ndarray, systems: dict[str, np.ndarray], n_bins: int = 15) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    edges = np.linspace(0, 1, n_bins + 1)
    for name, probs in systems.items():
        conf, correct = probs.max(1), probs.argmax(1) == y_true
        bins = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
        xs, ys = [], []
        for b in range(n_bins):
            sel = bins == b
            if sel.any():
                xs.append(conf[sel].mean())
                ys.append(correct[sel].mean())
        ax.plot(xs, ys, "o-", ms=3, label=name)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="confidence", ylabel="accuracy", title="Reliability diagram (15 bins)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _png(fig)


MAX_RELIABILITY_PANELS = 16


def fig_reliability_grid(y_true: np.ndarray, after: dict[str, np.ndarray], before: dict[str, np.ndarray],
                         n_bins: int = 15) -> str:
    """One small reliability diagram per system (the first 16, in the order given): as served
    (after temperature scaling, blue) and, for members, before it (grey, dashed)."""
    from medens.evaluation.metrics import METRICS, reliability_bins

    plt = _plt()
    names = list(after)[:MAX_RELIABILITY_PANELS]
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols, 2.5 * rows), squeeze=False, sharex=True, sharey=True)
    for ax, name in zip(axes.ravel(), names):
        for probs, style, label in ((before.get(name), "o--", "before T"), (after[name], "o-", "after T")):
            if probs is None:
                continue
            b = reliability_bins(y_true, probs, n_bins)
            ax.plot(b["confidence"], b["accuracy"], style, ms=2.5, lw=1,
                    color="0.55" if label == "before T" else "tab:blue", label=label)
        ax.plot([0, 1], [0, 1], "k:", lw=0.7)
        ece = [f"{METRICS['ece'](y_true, p):.3f}" for p in (before.get(name), after[name]) if p is not None]
        ax.set_title(f"{name}\nECE {' → '.join(ece)}", fontsize=7)
        ax.set(xlim=(0, 1), ylim=(0, 1))
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    axes[0][0].legend(fontsize=6, loc="upper left")
    fig.supxlabel("confidence (15 equal-width bins)", fontsize=8)
    fig.supylabel("accuracy", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def fig_training(members: dict[str, Path]) -> str:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, d in members.items():
        hist = json.loads((Path(d) / "model.json").read_text())["history"]
        ep = [h["epoch"] for h in hist]
        line = a1.plot(ep, [h["train_loss"] for h in hist], "--", lw=1)[0]
        a1.plot(ep, [h["val_loss"] for h in hist], "-", color=line.get_color(), lw=1.5, label=name)
        metric = "val_mcc" if "val_mcc" in hist[0] else "val_dice"
        a2.plot(ep, [h[metric] for h in hist], "-", lw=1.5, label=name)
        a2.set_ylabel(metric)
    a1.set(xlabel="epoch", ylabel="loss", title="Training (dashed) and validation loss")
    a2.set(xlabel="epoch", title="Validation metric per epoch")
    a1.set_yscale("log")
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
    a2.legend(fontsize=7)
    return _png(fig)


def fig_segmentation_examples(images: np.ndarray, masks: np.ndarray, probs: np.ndarray, n: int = 6) -> str:
    plt = _plt()
    # largest lesions first (cast: negating an unsigned sum would wrap around)
    idx = np.argsort(-masks.reshape(len(masks), -1).sum(1).astype(np.int64), kind="stable")[:n]
    fig, axes = plt.subplots(2, len(idx), figsize=(2.2 * len(idx), 4.4), squeeze=False)
    for j, i in enumerate(idx):
        img = images[i][..., 0] if images.shape[-1] == 1 else images[i]
        for r, (m, title) in enumerate(((masks[i], "truth"), (probs[i].argmax(0), "prediction"))):
            ax = axes[r][j]
            ax.imshow(img, cmap="gray")
            ax.contour(m, levels=[0.5], colors="lime" if r == 0 else "red", linewidths=1)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    return _png(fig)


# ---------------------------------------------------------------- documents


def _fmt(x: Any, nd: int = 3) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def _ci_text(ci: dict | None) -> str:
    if not ci or ci.get("low") is None:
        return ""
    return f"[{ci['low']:.3f}, {ci['high']:.3f}]"


def _p_text(p: Any) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _selection_text(result: dict[str, Any], name: str) -> str:
    sel = result.get("selection", {}).get(name, {})
    score = sel.get("score")
    mark = " (selected)" if name == result.get("selected") else ""
    return ("n/a" if score is None else f"{score:.3f}") + mark


def table_rows(result: dict[str, Any], order: list[str], task: str) -> tuple[list[str], list[list[str]]]:
    """Leaderboard columns and rows (strings), shared by the HTML and Markdown reports.

    The selection score (validation) stands beside the test metrics; ``order`` is the selection order.
    """
    ref = result["reference"]
    sel_head = f"selection: val {result.get('gate_metric', '')}".rstrip()
    if task == "segmentation":
        head = ["#", "system", "kind", sel_head, "Dice [95% CI]", "Dice per class", "IoU", "HD95",
                "p vs best member (Holm)"]
        rows = []
        for i, n in enumerate(order, 1):
            s = result["systems"][n]
            m, ci = s["metrics"], s["ci"]["dice"]
            p = "reference" if n == ref else _p_text(s["vs_reference"].get("p_holm"))
            per_class = ", ".join(f"{c}: {_fmt(v.get('dice'))}" for c, v in (m.get("per_class") or {}).items())
            rows.append([str(i), n, s["kind"], _selection_text(result, n), f"{m['dice']:.3f} {_ci_text(ci)}",
                         per_class or "n/a", _fmt(m.get("iou")), _fmt(m.get("hd95"), 2), p])
        return head, rows
    head = ["#", "system", "kind", sel_head, "accuracy [95% CI]", "MCC [95% CI]", "F1 macro [95% CI]",
            "AUROC macro [95% CI]", "McNemar p (Holm)", "ΔMCC p (Holm)", "DeLong p (Holm)",
            *(f"{label} [95% CI]" for label in CALIBRATION_LABELS.values())]
    rows = []
    for i, n in enumerate(order, 1):
        s = result["systems"][n]
        m, ci = s["metrics"], s["ci"]
        if n == ref:
            ps = ["reference"] * 3
        else:
            v = s["vs_reference"]
            ps = [_p_text(v.get("mcnemar_p_holm")), _p_text(v.get("mcc_p_holm")), _p_text(v.get("auroc_p_holm"))]
        rows.append([str(i), n, s["kind"], _selection_text(result, n), f"{m['accuracy']:.3f} {_ci_text(ci['accuracy'])}",
                     f"{m['mcc']:.3f} {_ci_text(ci['mcc'])}", f"{metric_value(m, 'macro_f1'):.3f} {_ci_text(metric_value(ci, 'macro_f1'))}",
                     f"{_fmt(m['auroc_macro'])} {_ci_text(ci['auroc_macro'])}", *ps,
                     *(f"{_fmt(m.get(k))} {_ci_text(ci.get(k))}" for k in CALIBRATION_LABELS)])
    return head, rows


CALIBRATION_LABELS = {"ece": "ECE", "classwise_ece": "classwise ECE", "adaptive_ece": "adaptive ECE"}
CALIBRATION_NOTES = [
    "ECE: top-label, 15 equal-width confidence bins (Guo et al. 2017); classwise ECE: the mean over classes of "
    "the binned error of each class's probability (Kull et al. 2019); adaptive ECE: top-label over 15 "
    "equal-mass bins (Nixon et al. 2019). Lower is better. Binning noise biases a measured ECE upwards, so its "
    "95% CI is the basic bootstrap interval over plain resamples, for the model's true calibration error: it "
    "may lie below the measured value (metrics.json has the bias-corrected value as debiased).",
    "After T: the probabilities as served, with each member's temperature (fitted on validation only) applied. "
    "Before T: the same member's test probabilities without its temperature (the saved probabilities unscaled "
    "with the temperature in model.json; a cross-validated member: the mean of its fold models' unscaled "
    "probabilities). Temperature scaling never changes a member's predicted class, only its confidence.",
    "Ensembles combine their members' temperature-scaled probabilities and have no temperature of their own: "
    "they are reported as served (after), with no before.",
]


def calibration_rows(result: dict[str, Any], order: list[str]) -> tuple[list[str], list[list[str]]]:
    """The calibration table: each system's temperature and its three ECEs before and after temperature
    scaling, with 95% CIs (``systems[name]["calibration"]``, :func:`medens.evaluation.systems.calibration_entry`)."""
    head = ["system", "kind", "temperature"] + [f"{label} {when}" for label in CALIBRATION_LABELS.values()
                                                 for when in ("before T", "after T")]
    rows = []
    for name in order:
        s = result["systems"][name]
        cal = s.get("calibration") or {}
        t = cal.get("temperature")
        temp = "–" if t is None else (", ".join(f"{v:.2f}" for v in t) if isinstance(t, list) else f"{t:.2f}")
        cells = []
        for key in CALIBRATION_LABELS:
            for part in (cal.get("before"), cal.get("after")):
                ci = (part or {}).get(key)
                cells.append("n/a" if ci is None else f"{_fmt(ci.get('point'))} {_ci_text(ci)}")
        rows.append([name, s["kind"], temp, *cells])
    return head, rows


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#1d2430;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d8dde6;padding-bottom:.3rem}
.sub{color:#5b6575;margin-top:0} table{border-collapse:collapse;font-size:.85rem;width:100%}
th,td{border:1px solid #d8dde6;padding:.35rem .5rem;text-align:left} th{background:#f2f4f8}
tr.best td{background:#eaf6ec;font-weight:600} tr.ref td{background:#fff6e0}
.figs{display:flex;flex-wrap:wrap;gap:1rem} .figs img{max-width:100%;border:1px solid #e3e6ec}
.note{font-size:.85rem;color:#5b6575} code{background:#f2f4f8;padding:0 .25rem}
.warn{background:#fdecea;border:1px solid #e0a39d;color:#7a1f16;padding:.6rem .9rem;margin:1rem 0}
"""


Table = tuple[str, list[str], list[list[str]], list[str]]
"""An extra table of the report: (section title, header, rows, notes under it)."""


def _html_table(head: list[str], rows: list[list[str]]) -> list[str]:
    esc = html.escape
    return ["<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>",
            *("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows), "</tbody></table>"]


def render_html(title: str, subtitle: str, head: list[str], rows: list[list[str]],
                figures: list[tuple[str, str | list[tuple[str, str]]]], notes: list[str], best: str,
                reference: str, warnings: list[str] | None = None, tables: list[Table] | None = None) -> str:
    """The self-contained page. A figure entry is ``(caption, b64)`` or ``(section, [(caption, b64), ...])``
    for images shown side by side; ``warnings`` (:func:`collapse_warnings`) come first, in a red box;
    ``tables`` follow the leaderboard."""
    esc = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
           f"<h1>{esc(title)}</h1>", f'<p class="sub">{esc(subtitle)}</p>']
    if warnings:
        out.append('<div class="warn"><h2>Warnings: class collapse</h2>'
                   + "<br>".join(esc(w) for w in warnings) + "</div>")
    out += ["<h2>Leaderboard (ordered by the selection score; test metrics to report)</h2>",
           "<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for r in rows:
        cls = ' class="best"' if r[1] == best else (' class="ref"' if r[1] == reference else "")
        out.append(f"<tr{cls}>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>")
    out.append("</tbody></table>")
    out.append("<p class=\"note\">" + "<br>".join(esc(n) for n in notes) + "</p>")
    for section, t_head, t_rows, t_notes in tables or []:
        out += [f"<h2>{esc(section)}</h2>", *_html_table(t_head, t_rows),
                '<p class="note">' + "<br>".join(esc(n) for n in t_notes) + "</p>"]
    for section, content in figures:
        group = content if isinstance(content, list) else [(section, content)]
        imgs = "".join(f'<img alt="{esc(c)}" src="data:image/png;base64,{b64}">' for c, b64 in group)
        out.append(f'<h2>{esc(section)}</h2><div class="figs">{imgs}</div>')
    out.append("</body></html>")
    return "\n".join(out)


def render_markdown(title: str, subtitle: str, head: list[str], rows: list[list[str]], notes: list[str],
                    warnings: list[str] | None = None, tables: list[Table] | None = None) -> str:
    lines = [f"# {title}", "", subtitle, ""]
    if warnings:
        lines += ["## Warnings: class collapse", "", *[f"- **{w}**" for w in warnings], ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", *[f"- {n}" for n in notes], ""]
    for section, t_head, t_rows, t_notes in tables or []:
        lines += [f"## {section}", "", "| " + " | ".join(t_head) + " |", "|" + "---|" * len(t_head)]
        lines += ["| " + " | ".join(r) + " |" for r in t_rows]
        lines += ["", *[f"- {n}" for n in t_notes], ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- the documents from a result


SIGNIFICANCE_TESTS = {
    "classification": (("mcnemar_p_holm", "accuracy", "accuracy"), ("mcc_p_holm", "mcc", "MCC"),
                       ("auroc_p_holm", "auroc_macro", "AUROC")),
    "segmentation": (("p_holm", "dice", "Dice"),),
}


def significance_note(result: dict[str, Any], alpha: float, task: str) -> str:
    """One plain sentence: which systems differ significantly from the reference (Holm-corrected
    p < ``alpha``), on what and in which direction, and that every other difference is not significant."""
    ref = result["reference"]
    found = []
    for name in result["leaderboard"]:
        if name == ref:
            continue
        s = result["systems"][name]
        v = s.get("vs_reference", {})
        for key, metric, label in SIGNIFICANCE_TESTS[task]:
            p = v.get(key)
            if p is not None and p < alpha:
                a, b = s["metrics"].get(metric), result["systems"][ref]["metrics"].get(metric)
                word = "" if a is None or b is None else (" higher" if a > b else " lower")
                found.append(f"{name} ({label}{word}, p {'< 0.001' if p < 0.001 else f'= {p:.3f}'})")
    if not found:
        return (f"Significance at alpha {alpha:g} (Holm-corrected): no system differs significantly from the "
                f"reference {ref} on this test split; the differences in the table are within chance.")
    return (f"Significance at alpha {alpha:g} (Holm-corrected), against the reference {ref}: "
            + "; ".join(found) + ". Every other difference in the table is not significant.")


def collapse_warnings(result: dict[str, Any]) -> list[str]:
    """One line per system that predicts a single class on its selection (validation) predictions,
    and, when the selected system is one of them, that the run failed on quality."""
    from medens.training.collapse import collapse_warning

    out = []
    if result.get("quality") == "failed":
        out.append(f"RUN FAILED ON QUALITY: {result.get('quality_reason')}")
    for name, cls in (result.get("collapsed") or {}).items():
        kind = result.get("systems", {}).get(name, {}).get("kind", "system")
        out.append(collapse_warning(name, {"collapsed_class": cls}, kind))
    return out


def report_notes(result: dict[str, Any], spec: ExperimentSpec) -> list[str]:
    """The plain-words lines under the leaderboard: what was selected and how, what was skipped."""
    ev, sel, best = spec.evaluation, result["selected"], result.get("best_on_test")
    notes = [f"Selected for serving: {sel}, by the {result['selection_rule']}. The test split was not used to "
             f"select, fit or calibrate anything; it is scored once, to report."
             + (f" Highest test {result['gate_metric']}: {best}"
                + (" (the selected system)." if best == sel else " (not used for selection).") if best else ""),
             f"Reference = best single member on validation: {result['reference']}.",
             f"95% CIs: stratified percentile bootstrap, {ev.bootstrap} resamples, seed {spec.seed}"
             + (" (ECEs: the basic interval over plain resamples, see the calibration notes)."
                if spec.task == "classification" else "."),
             "p-values compare each system with the reference on the same test images (McNemar for accuracy, "
             "paired bootstrap for the MCC difference, DeLong for macro one-vs-rest AUROC), Holm-corrected "
             "across systems." if spec.task == "classification" else
             "p-values: paired bootstrap of the per-image Dice difference against the reference, Holm-corrected.",
             "Ensembles were fitted on out-of-fold predictions over train + val only (cross-validated selection)."
             if (result.get("selection_mode") or {}).get("mode") == "cv" else
             "Ensembles were fitted on validation predictions only.",
             (f"Split unit: groups (data.group_by {spec.data.group_by}); no group is in two splits."
              if spec.data.group_by else "Split unit: image (data.group_by not set: images of one patient may be "
                                         "in more than one split).")]
    mode = result.get("selection_mode") or {}
    if mode:
        notes.append(f"Selection: {mode['mode']} (evaluation.selection: {mode.get('requested')}), because "
                     f"{mode.get('reason')}. Rule: {mode.get('rule')}. Cost: {mode.get('fits')} fits"
                     + (f" ({mode['folds']} fold models per member)." if mode.get("folds") else "."))
    classical = result.get("classical_member") or {}
    if classical.get("members"):
        share = classical.get("share")
        notes.append(f"Classical member ({', '.join(classical['members'])}): carries "
                     f"{'none' if not share else f'{share:.0%}'} of the selected system ({classical.get('basis')}).")
    notes.append(significance_note(result, spec.evaluation.alpha, spec.task))
    for name, info in result.get("selection", {}).items():
        if info.get("score") is None:
            notes.append(f"Not selectable: {name}: {info.get('reason') or 'no selection score'}.")
    for name, reason in result.get("skipped", {}).items():
        notes.append(f"Skipped: {name}: {reason}")
    return notes


def write_report(spec: ExperimentSpec, result: dict[str, Any], data, members: dict[str, Path],
                 systems: dict[str, np.ndarray], out_dir: str | os.PathLike,
                 before: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Render ``result`` (see :func:`medens.evaluation.systems`) as ``report.html`` and ``report.md``.

    Args:
        spec: the experiment (titles, CI settings, Grad-CAM options).
        result: the evaluation result: ``systems`` with test metrics, ``selection``, ``selected``,
            ``reference``, ``leaderboard`` (the selection order), ``skipped``, ``gate_metric``.
        data: the ``SplitData`` (test labels, images and masks for the figures).
        members: member id -> model artifact (training curves, Grad-CAM of the reference).
        systems: system name -> test probabilities.
        out_dir: where the documents go.
        before: member name -> test probabilities before temperature scaling (the calibration
            section's "before T"; ensembles have none).

    Returns:
        ``{"leaderboard": rows as dicts, "report": path of report.html}``.
    """
    out = Path(out_dir)
    ev = spec.evaluation
    order, selected, reference = result["leaderboard"], result["selected"], result["reference"]
    figures: list[tuple[str, Any]] = []
    probs_by_name = {n: systems[n] for n in order}
    if spec.task == "classification":
        roc, pr = fig_curves(data.test.labels, probs_by_name)
        pair = list(dict.fromkeys([selected, reference]))
        figures += [("ROC and precision-recall", [("ROC curves", roc), ("Precision-recall curves", pr)]),
                    ("Confusion matrices and calibration",
                     [("Confusion matrices", fig_confusion(result, pair, data.class_names)),
                      ("Reliability diagram", fig_reliability(data.test.labels, {n: probs_by_name[n] for n in pair}))]),
                    ("Reliability per system, before (grey) and after (blue) temperature scaling",
                     _reliability_file(fig_reliability_grid(data.test.labels, probs_by_name, before or {}),
                                       out / "reliability.png"))]
    else:
        figures.append(("Examples (green: truth, red: selected system)",
                        fig_segmentation_examples(data.test.images, data.test.masks, systems[selected])))
    figures.append(("Training curves", fig_training(members)))
    if spec.task == "classification" and ev.gradcam:
        png = _gradcam(members[reference], data, out / "gradcam.png", ev.gradcam_per_class)
        if png is not None:
            figures.append((f"Grad-CAM per class ({reference}, at its cam_layer)", png))
    head, rows = table_rows(result, order, spec.task)
    title = f"medens report: {spec.name}"
    n_ens = sum(1 for s in result["systems"].values() if s["kind"] == "ensemble")
    subtitle = " — ".join(x for x in (spec.description, f"test n={len(data.test)}, {len(members)} members, "
                                      f"{n_ens} ensembles; selected on "
                                      f"{'out-of-fold' if (result.get('selection_mode') or {}).get('mode') == 'cv' else 'validation'} "
                                      f"{result['gate_metric']}") if x)
    notes = report_notes(result, spec) + duplicate_notes(getattr(data, "info", {}))  # the leak check's finding
    warnings = collapse_warnings(result)
    tables = ([("Calibration before and after temperature scaling", *calibration_rows(result, order),
                CALIBRATION_NOTES)] if spec.task == "classification" else [])
    tables += conformal_tables(result)  # the selected system's prediction sets, on test
    atomic_write_text(out / "report.html", render_html(title, subtitle, head, rows, figures, notes, selected, reference,
                                                       warnings, tables))
    atomic_write_text(out / "report.md", render_markdown(title, subtitle, head, rows, notes, warnings, tables))
    return {"leaderboard": [dict(zip(head, r)) for r in rows], "report": str(out / "report.html")}


def _reliability_file(png: str, path: Path) -> str:
    """Keep the per-system reliability diagrams as a file beside the report too; return ``png``."""
    atomic_write_bytes(path, base64.b64decode(png))
    return png


def conformal_table(result: dict[str, Any]) -> tuple[str, list[str], list[list[str]]]:
    """The selected system's conformal prediction sets on the test split (reported only): a caption,
    and per class and coverage level the test n, the empirical coverage and the mean set size."""
    conf = result.get("conformal") or {}
    test = conf.get("test") or {}
    if not test:
        return "", [], []
    head = ["class", "calibration n"] + [f"{h} @ {lv}" for lv in test for h in ("coverage", "mean set size")]
    names = list(conf.get("class_names") or next(iter(test.values()))["per_class"])
    rows = []
    for name in [*names, "all"]:
        cells = [name, str((conf.get("n_per_class") or {}).get(name, "")) if name != "all" else
                 str(sum((conf.get("n_per_class") or {}).values()))]
        for lv in test:
            entry = test[lv] if name == "all" else test[lv]["per_class"][name]
            n = f" (n={entry['n']})" if name != "all" else ""
            cells += [_fmt(entry["coverage"]) + n, _fmt(entry["mean_set_size"], 2)]
        rows.append(cells)
    caption = (f"Conformal prediction sets of {result['selected']} on the test split ({conf.get('method')}, "
               f"{str(conf.get('score', '')).upper()} {conf.get('params') or ''}; calibrated on "
               f"{conf.get('source')}). Per class, the share of test images whose set holds the true class, and "
               f"the mean set size. A class's coverage is a finite-sample guarantee on average over calibration "
               f"draws, not on this one test split: with few calibration images of a class it varies widely.")
    return caption, head, rows


def conformal_tables(result: dict[str, Any]) -> list[Table]:
    """:func:`conformal_table` as a report table (none without conformal sets)."""
    caption, head, rows = conformal_table(result)
    return [("Conformal prediction sets (test split, reported only)", head, rows, [caption])] if rows else []


def _gradcam(member_dir: Path, data, path: Path, per_class: int) -> str | None:
    """A Grad-CAM grid of the reference member on test images; base64 PNG."""
    from medens.evaluation.explain import gradcam_grid
    from medens.models.artifact import load_artifact

    loaded = load_artifact(member_dir)
    gradcam_grid(loaded.model, data.test.images, data.test.labels, data.class_names, loaded.input_spec,
                 per_class=per_class, path=path)
    return base64.b64encode(path.read_bytes()).decode()
