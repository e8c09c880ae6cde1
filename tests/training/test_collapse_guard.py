"""Issue 22: the spec defaults do not collapse on a small long-tailed set, and a collapsed system
(every validation image predicted as one class) is flagged, never selected while another is not,
never promoted by the gate, and named in the report and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from medens.cli import main
from medens.config import DEFAULT_MIN_STEPS, parse_spec
from medens.data.types import Split, SplitData
from medens.evaluation.gate import gate_decision
from medens.models.artifact import write_manifest
from medens.training import fit
from medens.training.collapse import collapse_entry, collapsed_class
from medens.training.predictions import Predictions
from tests._scripts import load_script

LOSSES = ["ce", "weighted_ce", "focal", "class_balanced", "ldam"]


def small_long_tailed_digits(size: int) -> SplitData:
    """tests/training/test_small_long_tail.py's set (190 real digit scans, 138/30/12/6/4 training
    images, validation 15/10/4/2/2, 25 per class in test), read at ``size`` px."""
    path = Path(__file__).with_name("test_small_long_tail.py")
    data = load_script(path, "small_long_tail_set").long_tailed_digits()

    def resized(s: Split) -> Split:
        x = torch.from_numpy(s.images).permute(0, 3, 1, 2).float()
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True)
        images = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return Split(images=images, labels=s.labels, ids=s.ids)

    return SplitData("classification", data.class_names, resized(data.train), resized(data.val), resized(data.test))


def test_readme_style_spec_trains_members_that_predict_every_class(tmp_path):
    """The README-style spec (compact CNN, five losses, Adam, 15 epochs, early stopping on the
    validation loss, no min_steps) on 190 long-tailed real images: with the default min_steps
    (300 optimiser steps, where 15 epochs of 6 steps give 90) every member predicts all five
    classes on validation. (With the old default, min_steps 0, issue 22's run of this spec on the
    benchmark's digits_small set left every member predicting one class.)"""
    data = small_long_tailed_digits(16)
    assert np.bincount(data.train.labels).tolist() == [138, 30, 12, 6, 4]
    spec = parse_spec({"name": "readme", "models": ["compact_cnn"], "losses": LOSSES,
                       "training": {"optimizer": "adam", "lr": 1e-3, "epochs": 15, "patience": 5,
                                    "monitor": "val_loss"}})
    assert spec.training.min_steps == DEFAULT_MIN_STEPS  # not given: the default
    steps_per_epoch = int(np.ceil(len(data.train) / spec.training.batch_size))
    for loss in spec.losses:
        res = fit(spec.models[0], loss, data, spec.training, tmp_path / loss.key, seed=0, progress=False)
        assert len(res.history) * steps_per_epoch >= DEFAULT_MIN_STEPS  # no early stop before min_steps
        val = Predictions.load(res.path / "predictions" / "val.npz")
        assert sorted(set(val.probs.argmax(1).tolist())) == [0, 1, 2, 3, 4], loss.key
        manifest = json.loads((res.path / "model.json").read_text())
        assert manifest["collapsed"] is False and manifest["predicted_classes"] == 5


def test_collapse_rule():
    one = np.tile([[0.1, 0.7, 0.2]], (6, 1))
    labels = np.array([0, 1, 2, 0, 1, 2])
    assert collapsed_class(one, labels) == 1
    assert collapse_entry(one, labels, ["a", "b", "c"]) == {"collapsed": True, "predicted_classes": 1,
                                                            "collapsed_class": "b"}
    assert collapsed_class(np.eye(3)[labels], labels) is None
    assert collapsed_class(one, np.ones(6, int)) is None  # one true class: predicting it is no collapse
    assert collapsed_class(np.zeros((0, 3))) is None


# ---------------------------------------------------------------- planted members

CLASSES = ["normal", "rare", "other"]
VAL = np.array([0] * 12 + [1] * 4 + [2] * 4)
TEST = np.array([0] * 9 + [1] * 6 + [2] * 6)


def _probs(pred: np.ndarray, k: int = 3, sure: float = 0.8) -> np.ndarray:
    p = np.full((len(pred), k), (1 - sure) / (k - 1), dtype=np.float32)
    p[np.arange(len(pred)), pred] = sure
    return p


def _member(root: Path, mid: str, val_pred: np.ndarray, test_pred: np.ndarray) -> Path:
    """A member artifact's files that selection reads: model.json and saved predictions."""
    d = root / "members" / mid
    for split, labels, pred in (("val", VAL, val_pred), ("test", TEST, test_pred)):
        Predictions(probs=_probs(pred), ids=[f"{split}{i}" for i in range(len(labels))], labels=labels,
                    class_names=CLASSES).save(d / "predictions" / f"{split}.npz")
    # real (untrained) weights: selection reads only the predictions, but packaging loads the selected
    # system (its drift reference embeds validation images; its members are exported to ONNX)
    from medens.models import build

    torch.manual_seed(0)
    torch.save(build("compact_cnn", in_channels=1, num_classes=len(CLASSES)).state_dict(), d / "weights.pt")
    write_manifest(d, {"kind": "model", "task": "classification", "member_id": mid, "class_names": CLASSES,
                       "architecture": {"name": "compact_cnn", "kwargs": {"in_channels": 1,
                                                                          "num_classes": len(CLASSES)}},
                       "input": {"channels": 1, "size": 8, "mean": [0.0], "std": [1.0], "max_value": 255.0},
                       "history": [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.0, "val_mcc": 0.0}],
                       **collapse_entry(_probs(val_pred), VAL, CLASSES)})
    return d


