"""``:explain`` weighs member Grad-CAM maps as the ensemble weighs the members, and returns the uncertainty."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _planted import planted_ensemble

from medens.ensemble.prediction import FORMAT
from medens.evaluation.explain import grad_cam, normalize_maps, overlay
from medens.serving.predictor import EnsemblePredictor, png_base64


def _weighted(ids: list[str], weights: list[float]) -> dict:
    return {"format": FORMAT, "kind": "prediction", "method": "weighted", "member_ids": ids, "n_classes": 3,
            "class_names": None, "options": {}, "params": {"weights": weights}}


@pytest.fixture(scope="module")
def images():
    return [np.random.default_rng(i).integers(0, 256, size=(32, 32, 3), dtype=np.uint8) for i in range(3)]


def test_weights_one_and_zero_explain_with_the_first_members_map(tmp_path, images):
    torch.set_num_threads(1)
    p = EnsemblePredictor.load(planted_ensemble(tmp_path, _weighted(["m1", "m2"], [1.0, 0.0])), verify=True)
    out = p.explain(images)
    x = p.prepare(images)
    m1, m2 = (p.ensemble.members[m].model for m in ("m1", "m2"))
    labels = np.array([o["label"] for o in out])
    with torch.no_grad():  # the (1, 0) ensemble's label is member 1's
        np.testing.assert_array_equal(labels, m1(torch.from_numpy(x)).argmax(1).numpy())
    cam1 = grad_cam(m1, x, class_idx=labels)
    assert not np.allclose(cam1, grad_cam(m2, x, class_idx=labels), atol=1e-3)  # the members differ
    np.testing.assert_array_equal(p._weighted_cam(x, labels, np.tile([1.0, 0.0], (3, 1))), normalize_maps(cam1))
    for img, cam, o in zip(images, normalize_maps(cam1), out):
        assert o["overlay_png"] == png_base64(overlay(img, cam))
        assert o["member_weights"] == {"m1": 1.0, "m2": 0.0} and o["weighting"] == "weights"
    # the uncertainty travels with the explanation, as the prediction gives it
    rows = p.forward(x)
    for o, r in zip(out, rows):
        assert o["entropy"] == pytest.approx(float(r["entropy"]))
        assert o["disagreement"] == pytest.approx(float(r["disagreement"]))
        assert o["confidence"] == pytest.approx(float(r["probs"].max()))


def test_a_weighted_sum_of_the_member_maps(tmp_path, images):
    p = EnsemblePredictor.load(planted_ensemble(tmp_path, _weighted(["m1", "m2"], [0.25, 0.75])))
    out = p.explain(images, class_idx=2)
    x = p.prepare(images)
    maps = [grad_cam(p.ensemble.members[m].model, x, class_idx=2) for m in ("m1", "m2")]
    expected = normalize_maps(0.25 * maps[0].astype(np.float64) + 0.75 * maps[1])
    for img, cam, o in zip(images, expected, out):
        assert o["label"] == 2 and o["overlay_png"] == png_base64(overlay(img, cam))
        assert o["member_weights"] == {"m1": 0.25, "m2": 0.75}
