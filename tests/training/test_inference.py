"""Temperature scaling and test-time augmentation stored in the artifact and applied by every
prediction path (validation predictions, predict_split, ensembles and therefore serving)."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from medens.config import TrainingSpec
from medens.ensemble.artifact import load_ensemble, write_ensemble
from medens.models.artifact import apply_temperature, load_artifact, model_probs, tta_flips
from medens.training import Predictions, fit, predict_split
from medens.training.calibration import nll


def _spec(**kw):
    base = dict(epochs=4, min_steps=0, batch_size=32, lr=3e-3, patience=None, plateau_patience=None, augment="none")
    base.update(kw)
    return TrainingSpec(**base)


class _Asymmetric(nn.Module):
    """Logits that depend on where the mass of the image is: flips change them."""

    def forward(self, x):
        h, w = x.shape[-2:]
        left, top = x[..., : w // 2].mean((1, 2, 3)), x[..., : h // 2, :].mean((1, 2, 3))
        return torch.stack([4 * left, 4 * top, torch.zeros_like(left)], 1)


def test_tta_is_the_mean_softmax_over_the_allowed_flips():
    x = torch.rand(5, 1, 8, 8)
    net = _Asymmetric()
    sm = lambda t: torch.softmax(net(t), 1)  # noqa: E731
    both = model_probs(net, x, flips=tta_flips("flips", "both"))
    by_hand = (sm(x) + sm(x.flip(3)) + sm(x.flip(2)) + sm(x.flip(2).flip(3))) / 4
    assert torch.allclose(both, by_hand, atol=1e-6)
    horizontal = model_probs(net, x, flips=tta_flips("flips", "horizontal"))
    assert torch.allclose(horizontal, (sm(x) + sm(x.flip(3))) / 2, atol=1e-6)
    assert not torch.allclose(horizontal, both)
    assert tta_flips("flips", "none") == () and tta_flips("none", "both") == ()
    assert torch.equal(model_probs(net, x), sm(x))
    with pytest.raises(ValueError, match="tta must be 'none' or 'flips'"):
        tta_flips("rotate", "both")


def test_segmentation_tta_flips_each_map_back():
    # a per-pixel model is flip-equivariant: flipping each map back makes TTA the identity
    net = nn.Conv2d(1, 2, 1)
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        plain = model_probs(net, x, task="segmentation")
        tta = model_probs(net, x, task="segmentation", flips=tta_flips("flips", "both"))
        unflipped = model_probs(net, x, task="classification", flips=((3,),))  # maps not flipped back
    assert torch.allclose(plain, tta, atol=1e-6)
    assert not torch.allclose(plain, unflipped, atol=1e-3)


def test_apply_temperature_matches_softmax_of_scaled_logits():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.3, 0.1]])
    p = torch.softmax(logits, 1)
    assert torch.allclose(apply_temperature(p, 2.0), torch.softmax(logits / 2.0, 1), atol=1e-6)
    assert apply_temperature(p, 1.0) is p


def test_the_fitted_temperature_lowers_validation_nll_keeps_decisions_and_travels(cells32, tmp_path):
    # one training run, calibrated or not: same weights, so the comparison isolates the temperature
    raw = fit("compact_cnn", "ce", cells32, _spec(calibrate=False), tmp_path / "raw", seed=3, progress=False)
    cal = fit("compact_cnn", "ce", cells32, _spec(), tmp_path / "cal", seed=3, progress=False)
    assert (tmp_path / "raw" / "weights.pt").read_bytes() == (tmp_path / "cal" / "weights.pt").read_bytes()
    m = json.loads((tmp_path / "cal" / "model.json").read_text())
    t = m["inference"]["temperature"]
    assert t != 1.0 and m["calibration"]["method"] == "temperature"
    assert json.loads((tmp_path / "raw" / "model.json").read_text())["inference"]["temperature"] == 1.0
    p_raw = Predictions.load(tmp_path / "raw" / "predictions" / "val.npz").probs
    p_cal = Predictions.load(tmp_path / "cal" / "predictions" / "val.npz").probs
    y = cells32.val.labels
    assert nll(p_cal, y) < nll(p_raw, y)
    assert nll(p_cal, y) == pytest.approx(m["calibration"]["validation"]["nll_after"], abs=1e-4)
    assert np.array_equal(p_cal.argmax(1), p_raw.argmax(1))
    assert raw.val_metrics["mcc"] == cal.val_metrics["mcc"]
    # the artifact applies it: predict_split and an ensemble (what serving runs) give the saved predictions
    again = predict_split(tmp_path / "cal", cells32.val, device="cpu")
    assert np.abs(again.probs - p_cal).max() < 1e-5
    assert load_artifact(tmp_path / "cal").temperature == pytest.approx(t)
    write_ensemble(tmp_path / "ens", name="cal", member_dirs={"cal": tmp_path / "cal"}, combiner=None)
    from medens.data.transforms import preprocess

    loaded = load_ensemble(tmp_path / "ens")
    probs, members = loaded.predict(preprocess(cells32.val.images, loaded.input_spec))
    assert np.abs(members["cal"] - p_cal).max() < 1e-5


def test_tta_travels_with_the_artifact(cells32, tmp_path):
    fit("compact_cnn", "ce", cells32, _spec(epochs=2, tta="flips", flips="horizontal"), tmp_path / "m", seed=4,
        progress=False)
    m = json.loads((tmp_path / "m" / "model.json").read_text())
    assert m["inference"]["tta"] == "flips" and m["inference"]["tta_flips"] == [[3]]
    saved = Predictions.load(tmp_path / "m" / "predictions" / "val.npz").probs
    loaded = load_artifact(tmp_path / "m")
    assert loaded.flips == ((3,),)
    again = predict_split(tmp_path / "m", cells32.val, device="cpu").probs
    assert np.abs(again - saved).max() < 1e-5
    # and it is not what the model alone says
    from medens.data.transforms import preprocess

    x = torch.as_tensor(preprocess(cells32.val.images, loaded.input_spec))
    with torch.no_grad():
        alone = apply_temperature(torch.softmax(loaded.model(x), 1), loaded.temperature).numpy()
    assert np.abs(alone - saved).max() > 1e-4
