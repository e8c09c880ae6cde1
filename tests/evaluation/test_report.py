"""The report of a small real run: numbers, files, and the page in a real headless browser."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from medens.config import load_spec
from medens.stages import run_experiment

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("run")
    spec = {
        "name": "report-test", "description": "tiny run for the report test",
        "models": ["compact_cnn"], "losses": ["ce", "focal", "weighted_ce"],
        "data": {"source": "synthetic_cells", "image_size": 32,
                 "synthetic": {"counts": {"codocyte": 40, "hypochromia": 40, "normal": 160}}},
        "training": {"epochs": 3, "min_steps": 0, "batch_size": 32, "patience": None, "lr": 0.003},
        "ensemble": {"top_k": [3], "methods": ["vote", "mean", "weighted", "greedy", "stacking"], "model_level": True},
        "evaluation": {"bootstrap": 200, "gradcam_per_class": 2},
    }
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    summary = run_experiment(load_spec(str(root / "spec.yaml")), root / "out", log=lambda *a: None)
    return root / "out", summary


def test_metrics_json_is_consistent(run):
    out, summary = run
    m = json.loads((out / "evaluation" / "metrics.json").read_text())
    names = set(m["systems"])
    assert {"compact_cnn__ce", "compact_cnn__focal", "compact_cnn__weighted_ce"} <= names
    assert {"vote-top3", "mean-top3", "weighted-top3", "greedy-top3", "stacking-top3", "fusion-top3"} <= names
    # the reference is the best member on validation, by MCC
    val = {}
    for mid in ("compact_cnn__ce", "compact_cnn__focal", "compact_cnn__weighted_ce"):
        val[mid] = json.loads((out / "members" / mid / "model.json").read_text())["val_metrics"]["mcc"]
    assert val[m["reference"]] == max(val.values())
    for mid, v in val.items():  # a member's selection score is its validation MCC
        assert m["selection"][mid]["score"] == pytest.approx(v, abs=1e-9)
    # leaderboard ordered by the selection score (validation), never by a test metric
    scores = [m["selection"][n]["score"] for n in m["leaderboard"]]
    assert scores == sorted(scores, reverse=True)
    assert m["selected"] == m["leaderboard"][0] and "best" not in m  # one key for the selection
    for name, s in m["systems"].items():
        ci = s["ci"]["accuracy"]
        assert ci["low"] <= s["metrics"]["accuracy"] <= ci["high"]
        if name == m["reference"]:
            assert "vs_reference" not in s
            continue
        v = s["vs_reference"]
        for raw, adj in (("mcnemar", "mcnemar_p_holm"), ("mcc_difference", "mcc_p_holm")):
            assert 0 <= v[raw]["p_value"] <= v[adj] <= 1  # Holm never lowers a p-value
    assert summary.selected == m["selected"]


def test_kfp_metrics_have_the_classification_metrics_shape(run):
    out, _ = run
    k = json.loads((out / "evaluation" / "kfp_metrics.json").read_text())
    cm = np.asarray(k["confusion_matrix"]["matrix"])
    assert k["confusion_matrix"]["categories"] == ["codocyte", "hypochromia", "normal"]
    n_test = json.loads((out / "evaluation" / "metrics.json").read_text())["n_test"]
    assert cm.shape == (3, 3) and cm.sum() == n_test
    roc = k["roc"]
    assert len(roc["fpr"]) == len(roc["tpr"]) == len(roc["threshold"]) >= 2
    assert all(np.isfinite(roc["threshold"]))
    assert set(k["scalar"]) == {"accuracy", "mcc", "macro_f1", "auroc_macro"}


def test_markdown_summary(run):
    out, _ = run
    md = (out / "evaluation" / "report.md").read_text()
    assert "| # | system | kind | selection: val mcc | accuracy [95% CI] | MCC [95% CI]" in md
    board = md.split("## Calibration before and after temperature scaling")[0]  # the leaderboard's rows
    assert board.count("| ensemble |") == 6 and board.count("| member |") == 3


def test_report_opens_in_a_real_browser(run, tmp_path):
    assert CHROMIUM, "Debian chromium is needed for this test: `make test` installs it as root (apt-get install chromium)"
    from playwright.sync_api import sync_playwright

    out, _ = run
    page_path = out / "evaluation" / "report.html"
    html = page_path.read_text()
    assert "src=\"http" not in html and "<script" not in html  # self-contained
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        images = page.evaluate(
            "() => Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
        rows = page.evaluate("() => Array.from(document.querySelectorAll('tbody')).map(b => b.rows.length)")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    alts = [a for a, *_ in images]
    assert {"ROC curves", "Precision-recall curves", "Confusion matrices", "Reliability diagram",
            "Training curves"} <= set(alts)
    assert any(a.startswith("Grad-CAM per class") for a in alts)
    for alt, complete, w, h in images:
        assert complete and w > 0 and h > 0, f"image {alt!r} did not decode"
    assert rows == [9, 9, 4]  # the leaderboard, the calibration table, the conformal sets (3 classes + all)
    assert "Reliability per system, before (grey) and after (blue) temperature scaling" in alts
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_ensemble_artifacts_reproduce_their_saved_predictions(run, tmp_path):
    """Rebuilt from ensemble.json alone, every ensemble gives its saved test predictions again."""
    from medens.data import SplitData
    from medens.data.transforms import preprocess
    from medens.ensemble.artifact import load_ensemble
    from medens.training.predictions import Predictions

    out, _ = run
    data = SplitData.load(out / "data")
    for d in sorted((out / "ensembles").iterdir()):
        if d.name.startswith(".") or not d.is_dir():  # the model-level fit's work dir; ensembles.json
            continue
        ens = load_ensemble(d)
        probs, members = ens.predict(preprocess(data.test.images, ens.input_spec))
        saved = Predictions.load(d / "predictions" / "test.npz")
        assert np.abs(probs - saved.probs).max() < 1e-5, d.name
        assert set(members) == set(ens.manifest["members"])
    fused = load_ensemble(out / "ensembles" / "fusion-top3")
    assert fused.manifest["method"] == "single" and len(fused.manifest["fused_members"]) == 3
    # a corrupted member file is refused, naming it
    copy = tmp_path / "copy"
    shutil.copytree(out / "ensembles" / "mean-top3", copy)
    victim = next((copy / "members").iterdir()) / "weights.pt"
    victim.write_bytes(victim.read_bytes()[:-4] + b"XXXX")
    with pytest.raises(ValueError, match=f"members/{victim.parent.name}/weights.pt does not match its sha256 in ensemble.json"):
        load_ensemble(copy)


def test_calibration_before_and_after_temperature(run):
    """Every system's three ECEs with CIs; a member's "before" recomputed from its saved test
    probabilities and the temperature in its model.json; the per-system reliability figure."""
    from medens.evaluation import METRICS
    from medens.training.calibration import TemperatureScaling
    from medens.training.predictions import Predictions

    out, _ = run
    m = json.loads((out / "evaluation" / "metrics.json").read_text())
    names = ("ece", "classwise_ece", "adaptive_ece")
    for s in m["systems"].values():
        cal = s["calibration"]
        for key in names:
            assert cal["after"][key]["point"] == s["metrics"][key] == s["ci"][key]["point"]
            # no "low <= point <= high": binning noise biases an ECE upwards, and the basic interval is
            # for the true calibration error, below the plug-in point when the bias is large
            ci = cal["after"][key]
            assert 0 <= ci["low"] <= ci["high"] <= 1 and ci["interval"] == "basic"
            assert 0 <= ci["debiased"] <= 1 and ci["debiased"] == pytest.approx(max(0.0, ci["point"] - ci["bias"]))
        if s["kind"] == "ensemble":
            assert cal["before"] is None and cal["temperature"] is None
    member = "compact_cnn__focal"
    d = out / "members" / member
    preds = Predictions.load(d / "predictions" / "test.npz")
    t = json.loads((d / "model.json").read_text())["inference"]["temperature"]
    assert t != 1.0 and m["systems"][member]["calibration"]["temperature"] == t  # training.calibrate is on
    raw = TemperatureScaling.from_dict({"temperature": t}).inverse_transform(preds.probs)
    after = preds.probs.astype(np.float64)
    for key in names:
        assert m["systems"][member]["calibration"]["before"][key]["point"] == pytest.approx(
            METRICS[key](preds.labels, raw), abs=1e-9)
        assert m["systems"][member]["metrics"][key] == pytest.approx(METRICS[key](preds.labels, after), abs=1e-12)
    png = (out / "evaluation" / "reliability.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "evaluation" / "report.md").read_text()
    assert "## Calibration before and after temperature scaling" in md
    table = md.split("## Calibration before and after temperature scaling")[1]
    assert table.count("| member | ") == 3 and table.count("| ensemble | – | n/a |") == 6
    html_text = (out / "evaluation" / "report.html").read_text()
    assert "Reliability per system, before (grey) and after (blue) temperature scaling" in html_text
