"""The embedding rule: the input of the head's last nn.Linear, captured during the ordinary forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medens.models import build
from medens.models.embed import capture_embeddings, classification_layer, embed


def _x(n: int = 4, c: int = 3, s: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, c, s, s)).astype(np.float32))


def test_a_pooled_head_embeds_the_pooled_feature_map():
    torch.manual_seed(0)
    net = build("compact_cnn", in_channels=3, num_classes=3).eval()
    x = _x()
    with torch.no_grad():
        expected = net.forward_features(x).mean(dim=(2, 3)).numpy()  # global average pooling
    got = embed(net, x)
    assert got.shape == (4, net.feature_channels)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # and the head's fc applied to it gives the model's logits
    with torch.no_grad():
        np.testing.assert_allclose(classification_layer(net)(torch.from_numpy(got)).numpy(), net(x).numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_an_mlp_head_embeds_its_last_hidden_layer():
    torch.manual_seed(0)
    net = build("study4_custom_cnn", in_channels=3, num_classes=2).eval()
    linears = [m for m in net.head.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) >= 2 and classification_layer(net) is linears[-1]
    x = _x(s=64)
    hidden = {}
    handle = linears[-2].register_forward_hook(lambda _m, _i, out: hidden.setdefault("h", out.detach()))
    with torch.no_grad():
        net(x)
    handle.remove()
    # the activation after the last hidden dense layer (ReLU), which fc reads
    np.testing.assert_allclose(embed(net, x), torch.relu(hidden["h"]).numpy(), rtol=1e-6, atol=1e-7)
    assert embed(net, x).shape[1] == linears[-1].in_features


def test_capture_keeps_the_first_forward_and_removes_its_hooks():
    torch.manual_seed(0)
    net = build("compact_cnn", in_channels=3, num_classes=3).eval()
    x = _x()
    with torch.no_grad(), capture_embeddings([net]) as got:
        assert got == [None]
        net(x)
        net(torch.flip(x, (3,)))  # a test-time flip after the identity view: not kept
    np.testing.assert_array_equal(got[0], embed(net, x))
    assert not classification_layer(net)._forward_pre_hooks


def test_models_without_a_classification_head_are_refused_by_name():
    seg = build("unet", in_channels=1, num_classes=2, task="segmentation")
    with pytest.raises(ValueError, match="no classification head"):
        classification_layer(seg)
