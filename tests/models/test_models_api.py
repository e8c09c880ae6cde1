"""build / names / describe / count_parameters / weights / build_kwargs, and QuadSNet's size."""

from __future__ import annotations

import json
import re

import pytest
import torch
from monai.networks.nets import DenseNet121
from torch import nn
from torchvision import models as tvm

from medens.models import (
    QuadSNet,
    build,
    check_input_size,
    count_parameters,
    describe,
    load_weights,
    names,
)
from medens.models.custom import quadsnet_parameter_count


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- names, errors, describe


def test_names():
    assert names("classification") == [
        "compact_cnn",
        "darknet_branch",
        "densenet121",
        "densenet169",
        "densenet201",
        "efficientnet_b0",
        "embedding_fusion",
        "feature_fusion",
        "hog_mlp",
        "quadsnet",
        "resnet18",
        "resnet50",
        "seresnet50",
        "study4_custom_cnn",
        "timm_efficientnet_b0",
        "timm_efficientnet_lite0",
        "timm_efficientnet_lite1",
        "timm_efficientnet_lite2",
        "timm_inception_resnet_v2",
        "timm_resnet18",
        "timm_resnetv2_50",
        "timm_xception",
        "tv_densenet201",
        "tv_inception_v3",
        "tv_mobilenet_v2",
        "tv_resnet152",
        "tv_vgg19",
    ]
    assert names("segmentation") == [
        "basic_unet",
        "flexible_unet_resnet101",
        "flexible_unet_resnet18",
        "flexible_unet_resnet34",
        "flexible_unet_resnet50",
        "segresnet",
        "unet",
    ]
    assert names() == sorted(names("classification") + names("segmentation"))


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match=r"unknown classification model 'densenet12'; did you mean 'densenet121'"):
        build("densenet12")
    with pytest.raises(ValueError, match=r"unknown segmentation model 'unett'; did you mean 'unet'"):
        build("unett", task="segmentation")


def test_name_of_the_other_task_says_which_task():
    with pytest.raises(
        ValueError, match=r"'unet' is a segmentation model, not a classification model: pass task='segmentation'"
    ):
        build("unet")
    with pytest.raises(ValueError, match=r"'resnet18' is a classification model"):
        build("resnet18", task="segmentation")


def test_unknown_task():
    with pytest.raises(ValueError, match=r"unknown task 'segmentaion'; did you mean 'segmentation'"):
        build("unet", task="segmentaion")
    with pytest.raises(ValueError, match="unknown task"):
        names("detection")


def test_unknown_option_suggests_close_matches():
    with pytest.raises(ValueError, match=r"unknown quadsnet model option 'filter'; did you mean 'filters'\?"):
        build("quadsnet", filter=(8, 16, 32, 64))
    # spatial_dims belongs to segmentation models only
    with pytest.raises(ValueError, match=r"unknown densenet121 model option 'spatial_dims'"):
        build("densenet121", spatial_dims=3)


@pytest.mark.parametrize("value", [0, -1, 2.0, True])
def test_bad_channel_and_class_counts(value):
    with pytest.raises(ValueError, match="in_channels must be a positive int"):
        build("compact_cnn", in_channels=value)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        build("compact_cnn", num_classes=value)


def test_bad_option_values():
    with pytest.raises(ValueError, match="head must be 'global' or 'native'"):
        build("tv_vgg19", head="mlp")
    with pytest.raises(ValueError, match=r"filters must be 4 positive ints"):
        build("quadsnet", filters=(8, 16, 32))
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        build("compact_cnn", dropout=1.5)


def test_describe():
    info = describe("quadsnet")
    assert info["task"] == "classification"
    assert "10.14569/IJACSA.2021.0120770" in info["reference"]
    assert info["options"] == {
        "filters": [64, 128, 256, 512],
        "dropout": 0.3,
        "bn_momentum": 0.01,
        "bn_eps": 1e-4,
    }
    seg = describe("flexible_unet_resnet101")
    assert seg["task"] == "segmentation"
    assert seg["options"]["spatial_dims"] == 2
    assert "ResNet-101" in seg["summary"]
    for name in names():
        d = describe(name)
        assert d["summary"] and d["reference"], name
    with pytest.raises(ValueError, match="did you mean 'resnet50'"):
        describe("resnet5")


# ---------------------------------------------------------------- parameters


def test_count_parameters():
    model = build("compact_cnn", in_channels=1, num_classes=3)
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == count_parameters(model, trainable_only=False) == total
    for p in model.features.parameters():
        p.requires_grad_(False)
    head = sum(p.numel() for p in model.head.parameters())
    assert head == 128 * 3 + 3
    assert count_parameters(model) == head
    assert count_parameters(model, trainable_only=False) == total


