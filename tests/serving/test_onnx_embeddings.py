"""ONNX backend and content drift together: the exported graph's ``embedding`` output feeds the drift
window as the PyTorch forward hooks do; ONNX files without it (packaged before) serve with PyTorch."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _planted import mean_combiner as _mean
from _planted import planted_ensemble
from _server import ServerProcess, http

from medens.data.synthetic import make_cells
from medens.ensemble.artifact import ENSEMBLE_MANIFEST, load_ensemble
from medens.ensemble.drift_reference import write_drift_reference
from medens.ensemble.onnx_members import ONNX_FILE, OnnxMember, export_member, export_onnx
from medens.serving.predictor import EnsemblePredictor
from medens.storage.checksum import checksums

MIX = {"codocyte": 20, "hypochromia": 20, "normal": 40}


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """(artifact, validation images): two compact CNNs, packaged as package_best packages a classifier:
    the drift reference first, then the ONNX export."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ens = planted_ensemble(tmp_path_factory.mktemp("onnxemb"), _mean(["m1", "m2"]))
        val, labels, _ = make_cells(MIX, size=32, seed=1)
        assert write_drift_reference(ens, val, labels) is not None
        entry = export_onnx(ens, val[:12])
        assert "refused" not in entry, entry.get("refused")
        return ens, val
    finally:
        torch.set_num_threads(threads)


def _old_onnx(src: Path, dest: Path) -> Path:
    """A copy of ``src`` whose ONNX files are what medens wrote before the embedding output (probs
    only), under re-computed checksums."""
    path = Path(shutil.copytree(src, dest))
    ens = load_ensemble(path)
    x = EnsemblePredictor(ens).prepare(list(make_cells(MIX, size=32, seed=3)[0][:4]))
    for mid, member in ens.members.items():
        (path / "members" / mid / ONNX_FILE).write_bytes(export_member(member, x, embedding=False))
    manifest = json.loads((path / ENSEMBLE_MANIFEST).read_text())
    manifest["files"] = checksums(path, exclude=(ENSEMBLE_MANIFEST,))
    (path / ENSEMBLE_MANIFEST).write_text(json.dumps(manifest))
    return path


def _close(got: np.ndarray, ref: np.ndarray) -> bool:
    """Within the export's embedding tolerance, 1e-4 * (|x| + max |x|)."""
    return bool(np.all(np.abs(got - ref) <= 1e-4 * (np.abs(ref) + np.abs(ref).max())))


