"""Training model-level ensembles (docs/methods.md section 5.3): frozen members, self-contained artifacts, checks.

Members are tiny compact CNNs trained for one or two epochs on 16 px synthetic images; what is
checked is exact: member tensors bit for bit, artifact round trips, and the error messages for
members (or data) that cannot be fused. The fused modules themselves are tested in
``tests/models/test_fusion.py``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medens.config import TrainingSpec
from medens.data.types import Split, SplitData
from medens.models import build
from medens.models.artifact import load_artifact
from medens.models.fusion import EmbeddingFusion, FeatureFusion, fusion_init_state, read_members
from medens.training import fit
from medens.training.fusion import fit_fusion

CLASSES = ["a", "b", "c"]
MEMBERS = [
    ("m_small", {"name": "compact_cnn", "params": {"widths": [8, 16], "dropout": 0.0}}),  # 8x8 map at 16 px
    ("m_deep", {"name": "compact_cnn", "params": {"widths": [8, 16, 24]}}),  # 4x4 map at 16 px
    ("m_s4", {"name": "study4_custom_cnn", "params": {"filters": [8, 16], "embedding_dims": [6, 4]}}),
]


def make_data(size: int = 16, channels: int = 1, class_names: list[str] | None = None, seed: int = 0) -> SplitData:
    """Noise images whose class sets the mean brightness of a random square (learnable, deterministic)."""
    rng = np.random.default_rng(seed)

    def split(n: int, prefix: str) -> Split:
        labels = np.arange(n) % 3
        x = rng.normal(100, 20, (n, size, size, channels))
        for i, y in enumerate(labels):
            r, c = rng.integers(0, size - 5, 2)
            x[i, r : r + 5, c : c + 5] += 40 * (y + 1)
        return Split(images=x.clip(0, 255).astype(np.uint8), labels=labels.astype(np.int64),
                     ids=[f"{prefix}{i}" for i in range(n)])

    return SplitData("classification", list(class_names or CLASSES), split(48, "t"), split(24, "v"), split(12, "s"))


def spec(epochs: int = 1, lr: float = 3e-3) -> TrainingSpec:
    return TrainingSpec(epochs=epochs, min_steps=0, lr=lr, batch_size=16, patience=None, plateau_patience=None, device="cpu",
                        augment=False)


def train_member(out: Path, model: dict, data: SplitData) -> Path:
    return fit(model, "ce", data, spec(1), out, seed=1, progress=False).path


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("members")
    data = make_data()
    return {name: train_member(root / name, model, data) for name, model in MEMBERS}


def member_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / "weights.pt", map_location="cpu", weights_only=True)


def copy_members(members: dict[str, Path], dest: Path, names: list[str]) -> list[Path]:
    out = []
    for n in names:
        shutil.copytree(members[n], dest / n)
        out.append(dest / n)
    return out


@pytest.fixture(scope="module")
def fused(members, tmp_path_factory):
    """A feature fusion trained with fit_fusion from *copies* of two members, and a spy on it."""
    root = tmp_path_factory.mktemp("fused")
    dirs = copy_members(members, root, ["m_small", "m_deep"])
    spy: dict = {}
    original_init = FeatureFusion.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        spy["net"] = self
        spy["initial"] = {k: v.detach().clone() for k, v in self.state_dict().items()}

    FeatureFusion.__init__ = init
    try:
        result = fit_fusion(dirs, make_data(), spec(3, lr=1e-2), root / "fused", seed=0, progress=False, channels=16)
    finally:
        FeatureFusion.__init__ = original_init
    return {"dirs": dirs, "result": result, **spy}


# ---------------------------------------------------------------- training through fit


def test_fusion_training_leaves_members_bit_for_bit_unchanged(fused, members):
    net, initial = fused["net"], fused["initial"]
    trained = member_state(fused["result"].path)
    assert len(fused["result"].history) == 3
    for i, name in enumerate(["m_small", "m_deep"]):
        original = member_state(members[name])
        prefix = f"features.frozen.members.{i}."
        keys = [k for k in trained if k.startswith(prefix)]
        assert sorted(k[len(prefix):] for k in keys) == sorted(original)  # params and buffers, all of them
        assert any("running_mean" in k for k in original) and any("num_batches_tracked" in k for k in original)
        for k, v in original.items():
            assert torch.equal(trained[prefix + k], v), k  # the saved artifact
            assert torch.equal(net.state_dict()[prefix + k].cpu(), v), k  # the live module after training
    for k in ("features.fuse.conv.weight", "features.fuse.conv.bias", "head.fc.weight", "head.fc.bias"):
        assert (trained[k] - initial[k]).abs().max() > 1e-4, k  # the head did train
    # the live net was put in train() by fit, yet every member module stayed in eval mode
    assert all(not m.training for m in net.members.modules())


def test_fused_artifact_is_self_contained(fused, members):
    path = fused["result"].path
    manifest = json.loads((path / "model.json").read_text())
    kwargs = manifest["architecture"]["kwargs"]
    assert manifest["architecture"]["name"] == "feature_fusion"
    assert "member_artifacts" not in kwargs and [m["name"] for m in kwargs["members"]] == ["compact_cnn"] * 2
    assert manifest["fusion"]["kind"] == "feature" and len(manifest["fusion"]["members"]) == 2
    assert manifest["class_names"] == CLASSES and manifest["input"]["size"] == 16

    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        before = load_artifact(path).model(x)
        member_feats = [load_artifact(members[n]).model.forward_features(x) for n in ("m_small", "m_deep")]
    for d in fused["dirs"]:
        shutil.rmtree(d)
    assert not any(d.exists() for d in fused["dirs"])
    loaded = load_artifact(path)
    assert isinstance(loaded.model, FeatureFusion) and not loaded.model.training
    with torch.no_grad():
        assert torch.equal(loaded.model(x), before)
        for m, f in zip(loaded.model.members, member_feats):
            assert torch.equal(m.forward_features(x), f)
        rebuilt = build(**loaded.model.build_kwargs)
        rebuilt.load_state_dict(loaded.model.state_dict())
        assert torch.equal(rebuilt.eval()(x), before)


def test_embedding_fusion_through_fit(members, tmp_path):
    dirs = [members["m_small"], members["m_s4"]]
    result = fit_fusion(dirs, make_data(), spec(2, lr=1e-2), tmp_path / "emb", kind="embedding", seed=0,
                        progress=False, embedding="penultimate")
    trained = member_state(result.path)
    for i, d in enumerate(dirs):
        for k, v in member_state(d).items():
            assert torch.equal(trained[f"features.frozen.members.{i}.{k}"], v), k
    loaded = load_artifact(result.path)
    assert isinstance(loaded.model, EmbeddingFusion) and loaded.model.feature_channels == 16 + 4
    assert loaded.manifest["architecture"]["kwargs"]["embedding"] == "penultimate"


def test_factory_with_member_artifacts(members):
    dirs = [members["m_small"], members["m_deep"]]
    model = build("feature_fusion", in_channels=1, num_classes=3, member_artifacts=[str(d) for d in dirs],
                  channels=8).eval()
    state = model.state_dict()
    for k, v in fusion_init_state(dirs).items():
        assert torch.equal(state[k], v), k
    kw = model.build_kwargs
    assert kw["member_artifacts"] is None
    assert [m["name"] for m in kw["members"]] == ["compact_cnn", "compact_cnn"]
    assert kw["members"][1]["kwargs"]["widths"] == [8, 16, 24]
    rebuilt = build(**kw)
    rebuilt.load_state_dict(state)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model(x))
    with pytest.raises(ValueError, match=r"do not match the architectures of member_artifacts"):
        build("feature_fusion", in_channels=1, num_classes=3, member_artifacts=[str(d) for d in dirs],
              members=[{"name": "study4_custom_cnn", "kwargs": {}}, {"name": "compact_cnn", "kwargs": {}}])


# ---------------------------------------------------------------- members that cannot be fused


def test_member_mismatches_name_what_differs(members, tmp_path):
    good = members["m_small"]
    model = dict(MEMBERS)["m_small"]
    other_names = train_member(tmp_path / "names", model, make_data(class_names=["a", "b", "x"]))
    other_size = train_member(tmp_path / "size", model, make_data(size=24))
    other_channels = train_member(tmp_path / "rgb", model, make_data(channels=3))
    other_norm = fit(model, "ce", make_data(), spec(1), tmp_path / "z", seed=1, normalize="zscore",
                     progress=False).path

    cases = [
        (other_names, rf"class names mismatch between member artifacts: {re.escape(str(good))} has \['a', 'b', 'c'\], "
                      rf"{re.escape(str(other_names))} has \['a', 'b', 'x'\]"),
        (other_size, rf"input size mismatch between member artifacts: {re.escape(str(good))} has 16, "
                     rf"{re.escape(str(other_size))} has 24"),
        (other_channels, r"input channels mismatch between member artifacts: .* has 1, .* has 3"),
        (other_norm, r"input normalisation mean mismatch between member artifacts"),
    ]
    for bad, msg in cases:
        with pytest.raises(ValueError, match=msg):
            read_members([good, bad])
        with pytest.raises(ValueError, match=msg):
            fit_fusion([good, bad], make_data(), spec(1), tmp_path / "never", progress=False)
        with pytest.raises(ValueError, match=msg):
            build("feature_fusion", in_channels=1, num_classes=3, member_artifacts=[str(good), str(bad)])
    assert not (tmp_path / "never" / "model.json").exists()

    # data that does not match the (agreeing) members
    with pytest.raises(ValueError, match=r"class names mismatch: the data has \['a', 'b', 'x'\], the members "
                                         r"\['a', 'b', 'c'\]"):
        fit_fusion([good], make_data(class_names=["a", "b", "x"]), spec(1), tmp_path / "never", progress=False)
    with pytest.raises(ValueError, match=r"input size mismatch: the training data gives 24, the members expect 16"):
        fit_fusion([good], make_data(size=24), spec(1), tmp_path / "never", progress=False)
    with pytest.raises(ValueError, match="unknown fusion kind 'late'"):
        fit_fusion([good], make_data(), spec(1), tmp_path / "never", kind="late", progress=False)
