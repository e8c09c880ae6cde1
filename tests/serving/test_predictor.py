"""EnsemblePredictor without a server: the training reference in artifacts, s3:// loading with
checksums, a run directory's best/, segmentation answers, and clear errors."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from medens.data.drift import intensity_reference
from medens.data.transforms import preprocess
from medens.ensemble.artifact import load_ensemble
from medens.serving.predictor import EnsemblePredictor, disagreement, fetch_artifact, predictive_entropy


def test_training_reference_is_stored_in_members_and_ensemble(tiny_ensemble, tmp_path):
    from medens.data.types import SplitData

    ens_dir, _ = tiny_ensemble
    manifest = json.loads((ens_dir / "ensemble.json").read_text())
    data = SplitData.load(ens_dir.parent.parent / "data")
    expected = intensity_reference(data.train.images)
    assert manifest["reference"] == expected
    assert abs(sum(manifest["reference"]["fractions"]) - 1) < 1e-6 and manifest["reference"]["bins"] == 32
    for mid in manifest["members"]:
        assert json.loads((ens_dir / "members" / mid / "model.json").read_text())["reference"] == expected
    assert EnsemblePredictor.load(ens_dir).reference == expected


def test_prepare_forward_equal_offline(tiny_ensemble):
    ens_dir, images = tiny_ensemble
    p = EnsemblePredictor.load(ens_dir)
    x = p.prepare(list(images[:5]))
    np.testing.assert_array_equal(x, preprocess(images[:5], p.input_spec))
    rows = p.forward(x)
    probs, members = load_ensemble(ens_dir).predict(x)
    np.testing.assert_allclose(np.stack([r["probs"] for r in rows]), probs, atol=1e-12)
    r = p.result(rows[0], members=True)
    assert r["label"] == int(probs[0].argmax()) and set(r["members"]) == set(members)
    assert r["class_name"] == p.class_names[r["label"]]


def test_uncertainty_hand_computed():
    probs = np.array([[0.5, 0.5], [1.0, 0.0]])
    np.testing.assert_allclose(predictive_entropy(probs), [np.log(2), 0.0], atol=1e-12)
    members = [np.array([[0.6, 0.4], [0.9, 0.1]]), np.array([[0.4, 0.6], [0.2, 0.8]]),
               np.array([[0.7, 0.3], [0.6, 0.4]])]
    # ensemble labels [0, 0]: member labels [0, 0], [1, 1], [0, 0]
    np.testing.assert_allclose(disagreement(probs, members), [1 / 3, 1 / 3])


def test_s3_model_dir_is_downloaded_with_checksums(tiny_ensemble, s3_endpoint, monkeypatch, tmp_path):
    from medens.storage import ArtifactStore

    ens_dir, images = tiny_ensemble
    # moto accepts any credentials; these are placeholders, not secrets
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-access")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    bucket = f"serve-{time.time_ns()}"
    store = ArtifactStore.from_uri(f"s3://{bucket}/models", endpoint=s3_endpoint)
    uri = store.publish(ens_dir, "tiny/versions/v1")
    assert uri == f"s3://{bucket}/models/tiny/versions/v1"
    local = fetch_artifact(uri, endpoint=s3_endpoint, cache=tmp_path)
    assert (local / "ensemble.json").read_bytes() == (ens_dir / "ensemble.json").read_bytes()
    p = EnsemblePredictor.load(uri, endpoint=s3_endpoint)
    expected, _ = load_ensemble(ens_dir).predict(preprocess(images[:3], p.input_spec))
    np.testing.assert_allclose(np.stack([r["probs"] for r in p.forward(p.prepare(list(images[:3])))]), expected,
                               atol=1e-12)
    with pytest.raises(ValueError, match="must name an artifact under a bucket"):
        fetch_artifact("s3://bucket-only")


def test_run_directory_serves_its_best_and_errors_name_the_problem(tiny_ensemble, tmp_path):
    ens_dir, _ = tiny_ensemble
    run = tmp_path / "run"
    shutil.copytree(ens_dir, run / "best")
    assert fetch_artifact(str(run)) == run / "best"
    with pytest.raises(ValueError, match="does not exist"):
        fetch_artifact(str(tmp_path / "nowhere"))
    member = next((ens_dir / "members").iterdir())
    with pytest.raises(ValueError, match="single model artifact"):
        fetch_artifact(str(member))
    # a changed weight file is refused, naming the file
    bad = tmp_path / "bad"
    shutil.copytree(ens_dir, bad)
    w = next((bad / "members").iterdir()) / "weights.pt"
    raw = bytearray(w.read_bytes())
    raw[-1] ^= 0xFF
    w.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="weights.pt"):
        EnsemblePredictor.load(bad)


def test_segmentation_answers(tmp_path):
    """A 2-member segmentation ensemble: a mask PNG of the input size, class fractions, members."""
    import base64
    import io

    from _ensembles import train_ensembles
    from PIL import Image

    made = train_ensembles({
        "name": "seg-tiny", "task": "segmentation",
        "data": {"source": "synthetic_segmentation", "image_size": 32, "channels": 1,
                 "class_names": ["background", "lesion"], "synthetic": {"n_images": 24}},
        "models": ["basic_unet"], "losses": ["dice_ce", "dice"],
        "training": {"epochs": 1, "min_steps": 0, "batch_size": 8, "patience": None, "plateau_patience": None},
        "ensemble": {"seg_methods": ["weighted"]}, "evaluation": {"bootstrap": 100, "gradcam": False},
    }, tmp_path)
    p = EnsemblePredictor.load(made["weighted"])
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 1), dtype=np.uint8)
    rows = p.forward(p.prepare([img]))
    r = p.result(rows[0], members=True)
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(r["mask_png"]))))
    np.testing.assert_array_equal(mask, rows[0]["probs"].argmax(0))
    assert r["shape"] == [32, 32] and abs(sum(r["class_fractions"].values()) - 1) < 1e-9
    assert set(r["members"]) == set(p.member_ids) and all(0 <= v <= 1 for v in r["members"].values())
    with pytest.raises(ValueError, match="classification ensembles only"):
        p.explain([img])


def test_model_is_ready_only_when_every_member_loaded(tiny_ensemble, tmp_path):
    from medens.serving.server import build_model, import_kserve

    import_kserve()
    from medens.serving.model import EnsembleModel

    ens_dir, _ = tiny_ensemble
    bad = tmp_path / "bad"
    shutil.copytree(ens_dir, bad)
    shutil.rmtree(next((bad / "members").iterdir()))  # one member missing
    model = EnsembleModel("x", str(bad))
    with pytest.raises(ValueError, match="missing"):
        model.load()
    assert model.ready is False and model.predictor is None
    good = build_model(str(ens_dir))
    assert good.ready is True and good.name == "weighted-top3"  # the artifact name (no evaluation block)
    assert len(good.predictor.member_ids) == 3


def test_default_served_name(tmp_path):
    from medens.serving.server import default_model_name

    (tmp_path / "ensemble.json").write_text(json.dumps({"name": "weighted-top3", "evaluation": {"experiment": "RBC Demo"}}))
    assert default_model_name(str(tmp_path)) == "rbc-demo"
    (tmp_path / "ensemble.json").write_text(json.dumps({"name": "Mean_Top3"}))
    assert default_model_name(str(tmp_path)) == "mean-top3"
    assert default_model_name(str(tmp_path / "none")) == "medens"


def test_segmentation_metrics_count_classes_present():
    from prometheus_client import REGISTRY

    from medens.serving.metrics import record_segmentation

    probs = np.zeros((2, 2, 2, 2))
    probs[:, 0] = 0.9  # background everywhere...
    probs[:, 1] = 0.1
    probs[1, :, 0, 0] = [0.2, 0.8]  # ...except one lesion pixel in image 1
    labels = {"model": "seg-metrics-test"}

    def value(name, **extra):
        return REGISTRY.get_sample_value(name, {**labels, **extra}) or 0.0

    record_segmentation("seg-metrics-test", ["background", "lesion"], probs, np.array([0.3, 0.4]), np.array([0.0, 0.25]))
    assert value("medens_predictions_total", **{"class": "background"}) == 2
    assert value("medens_predictions_total", **{"class": "lesion"}) == 1
    assert value("medens_prediction_confidence_sum") == pytest.approx(0.9 + (0.9 * 3 + 0.8) / 4)
    assert value("medens_member_disagreement_sum") == pytest.approx(0.25)


def test_load_and_every_forward_run_in_one_torch_thread(tiny_ensemble, monkeypatch):
    """One OpenMP team per process (see medens.serving.batching.torch_thread)."""
    import asyncio
    import threading

    from medens.serving.server import build_model

    seen = []
    real_load, real_forward = EnsemblePredictor.load, EnsemblePredictor.forward

    def load(*a, **k):
        seen.append(("load", threading.get_ident()))
        return real_load(*a, **k)

    def forward(self, x):
        seen.append(("forward", threading.get_ident()))
        return real_forward(self, x)

    monkeypatch.setattr(EnsemblePredictor, "load", load)
    monkeypatch.setattr(EnsemblePredictor, "forward", forward)
    ens_dir, images = tiny_ensemble
    model = build_model(str(ens_dir), name="t")

    async def run():
        x = model.predictor.prepare(list(images[:2]))
        return await asyncio.gather(model.batcher.submit(x[:1]), model.batcher.submit(x[1:]))

    asyncio.run(run())
    threads = {t for _, t in seen}
    assert [k for k, _ in seen][0] == "load" and "forward" in [k for k, _ in seen]
    assert len(threads) == 1 and threading.get_ident() not in threads
