"""Evaluation of every member and ensemble on the test split, and the report.

``stage_evaluate`` scores each system with every metric of METHODS section 6, 95% bootstrap
CIs (and study 1's normal-approximation CI for accuracy), and paired tests against the best
single member (chosen on validation, so the reference is not picked on test): McNemar for
accuracy, paired bootstrap for the MCC difference and DeLong for macro one-vs-rest AUROC,
Holm-corrected across the comparisons. It writes ``metrics.json``, ``kfp_metrics.json`` (the
shape KFP's ClassificationMetrics artifact takes), ``report.md`` and a self-contained
``report.html`` (images embedded as base64 PNG): leaderboard, ROC and precision-recall curves,
confusion matrices, a reliability diagram, training curves and a Grad-CAM grid per class.
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
from medens.evaluation.metrics import classification_metrics, kfp_classification_metrics, segmentation_metrics
from medens.evaluation.stats import bootstrap_ci, delong_ovr, holm, mcnemar, normal_ci, paired_bootstrap
from medens.storage.atomic import atomic_write_text

CI_METRICS = ("accuracy", "mcc", "f1_macro", "auroc_macro")
MAX_CURVES = 8


# ---------------------------------------------------------------- numbers


def _system_predictions(members: dict[str, Path], ensembles: dict[str, Path], split: str) -> dict[str, Any]:
    from medens.training.predictions import Predictions

    out = {}
    for kind, group in (("member", members), ("ensemble", ensembles)):
        for name, d in group.items():
            out[name] = (kind, Predictions.load(Path(d) / "predictions" / f"{split}.npz"))
    return out


def _validation_reference(members: dict[str, Path], task: str, metric: str) -> str:
    """The best single member on validation (the reference every system is compared with)."""
    from medens.ensemble import rank_members

    val = {m: p for m, (_, p) in _system_predictions(members, {}, "val").items()}
    if task == "segmentation":
        from medens.ensemble import dice_score

        return max(val, key=lambda m: (dice_score(val[m].masks, val[m].probs.argmax(1)), m))
    return rank_members(val, metric=metric if metric in ("mcc", "accuracy", "macro_f1") else "mcc")[0][0]


def evaluate_classification(y_true: np.ndarray, systems: dict[str, tuple[str, np.ndarray]], *, reference: str,
                            class_names: list[str], n_resamples: int = 2000, confidence: float = 0.95,
                            seed: int = 0) -> dict[str, Any]:
    """Metrics, CIs and Holm-corrected paired tests of every system against ``reference``."""
    ref_probs = systems[reference][1]
    out: dict[str, Any] = {"reference": reference, "systems": {}}
    raw: dict[str, dict[str, float | None]] = {"mcnemar": {}, "mcc": {}, "auroc": {}}
    for name, (kind, probs) in systems.items():
        m = classification_metrics(y_true, probs, class_names=class_names)
        cis = {metric: bootstrap_ci(y_true, probs, metric, n_resamples=n_resamples, confidence=confidence, seed=seed)
               for metric in CI_METRICS}
        entry: dict[str, Any] = {"kind": kind, "metrics": m, "ci": cis,
                                 "accuracy_normal_ci": list(normal_ci(m["accuracy"], len(y_true)))}
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


def _bootstrap_mean(values: np.ndarray, n: int, confidence: float, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n, len(values)))
    means = values[idx].mean(axis=1)
    a = (1 - confidence) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def evaluate_segmentation(masks_true: np.ndarray, systems: dict[str, tuple[str, np.ndarray]], *, reference: str,
                          n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Dice/IoU/HD95 per system with a bootstrap CI of the mean Dice over images, and a paired
    bootstrap test of the Dice difference against ``reference`` (Holm-corrected)."""
    out: dict[str, Any] = {"reference": reference, "systems": {}}
    per_image = {}
    for name, (kind, probs) in systems.items():
        m = segmentation_metrics(masks_true, probs.argmax(1))
        dice = np.array([r["dice"] for r in m["per_image"]], dtype=float)
        per_image[name] = dice
        lo, hi = _bootstrap_mean(dice, n_resamples, confidence, seed)
        out["systems"][name] = {"kind": kind, "metrics": {k: v for k, v in m.items() if k != "per_image"},
                                "ci": {"dice": {"point": float(dice.mean()), "low": lo, "high": hi}}}
    ref = per_image[reference]
    ps = {}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ref), size=(n_resamples, len(ref)))
    for name, dice in per_image.items():
        if name == reference:
            continue
        d = dice - ref
        boot = d[idx].mean(axis=1)
        p = (1 + np.sum(np.abs(boot - d.mean()) >= abs(d.mean()))) / (1 + n_resamples)
        out["systems"][name]["vs_reference"] = {"dice_difference": float(d.mean()), "p_value": float(p)}
        ps[name] = float(p)
    for n, adj in zip(ps, holm(list(ps.values()))):
        out["systems"][n]["vs_reference"]["p_holm"] = adj
    return out