def _data(root: Path) -> Path:
    def split(name, labels):
        return Split(images=np.zeros((len(labels), 8, 8, 1), np.uint8), labels=labels,
                     ids=[f"{name}{i}" for i in range(len(labels))])

    SplitData("classification", CLASSES, split("train", VAL), split("val", VAL), split("test", TEST)).save(root / "data")
    return root / "data"


def _spec(**evaluation):
    return parse_spec({"name": "planted", "models": ["compact_cnn"], "losses": ["ce"],
                       "ensemble": {"methods": ["mean"], "top_k": [3]},
                       "evaluation": {"bootstrap": 100, "gradcam": False, "gate_metric": "accuracy", **evaluation}})


def test_a_planted_collapsed_member_is_flagged_and_not_selected(tmp_path):
    from medens.stages import build_ensembles, evaluate_systems, read_index

    data = _data(tmp_path)
    # the collapsed member puts every image in "normal": validation accuracy 0.60, the best of all,
    # while the two others see every class (accuracy 0.55 and 0.50)
    collapsed = _member(tmp_path, "a_collapsed", np.zeros(20, int), np.zeros(21, int))
    good = VAL.copy()
    good[[0, 1, 2, 3, 4, 5, 6, 7, 8]] = [1, 2, 1, 2, 1, 2, 1, 2, 1]
    good_test = TEST.copy()
    good_test[:3] = [1, 2, 1]
    worse = good.copy()
    worse[12] = 0
    members = [collapsed, _member(tmp_path, "b_good", good, good_test), _member(tmp_path, "c_worse", worse, good_test)]
    spec = _spec()

    made = build_ensembles(spec, data, members, tmp_path / "ensembles")
    index = read_index(tmp_path / "ensembles")
    assert list(made) == ["mean-top2"] and index.collapsed_members == {"a_collapsed": "normal"}
    ensemble = json.loads((made["mean-top2"] / "ensemble.json").read_text())
    assert "a_collapsed" not in json.dumps(ensemble.get("members", ensemble))  # not among the top-k members

    summary = evaluate_systems(spec, data, members, tmp_path / "ensembles", tmp_path / "evaluation",
                               tmp_path / "best")
    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert metrics["selection"]["a_collapsed"]["score"] == pytest.approx(0.6)  # the highest score ...
    assert summary.selected != "a_collapsed" and summary.reference == "b_good"  # ... and not selected
    assert metrics["leaderboard"][-1] == "a_collapsed"
    assert summary.collapsed == {"a_collapsed": "normal"} and summary.quality == "ok"
    report = (tmp_path / "evaluation" / "report.md").read_text()
    assert "## Warnings: class collapse" in report
    assert "member a_collapsed has collapsed: every validation image is predicted as class 'normal'" in report
    assert "Warnings: class collapse" in (tmp_path / "evaluation" / "report.html").read_text()
    best = json.loads((tmp_path / "best" / "ensemble.json").read_text())["evaluation"]
    assert best["collapsed"] is False and best["quality"] == "ok"


