"""Classification and segmentation metrics against scikit-learn, MONAI and hand-written references."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import monai.metrics as mm
import numpy as np
import pytest
import torch
from kfp import dsl
from scipy import ndimage
from sklearn import metrics as skm

from medens.evaluation import (
    HIGHER_IS_BETTER,
    METRICS,
    classification_metrics,
    kfp_classification_metrics,
    metric_evaluator,
    metric_fn,
    segmentation_metrics,
)

NAMES = [
    "accuracy",
    "balanced_accuracy",
    "precision_macro",
    "recall_macro",
    "macro_f1",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "mcc",
    "kappa",
    "auroc_micro",
    "auroc_macro",
    "auprc_micro",
    "auprc_macro",
    "brier",
    "ece",
    "classwise_ece",
    "adaptive_ece",
]


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def make_data(seed: int, k: int, n: int = 250, signal: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced labels (60% class 0) and probabilities with ties (logits rounded to 0.1)."""
    rng = np.random.default_rng(seed)
    prior = np.r_[0.6, np.full(k - 1, 0.4 / (k - 1))]
    y = rng.choice(k, size=n, p=prior)
    z = rng.normal(size=(n, k))
    z[np.arange(n), y] += signal
    return y, softmax(np.round(z, 1))


def ece_reference(y: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Guo et al. 2017, written as a plain loop over bins (lo, hi]."""
    conf = probs.max(1)
    correct = probs.argmax(1) == y
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        in_bin = (conf > lo) & (conf <= hi) if b > 0 else (conf >= lo) & (conf <= hi)
        if in_bin.any():
            total += in_bin.sum() / len(y) * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return total


def brier_reference(y: np.ndarray, probs: np.ndarray) -> float:
    total = 0.0
    for i in range(len(y)):
        for k in range(probs.shape[1]):
            total += (probs[i, k] - (1.0 if y[i] == k else 0.0)) ** 2
    return total / len(y)


# ---------------------------------------------------------------------------------------------
# classification: every metric equals its reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_equal_sklearn(seed: int, k: int) -> None:
    y, p = make_data(seed, k)
    r = classification_metrics(y, p)
    pred = p.argmax(1)
    labels = list(range(k))
    onehot = np.eye(k)[y]

    def prf(fn, avg):
        return fn(y, pred, labels=labels, average=avg, zero_division=0)

    expected = {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "precision_macro": prf(skm.precision_score, "macro"),
        "recall_macro": prf(skm.recall_score, "macro"),
        "macro_f1": prf(skm.f1_score, "macro"),
        "precision_weighted": prf(skm.precision_score, "weighted"),
        "recall_weighted": prf(skm.recall_score, "weighted"),
        "f1_weighted": prf(skm.f1_score, "weighted"),
        "mcc": skm.matthews_corrcoef(y, pred),
        "kappa": skm.cohen_kappa_score(y, pred),
        "auroc_micro": skm.roc_auc_score(onehot, p, average="micro"),
        "auroc_macro": skm.roc_auc_score(onehot, p, average="macro"),
        "auprc_micro": skm.average_precision_score(onehot, p, average="micro"),
        "auprc_macro": skm.average_precision_score(onehot, p, average="macro"),
        "ece": ece_reference(y, p),
        "brier": brier_reference(y, p),
    }
    for name, value in expected.items():
        assert r[name] == pytest.approx(value, abs=1e-12), name
        assert METRICS[name](y, p) == pytest.approx(value, abs=1e-12), name
    if k == 2:
        assert r["per_class"]["1"]["auroc"] == pytest.approx(skm.roc_auc_score(y, p[:, 1]), abs=1e-12)
        assert r["per_class"]["1"]["auprc"] == pytest.approx(skm.average_precision_score(y, p[:, 1]), abs=1e-12)

    cm = skm.confusion_matrix(y, pred, labels=labels)
    assert r["confusion_matrix"] == cm.tolist()
    assert r["n"] == len(y)
    prec = skm.precision_score(y, pred, labels=labels, average=None, zero_division=0)
    rec = skm.recall_score(y, pred, labels=labels, average=None, zero_division=0)
    f1 = skm.f1_score(y, pred, labels=labels, average=None, zero_division=0)
    for c in range(k):
        tp = cm[c, c]
        fp = cm[:, c].sum() - tp
        fn = cm[c, :].sum() - tp
        tn = cm.sum() - tp - fp - fn
        pc = r["per_class"][str(c)]
        assert pc["precision"] == pytest.approx(prec[c], abs=1e-12)
        assert pc["recall"] == pytest.approx(rec[c], abs=1e-12)
        assert pc["sensitivity"] == pytest.approx(tp / (tp + fn), abs=1e-12)
        assert pc["f1"] == pytest.approx(f1[c], abs=1e-12)
        assert pc["specificity"] == pytest.approx(tn / (tn + fp), abs=1e-12)
        assert r["specificity"][c] == pc["specificity"]
        assert r["sensitivity"][c] == pc["sensitivity"]
        assert pc["support"] == int((y == c).sum())
        assert pc["auroc"] == pytest.approx(skm.roc_auc_score(y == c, p[:, c]), abs=1e-12)
        assert pc["auprc"] == pytest.approx(skm.average_precision_score(y == c, p[:, c]), abs=1e-12)
    json.dumps(r, allow_nan=False)


def test_hand_computed_example() -> None:
    # 4 samples, 2 classes; predictions 1, 0, 1, 1 for labels 1, 0, 0, 1: TP=2, FP=1, TN=1, FN=0
    y = np.array([1, 0, 0, 1])
    p = np.array([[0.2, 0.8], [0.9, 0.1], [0.4, 0.6], [0.3, 0.7]])
    r = classification_metrics(y, p, class_names=["neg", "pos"])
    assert r["confusion_matrix"] == [[1, 1], [0, 2]]
    assert r["accuracy"] == pytest.approx(0.75)
    assert r["per_class"]["pos"]["precision"] == pytest.approx(2 / 3)
    assert r["per_class"]["pos"]["specificity"] == pytest.approx(0.5)
    assert r["per_class"]["neg"]["specificity"] == pytest.approx(1.0)
    # MCC = (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 2 / sqrt(3 * 2 * 2 * 1)
    assert r["mcc"] == pytest.approx(2 / np.sqrt(12))
    # pos scores 0.8, 0.7 are above both negative scores 0.1, 0.6: AUROC 1
    assert r["per_class"]["pos"]["auroc"] == pytest.approx(1.0)
    # Brier: the true-class probabilities are 0.8, 0.9, 0.4, 0.7, so each row's two squared errors
    # are 0.2^2, 0.1^2, 0.6^2, 0.3^2 twice
    assert r["brier"] == pytest.approx(2 * (0.04 + 0.01 + 0.36 + 0.09) / 4)
    # confidences 0.8, 0.9, 0.6, 0.7 in four different bins; accuracies 1, 1, 0, 1
    assert r["ece"] == pytest.approx((0.2 + 0.1 + 0.6 + 0.3) / 4)


def test_absent_class_and_zero_division() -> None:
    y, p = make_data(3, 4, n=200)
    keep = y != 3
    y, p = y[keep], p[keep]
    p[:, 2] = 0.0  # class 2 is never predicted, and scored 0
    p /= p.sum(1, keepdims=True)
    r = classification_metrics(y, p, class_names=["a", "b", "c", "d"])
    assert r["per_class"]["d"]["auroc"] is None
    assert r["per_class"]["d"]["auprc"] is None
    assert r["per_class"]["d"]["support"] == 0
    assert r["per_class"]["c"]["precision"] == 0.0
    defined = [skm.roc_auc_score(y == c, p[:, c]) for c in range(3)]
    assert r["auroc_macro"] == pytest.approx(np.mean(defined), abs=1e-12)
    ap = [skm.average_precision_score(y == c, p[:, c]) for c in range(3)]
    assert r["auprc_macro"] == pytest.approx(np.mean(ap), abs=1e-12)
    onehot = np.eye(4)[y]
    assert r["auroc_micro"] == pytest.approx(skm.roc_auc_score(onehot, p, average="micro"), abs=1e-12)
    pred = p.argmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert r["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-12)
    assert r["precision_macro"] == pytest.approx(
        skm.precision_score(y, pred, labels=range(4), average="macro", zero_division=0), abs=1e-12
    )
    assert np.isnan(METRICS["auroc_macro"](y[y == 0], p[y == 0]))  # no class has both positives and negatives
    json.dumps(r, allow_nan=False)


def test_degenerate_agreement_kappa_none_mcc_zero() -> None:
    y = np.zeros(5, dtype=int)
    p = np.tile([0.9, 0.1], (5, 1))
    r = classification_metrics(y, p)
    assert r["kappa"] is None  # sklearn: NaN (chance agreement 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isnan(skm.cohen_kappa_score(y, p.argmax(1)))
        assert r["mcc"] == 0.0 == skm.matthews_corrcoef(y, p.argmax(1))
    assert r["auroc_macro"] is None
    json.dumps(r, allow_nan=False)


@pytest.mark.parametrize("name", NAMES)
def test_weighted_evaluator_equals_repeated_data(name: str) -> None:
    """Integer weights (bootstrap multiplicities) equal the metric on the data repeated that often."""
    y, p = make_data(5, 3, n=60)
    rng = np.random.default_rng(1)
    w = rng.integers(0, 4, size=(3, y.size)).astype(float)
    w[:, np.flatnonzero(y == 0)[:2]] = 1  # keep every class present
    w[:, np.flatnonzero(y == 1)[:2]] = 1
    w[:, np.flatnonzero(y == 2)[:2]] = 1
    values = metric_evaluator(name, y, p)(w)
    for b in range(3):
        reps = w[b].astype(int)
        assert values[b] == pytest.approx(METRICS[name](np.repeat(y, reps), np.repeat(p, reps, axis=0)), abs=1e-12)


def test_import_is_light() -> None:
    code = "import sys, medens.evaluation; print(sorted(m for m in ('torch', 'monai', 'sklearn', 'scipy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_registry_and_directions() -> None:
    assert sorted(METRICS) == sorted(NAMES)
    assert sorted(HIGHER_IS_BETTER) == sorted(NAMES)
    lower = ("brier", "ece", "classwise_ece", "adaptive_ece")
    assert not any(HIGHER_IS_BETTER[n] for n in lower)
    assert all(HIGHER_IS_BETTER[n] for n in NAMES if n not in lower)
    assert metric_fn("mcc") is METRICS["mcc"]
    with pytest.raises(ValueError, match=r"unknown metric 'auroc_macr'; did you mean 'auroc_macro'"):
        metric_fn("auroc_macr")
    with pytest.raises(ValueError, match=r"unknown metric 'mcc2'; did you mean 'mcc'"):
        metric_evaluator("mcc2", [0, 1], [[1.0, 0.0], [0.0, 1.0]])


P2 = [[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]


@pytest.mark.parametrize(
    ("y", "probs", "message"),
    [
        ([0, 1], P2, r"length mismatch: y_true has shape \(2,\) but probs has shape \(3, 2\)"),
        ([0, 1, 1], [0.9, 0.2, 0.5], r"probs must be 2-D \(N, K\), got shape \(3,\)"),
        ([0, 1, 1], [[1.0], [1.0], [1.0]], r"K >= 2 columns .* got shape \(3, 1\)"),
        ([0, 1, 2], P2, r"y_true labels must lie in \[0, 2\) for probs of shape \(3, 2\); found \[2\]"),
        ([0, -1, 1], P2, r"must lie in \[0, 2\) .* found \[-1\]"),
        (
            [0, 1, 1],
            [[0.9, 0.1], [np.nan, 0.8], [0.5, 0.5]],
            r"probs contains NaN or inf in 1 row\(s\) \(first: row 1\); probs shape \(3, 2\)",
        ),
        (
            [0, 1, 1],
            [[0.9, 0.1], [0.2, 0.7], [0.5, 0.5]],
            r"rows must sum to 1 \(tolerance 0.001\); row 1 sums to 0.9; probs shape \(3, 2\)",
        ),
        ([0, 1, 1], [[1.5, -0.5], [0.2, 0.8], [0.5, 0.5]], r"probs must lie in \[0, 1\]"),
        ([0.5, 1, 1], P2, r"y_true must hold integer class labels, got dtype float64"),
        ([[0], [1], [1]], P2, r"y_true must be 1-D \(N,\), got shape \(3, 1\)"),
    ],
)
def test_bad_inputs_raise(y, probs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        classification_metrics(y, probs)
    with pytest.raises(ValueError, match=message):
        METRICS["accuracy"](y, probs)


def test_rows_within_tolerance_accepted_and_class_names_checked() -> None:
    p = np.array([[0.9, 0.1], [0.2, 0.8005], [0.5, 0.5]])
    assert classification_metrics([0, 1, 1], p)["accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="class_names has 3 entries but probs has K=2 columns"):
        classification_metrics([0, 1, 1], P2, class_names=["a", "b", "c"])


# ---------------------------------------------------------------------------------------------
# Kubeflow ClassificationMetrics
# ---------------------------------------------------------------------------------------------


def test_kfp_classification_metrics_small_equals_sklearn_curve() -> None:
    y, p = make_data(0, 3, n=40)
    out = kfp_classification_metrics(y, p, ["a", "b", "c"])
    assert out["confusion_matrix"]["categories"] == ["a", "b", "c"]
    assert out["confusion_matrix"]["matrix"] == skm.confusion_matrix(y, p.argmax(1), labels=[0, 1, 2]).tolist()
    fpr, tpr, thr = skm.roc_curve(np.eye(3)[y].ravel(), p.ravel())
    assert len(fpr) <= 200
    np.testing.assert_allclose(out["roc"]["fpr"], fpr)
    np.testing.assert_allclose(out["roc"]["tpr"], tpr)
    np.testing.assert_allclose(out["roc"]["threshold"][1:], thr[1:])
    assert 1.0 < out["roc"]["threshold"][0] < 1.001
    json.dumps(out, allow_nan=False)


def test_kfp_classification_metrics_thinned_and_accepted_by_kfp() -> None:
    y, p = make_data(1, 4, n=2000, signal=0.5)
    out = kfp_classification_metrics(y, p, ["a", "b", "c", "d"])
    roc = out["roc"]
    assert 100 < len(roc["fpr"]) <= 200 and len(roc["fpr"]) == len(roc["tpr"]) == len(roc["threshold"])
    assert roc["fpr"][0] == 0.0 and roc["tpr"][0] == 0.0 and roc["fpr"][-1] == 1.0 and roc["tpr"][-1] == 1.0
    assert np.all(np.diff(roc["fpr"]) >= 0) and np.all(np.diff(roc["tpr"]) >= 0)
    assert np.all(np.diff(roc["threshold"]) <= 0) and np.all(np.isfinite(roc["threshold"]))
    json.dumps(out, allow_nan=False)
    artifact = dsl.ClassificationMetrics(name="metrics")
    artifact.log_roc_curve(**roc)
    artifact.log_confusion_matrix(**out["confusion_matrix"])
    assert len(artifact.metadata["confidenceMetrics"]) == len(roc["fpr"])
    assert artifact.metadata["confusionMatrix"]["rows"][0]["row"] == out["confusion_matrix"]["matrix"][0]


# ---------------------------------------------------------------------------------------------
# segmentation against MONAI
# ---------------------------------------------------------------------------------------------


def blobs(rng: np.random.Generator, shape: tuple[int, ...], sigma: float, level: float) -> np.ndarray:
    return ndimage.gaussian_filter(rng.normal(size=shape), sigma) > level


def random_pairs(seed: int, n: int, size: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth blobs and predictions = ground truth perturbed by other blobs (both non-empty)."""
    rng = np.random.default_rng(seed)
    true = np.stack([blobs(rng, size, 3.0, 0.05) for _ in range(n)])
    pred = true.copy()
    for i in range(n):
        pred[i] ^= blobs(rng, size, 2.0, 0.12)
    assert true.reshape(n, -1).any(1).all() and pred.reshape(n, -1).any(1).all()
    return true, pred


def monai_reference(true: np.ndarray, pred: np.ndarray, spacing=None) -> dict[str, np.ndarray]:

    def onehot(m: np.ndarray):
        t = torch.as_tensor(m[:, None].astype(np.float32))
        return torch.cat([1 - t, t], dim=1)

    yp, yt = onehot(pred), onehot(true)
    dice = mm.DiceMetric(include_background=False, reduction="none")(yp, yt)
    iou = mm.compute_iou(yp, yt, include_background=False)
    hd = mm.compute_hausdorff_distance(yp, yt, include_background=False, percentile=95, spacing=spacing)
    return {"dice": dice.numpy()[:, 0], "iou": iou.numpy()[:, 0], "hd95": hd.numpy()[:, 0]}


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*:FutureWarning")
@pytest.mark.parametrize(
    ("size", "spacing"),
    [((48, 40), None), ((48, 40), (0.5, 1.25)), ((20, 22, 18), None), ((20, 22, 18), 0.8)],
)
def test_segmentation_equals_monai(size: tuple[int, ...], spacing) -> None:
    true, pred = random_pairs(len(size) * 10 + (spacing is not None), 5, size)
    r = segmentation_metrics(true, pred, spacing=spacing)
    ref = monai_reference(true, pred, spacing)
    got = {key: np.array([img[key] for img in r["per_image"]]) for key in ("dice", "iou", "hd95")}
    np.testing.assert_allclose(got["dice"], ref["dice"], rtol=1e-6)
    np.testing.assert_allclose(got["iou"], ref["iou"], rtol=1e-6)
    np.testing.assert_allclose(got["hd95"], ref["hd95"], rtol=1e-5)
    assert np.all(got["hd95"] > 1.0)  # boundary distances are non-trivial
    assert r["dice"] == pytest.approx(ref["dice"].mean())
    assert r["hd95"] == pytest.approx(ref["hd95"].mean(), rel=1e-5)
    assert r["dice_median"] == pytest.approx(np.median(ref["dice"]))
    tp = (true & pred).reshape(len(true), -1).sum(1)
    sens = tp / true.reshape(len(true), -1).sum(1)
    prec = tp / pred.reshape(len(true), -1).sum(1)
    np.testing.assert_allclose([img["sensitivity"] for img in r["per_image"]], sens)
    np.testing.assert_allclose([img["precision"] for img in r["per_image"]], prec)
    assert r["n"] == 5 and r["hd95_undefined"] == 0


def test_segmentation_hand_example_and_empty_conventions() -> None:
    t = np.zeros((4, 10, 10), dtype=np.uint8)
    p = np.zeros_like(t)
    t[0, 2:6, 2:6] = 1  # 16 pixels
    p[0, 2:6, 4:8] = 1  # 16 pixels, 8 shared
    t[1, 3:5, 3:5] = 1  # prediction empty
    p[2, 3:5, 3:5] = 1  # truth empty
    # image 3: both empty
    r = segmentation_metrics(t, p)
    im = r["per_image"]
    assert im[0]["dice"] == pytest.approx(2 * 8 / 32) and im[0]["iou"] == pytest.approx(8 / 24)
    # surfaces are the outer rings; a shift by 2 columns: 95th percentile of distances in {0, 1, 2}
    assert im[0]["hd95"] == pytest.approx(2.0)
    assert im[1] | {} == {
        "dice": 0.0,
        "iou": 0.0,
        "hd95": None,
        "sensitivity": 0.0,
        "precision": None,
        "true_pixels": 4,
        "pred_pixels": 0,
    }
    assert (im[2]["dice"], im[2]["hd95"], im[2]["sensitivity"], im[2]["precision"]) == (0.0, None, None, 0.0)
    assert (im[3]["dice"], im[3]["iou"], im[3]["hd95"], im[3]["sensitivity"], im[3]["precision"]) == (
        1.0,
        1.0,
        0.0,
        None,
        None,
    )
    assert r["dice"] == pytest.approx((0.5 + 0 + 0 + 1) / 4)
    assert r["hd95"] == pytest.approx((2.0 + 0.0) / 2) and r["hd95_undefined"] == 2
    assert r["sensitivity"] == pytest.approx((0.5 + 0.0) / 2)
    json.dumps(r, allow_nan=False)

    # MONAI agrees on the Dice/IoU conventions when told not to ignore empty ground truth
    oh = lambda m: torch.cat([1 - torch.as_tensor(m[:, None]).float(), torch.as_tensor(m[:, None]).float()], 1)  # noqa: E731
    dice = mm.DiceMetric(include_background=False, reduction="none", ignore_empty=False)(oh(p), oh(t))
    np.testing.assert_allclose([x["dice"] for x in im], dice.numpy()[:, 0])


def test_segmentation_label_maps_and_errors() -> None:
    true, pred = random_pairs(7, 2, (24, 24))
    labels_t = np.where(true, 2, 1) * (np.arange(24) % 5 != 0)  # class 2 foreground, 0 and 1 background
    labels_p = np.where(pred, 2, 0)
    r = segmentation_metrics(labels_t, labels_p, class_index=2)
    rb = segmentation_metrics(labels_t == 2, labels_p == 2)
    assert r["dice"] == rb["dice"] and r["hd95"] == rb["hd95"]
    with pytest.raises(ValueError, match=r"same shape, got \(2, 24, 24\) and \(2, 24, 23\)"):
        segmentation_metrics(true, pred[..., :23])
    with pytest.raises(ValueError, match=r"shape \(N, H, W\) or \(N, H, W, D\), got \(24, 24\)"):
        segmentation_metrics(true[0], pred[0])
    with pytest.raises(ValueError, match=r"non-integer values .* threshold probabilities first"):
        segmentation_metrics(true.astype(float) * 0.7, pred)
    with pytest.raises(ValueError, match=r"spacing must be a number or have 2 entries"):
        segmentation_metrics(true, pred, spacing=(1.0, 1.0, 1.0))
