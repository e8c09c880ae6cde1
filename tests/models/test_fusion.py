"""Model-level ensembles (docs/methods.md section 5.3): the fused modules, built from member specs.

What is checked is exact: the fused forward pass against a hand-written one, frozen members that
stay in eval mode, and the error messages for member specs that cannot be fused. Training a fusion
from member artifacts is tested in ``tests/training/test_fusion.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medens.models import MODELS, build
from medens.models import fusion as fusion_mod
from medens.models.fusion import EmbeddingFusion

# ---------------------------------------------------------------- registry and forward pass


def test_registered_with_references():
    assert "feature_fusion" in MODELS and "embedding_fusion" in MODELS
    assert MODELS.get("feature_fusion") is fusion_mod.feature_fusion


def test_feature_fusion_forward_matches_hand_computation():
    torch.manual_seed(0)
    specs = [{"name": "compact_cnn", "kwargs": {"widths": [8, 16]}},
             {"name": "compact_cnn", "kwargs": {"widths": [8, 16, 24]}}]
    model = build("feature_fusion", in_channels=1, num_classes=3, members=specs, channels=12).eval()
    assert model.cam_layer == "features.fuse"
    assert (model.feature_channels, model.num_classes, model.in_channels, model.min_input_size) == (12, 3, 1, 4)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        maps = [m.forward_features(x) for m in model.members]
        assert [tuple(f.shape[2:]) for f in maps] == [(8, 8), (4, 4)]
        # study 1: concatenate at the smallest grid (adaptive average pooling), 1x1 conv, ReLU, GAP, dense
        cat = torch.cat([F.adaptive_avg_pool2d(maps[0], (4, 4)), maps[1]], dim=1)
        conv = model.features.fuse.conv
        assert conv.kernel_size == (1, 1) and conv.in_channels == 16 + 24
        expected_feats = torch.relu(conv(cat))
        expected = model.head.fc(expected_feats.mean(dim=(2, 3)))
        feats = model.forward_features(x)
        torch.testing.assert_close(feats, expected_feats)
        torch.testing.assert_close(model.forward_head(feats), expected)
        torch.testing.assert_close(model(x), expected)
        captured = {}
        handle = dict(model.named_modules())[model.cam_layer].register_forward_hook(
            lambda _m, _i, out: captured.__setitem__("out", out))
        model(x)
        handle.remove()
        torch.testing.assert_close(captured["out"], feats)


def test_default_is_512_channels():
    specs = [{"name": "compact_cnn", "kwargs": {"widths": [4, 8]}}]
    model = build("feature_fusion", in_channels=1, num_classes=2, members=specs)
    assert model.features.fuse.conv.out_channels == 512
    assert model.head.fc.in_features == 512


def test_embedding_fusion_pooled_and_penultimate():
    torch.manual_seed(0)
    specs = [{"name": "compact_cnn", "kwargs": {"widths": [8, 16]}},
             {"name": "study4_custom_cnn", "kwargs": {"filters": [8, 16], "embedding_dims": [6, 4]}}]
    x = torch.randn(3, 1, 16, 16)
    pooled = build("embedding_fusion", in_channels=1, num_classes=2, members=specs).eval()
    assert isinstance(pooled, EmbeddingFusion) and pooled.feature_channels == 16 + 16
    with torch.no_grad():
        vec = torch.cat([m.forward_features(x).mean(dim=(2, 3)) for m in pooled.members], dim=1)
        torch.testing.assert_close(pooled.forward_features(x)[:, :, 0, 0], vec)
        torch.testing.assert_close(pooled(x), pooled.head.fc(vec))

    pen = build("embedding_fusion", in_channels=1, num_classes=2, members=specs, embedding="penultimate").eval()
    s4 = pen.members[1]
    assert pen.feature_channels == 16 + 4  # compact_cnn: pooled 16; study-4 branch: its dense-4 vector
    with torch.no_grad():
        h = s4.head
        emb = torch.relu(h.dense2(torch.relu(h.dense1(s4.forward_features(x).mean(dim=(2, 3))))))
        vec = torch.cat([pen.members[0].forward_features(x).mean(dim=(2, 3)), emb], dim=1)
        torch.testing.assert_close(pen(x), pen.head.fc(vec))
    with pytest.raises(ValueError, match="embedding must be one of 'pooled', 'penultimate', got 'mean'"):
        build("embedding_fusion", in_channels=1, num_classes=2, members=specs, embedding="mean")


def test_members_frozen_and_stay_in_eval_mode():
    specs = [{"name": "compact_cnn", "kwargs": {"widths": [8, 16]}}]
    model = build("feature_fusion", in_channels=1, num_classes=2, members=specs, channels=8)
    model.train()
    assert model.training and model.features.fuse.training and model.head.training
    assert all(not m.training for m in model.members.modules())
    assert all(not p.requires_grad for p in model.members.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("features.frozen"))
    before = {k: v.clone() for k, v in model.members.state_dict().items()}
    model(torch.randn(4, 1, 16, 16) * 3 + 1).sum().backward()  # a train-mode forward: BN stats must not move
    for k, v in model.members.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.members.parameters())


def test_bad_member_specs():
    with pytest.raises(ValueError, match="needs members="):
        build("feature_fusion", in_channels=1, num_classes=2)
    with pytest.raises(ValueError, match=r"members\[0\] must be a mapping"):
        build("feature_fusion", in_channels=1, num_classes=2, members=["compact_cnn"])
    with pytest.raises(ValueError, match=r"in_channels mismatch: members\[1\] \(compact_cnn\) takes 3 input"):
        build("feature_fusion", in_channels=1, num_classes=2,
              members=[{"name": "compact_cnn", "kwargs": {}}, {"name": "compact_cnn", "kwargs": {"in_channels": 3}}])
    with pytest.raises(ValueError, match="'unet' is a segmentation model"):
        build("feature_fusion", in_channels=1, num_classes=2, members=[{"name": "unet", "kwargs": {}}])
