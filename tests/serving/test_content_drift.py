"""Content drift: the embedding reference packaged with the artifact, the MMD test at the endpoint,
and the acceptance: a texture at matched mean intensity drives the p-value below 0.01 while the
intensity PSI stays below 0.1; images of the training distribution keep it above 0.05 in at least
95% of windows.

The embedder here is a planted ensemble of two compact CNNs with fixed random weights (seeds 1
and 2): a random convolutional network's pooled features already respond to texture. The class-mix
shift with a trained member is measured by ``benchmarks/drift.py``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json

import numpy as np
import pytest
import torch
from _planted import mean_combiner as _mean
from _planted import planted_ensemble

from medens.data.drift import intensity_counts, intensity_reference, psi
from medens.data.synthetic import make_cells
from medens.ensemble.drift_reference import (
    DRIFT_REFERENCE_FILE,
    stratified_indices,
    write_drift_reference,
)
from medens.serving import metrics as m
from medens.serving.predictor import EnsemblePredictor

WINDOW = 200
MIX = {"codocyte": 60, "hypochromia": 60, "normal": 180}


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """(artifact dir, reference images) with the embedding reference of 300 'validation' cells."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("drift")
    ens = planted_ensemble(root, _mean(["m1", "m2"]))
    val, val_labels, _ = make_cells(MIX, size=32, seed=1)
    entry = write_drift_reference(ens, val, val_labels)
    assert entry is not None and entry["n"] == 300 and entry["source"] == "validation"
    return ens, val


def test_stratified_indices_keep_class_proportions():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 9 + [3] * 1)
    idx = stratified_indices(labels, 20, seed=0)
    # exact shares 12, 6, 1.8, 0.2: floors 12, 6, 1, 0, raised to 1 for every present class -> 20, full
    assert np.bincount(labels[idx]).tolist() == [12, 6, 1, 1]
    # without the floor of one: 30 of 10 + 90 + 0 -> 3, 27 exactly
    assert np.bincount(np.array([0] * 10 + [1] * 90)[stratified_indices(np.array([0] * 10 + [1] * 90), 30)]).tolist() \
        == [3, 27]
    # a remainder decides: 7 of 50/50/... 4 + 3 by the larger remainder (3.5 vs 3.5: the first class)
    assert np.bincount(np.array([0] * 50 + [1] * 50)[stratified_indices(np.array([0] * 50 + [1] * 50), 7)]).tolist() \
        == [4, 3]
    assert len(set(idx.tolist())) == 20 and np.array_equal(idx, np.sort(idx))
    assert np.array_equal(stratified_indices(labels, 500), np.arange(100))


def test_the_reference_is_in_the_artifact_under_its_checksums(packaged, tmp_path):
    import shutil

    ens, val = packaged
    manifest = json.loads((ens / "ensemble.json").read_text())
    assert DRIFT_REFERENCE_FILE in manifest["files"] and manifest["drift_reference"]["blocks"] == [["m1", 128], ["m2", 128]]
    p = EnsemblePredictor.load(ens, verify=True)
    ref = p.embedding_reference
    assert ref is not None and ref.embeddings.shape == (300, 256)
    # the packaged embeddings are what the served forward gives for the same images
    rows = p.forward(p.prepare(list(val[:5])))
    np.testing.assert_allclose(np.stack([r["embedding"] for r in rows]), ref.embeddings[:5], rtol=1e-5, atol=1e-6)
    bad = shutil.copytree(ens, tmp_path / "bad")
    (bad / DRIFT_REFERENCE_FILE).write_bytes((bad / DRIFT_REFERENCE_FILE).read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match=DRIFT_REFERENCE_FILE):
        EnsemblePredictor.load(bad, verify=True)


def _texture(images: np.ndarray, amplitude: float = 12.0) -> np.ndarray:
    """Vertical stripes of period 4 px, +-amplitude: the mean intensity is unchanged (up to clipping)."""
    stripes = amplitude * np.sign(np.sin(2 * np.pi * (np.arange(images.shape[2]) + 0.5) / 4))
    return np.clip(np.rint(images + stripes[None, None, :, None]), 0, 255).astype(np.uint8)


def _embed(p: EnsemblePredictor, images: np.ndarray) -> np.ndarray:
    return np.stack([r["embedding"] for r in p.forward(p.prepare(list(images)))])


