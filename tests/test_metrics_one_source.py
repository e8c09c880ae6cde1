"""One metric module (issue 23): every stage computes MCC, macro-F1, balanced accuracy and Dice
with ``medens.metrics``, the same numbers, one name per metric, one paired bootstrap."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn import metrics as skm

from medens import metrics
from medens.config import load_spec, parse_spec
from medens.ensemble.segmentation import build_seg_ensemble
from medens.ensemble.selection import METRICS as RANKING
from medens.evaluation.gate import gate_decision, per_image_overlap
from medens.evaluation.metrics import METRICS as REPORT
from medens.evaluation.metrics import classification_metrics
from medens.evaluation.report import table_rows
from medens.evaluation.segmentation import segmentation_metrics
from medens.evaluation.stats import bootstrap_mean_ci, paired_mean_bootstrap
from medens.evaluation.systems import evaluate_segmentation, selection_score
from medens.metric_names import metric_value
from medens.training.engine import quick_metrics

SRC = Path(__file__).resolve().parents[1] / "src"

# ---------------------------------------------------------------------------------------------
# a planted three-class segmentation (0 background, 1 and 2 foreground), two 2 x 4 images
# ---------------------------------------------------------------------------------------------

TRUE = np.array([
    [[1, 1, 1, 1],
     [2, 2, 0, 0]],
    [[1, 1, 0, 0],
     [0, 0, 0, 0]],
])
PRED = np.array([
    [[1, 1, 0, 0],
     [2, 2, 2, 0]],
    [[1, 0, 0, 0],
     [0, 0, 0, 0]],
])
# image 0: class 1 |T| 4, |P| 2, overlap 2 -> 4/6; class 2 |T| 2, |P| 3, overlap 2 -> 4/5
# image 1: class 1 |T| 2, |P| 1, overlap 1 -> 2/3; class 2 absent from both masks -> 1
DICE_PER_CLASS = np.array([[2 / 3, 4 / 5], [2 / 3, 1.0]])
DICE = ((2 / 3 + 4 / 5) / 2 + (2 / 3 + 1) / 2) / 2  # 47/60
assert DICE == pytest.approx(47 / 60)
# what the three old definitions gave: any foreground vs background (engine) 0.697, class 1 only
# (report) 2/3; only selection's mean over foreground classes was 47/60


def one_hot_probs(labels: np.ndarray, k: int = 3) -> np.ndarray:
    """(N, K, H, W) maps with 0.8 on the label and 0.1 elsewhere: the argmax is ``labels``."""
    p = np.full((len(labels), k, *labels.shape[1:]), 0.1, dtype=np.float32)
    np.put_along_axis(p, labels[:, None], 0.8, axis=1)
    return p


def test_dice_is_the_mean_over_foreground_classes_with_absent_classes_scoring_one():
    np.testing.assert_allclose(metrics.dice(TRUE, PRED, n_classes=3), DICE_PER_CLASS, rtol=0, atol=1e-15)
    assert metrics.dice(TRUE, PRED, n_classes=3).mean() == pytest.approx(47 / 60, abs=1e-15)
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.dice(TRUE, PRED[:, :, :3], n_classes=3)
    with pytest.raises(ValueError, match="n_classes must be an integer >= 2"):
        metrics.dice(TRUE, PRED, n_classes=1)


def test_epoch_monitor_selection_gate_and_report_agree_on_a_planted_three_class_segmentation():
    probs = one_hot_probs(PRED)
    monitor = quick_metrics("segmentation", probs, TRUE)["dice"]
    ens = build_seg_ensemble("majority").fit({"m": probs}, TRUE)
    selection = ens.validation_["members"]["m"]
    system_score = selection_score("dice", probs=probs, masks=TRUE)
    gate = gate_decision(TRUE, None, probs, metric="dice")["challenger"]
    report = segmentation_metrics(TRUE, PRED, n_classes=3)
    for name, value in {"monitor": monitor, "ensemble selection": selection, "system selection": system_score,
                        "gate": gate, "report": report["dice"]}.items():
        assert value == pytest.approx(DICE, abs=1e-12), name
    # per image and per class in the report
    assert [r["dice"] for r in report["per_image"]] == pytest.approx([(2 / 3 + 4 / 5) / 2, (2 / 3 + 1) / 2])
    assert report["per_class"]["1"]["dice"] == pytest.approx(2 / 3)
    assert report["per_class"]["2"]["dice"] == pytest.approx((4 / 5 + 1) / 2)
    assert set(report["per_class"]) == {"1", "2"}
    # IoU per class: image 0 class 1 2/4, class 2 2/3; image 1 class 1 1/2, class 2 (absent) 1
    assert report["per_class"]["2"]["iou"] == pytest.approx((2 / 3 + 1) / 2)
    assert report["iou"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + (1 / 2 + 1) / 2) / 2)
    # the class counts follow the labels seen when n_classes is not given
    assert segmentation_metrics(TRUE, PRED)["dice"] == report["dice"]
    # the evaluation stage's segmentation table reports the same Dice
    ev = evaluate_segmentation(TRUE, {"a": ("member", probs)}, reference="a", n_resamples=50)
    assert ev["systems"]["a"]["metrics"]["dice"] == pytest.approx(DICE, abs=1e-12)
    head, rows = table_rows(ev, ["a"], "segmentation")
    assert rows[0][head.index("Dice per class")] == "1: 0.667, 2: 0.900"
    with pytest.raises(ValueError, match="label maps hold class 2 but n_classes is 2"):
        segmentation_metrics(TRUE, PRED, n_classes=2)


# ---------------------------------------------------------------------------------------------
# classification: one definition, also where a class is absent from truth and predictions
# ---------------------------------------------------------------------------------------------


def test_classification_metrics_are_one_definition_with_hand_computed_values():
    # K = 3, class 2 neither present nor predicted; predictions 0, 1, 1, 1 for labels 0, 0, 1, 1
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1]])
    expected = {
        "accuracy": 3 / 4,
        "balanced_accuracy": (1 / 2 + 1) / 2,
        "macro_f1": (2 / 3 + 4 / 5) / 2,  # F1 of classes 0 and 1; class 2 is undefined, left out
        "mcc": (3 * 4 - (2 * 1 + 2 * 3)) / np.sqrt((16 - (1 + 9)) * (16 - (4 + 4))),  # 1 / sqrt(3)
    }
    pred = probs.argmax(1)
    reference = {"accuracy": skm.accuracy_score(y, pred), "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
                 "macro_f1": skm.f1_score(y, pred, average="macro"), "mcc": skm.matthews_corrcoef(y, pred)}
    monitor = quick_metrics("classification", probs, y)
    report = classification_metrics(y, probs)
    for name, value in expected.items():
        assert reference[name] == pytest.approx(value, abs=1e-12), name
        assert monitor[name] == pytest.approx(value, abs=1e-12), name
        assert RANKING[name](y, probs) == pytest.approx(value, abs=1e-12), name
        assert REPORT[name](y, probs) == pytest.approx(value, abs=1e-12), name
        assert report[name] == pytest.approx(value, abs=1e-12), name
    assert report["per_class"]["2"]["f1"] == 0.0  # per class: zero_division=0, as scikit-learn


def test_batched_confusion_matrices_give_one_value_each():
    cms = np.array([[[2, 0], [0, 2]], [[1, 1], [1, 1]], [[0, 2], [2, 0]]], dtype=float)
    np.testing.assert_allclose(metrics.mcc(cms), [1.0, 0.0, -1.0])
    np.testing.assert_allclose(metrics.accuracy(cms), [1.0, 0.5, 0.0])
    np.testing.assert_allclose(metrics.macro_f1(cms), [1.0, 0.5, 0.0])
    np.testing.assert_allclose(metrics.balanced_accuracy(cms), [1.0, 0.5, 0.0])


def test_src_defines_each_metric_once():
    """One function per metric in src; ``medens.losses`` is left out: its soft Dice
    (``_soft_dice_per_class``) and the ``make_dice*`` factories are differentiable training losses,
    not the metric. Names are matched by whole words, so ``resample_indices`` is no Dice."""
    pattern = re.compile(r"def (?:\w+_)?(mcc|macro_f1|balanced_accuracy|dice)(?:_\w+)?\(")
    found: dict[str, list[str]] = {}
    for path in SRC.rglob("*.py"):
        if path.relative_to(SRC).parts[:2] == ("medens", "losses"):
            continue
        for line in path.read_text().splitlines():
            m = pattern.search(line)
            if m:
                found.setdefault(m.group(1), []).append(f"{path.relative_to(SRC)}: {line.strip()}")
    assert {k: len(v) for k, v in found.items()} == {"mcc": 1, "macro_f1": 1, "balanced_accuracy": 1, "dice": 1}, found
    assert all(v[0].startswith("medens/metrics.py") for v in found.values()), found


# ---------------------------------------------------------------------------------------------
# one name per metric
# ---------------------------------------------------------------------------------------------


def test_a_saved_spec_with_the_old_spelling_loads_as_the_canonical_name(tmp_path):
    spec = {"name": "t", "models": ["compact_cnn"], "losses": ["ce"], "evaluation": {"gate_metric": "f1_macro"},
            "ensemble": {"rank_metric": "f1_macro"}, "training": {"monitor": "f1_macro"}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.warns(FutureWarning, match="'f1_macro' is deprecated; use 'macro_f1'") as record:
        loaded = load_spec(path)
    assert len(record) == 3
    assert loaded.evaluation.gate_metric == "macro_f1"
    assert loaded.ensemble.rank_metric == "macro_f1"
    assert loaded.training.monitor == "macro_f1"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the canonical spelling loads silently, and round-trips
        assert parse_spec(loaded.to_dict()).evaluation.gate_metric == "macro_f1"


def test_old_spelling_is_read_from_artifacts_and_accepted_by_the_gate():
    old = {"mcc": 0.5, "f1_macro": 0.4}
    new = {"mcc": 0.5, "macro_f1": 0.4}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert metric_value(old, "macro_f1") == metric_value(new, "macro_f1") == 0.4
        assert metric_value(old, "f1_macro") == 0.4
        assert metric_value(new, "auroc_macro", "absent") == "absent"
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6]])
    with pytest.warns(FutureWarning, match="use 'macro_f1'"):
        d = gate_decision(y, None, probs, metric="f1_macro")
    assert d["metric"] == "macro_f1"
    assert d["challenger"] == pytest.approx((2 / 3 + 4 / 5) / 2)  # F1 class 0: 2/3, class 1: 4/5
    assert "f1_macro" not in classification_metrics(y, probs)


# ---------------------------------------------------------------------------------------------
# one paired bootstrap
# ---------------------------------------------------------------------------------------------


def _reference_paired_p(a: np.ndarray, b: np.ndarray, n_resamples: int, seed: int) -> float:
    """The per-image test the gate and the evaluation stage each wrote before: a centred paired
    bootstrap of the mean difference over images."""
    d = a - b
    idx = np.random.default_rng(seed).integers(0, d.size, size=(n_resamples, d.size))
    boot = d[idx].mean(axis=1)
    return float((1 + np.sum(np.abs(boot - d.mean()) >= abs(d.mean()))) / (1 + n_resamples))


def test_the_gate_and_the_evaluation_stage_share_one_paired_bootstrap():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 3, size=(30, 6, 6))
    chal = np.where(rng.random(truth.shape) < 0.8, truth, rng.integers(0, 3, size=truth.shape))
    champ = np.where(rng.random(truth.shape) < 0.6, truth, rng.integers(0, 3, size=truth.shape))
    pc, pm = one_hot_probs(chal), one_hot_probs(champ)
    a, b = per_image_overlap(truth, pc, "dice"), per_image_overlap(truth, pm, "dice")
    expected = _reference_paired_p(a, b, 500, 7)
    pb = paired_mean_bootstrap(a, b, n_resamples=500, seed=7)
    assert pb["p_value"] == expected
    assert pb["diff"] == pytest.approx(a.mean() - b.mean())
    gate = gate_decision(truth, pm, pc, metric="dice", n_resamples=500, seed=7)
    ev = evaluate_segmentation(truth, {"champ": ("member", pm), "chal": ("member", pc)}, reference="champ",
                               n_resamples=500, seed=7)
    assert gate["p_value"] == ev["systems"]["chal"]["vs_reference"]["p_value"] == expected
    # the CI of the mean Dice: percentile interval of the same resamples
    means = a[np.random.default_rng(7).integers(0, a.size, size=(500, a.size))].mean(axis=1)
    ci = bootstrap_mean_ci(a, n_resamples=500, seed=7)
    assert (ci["low"], ci["high"]) == (float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975)))
    assert ev["systems"]["chal"]["ci"]["dice"]["low"] == ci["low"]
    # equal systems: p = 1
    assert paired_mean_bootstrap(a, a, n_resamples=100)["p_value"] == 1.0
    with pytest.raises(ValueError, match="same shape"):
        paired_mean_bootstrap(a, b[:-1])