def test_when_every_system_collapsed_the_run_fails_on_quality(tmp_path):
    from medens.stages import build_ensembles, evaluate_systems

    data = _data(tmp_path)
    members = [_member(tmp_path, "a", np.zeros(20, int), np.zeros(21, int)),
               _member(tmp_path, "b", np.full(20, 2), np.full(21, 2))]
    spec = _spec()
    build_ensembles(spec, data, members, tmp_path / "ensembles")
    summary = evaluate_systems(spec, data, members, tmp_path / "ensembles", tmp_path / "evaluation",
                               tmp_path / "best")
    assert summary.selected == "a"  # by the rule (accuracy 0.60 against 0.20) ...
    assert summary.quality == "failed" and "every system predicts one class" in summary.quality_reason
    assert "RUN FAILED ON QUALITY" in (tmp_path / "evaluation" / "report.md").read_text()
    best = json.loads((tmp_path / "best" / "ensemble.json").read_text())["evaluation"]
    assert best["collapsed"] is True and best["quality"] == "failed"
    from medens.evaluation.gate import _recorded_collapse

    assert _recorded_collapse(tmp_path / "best")  # what the gate reads from the packaged challenger


def test_the_gate_never_promotes_a_collapsed_challenger():
    y = np.array([0] * 30 + [1] * 5 + [2] * 5)
    champion = _probs(np.where(np.arange(40) % 3 == 0, 0, y))  # a weak champion: accuracy 0.62
    all_normal = _probs(np.zeros(40, int), sure=0.9)  # accuracy 0.75, but one class
    d = gate_decision(y, None, all_normal, metric="accuracy")
    assert d["promote"] is False and d["collapsed"] is True and "collapsed" in d["reason"]
    d = gate_decision(y, champion, all_normal, metric="accuracy")
    assert d["promote"] is False and d["reason"].startswith("champion kept: the challenger has collapsed")
    # recorded on validation by the evaluation stage: refused even though it predicts two classes here
    d = gate_decision(y, None, _probs(y), metric="mcc", challenger_collapsed="class 'normal'")
    assert d["promote"] is False and "predicts only class 'normal' on validation" in d["reason"]
    d = gate_decision(y, None, _probs(y), metric="mcc")
    assert d["promote"] is True and d["collapsed"] is False


def test_medens_train_warns_about_a_collapsed_member(tmp_path, capsys):
    # every validation image is the same blank image, labelled with two classes: whatever the
    # network learns, it predicts one class for all of them
    rng = np.random.default_rng(0)
    train = Split(images=rng.integers(0, 255, (24, 16, 16, 1), dtype=np.uint8), labels=np.arange(24) % 2,
                  ids=[f"t{i}" for i in range(24)])
    val = Split(images=np.zeros((6, 16, 16, 1), np.uint8), labels=np.arange(6) % 2, ids=[f"v{i}" for i in range(6)])
    SplitData("classification", ["neg", "pos"], train, val, val).save(tmp_path / "data")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "c", "models": ["compact_cnn"], "losses": ["ce"],
                                    "training": {"epochs": 1, "min_steps": 0, "batch_size": 8}}))
    assert main(["train", "--spec", str(spec), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "m")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["collapsed"] is True
    assert "WARNING: member compact_cnn__ce has collapsed: every validation image is predicted as class" in captured.err
    manifest = json.loads((tmp_path / "m" / "model.json").read_text())
    assert manifest["collapsed"] is True and manifest["collapsed_class"] in ("neg", "pos")