def test_compact_cnn_size():
    # widths (16, 32, 64, 128): convs without bias + BN (2 per channel) + linear.
    convs = 1 * 16 * 9 + (16 * 32 + 32 * 32 + 32 * 64 + 64 * 64 + 64 * 128 + 128 * 128) * 9
    bns = 2 * (16 + 2 * 32 + 2 * 64 + 2 * 128)
    expected = convs + bns + 128 * 2 + 2
    model = build("compact_cnn", in_channels=1, num_classes=2)
    assert count_parameters(model) == expected
    assert 100_000 <= expected <= 300_000


def _quadsnet_by_hand(c_in: int, k_out: int, filters: tuple[int, ...]) -> int:
    """Keras-style formulas: Conv2D k*k*c*f+f; SeparableConv2D k*k*c + c*f + f; BN 2f; Dense d*k+k."""
    total = 0
    for k in (3, 5):  # plain conv streams
        c = c_in
        for f in filters:
            total += k * k * c * f + f + 2 * f
            c = f
    for k in (3, 5):  # depthwise-separable streams
        c = c_in
        for f in filters:
            total += k * k * c + c * f + f + 2 * f
            c = f
    return total + 4 * filters[-1] * k_out + k_out


def test_quadsnet_parameter_count_documented_configuration():
    model = build("quadsnet", in_channels=3, num_classes=2)
    expected = _quadsnet_by_hand(3, 2, (64, 128, 256, 512))
    assert count_parameters(model) == expected == 6_231_016
    # The paper (IJACSA 12(7) 2021) reports 5,235,944; the gap is documented in QuadSNet's docstring.
    assert expected - 5_235_944 == 995_072
    assert quadsnet_parameter_count(3, 2, (64, 128, 256, 512)) == expected
    assert "6,231,016" in QuadSNet.__doc__ and "5,235,944" in QuadSNet.__doc__


@pytest.mark.parametrize(("c_in", "k_out", "filters"), [(1, 4, (8, 16, 32, 64)), (3, 2, (32, 64, 128, 256))])
def test_quadsnet_parameter_count_other_configurations(c_in, k_out, filters):
    model = build("quadsnet", in_channels=c_in, num_classes=k_out, filters=filters)
    assert count_parameters(model) == _quadsnet_by_hand(c_in, k_out, filters)
    assert quadsnet_parameter_count(c_in, k_out, filters) == _quadsnet_by_hand(c_in, k_out, filters)


def test_quadsnet_layers_follow_the_paper():
    model = build("quadsnet", in_channels=3, num_classes=2, filters=(8, 16, 32, 64))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 16
    # Keras BatchNormalization(momentum=0.99, epsilon=1e-4) == PyTorch momentum 0.01.
    assert all(bn.momentum == pytest.approx(0.01) and bn.eps == pytest.approx(1e-4) for bn in bns)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 17 and all(d.p == pytest.approx(0.3) for d in drops)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 16
    kernels = sorted(
        (m.kernel_size[0], m.groups > 1) for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1
    )
    assert kernels == [(3, False)] * 4 + [(3, True)] * 4 + [(5, False)] * 4 + [(5, True)] * 4
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 3, 64, 64))
    assert feats.shape == (2, 4 * 64, 4, 4)


# ---------------------------------------------------------------- build_kwargs


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("densenet121", {}),
        ("quadsnet", {"in_channels": 3, "num_classes": 4, "filters": (8, 16, 16, 32)}),
        ("resnet18", {"conv1_t_stride": 1}),
        ("unet", {"task": "segmentation", "spatial_dims": 3, "channels": (8, 16, 32), "strides": (2, 2)}),
    ],
)
def test_build_kwargs_rebuild_exactly(name, kwargs):
    model = build(name, **kwargs).eval()
    recorded = json.loads(json.dumps(model.build_kwargs))
    assert recorded["name"] == name
    assert recorded["task"] == kwargs.get("task", "classification")
    rebuilt = build(**recorded).eval()
    assert rebuilt.build_kwargs == recorded
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    rebuilt.load_state_dict(model.state_dict())
    size = model.min_input_size
    x = torch.randn(1, model.in_channels, *([size] * getattr(model, "spatial_dims", 2)))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_build_kwargs_resolve_defaults():
    assert build("densenet121").build_kwargs == {
        "name": "densenet121",
        "task": "classification",
        "in_channels": 1,
        "num_classes": 2,
        "dropout_prob": 0.0,
    }
    kw = build("resnet18", conv1_t_stride=1).build_kwargs
    assert kw["conv1_t_stride"] == 1 and kw["conv1_t_size"] == 7
    assert build("resnet18", conv1_t_stride=1).min_input_size == 16