def leaderboard(result: dict[str, Any], metric: str) -> list[str]:
    """System names, best first by the test ``metric`` (ties by name)."""
    def score(name: str) -> float:
        v = result["systems"][name]["metrics"].get(metric)
        return -np.inf if v is None else float(v)

    return sorted(result["systems"], key=lambda n: (-score(n), n))


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


def table_rows(result: dict[str, Any], order: list[str], task: str) -> tuple[list[str], list[list[str]]]:
    """Leaderboard columns and rows (strings), shared by the HTML and Markdown reports."""
    ref = result["reference"]
    if task == "segmentation":
        head = ["#", "system", "kind", "Dice [95% CI]", "IoU", "HD95", "p vs best member (Holm)"]
        rows = []
        for i, n in enumerate(order, 1):
            s = result["systems"][n]
            m, ci = s["metrics"], s["ci"]["dice"]
            p = "reference" if n == ref else _p_text(s["vs_reference"].get("p_holm"))
            rows.append([str(i), n, s["kind"], f"{m['dice']:.3f} {_ci_text(ci)}", _fmt(m.get("iou")), _fmt(m.get("hd95"), 2), p])
        return head, rows
    head = ["#", "system", "kind", "accuracy [95% CI]", "MCC [95% CI]", "F1 macro [95% CI]", "AUROC macro [95% CI]",
            "McNemar p (Holm)", "ΔMCC p (Holm)", "DeLong p (Holm)"]
    rows = []
    for i, n in enumerate(order, 1):
        s = result["systems"][n]
        m, ci = s["metrics"], s["ci"]
        if n == ref:
            ps = ["reference"] * 3
        else:
            v = s["vs_reference"]
            ps = [_p_text(v.get("mcnemar_p_holm")), _p_text(v.get("mcc_p_holm")), _p_text(v.get("auroc_p_holm"))]
        rows.append([str(i), n, s["kind"], f"{m['accuracy']:.3f} {_ci_text(ci['accuracy'])}",
                     f"{m['mcc']:.3f} {_ci_text(ci['mcc'])}", f"{m['f1_macro']:.3f} {_ci_text(ci['f1_macro'])}",
                     f"{_fmt(m['auroc_macro'])} {_ci_text(ci['auroc_macro'])}", *ps])
    return head, rows


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#1d2430;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d8dde6;padding-bottom:.3rem}
.sub{color:#5b6575;margin-top:0} table{border-collapse:collapse;font-size:.85rem;width:100%}
th,td{border:1px solid #d8dde6;padding:.35rem .5rem;text-align:left} th{background:#f2f4f8}
tr.best td{background:#eaf6ec;font-weight:600} tr.ref td{background:#fff6e0}
.figs{display:flex;flex-wrap:wrap;gap:1rem} .figs img{max-width:100%;border:1px solid #e3e6ec}
.note{font-size:.85rem;color:#5b6575} code{background:#f2f4f8;padding:0 .25rem}
"""


def render_html(title: str, subtitle: str, head: list[str], rows: list[list[str]],
                figures: list[tuple[str, str | list[tuple[str, str]]]], notes: list[str], best: str,
                reference: str) -> str:
    """The self-contained page. A figure entry is ``(caption, b64)`` or ``(section, [(caption, b64), ...])``
    for images shown side by side."""
    esc = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
           f"<h1>{esc(title)}</h1>", f'<p class="sub">{esc(subtitle)}</p>', "<h2>Leaderboard (test split)</h2>",
           "<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for r in rows:
        cls = ' class="best"' if r[1] == best else (' class="ref"' if r[1] == reference else "")
        out.append(f"<tr{cls}>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>")
    out.append("</tbody></table>")
    out.append("<p class=\"note\">" + "<br>".join(esc(n) for n in notes) + "</p>")
    for section, content in figures:
        group = content if isinstance(content, list) else [(section, content)]
        imgs = "".join(f'<img alt="{esc(c)}" src="data:image/png;base64,{b64}">' for c, b64 in group)
        out.append(f'<h2>{esc(section)}</h2><div class="figs">{imgs}</div>')
    out.append("</body></html>")
    return "\n".join(out)


def render_markdown(title: str, subtitle: str, head: list[str], rows: list[list[str]], notes: list[str]) -> str:
    lines = [f"# {title}", "", subtitle, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- the stage


def stage_evaluate(spec: ExperimentSpec, data_dir: str | os.PathLike, members: dict[str, str | os.PathLike],
                   ensembles: dict[str, str | os.PathLike], out_dir: str | os.PathLike) -> dict[str, Any]:
    """Score every system on test, run the paired tests, and write the report files."""
    from medens.data.types import SplitData

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    members = {k: Path(v) for k, v in members.items()}
    ensembles = {k: Path(v) for k, v in ensembles.items()}
    data = SplitData.load(data_dir)
    preds = _system_predictions(members, ensembles, "test")
    ev = spec.evaluation
    reference = _validation_reference(members, spec.task, spec.ensemble.rank_metric)
    systems = {n: (kind, p.probs.astype(np.float64)) for n, (kind, p) in preds.items()}
    if spec.task == "segmentation":
        result = evaluate_segmentation(data.test.masks, systems, reference=reference, n_resamples=ev.bootstrap,
                                       confidence=ev.confidence, seed=spec.seed)
        gate = ev.gate_metric if ev.gate_metric in ("dice", "iou") else "dice"
    else:
        result = evaluate_classification(data.test.labels, systems, reference=reference, class_names=data.class_names,
                                         n_resamples=ev.bootstrap, confidence=ev.confidence, seed=spec.seed)
        gate = ev.gate_metric
    order = leaderboard(result, gate)
    best = order[0]
    result.update({"experiment": spec.name, "task": spec.task, "gate_metric": gate, "leaderboard": order,
                   "best": best, "best_kind": result["systems"][best]["kind"],
                   "best_path": str((members | ensembles)[best]), "n_test": len(data.test)})
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2, default=float))

    figures: list[tuple[str, str]] = []
    probs_by_name = {n: systems[n][1] for n in order}
    if spec.task == "classification":
        kfp = kfp_classification_metrics(data.test.labels, systems[best][1], data.class_names)
        kfp["scalar"] = {k: result["systems"][best]["metrics"][k] for k in ("accuracy", "mcc", "f1_macro", "auroc_macro")}
        atomic_write_text(out / "kfp_metrics.json", json.dumps(kfp, indent=2))
        roc, pr = fig_curves(data.test.labels, probs_by_name)
        pair = list(dict.fromkeys([best, reference]))
        figures += [("ROC and precision-recall", [("ROC curves", roc), ("Precision-recall curves", pr)]),
                    ("Confusion matrices and calibration",
                     [("Confusion matrices", fig_confusion(result, pair, data.class_names)),
                      ("Reliability diagram", fig_reliability(data.test.labels, {n: probs_by_name[n] for n in pair}))])]
    else:
        figures.append(("Examples (green: truth, red: best system)",
                        fig_segmentation_examples(data.test.images, data.test.masks, systems[best][1])))
    figures.append(("Training curves", fig_training(members)))
    if spec.task == "classification" and ev.gradcam:
        png = _gradcam(members[reference], data, out / "gradcam.png", ev.gradcam_per_class)
        if png is not None:
            figures.append((f"Grad-CAM per class ({reference}, at its cam_layer)", png))
    head, rows = table_rows(result, order, spec.task)
    title = f"medens report: {spec.name}"
    subtitle = " — ".join(x for x in (spec.description, f"test n={len(data.test)}, {len(members)} members, "
                                      f"{len(ensembles)} ensembles; ranked by test {gate}") if x)
    notes = [f"Reference = best single member on validation: {reference}. Best on test: {best}.",
             f"95% CIs: stratified percentile bootstrap, {ev.bootstrap} resamples, seed {spec.seed}.",
             "p-values compare each system with the reference on the same test images (McNemar for accuracy, "
             "paired bootstrap for the MCC difference, DeLong for macro one-vs-rest AUROC), Holm-corrected "
             "across systems." if spec.task == "classification" else
             "p-values: paired bootstrap of the per-image Dice difference against the reference, Holm-corrected.",
             "Ensembles were fitted on validation predictions only."]
    atomic_write_text(out / "report.html", render_html(title, subtitle, head, rows, figures, notes, best, reference))
    atomic_write_text(out / "report.md", render_markdown(title, subtitle, head, rows, notes))
    return {"best": best, "best_path": result["best_path"], "gate_metric": gate, "reference": reference,
            "leaderboard": [dict(zip(head, r)) for r in rows], "report": str(out / "report.html")}


def _gradcam(member_dir: Path, data, path: Path, per_class: int) -> str | None:
    """A Grad-CAM grid of the reference member on test images; base64 PNG."""
    from medens.evaluation.explain import gradcam_grid
    from medens.models.artifact import load_artifact

    loaded = load_artifact(member_dir)
    gradcam_grid(loaded.model, data.test.images, data.test.labels, data.class_names, loaded.input_spec,
                 per_class=per_class, path=path)
    return base64.b64encode(path.read_bytes()).decode()
