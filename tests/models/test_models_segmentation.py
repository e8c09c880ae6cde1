"""Registry sweep over every segmentation model, 2D and (where it is worth the time) 3D."""

from __future__ import annotations

import re

import pytest
import torch

from medens.models import SEG_MODELS, build, check_input_size, names

NUM_CLASSES = 3
BATCH = 2

# name -> (size divisor, minimum size)
EXPECTED = {
    "basic_unet": (16, 32),
    "flexible_unet_resnet18": (32, 32),
    "flexible_unet_resnet34": (32, 32),
    "flexible_unet_resnet50": (32, 32),
    "flexible_unet_resnet101": (32, 32),
    "segresnet": (8, 8),
    "unet": (16, 32),
}
# 3D is supported by all of them; the larger FlexibleUNet encoders are left out of the 3D sweep.
THREE_D = ["basic_unet", "flexible_unet_resnet18", "segresnet", "unet"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def test_registry_holds_every_model():
    assert names("segmentation") == sorted(EXPECTED)
    assert len(SEG_MODELS) == 7


def _sweep(name: str, spatial_dims: int, in_channels: int) -> None:
    model = build(
        name, in_channels=in_channels, num_classes=NUM_CLASSES, task="segmentation", spatial_dims=spatial_dims
    )
    divisor, size = EXPECTED[name]
    assert (model.size_divisor, model.min_input_size, model.spatial_dims) == (divisor, size, spatial_dims)
    model.train()
    x = torch.randn(BATCH, in_channels, *([size] * spatial_dims))
    out = model(x)
    assert out.shape == (BATCH, NUM_CLASSES, *([size] * spatial_dims))
    assert torch.isfinite(out).all()
    target = torch.randint(0, NUM_CLASSES, (BATCH, *([size] * spatial_dims)))
    torch.nn.functional.cross_entropy(out, target).backward()
    first = next(model.parameters())
    assert first.ndim == spatial_dims + 2 and first.shape[1] == in_channels
    assert first.grad is not None and torch.isfinite(first.grad).all() and first.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_forward_backward_2d(name: str):
    _sweep(name, 2, in_channels=1)


@pytest.mark.parametrize("name", THREE_D)
def test_forward_backward_3d(name: str):
    _sweep(name, 3, in_channels=1)


def test_three_input_channels():
    _sweep("unet", 2, in_channels=3)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_size_checks(name: str):
    divisor, size = EXPECTED[name]
    model = build(name, num_classes=2, task="segmentation")
    small = size - divisor if size > divisor else size // 2
    with pytest.raises(
        ValueError, match=re.escape(f"input {small}x{small} is smaller than the minimum {size}x{size} for {name}")
    ):
        model(torch.zeros(1, 1, small, small))
    odd = size + divisor // 2
    with pytest.raises(ValueError, match=re.escape(f"input {odd}x{size} is not divisible by {divisor} for {name}")):
        check_input_size(model, (odd, size))
    check_input_size(model, (size, 2 * size))


def test_3d_messages_and_rank():
    model = build("unet", task="segmentation", spatial_dims=3)
    with pytest.raises(ValueError, match=re.escape("input 16x32x32 is smaller than the minimum 32x32x32 for unet")):
        model(torch.zeros(1, 1, 16, 32, 32))
    with pytest.raises(ValueError, match=re.escape("input 48x32x40 is not divisible by 16 for unet") + ".*48x32x48"):
        check_input_size(model, (48, 32, 40))
    with pytest.raises(ValueError, match=r"unet \(3D\) expects a batch of shape \(B, C, H, W, D\)"):
        model(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="expected 3 spatial sizes"):
        check_input_size(model, (32, 32))


def test_bad_options():
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3, got 4"):
        build("segresnet", task="segmentation", spatial_dims=4)
    with pytest.raises(ValueError, match="strides needs len\\(channels\\) - 1 = 4 entries, got 2"):
        build("unet", task="segmentation", strides=(2, 2))
    with pytest.raises(ValueError, match="init_filters must be a multiple of 8"):
        build("segresnet", task="segmentation", init_filters=12)


def test_unet_strides_set_divisor():
    model = build("unet", task="segmentation", channels=(8, 16, 32), strides=(2, 2))
    assert (model.size_divisor, model.min_input_size) == (4, 8)
    assert model(torch.zeros(2, 1, 12, 8)).shape == (2, 2, 12, 8)
