"""Registry sweep over every classification model (in the style of timm's tests/test_models.py).

Every model forwards and backwards at its smallest valid input with 1 and 3 channels, exposes
the uniform interface (forward_features / forward_head / cam_layer), works with MONAI's
Grad-CAM on its cam_layer, and rejects a too-small input before running the network.
"""

from __future__ import annotations

import gc
import re

import pytest
import torch
from monai.visualize import GradCAM

from medens.models import MODELS, build, check_input_size, names

NUM_CLASSES = 3
BATCH = 2

EXPECTED_MIN_SIZE = {
    "compact_cnn": 8,
    "darknet_branch": 16,
    "densenet121": 32,
    "densenet169": 32,
    "densenet201": 32,
    "efficientnet_b0": 32,
    "quadsnet": 16,
    "resnet18": 32,
    "resnet50": 32,
    "seresnet50": 32,
    "study4_custom_cnn": 8,
    "timm_efficientnet_b0": 32,
    "timm_efficientnet_lite0": 32,
    "timm_efficientnet_lite1": 32,
    "timm_efficientnet_lite2": 32,
    "timm_inception_resnet_v2": 75,
    "timm_resnet18": 32,
    "timm_resnetv2_50": 32,
    "timm_xception": 32,
    "tv_densenet201": 32,
    "tv_inception_v3": 75,
    "tv_mobilenet_v2": 32,
    "tv_resnet152": 32,
    "tv_vgg19": 32,
}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
    gc.collect()  # free each model before the next one is built


def test_registry_holds_every_model():
    # the two fusion models need member specs, so they are swept in tests/models/test_fusion.py
    # hog_mlp has no convolution to size for the input channels; tests/models/test_hog.py covers it
    assert names("classification") == sorted([*EXPECTED_MIN_SIZE, "embedding_fusion", "feature_fusion", "hog_mlp"])
    assert len(MODELS) == 27  # EfficientNet-Lite1 and -Lite2 joined for their ImageNet weights packages


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", sorted(EXPECTED_MIN_SIZE))
def test_forward_backward_at_min_size(name: str, in_channels: int):
    model = build(name, in_channels=in_channels, num_classes=NUM_CLASSES)
    size = EXPECTED_MIN_SIZE[name]
    assert model.min_input_size == size
    assert (model.in_channels, model.num_classes) == (in_channels, NUM_CLASSES)
    model.train()
    x = torch.randn(BATCH, in_channels, size, size)
    logits = model(x)
    assert logits.shape == (BATCH, NUM_CLASSES)
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    first = next(model.parameters())
    # The first parameter is the first conv's weight, sized for the requested input channels.
    assert first.ndim == 4 and first.shape[1] == in_channels
    assert first.grad is not None and torch.isfinite(first.grad).all()
    assert first.grad.abs().sum() > 0
    for pname, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", sorted(EXPECTED_MIN_SIZE))
def test_interface_cam_layer_and_min_size(name: str):
    model = build(name, in_channels=1, num_classes=NUM_CLASSES).eval()
    size = model.min_input_size
    x = torch.randn(BATCH, 1, size, size)

    captured = {}
    cam_module = dict(model.named_modules())[model.cam_layer]
    handle = cam_module.register_forward_hook(lambda _m, _i, out: captured.__setitem__("out", out.detach().clone()))
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
        from_parts = model.forward_head(feats)
    handle.remove()

    assert feats.ndim == 4 and feats.shape[:2] == (BATCH, model.feature_channels)
    assert min(feats.shape[2:]) >= 1
    torch.testing.assert_close(from_parts, logits, rtol=1e-5, atol=1e-6)
    assert captured["out"].shape == feats.shape
    torch.testing.assert_close(captured["out"], feats, rtol=1e-5, atol=1e-6)

    # Grad-CAM on cam_layer (MONAI): one map per sample at input resolution.
    cam = GradCAM(nn_module=model, target_layers=model.cam_layer)
    cam_map = cam(x.clone())
    assert cam_map.shape == (BATCH, 1, size, size)
    assert torch.isfinite(cam_map).all()
    # MONAI keeps the autograd graph (which references its hooks) in these; without clearing
    # them the model can never be freed (a cycle through C++ autograd nodes that gc cannot see).
    cam.nn_module.activations.clear()
    cam.nn_module.gradients.clear()
    cam.nn_module.score = None

    # A too-small input is refused before the network runs.
    ran = []
    pre = model.features.register_forward_pre_hook(lambda *_: ran.append(True))
    small = size - 1
    msg = f"input {small}x{small} is smaller than the minimum {size}x{size} for {name}"
    with pytest.raises(ValueError, match=re.escape(msg)):
        model(torch.randn(1, 1, small, small))
    with pytest.raises(ValueError, match=re.escape(msg)):
        model.forward_features(torch.randn(1, 1, small, small))
    pre.remove()
    assert ran == []
    with pytest.raises(ValueError, match=re.escape(msg)):
        check_input_size(model, small)
    with pytest.raises(ValueError, match=re.escape(f"input {size}x{small} is smaller")):
        check_input_size(model, (size, small))
    check_input_size(model, size)
    check_input_size(model, (size, 2 * size))


def test_densenet121_message_example():
    model = build("densenet121")
    with pytest.raises(ValueError, match=r"^input 16x16 is smaller than the minimum 32x32 for densenet121$"):
        model(torch.zeros(1, 1, 16, 16))


def test_wrong_channels_and_rank_are_refused():
    model = build("compact_cnn", in_channels=1, num_classes=2)
    with pytest.raises(ValueError, match=r"built for 1 input channel\(s\), got 3"):
        model(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"expects a batch of shape \(B, C, H, W\), got shape \(1, 32, 32\)"):
        model(torch.zeros(1, 32, 32))


def test_non_square_input_larger_than_minimum_works():
    model = build("tv_inception_v3", in_channels=3, num_classes=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 75, 107)).shape == (1, 2)


def test_vgg19_native_head_matches_torchvision_layout():
    model = build("tv_vgg19", in_channels=3, num_classes=4, head="native").eval()
    # torchvision's classifier: 512*7*7 -> 4096 -> 4096 -> K.
    assert model.head.classifier[0].in_features == 512 * 7 * 7
    assert model.head.classifier[-1].out_features == 4
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)