def test_acceptance_texture_at_matched_intensity_drifts_training_images_do_not(tmp_path):
    torch.set_num_threads(1)
    ens = planted_ensemble(tmp_path, _mean(["m1", "m2"]))
    val, val_labels, _ = make_cells(MIX, size=32, seed=1)
    write_drift_reference(ens, val, val_labels)
    p = EnsemblePredictor.load(ens)
    ref, hist = p.embedding_reference, np.asarray(intensity_reference(val)["fractions"])
    fresh, _, _ = make_cells({k: 4 * v for k, v in MIX.items()}, size=32, seed=2)  # 1200 training-like cells
    emb = np.concatenate([_embed(p, fresh[s:s + 200]) for s in range(0, len(fresh), 200)])
    rng = np.random.default_rng(0)
    windows = [rng.choice(len(fresh), WINDOW, replace=False) for _ in range(100)]
    pvalues = np.array([ref.test(emb[w], 200, rng)[1] for w in windows])
    # The permutation test is exact: P(p <= 0.05) = 10/201 under no drift, so "above 0.05 in 95% of
    # windows" is its expectation, not a bound with margin. Asserted: the false alarms are what an
    # exact test gives, at most 10 of 100 (a binomial(100, 0.0498) exceeds 10 with probability 0.011),
    # and at most 2 of 100 below the alert's 0.01. The measured rate is in benchmarks/results/drift.json.
    assert np.sum(pvalues <= 0.05) <= 10 and np.sum(pvalues < 0.01) <= 2, pvalues.tolist()
    print(f"in-distribution windows above 0.05: {np.mean(pvalues > 0.05):.2f}, below 0.01: {np.mean(pvalues < 0.01):.2f}")
    assert max(psi(hist, intensity_counts(fresh[w])) for w in windows) < 0.1
    shifted = _texture(fresh[windows[0]])
    assert abs(float(shifted.mean()) - float(fresh[windows[0]].mean())) < 2.0  # matched mean intensity
    e_shift = _embed(p, shifted)
    mmd, pvalue = ref.test(e_shift, 200, rng)
    assert pvalue < 0.01 and pvalue == pytest.approx(1 / 201)
    assert psi(hist, intensity_counts(shifted)) < 0.1


def test_the_monitor_tests_in_the_background_every_n_images_and_sets_the_gauges(packaged):
    ens, val = packaged
    p = EnsemblePredictor.load(ens)
    mon = m.EmbeddingDriftMonitor("drift-test", p.embedding_reference, window=40, every=25, permutations=50)
    emb = p.embedding_reference.embeddings
    assert mon.observe(emb[:20]) is None  # 20 < 25 new images: no test yet
    future = mon.observe(emb[20:30])
    assert future is not None
    value, pvalue = future.result()
    assert mon.tests == 1 and (mon.value, mon.pvalue) == (value, pvalue)
    assert m.DRIFT_MMD.labels("drift-test")._value.get() == value
    assert m.DRIFT_MMD_PVALUE.labels("drift-test")._value.get() == pvalue
    # the test ran on the 30 images then in the window, against the reference
    assert value == pytest.approx(ref_mmd(p.embedding_reference, emb[:30]))
    assert mon.observe(emb[30:40]) is None  # 10 new since the last test
    mon.close()
    with pytest.raises(ValueError, match="window must be at least 1"):
        m.EmbeddingDriftMonitor("x", None, window=0)
    assert m.EmbeddingDriftMonitor("x", None).observe(emb[:100]) is None  # no reference: nothing


def ref_mmd(ref, window: np.ndarray) -> float:
    from medens.data.embedding_drift import mmd2_biased

    return mmd2_biased(ref.standardise(ref.embeddings), ref.standardise(window), ref.sigma2)


def _png(img: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_every_route_counts_each_image_once_in_both_drift_windows(packaged):
    from kserve import InferInput, InferRequest

    from medens.serving.server import import_kserve
    from medens.serving.settings import ServingSettings

    import_kserve()
    from medens.serving.model import EnsembleModel

    ens, val = packaged
    model = EnsembleModel("routes", str(ens), settings=ServingSettings(drift_test_every=1000))
    model.load()
    images = val[:3]

    async def calls():
        await model.predict({"instances": [{"b64": _png(i)} for i in images]})  # v1: 3
        inp = InferInput(name="image", shape=list(images[:2].shape), datatype="UINT8")
        inp.set_data_from_numpy(images[:2], binary_data=False)
        await model.predict(InferRequest(model_name="routes", infer_inputs=[inp]))  # v2: 2
        await model.explain({"instances": [{"b64": _png(images[0])}]})  # explain: 1

    before = m.INPUT_IMAGES.labels("routes")._value.get()
    asyncio.run(calls())
    assert m.INPUT_IMAGES.labels("routes")._value.get() - before == 6
    window = np.stack(model.embedding_drift._recent)
    assert len(window) == 6
    ref = model.predictor.embedding_reference.embeddings
    np.testing.assert_allclose(window, ref[[0, 1, 2, 0, 1, 0]], rtol=1e-5, atol=1e-6)
