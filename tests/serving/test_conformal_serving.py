"""Conformal prediction sets at the endpoint: v1 and v2 carry ``prediction_set`` and ``coverage``, a
request picks a stored level, an unknown one is a 400 naming the stored levels, an artifact without
``conformal.json`` serves as before, and ``conformal.json`` is covered by the checksums."""

from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import pytest

from medens.data.transforms import preprocess
from medens.ensemble.artifact import load_ensemble
from medens.ensemble.conformal import CONFORMAL_FILE, ConformalSets
from medens.stages.conformal import calibrate_selected


@pytest.fixture(scope="module")
def with_sets(tiny_ensemble, tmp_path_factory):
    """The tiny ensemble packaged with conformal sets from its cross-fitted validation predictions,
    the same ensemble without them (an older artifact), and the offline probabilities of 8 test images."""
    from medens.ensemble.conformal import attach

    ens_dir, images = tiny_ensemble
    root = tmp_path_factory.mktemp("conformal-serve")
    sets = calibrate_selected("weighted-top3", {}, {"weighted-top3": ens_dir}, basis="5-fold cross-fitted")
    old, new = root / "old", root / "new"
    for d in (old, new):
        shutil.copytree(ens_dir, d, ignore=shutil.ignore_patterns("predictions"))
    attach(new, sets)
    ens = load_ensemble(new)
    imgs = images[:8]
    probs, _ = ens.predict(preprocess(imgs, ens.input_spec))
    return {"old": old, "new": new, "sets": sets, "images": imgs, "probs": probs}


def _model(path):
    from medens.serving.server import build_model

    return build_model(str(path), name="t")


def test_artifact_checksums_cover_conformal_json(with_sets, tmp_path):
    new = with_sets["new"]
    manifest = json.loads((new / "ensemble.json").read_text())
    assert CONFORMAL_FILE in manifest["files"]
    assert manifest["conformal"] == {"file": CONFORMAL_FILE, "method": "mondrian", "score": "aps",
                                     "levels": [0.9, 0.95], "default": 0.9}
    bad = tmp_path / "bad"
    shutil.copytree(new, bad)
    d = json.loads((bad / CONFORMAL_FILE).read_text())
    d["thresholds"]["0.9"] = [1.0] * len(d["class_names"])
    (bad / CONFORMAL_FILE).write_text(json.dumps(d))
    with pytest.raises(ValueError, match=CONFORMAL_FILE):
        load_ensemble(bad)
    # a conformal.json the checksums do not list (dropped into an older artifact) is refused
    unlisted = tmp_path / "unlisted"
    shutil.copytree(with_sets["old"], unlisted)
    shutil.copy(new / CONFORMAL_FILE, unlisted / CONFORMAL_FILE)
    from medens.serving.predictor import EnsemblePredictor

    with pytest.raises(ValueError, match="not covered by the artifact's checksums"):
        EnsemblePredictor.load(unlisted)


def test_v1_and_v2_carry_the_set_and_the_level(with_sets):
    from kserve import InferInput, InferRequest

    model, sets, probs = _model(with_sets["new"]), with_sets["sets"], with_sets["probs"]
    imgs = [img.tolist() for img in with_sets["images"]]
    body = asyncio.run(model.predict({"instances": imgs}))
    for row, expected in zip(body["predictions"], sets.prediction_sets(probs, 0.9)):
        assert row["coverage"] == 0.9 and row["prediction_set"] == expected
        assert row["class_name"] == expected[0]  # most probable first: the label leads its set
    body95 = asyncio.run(model.predict({"instances": imgs, "parameters": {"coverage": 0.95}}))
    assert [r["prediction_set"] for r in body95["predictions"]] == sets.prediction_sets(probs, 0.95)
    assert all(r["coverage"] == 0.95 for r in body95["predictions"])
    # a higher level never gives a smaller set (thresholds grow with the level)
    assert all(set(a["prediction_set"]) <= set(b["prediction_set"])
               for a, b in zip(body["predictions"], body95["predictions"]))
    inp = InferInput(name="image", shape=list(with_sets["images"].shape), datatype="FP32")
    inp.set_data_from_numpy(with_sets["images"].astype(np.float32), binary_data=False)
    resp = asyncio.run(model.predict(InferRequest(model_name="t", infer_inputs=[inp],
                                                  parameters={"coverage": "0.95"})))
    out = {o.name: o for o in resp.outputs}
    got = [json.loads(v.decode() if isinstance(v, bytes) else v) for v in out["prediction_set"].data]
    assert got == sets.prediction_sets(probs, 0.95)
    assert out["coverage"].datatype == "FP64" and out["coverage"].as_numpy().tolist() == [0.95] * len(probs)


def test_explain_carries_the_same_set_as_predict(with_sets):
    model, sets, probs = _model(with_sets["new"]), with_sets["sets"], with_sets["probs"]
    imgs = [img.tolist() for img in with_sets["images"][:3]]
    for level in (0.9, 0.95):
        body = asyncio.run(model.explain({"instances": imgs, "parameters": {"coverage": level}}))
        rows = body["explanations"]
        assert [r["prediction_set"] for r in rows] == sets.prediction_sets(probs[:3], level)
        assert all(r["coverage"] == level for r in rows)
    default = asyncio.run(model.explain({"instances": imgs}))["explanations"]
    assert [r["coverage"] for r in default] == [0.9] * 3
    old = asyncio.run(_model(with_sets["old"]).explain({"instances": imgs}))["explanations"]
    assert all("prediction_set" not in r and "coverage" not in r for r in old)


def test_unknown_level_is_a_400_naming_the_stored_levels(with_sets):
    from kserve.errors import InvalidInput

    model = _model(with_sets["new"])
    img = [with_sets["images"][0].tolist()]
    for bad in (0.8, "high", True):
        with pytest.raises(InvalidInput, match=r"stored levels are 0\.9, 0\.95|among the stored levels 0\.9, 0\.95"):
            asyncio.run(model.predict({"instances": img, "parameters": {"coverage": bad}}))


def test_older_artifact_serves_as_before(with_sets):
    from kserve.errors import InvalidInput

    model = _model(with_sets["old"])
    assert model.predictor.conformal is None
    row = asyncio.run(model.predict({"instances": [with_sets["images"][0].tolist()]}))["predictions"][0]
    assert "prediction_set" not in row and "coverage" not in row
    np.testing.assert_allclose(row["probabilities"], with_sets["probs"][0], atol=1e-5)
    with pytest.raises(InvalidInput, match="no conformal prediction sets"):
        asyncio.run(model.predict({"instances": [with_sets["images"][0].tolist()], "parameters": {"coverage": 0.9}}))


def test_sets_from_the_ensembles_cross_fitted_validation_predictions(with_sets, tiny_ensemble):
    from medens.ensemble.conformal import calibrate
    from medens.training.predictions import Predictions

    oof = Predictions.load(tiny_ensemble[0] / "predictions" / "val_oof.npz")
    expected = calibrate(oof.probs, oof.labels, with_sets["sets"].class_names)
    stored = ConformalSets.read(with_sets["new"] / CONFORMAL_FILE)
    for level in (0.9, 0.95):
        np.testing.assert_array_equal(stored.thresholds[level], expected.thresholds[level])
    assert stored.source.startswith("weighted-top3: weighted-top3/predictions/val_oof.npz")
