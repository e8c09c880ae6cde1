"""ONNX export when packaged: parity with PyTorch, checksums, refusal, and the backend choice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _ensembles import random_ensemble

from medens.data.synthetic import CELL_CLASSES, make_cells
from medens.ensemble.artifact import ENSEMBLE_MANIFEST, load_ensemble
from medens.ensemble.onnx_members import ONNX_FILE, OnnxMember, attach_backend, export_onnx, resolve_backend
from medens.serving.predictor import EnsemblePredictor

SIZE = 32


def cells(n: int, seed: int) -> np.ndarray:
    images, _, _ = make_cells({c: -(-n // len(CELL_CLASSES)) for c in CELL_CLASSES}, size=SIZE, seed=seed)
    return np.ascontiguousarray(images[:n])


def artifact(root: Path, archs: list[str], inference: dict[str, dict] | None = None) -> Path:
    """Random members (batch-norm statistics from training-mode passes, not the identity), z-scored
    inputs, a mean ensemble."""
    return random_ensemble(root, archs, cells(24, seed=0), "mean", normalise="zscore", inference=inference,
                           batch_norm_passes=3)[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """compact_cnn with test-time flips and a temperature, resnet18 (batch norm) and a timm resnet18,
    exported and checked on validation images."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the autouse one-thread fixture is not active for module fixtures
    try:
        inference = {"compact_cnn-0": {"tta_flips": [[3], [2]], "temperature": 1.7}}
        path = artifact(tmp_path_factory.mktemp("onnx"), ["compact_cnn", "resnet18", "timm_resnet18"], inference)
        return path, export_onnx(path, cells(12, seed=1))
    finally:
        torch.set_num_threads(threads)


def test_export_agrees_with_torch_and_is_served(exported):
    path, entry = exported
    assert "refused" not in entry, entry.get("refused")
    assert set(entry["members"]) == {"compact_cnn-0", "resnet18-1", "timm_resnet18-2"}
    assert entry["check_images"] == 12 and entry["opset"] == 17
    for mid, m in entry["members"].items():
        assert m["file"] == f"members/{mid}/{ONNX_FILE}" and (path / m["file"]).is_file()
        assert 0.0 <= m["max_abs_diff"] <= 1e-5
    manifest = json.loads((path / ENSEMBLE_MANIFEST).read_text())
    assert {m["file"] for m in entry["members"].values()} <= set(manifest["files"])
    # unseen images, a batch size the export never saw: the same probabilities as PyTorch
    torch_p = EnsemblePredictor.load(path, backend="torch")
    onnx_p = EnsemblePredictor.load(path, backend="onnx", threads=1)
    assert (torch_p.backend, onnx_p.backend) == ("torch", "onnx")
    assert onnx_p.describe()["backend"] == "onnx"
    x = torch_p.prepare(list(cells(7, seed=5)))
    ref, got = torch_p.forward(x), onnx_p.forward(x)
    for a, b in zip(ref, got):
        assert np.abs(a["probs"] - b["probs"]).max() <= 1e-5
        for mid in torch_p.member_ids:
            assert np.abs(a["members"][mid] - b["members"][mid]).max() <= 1e-5
        assert a["disagreement"] == b["disagreement"]
    probs = np.stack([r["probs"] for r in ref])
    assert probs.std(axis=0).max() > 1e-3  # the images give different answers: the comparison is not vacuous


def test_flips_and_temperature_are_inside_the_graph(exported):
    """The compact_cnn member's ONNX output is its flipped-view mean at temperature 1.7, not its plain softmax."""
    path, _ = exported
    ens = load_ensemble(path)
    member = ens.members["compact_cnn-0"]
    x = EnsemblePredictor(ens).prepare(list(cells(6, seed=7)))
    got = OnnxMember(path / "members" / "compact_cnn-0" / ONNX_FILE, threads=1).probs(x)
    with torch.no_grad():
        t = torch.as_tensor(x)
        plain = torch.softmax(member.model(t), 1)
        views = [plain, torch.softmax(member.model(torch.flip(t, (3,))), 1),
                 torch.softmax(member.model(torch.flip(t, (2,))), 1)]
        mean = sum(views) / 3
        expected = torch.softmax(torch.log(mean) / 1.7, 1).numpy()
    assert np.abs(got - expected).max() <= 1e-5
    assert np.abs(got - plain.numpy()).max() > 1e-4