def test_weights_path_not_in_build_kwargs(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(build("compact_cnn").state_dict(), path)
    kw = build("compact_cnn", weights_path=path).build_kwargs
    assert "weights_path" not in kw and "weights_strict" not in kw


# ---------------------------------------------------------------- local weights


def _assert_state_equal(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _some_tensor_differs(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return any(sa[k].is_floating_point() and not torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", ["densenet121", "efficientnet_b0", "tv_mobilenet_v2", "quadsnet"])
def test_weights_path_round_trip(tmp_path, name):
    source = build(name, in_channels=1, num_classes=3)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    fresh = build(name, in_channels=1, num_classes=3)
    assert _some_tensor_differs(source, fresh)  # so the next check means something
    loaded = build(name, in_channels=1, num_classes=3, weights_path=str(path))
    _assert_state_equal(source, loaded)


def test_weights_of_the_native_monai_network(tmp_path):
    torch.manual_seed(1)
    native = DenseNet121(spatial_dims=2, in_channels=1, out_channels=3)
    path = tmp_path / "monai_densenet121.pt"
    torch.save({"state_dict": native.state_dict()}, path)
    model = build("densenet121", in_channels=1, num_classes=3, weights_path=path).eval()
    assert torch.equal(model.features.conv0.weight, native.features.conv0.weight)
    assert torch.equal(model.head.fc.weight, native.class_layers.out.weight)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), native.eval()(x))


def test_torchvision_imagenet_style_weights_into_grey_model(tmp_path):
    torch.manual_seed(2)
    native = tvm.mobilenet_v2(weights=None)  # 3 channels, 1000 classes, like ImageNet weights
    path = tmp_path / "mobilenet_v2_imagenet.pt"
    torch.save(native.state_dict(), path)
    with pytest.raises(ValueError, match=r"does not fit tv_mobilenet_v2 \(shape mismatch: head\.classifier\.1\.weight"):
        build("tv_mobilenet_v2", in_channels=1, num_classes=3, weights_path=path)
    model = build("tv_mobilenet_v2", in_channels=1, num_classes=3, weights_path=path, weights_strict=False)
    # RGB stem summed to one channel (timm adapt_input_conv); backbone copied; classifier skipped.
    assert torch.equal(model.features[0][0].weight, native.features[0][0].weight.sum(dim=1, keepdim=True))
    assert torch.equal(model.features[18][0].weight, native.features[18][0].weight)
    report = load_weights(model, path, strict=False)
    assert report["missing"] == []
    assert report["unexpected"] == []
    assert [m.split(":")[0] for m in report["mismatched"]] == ["head.classifier.1.weight", "head.classifier.1.bias"]


def test_timm_imagenet_style_weights_into_grey_model(tmp_path):
    """A timm checkpoint (3 channels, 1000-class classifier) loads into a grey 3-class timm model."""
    import timm

    torch.manual_seed(3)
    native = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    path = tmp_path / "resnet18_timm_imagenet.pth"
    torch.save(native.state_dict(), path)
    with pytest.raises(ValueError, match=r"does not fit timm_resnet18 \(missing: head\.fc\.bias, head\.fc\.weight; "
                                         r"unexpected: fc\.bias, fc\.weight\)"):
        build("timm_resnet18", in_channels=1, num_classes=3, weights_path=path)
    model = build("timm_resnet18", in_channels=1, num_classes=3, weights_path=path, weights_strict=False)
    assert torch.equal(model.features.conv1.weight, native.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(model.features.layer4[1].conv2.weight, native.layer4[1].conv2.weight)
    report = load_weights(model, path, strict=False)
    assert report["unexpected"] == ["fc.bias", "fc.weight"] and report["mismatched"] == []
    assert report["missing"] == ["head.fc.bias", "head.fc.weight"]  # our new head starts from scratch
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():  # the backbone computes exactly what timm's does on the summed-channel input
        torch.testing.assert_close(model.eval().forward_features(x), native.eval().forward_features(x.repeat(1, 3, 1, 1)),
                                   rtol=1e-4, atol=1e-4)
        assert model(x).shape == (2, 3)


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "nowhere" / "densenet121.pt"
    with pytest.raises(ValueError) as err:
        build("densenet121", weights_path=missing)
    msg = str(err.value)
    assert str(missing) in msg
    assert "does not exist" in msg and "never downloads" in msg and "weights_path=" in msg


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"epoch": 3}, path)
    with pytest.raises(ValueError, match=re.escape(f"weights file '{path}' does not hold a state_dict")):
        build("compact_cnn", weights_path=path)


def test_check_input_size_needs_a_medens_model():
    with pytest.raises(ValueError, match="not a medens model"):
        check_input_size(nn.Linear(2, 2), 32)
