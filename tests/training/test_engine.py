import json

import numpy as np
import pytest
import torch

from medens.config import ComponentSpec, TrainingSpec
from medens.models import load_artifact
from medens.training import Predictions, fit, predict_split
from medens.training.engine import ClassWeightedLoss, build_loss, quick_metrics


def spec(**kw):
    base = dict(epochs=3, min_steps=0, batch_size=32, lr=3e-3, patience=None, plateau_patience=None, augment=False)
    base.update(kw)
    return TrainingSpec(**base)


def test_fit_writes_a_complete_artifact(cells32, tmp_path):
    res = fit("compact_cnn", "ce", cells32, spec(monitor="val_loss"), tmp_path / "m", seed=1, progress=False)
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"weights.pt", "model.json", "train_log.jsonl", "predictions"} <= files
    assert "checkpoint.pt" not in files
    m = json.loads((tmp_path / "m" / "model.json").read_text())
    assert m["architecture"] == {"name": "compact_cnn", "kwargs": {"in_channels": 3, "num_classes": 3}}
    assert m["loss"] == {"name": "ce", "params": {}}
    assert m["class_names"] == ["codocyte", "hypochromia", "normal"]
    assert m["input"] == {"channels": 3, "size": 32, "mean": [0.0] * 3, "std": [1.0] * 3, "max_value": 255.0}
    from medens.data.decode import PREPROCESSING

    assert m["preprocessing"] == {**PREPROCESSING, "dicom_window": None, "bit_depth": 8}
    assert m["preprocessing"]["version"] == 1
    assert set(m["files"]) == {"weights.pt", "train_log.jsonl", "predictions/val.npz"}
    assert len(m["history"]) == 3 and len(res.history) == 3
    # best epoch = minimum validation loss (study 2)
    losses = [h["val_loss"] for h in m["history"]]
    assert m["best_epoch"] == int(np.argmin(losses)) + 1
    assert m["val_metrics"]["val_loss"] == pytest.approx(min(losses))
    log = [json.loads(line) for line in (tmp_path / "m" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]


def test_load_artifact_reproduces_saved_validation_predictions(cells32, tmp_path):
    fit("compact_cnn", "focal", cells32, spec(epochs=2), tmp_path / "m", seed=2, progress=False)
    saved = Predictions.load(tmp_path / "m" / "predictions" / "val.npz")
    again = predict_split(tmp_path / "m", cells32.val, device="cpu")
    assert saved.ids == cells32.val.ids
    assert np.abs(saved.probs - again.probs).max() < 1e-5
    loaded = load_artifact(tmp_path / "m")
    assert loaded.class_names == cells32.class_names
    assert not loaded.model.training
    m = quick_metrics("classification", saved.probs, cells32.val.labels)
    assert m["macro_f1"] == pytest.approx(json.loads((tmp_path / "m" / "model.json").read_text())["val_metrics"]["macro_f1"])


def test_corrupted_weights_are_refused(cells32, tmp_path):
    fit("compact_cnn", "ce", cells32, spec(epochs=1), tmp_path / "m", progress=False)
    w = tmp_path / "m" / "weights.pt"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="weights.pt does not match its sha256 in model.json"):
        load_artifact(tmp_path / "m")
    (tmp_path / "m" / "model.json").unlink()
    with pytest.raises(ValueError, match="model.json is missing"):
        load_artifact(tmp_path / "m")


def test_monitor_metric_and_early_stopping(cells32, tmp_path):
    # lr 0 never improves after epoch 1, so patience 2 stops after epoch 3
    res = fit("compact_cnn", "ce", cells32, spec(epochs=10, lr=1e-12, patience=2, monitor="macro_f1",
                                                 optimizer="sgd", momentum=0.0),
              tmp_path / "m", progress=False)
    assert len(res.history) == 3 and res.best_epoch == 1
    m = json.loads((tmp_path / "m" / "model.json").read_text())
    assert m["stopped_early"] is True


def test_bad_settings_fail_before_training(cells32, tmp_path):
    with pytest.raises(ValueError, match="training.monitor 'auc' is not one of auto, val_loss, accuracy"):
        fit("compact_cnn", "ce", cells32, spec(monitor="auc"), tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="smaller than the minimum"):
        fit("tv_inception_v3", "ce", cells32, spec(), tmp_path / "b", progress=False)
    assert not (tmp_path / "b" / "train_log.jsonl").exists()
    with pytest.raises(ValueError, match="unknown loss 'focl'; did you mean 'focal'"):
        fit("compact_cnn", "focl", cells32, spec(), tmp_path / "c", progress=False)


def test_class_weighted_loss_matches_torch_weighted_ce():
    torch.manual_seed(0)
    logits, y = torch.randn(20, 3), torch.randint(0, 3, (20,))
    counts = [5, 5, 10]
    loss = build_loss(ComponentSpec(name="ce"), "classification", counts, "balanced")
    assert isinstance(loss, ClassWeightedLoss)
    w = torch.tensor([20 / 15, 20 / 15, 20 / 30])
    ref = torch.nn.functional.cross_entropy(logits, y, weight=w)
    assert torch.allclose(loss(logits, y), ref, atol=1e-6)


def test_balanced_sampler_and_class_weights_train(cells32, tmp_path):
    res = fit("compact_cnn", "ce", cells32, spec(epochs=1, sampler="balanced", class_weights="balanced"),
              tmp_path / "m", progress=False)
    assert np.isfinite(res.history[0]["train_loss"])


def test_short_training_learns_the_cells(tmp_path):
    """6 epochs of the compact CNN on the rbc-demo cells at the generator's default morphology
    (separation 1; the preset's 0.5 makes the task deliberately hard), ce and focal, macro-F1 > 0.70."""
    from medens.config import load_spec
    from medens.data import build_dataset

    spec_ = load_spec("rbc-demo")
    spec_.data.synthetic.separation = 1.0
    data = build_dataset(spec_)
    for loss in ("ce", "focal"):
        res = fit("compact_cnn", loss, data, spec(epochs=6, augment=True, lr=1e-3, batch_size=64), tmp_path / loss,
                  seed=0, progress=False)
        test = predict_split(res.path, data.test, device="cpu")
        f1 = quick_metrics("classification", test.probs, data.test.labels)["macro_f1"]
        assert f1 > 0.70, (loss, f1)