def test_the_embedding_output_is_the_unflipped_views_classification_layer_input(exported):
    """Every member's ``embedding`` output is :func:`medens.models.embed.embed` of the un-flipped
    images (compact_cnn has flips: not of a flipped view), within 1e-4 (|x| + max |x|)."""
    from medens.models.embed import embed

    path, entry = exported
    ens = load_ensemble(path)
    x = EnsemblePredictor(ens).prepare(list(cells(5, seed=8)))
    for mid, member in ens.members.items():
        assert entry["members"][mid]["embedding_excess"] <= 1.0
        _, got = OnnxMember(path / "members" / mid / ONNX_FILE, threads=1).outputs(x)
        ref = embed(member.model, x)
        assert got.shape == ref.shape and np.all(np.abs(got - ref) <= 1e-4 * (np.abs(ref) + np.abs(ref).max()))
    flipped = embed(ens.members["compact_cnn-0"].model, np.flip(x, 3).copy())
    _, got = OnnxMember(path / "members" / "compact_cnn-0" / ONNX_FILE, threads=1).outputs(x)
    assert np.abs(got - flipped).max() > 1e-2 * np.abs(flipped).max()


def test_a_changed_onnx_file_is_refused_at_load(exported, tmp_path):
    import shutil

    path = Path(shutil.copytree(exported[0], tmp_path / "copy"))
    onnx = path / "members" / "resnet18-1" / ONNX_FILE
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"members/resnet18-1/model.onnx does not match its sha256 in ensemble.json"):
        EnsemblePredictor.load(path, backend="onnx")
    # an ONNX file named by the manifest but without a checksum is refused too
    manifest = json.loads((path / ENSEMBLE_MANIFEST).read_text())
    del manifest["files"]["members/resnet18-1/model.onnx"]
    (path / ENSEMBLE_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"ONNX files \['members/resnet18-1/model.onnx'\] have no checksum"):
        attach_backend(load_ensemble(path), "onnx")


def test_disagreeing_or_unexportable_members_write_no_onnx(tmp_path, monkeypatch):
    """All members or none: a member whose ONNX output differs, or one that does not export (HOG:
    no ONNX form of aten::hypot), leaves the artifact without ONNX files, served with PyTorch."""
    path = artifact(tmp_path / "a", ["compact_cnn", "compact_cnn"])
    original = OnnxMember.probs
    monkeypatch.setattr(OnnxMember, "probs", lambda self, x: original(self, x) + 1e-3)
    entry = export_onnx(path, cells(6, seed=1))
    monkeypatch.undo()
    assert entry["refused"].startswith("member compact_cnn-0: ONNX Runtime and PyTorch probabilities differ by up to 0.001")
    assert entry["refused"].endswith("no ONNX file written, the artifact is served with PyTorch")
    assert not list(path.rglob(ONNX_FILE)) and "members" not in entry
    assert json.loads((path / ENSEMBLE_MANIFEST).read_text())["onnx"]["refused"] == entry["refused"]
    assert EnsemblePredictor.load(path).backend == "torch"
    with pytest.raises(ValueError, match="has no ONNX files .member compact_cnn-0: ONNX Runtime and PyTorch"):
        EnsemblePredictor.load(path, backend="onnx")

    hog = artifact(tmp_path / "b", ["compact_cnn", "hog_mlp"])
    entry = export_onnx(hog, cells(4, seed=1))
    assert entry["refused"].startswith("member hog_mlp-1 does not export to ONNX (UnsupportedOperatorError")
    assert not list(hog.rglob(ONNX_FILE))
    assert export_onnx(hog, None)["refused"].startswith("no validation images")


def test_backend_choice():
    plain = {"name": "p", "members": ["a", "b"]}
    with_onnx = {**plain, "onnx": {"members": {"a": {"file": "members/a/model.onnx"},
                                               "b": {"file": "members/b/model.onnx"}}}}
    partial = {**plain, "onnx": {"members": {"a": {"file": "members/a/model.onnx"}}}}
    assert resolve_backend(plain, "auto") == "torch"
    assert resolve_backend(plain, "torch") == "torch"
    assert resolve_backend(with_onnx, "auto") == "onnx"  # the faster one measured by benchmarks/serve.py
    assert resolve_backend(with_onnx, "auto", "cuda") == "torch"
    assert resolve_backend(with_onnx, "torch") == "torch"
    assert resolve_backend(partial, "auto") == "torch"
    with pytest.raises(ValueError, match=r"--backend onnx: the artifact 'p' has no ONNX files .it was packaged without"):
        resolve_backend(plain, "onnx")
    with pytest.raises(ValueError, match="the onnx backend runs on the CPU"):
        resolve_backend(with_onnx, "onnx", "cuda")
    with pytest.raises(ValueError, match="backend must be one of auto, onnx, torch, got 'tensorrt'"):
        resolve_backend(with_onnx, "tensorrt")
