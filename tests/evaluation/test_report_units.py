"""Unit checks of the evaluation stage's building blocks on planted predictions."""

import numpy as np
import pytest

from medens.evaluation.report import significance_note, table_rows
from medens.evaluation.systems import (
    evaluate_classification,
    evaluate_segmentation,
    selection_log_loss,
    selection_order,
)


def onehot_probs(pred, k, conf=0.9):
    p = np.full((len(pred), k), (1 - conf) / (k - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


def test_classification_reference_and_holm():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    good = np.where(rng.random(400) < 0.95, y, (y + 1) % 3)
    bad = np.where(rng.random(400) < 0.6, y, (y + 1) % 3)
    systems = {"good": ("ensemble", onehot_probs(good, 3)), "ref": ("member", onehot_probs(bad, 3)),
               "same": ("member", onehot_probs(bad, 3))}
    r = evaluate_classification(y, systems, reference="ref", class_names=["a", "b", "c"], n_resamples=300)
    assert "vs_reference" not in r["systems"]["ref"]
    g = r["systems"]["good"]["vs_reference"]
    assert g["mcnemar"]["p_value"] < 1e-6 and g["mcnemar_p_holm"] <= 2 * g["mcnemar"]["p_value"] + 1e-12
    s = r["systems"]["same"]["vs_reference"]
    assert s["mcnemar"]["p_value"] == 1.0 and s["mcnemar_p_holm"] == 1.0
    head, rows = table_rows(r, ["good", "ref", "same"], "classification")
    assert rows[0][1] == "good" and "reference" in [row[8] for row in rows]
    r["leaderboard"] = ["good", "ref", "same"]
    note = significance_note(r, 0.05, "classification")
    assert note.startswith("Significance at alpha 0.05 (Holm-corrected), against the reference ref: good (accuracy "
                           "higher, p < 0.001); good (MCC higher")
    assert "same" not in note and note.endswith("Every other difference in the table is not significant.")
    r["leaderboard"] = ["ref", "same"]
    assert "no system differs significantly from the reference ref" in significance_note(r, 0.05, "classification")


def test_selection_order_ranks_scores_and_puts_unscored_last():
    assert selection_order({"b": 0.5, "a": 0.5, "c": 0.9, "x": None, "d": None}) == ["c", "a", "b", "d", "x"]
    assert selection_order({"only": None}) == ["only"]


def test_selection_ties_go_to_the_lower_validation_log_loss():
    scores = {"b": 1.0, "a": 1.0, "c": 1.0, "d": 0.9}
    # a tie on the gate metric is broken by log-loss, lower first; no log-loss comes after one
    assert selection_order(scores, {"a": 0.30, "b": 0.10, "c": None, "d": 0.01}) == ["b", "a", "c", "d"]
    assert selection_order(scores, {"a": float("nan"), "b": 0.2, "c": 0.2}) == ["b", "c", "a", "d"]
    y = np.array([0, 1, 1])
    sure = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9]])
    unsure = np.array([[0.6, 0.4], [0.4, 0.6], [0.45, 0.55]])
    assert selection_log_loss(probs=sure, labels=y) == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.9])))
    assert selection_log_loss(probs=unsure, labels=y) > selection_log_loss(probs=sure, labels=y)
    assert selection_log_loss(probs=sure[:, :, None, None], masks=np.zeros((3, 1, 1))) is None


def test_segmentation_perfect_system_beats_reference():
    rng = np.random.default_rng(1)
    masks = np.zeros((30, 16, 16), np.uint8)
    for i in range(30):
        r, c = rng.integers(2, 10, 2)
        masks[i, r:r + 4, c:c + 4] = 1
    perfect = np.stack([1 - masks, masks], 1).astype(float)
    shifted = np.roll(perfect, 2, axis=3)
    r = evaluate_segmentation(masks, {"perfect": ("ensemble", perfect), "ref": ("member", shifted)}, reference="ref",
                              n_resamples=500)
    p = r["systems"]["perfect"]
    assert p["metrics"]["dice"] == 1.0 and p["ci"]["dice"]["low"] == 1.0
    # a 4x4 square shifted by 2 overlaps by half: Dice 0.5 on every image
    assert abs(r["systems"]["ref"]["metrics"]["dice"] - 0.5) < 1e-9
    assert p["vs_reference"]["dice_difference"] == 0.5 and p["vs_reference"]["p_value"] < 0.01
    r["leaderboard"] = ["perfect", "ref"]
    assert "perfect (Dice higher, p " in significance_note(r, 0.05, "segmentation")


def test_calibration_before_and_after_temperature_in_the_result_and_tables():
    from medens.evaluation.metrics import METRICS
    from medens.evaluation.report import calibration_rows
    from medens.training.calibration import TemperatureScaling

    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 300)
    pred = np.where(rng.random(300) < 0.6, y, (y + 1) % 3)
    raw = onehot_probs(pred, 3, conf=0.98)  # 60% accurate at confidence 0.98: over-confident
    scaled = TemperatureScaling.from_dict({"temperature": 2.5}).transform(raw)
    systems = {"m": ("member", scaled), "e": ("ensemble", onehot_probs(pred, 3, conf=0.6))}
    r = evaluate_classification(y, systems, reference="m", class_names=["a", "b", "c"], n_resamples=200,
                                before={"m": (2.5, raw)})
    cal = r["systems"]["m"]["calibration"]
    assert cal["temperature"] == 2.5
    for name in ("ece", "classwise_ece", "adaptive_ece"):
        assert cal["before"][name]["point"] == pytest.approx(METRICS[name](y, raw), abs=1e-12)
        assert cal["after"][name]["point"] == pytest.approx(r["systems"]["m"]["metrics"][name], abs=1e-12)
        assert r["systems"]["m"]["ci"][name] == cal["after"][name]  # the leaderboard's CI is the served one
        assert cal["before"][name]["low"] <= cal["before"][name]["point"] <= cal["before"][name]["high"]
    # one bin holds every confidence 0.98: top-label ECE = |0.6 - 0.98| up to the sample's accuracy
    assert cal["before"]["ece"]["point"] == pytest.approx(abs(0.98 - (pred == y).mean()), abs=1e-12)
    assert cal["after"]["ece"]["point"] < cal["before"]["ece"]["point"]
    e = r["systems"]["e"]["calibration"]
    assert e["before"] is None and e["temperature"] is None and "ensemble" in e["before_reason"]
    head, rows = calibration_rows(r, ["m", "e"])
    assert head[:5] == ["system", "kind", "temperature", "ECE before T", "ECE after T"]
    before_ci = cal["before"]["ece"]
    assert rows[0][:4] == ["m", "member", "2.50",
                           f"{before_ci['point']:.3f} [{before_ci['low']:.3f}, {before_ci['high']:.3f}]"]
    assert rows[1][2] == "–" and rows[1][3] == "n/a" and rows[1][4].startswith(f"{e['after']['ece']['point']:.3f} [")
    head, rows = table_rows(r, ["m", "e"], "classification")
    assert head[-3:] == ["ECE [95% CI]", "classwise ECE [95% CI]", "adaptive ECE [95% CI]"]
    assert rows[0][-3].startswith(f"{r['systems']['m']['metrics']['ece']:.3f} [")