def _png(img: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_onnx_backend_with_a_drift_reference_predicts_with_embeddings(packaged):
    """The merge bug: with ONNX runners the torch hooks never ran and every forward raised."""
    ens, val = packaged
    p = EnsemblePredictor.load(ens, backend="onnx", threads=1)
    assert p.backend == "onnx" and p.embedding_reference is not None
    rows = p.forward(p.prepare(list(val[:5])))
    assert len(rows) == 5 and all(r["embedding"].shape == (256,) for r in rows)


def test_onnx_embeddings_equal_torch_embeddings(packaged):
    """Unseen images at a batch size the export never saw: the served embedding (both members'
    blocks, in member order) is PyTorch's within 1e-4 (|x| + max |x|), and each probability within 1e-5."""
    from medens.models.embed import embed

    ens, _ = packaged
    entry = json.loads((ens / ENSEMBLE_MANIFEST).read_text())["onnx"]
    assert entry["embedding_rtol"] == 1e-4
    assert all(0.0 <= m["embedding_excess"] <= 1.0 for m in entry["members"].values())
    torch_p, onnx_p = EnsemblePredictor.load(ens, backend="torch"), EnsemblePredictor.load(ens, backend="onnx", threads=1)
    x = torch_p.prepare(list(make_cells(MIX, size=32, seed=9)[0][:7]))
    ref, got = torch_p.forward(x), onnx_p.forward(x)
    e_ref, e_got = np.stack([r["embedding"] for r in ref]), np.stack([r["embedding"] for r in got])
    # the reference implementation: each member's classification-layer input, concatenated in member order
    direct = np.concatenate([embed(m.model, x) for m in torch_p.ensemble.members.values()], axis=1)
    np.testing.assert_array_equal(e_ref, direct)
    assert e_got.shape == (7, 256) and _close(e_got, e_ref)
    # images embed differently (the comparison is not vacuous), and a 1% error would be caught
    assert e_ref.std(axis=0).max() > 1e-2 * np.abs(e_ref).max() and not _close(e_ref * 1.01, e_ref)
    for a, b in zip(ref, got):
        assert np.abs(a["probs"] - b["probs"]).max() <= 1e-5


def test_v1_with_backend_onnx_feeds_the_drift_window(packaged):
    from medens.serving.server import import_kserve
    from medens.serving.settings import ServingSettings

    import_kserve()
    from medens.serving.model import EnsembleModel

    ens, val = packaged
    model = EnsembleModel("onnx-drift", str(ens), settings=ServingSettings(drift_test_every=1000), backend="onnx",
                          threads=1)
    model.load()
    assert model.predictor is not None and model.predictor.backend == "onnx"
    assert model.embedding_drift is not None and len(model.embedding_drift._recent) == 0
    out = asyncio.run(model.predict({"instances": [{"b64": _png(i)} for i in val[:3]]}))
    assert len(out["predictions"]) == 3
    assert len(model.embedding_drift._recent) == 3
    torch_p = EnsemblePredictor.load(ens, backend="torch")
    expected = np.stack([r["embedding"] for r in torch_p.forward(torch_p.prepare(list(val[:3])))])
    window = np.stack(model.embedding_drift._recent)
    assert _close(window, expected)


def test_served_v1_with_backend_onnx_answers_and_tests_drift(packaged, tmp_path):
    """Through HTTP: 200, and the drift test ran on the request's embeddings (its gauges are set)."""
    ens, val = packaged
    env = {"MEDENS_SERVE_DRIFT_TEST_EVERY": "3", "MEDENS_SERVE_DRIFT_PERMUTATIONS": "20"}
    log = tmp_path / "server.log"
    with ServerProcess(ens, "onnx-drift", env=env, log=log, extra_args=["--backend", "onnx", "--threads", "1"]) as server:
        status, body, _ = http("POST", f"{server.url}/v1/models/onnx-drift:predict",
                               {"instances": [_png(i) for i in val[:3]]})
        assert status == 200, body
        assert len(body["predictions"]) == 3
        lines: list[str] = []
        for _ in range(100):
            _, text, _ = http("GET", f"{server.url}/metrics")
            lines = [ln for ln in str(text).splitlines() if ln.startswith('medens_drift_mmd_pvalue{model="onnx-drift"}')]
            if lines:
                break
            time.sleep(0.1)
    assert "onnx backend" in log.read_text()
    assert len(lines) == 1 and 0.0 < float(lines[0].split()[-1]) <= 1.0


def test_old_onnx_files_without_embeddings_serve_with_torch(packaged, tmp_path, caplog):
    ens, val = packaged
    old = _old_onnx(ens, tmp_path / "old")
    assert not OnnxMember(old / "members" / "m1" / ONNX_FILE).has_embedding
    assert OnnxMember(ens / "members" / "m1" / ONNX_FILE).has_embedding
    with caplog.at_level(logging.WARNING, logger="medens.onnx"):
        p = EnsemblePredictor.load(old, backend="onnx", threads=1)
    assert p.backend == "torch"
    assert "ONNX files of m1, m2 have no embedding output" in caplog.text and "serving with PyTorch" in caplog.text
    rows = p.forward(p.prepare(list(val[:4])))
    np.testing.assert_allclose(np.stack([r["embedding"] for r in rows]), p.embedding_reference.embeddings[:4],
                               rtol=1e-5, atol=1e-6)
    # without a drift reference the old files are served by ONNX Runtime, as before
    manifest = json.loads((old / ENSEMBLE_MANIFEST).read_text())
    del manifest["drift_reference"]
    (old / ENSEMBLE_MANIFEST).write_text(json.dumps(manifest))
    p = EnsemblePredictor.load(old, backend="auto", threads=1)
    assert p.backend == "onnx" and p.embedding_reference is None
    assert "embedding" not in p.forward(p.prepare(list(val[:2])))[0]
    with pytest.raises(ValueError, match="no embedding output"):
        p.ensemble.runners["m1"].outputs(p.prepare(list(val[:1])))


def test_embeddings_beyond_tolerance_write_no_onnx(packaged, tmp_path, monkeypatch):
    val = packaged[1]
    path = planted_ensemble(tmp_path, _mean(["m1", "m2"]))
    original = OnnxMember.outputs
    monkeypatch.setattr(OnnxMember, "outputs", lambda self, x: (lambda p, e: (p, e * 1.001))(*original(self, x)))
    entry = export_onnx(path, val[:4])
    assert entry["refused"].startswith("member m1: ONNX Runtime and PyTorch embeddings differ by up to")
    assert "beyond 0.0001 * (|embedding| + max |embedding|)" in entry["refused"]
    assert not list(path.rglob(ONNX_FILE))
