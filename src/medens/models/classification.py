"""Classification architectures, registered in ``MODELS`` and built through ``medens.models.build``.

Every factory takes ``in_channels`` and ``num_classes`` plus keyword options, and returns a
:class:`~medens.models._common.ClassifierModel` (``forward_features`` / ``forward_head`` /
``cam_layer``). Pretrained weights are never downloaded (MONAI ``pretrained=False``,
torchvision ``weights=None``); ``build(..., weights_path=...)`` loads a local file instead.

Sources: MONAI (``monai.networks.nets``) DenseNet, ResNet, SE-ResNet and EfficientNet;
torchvision VGG19, ResNet-152, MobileNetV2, Inception-v3 and DenseNet-201. The networks
implemented in medens itself (QuadSNet, the study-4 custom CNN and DarkNet-style branch,
``compact_cnn``) are :mod:`medens.models.custom`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from monai.networks.layers.factories import Act
from monai.networks.nets import DenseNet121, DenseNet169, DenseNet201, EfficientNetBN, SEResNet50
from monai.networks.nets import resnet18 as monai_resnet18
from monai.networks.nets import resnet50 as monai_resnet50
from torch import nn
from torchvision import models as tvm

from medens.models._common import MODELS, ClassifierModel, register, replace_first_conv


def _pool_head(in_features: int, fc: nn.Linear | None, num_classes: int, dropout: float = 0.0) -> nn.Sequential:
    """Global average pooling -> flatten -> [dropout] -> linear (reusing ``fc`` when given)."""
    layers: list[tuple[str, nn.Module]] = [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten(1))]
    if dropout > 0:
        layers.append(("dropout", nn.Dropout(dropout)))
    layers.append(("fc", fc if fc is not None else nn.Linear(in_features, num_classes)))
    return nn.Sequential(OrderedDict(layers))


def _check_dropout(name: str, value: float) -> float:
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)


# --------------------------------------------------------------------------------------------
# MONAI networks
# --------------------------------------------------------------------------------------------


def _monai_densenet(cls: type, name: str, in_channels: int, num_classes: int, dropout_prob: float) -> ClassifierModel:
    net = cls(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=num_classes,
        pretrained=False,
        dropout_prob=_check_dropout("dropout_prob", dropout_prob),
    )
    features = net.features
    # MONAI applies this ReLU at the start of `class_layers`; it belongs to the feature map.
    features.add_module("relu5", nn.ReLU(inplace=False))
    fc = net.class_layers.out
    return ClassifierModel(
        features,
        _pool_head(fc.in_features, fc, num_classes),
        name=name,
        in_channels=in_channels,
        num_classes=num_classes,
        feature_channels=fc.in_features,
        cam_layer="features.relu5",
        min_input_size=32,
        native=net,
    )


_DENSENET_REF = "Huang, Liu, van der Maaten, Weinberger. Densely Connected Convolutional Networks. CVPR 2017"


@register(MODELS, "densenet121", _DENSENET_REF)
def densenet121(in_channels: int, num_classes: int, *, dropout_prob: float = 0.0) -> ClassifierModel:
    """MONAI DenseNet-121 (2D); ``dropout_prob`` inside the dense layers.

    Huang et al., Densely Connected Convolutional Networks, CVPR 2017. Used in study 2
    (Pasupa et al., focal loss for red-blood-cell morphology).
    """
    return _monai_densenet(DenseNet121, "densenet121", in_channels, num_classes, dropout_prob)


@register(MODELS, "densenet169", _DENSENET_REF)
def densenet169(in_channels: int, num_classes: int, *, dropout_prob: float = 0.0) -> ClassifierModel:
    """MONAI DenseNet-169 (2D). Huang et al., Densely Connected Convolutional Networks, CVPR 2017."""
    return _monai_densenet(DenseNet169, "densenet169", in_channels, num_classes, dropout_prob)


@register(MODELS, "densenet201", _DENSENET_REF)
def densenet201(in_channels: int, num_classes: int, *, dropout_prob: float = 0.0) -> ClassifierModel:
    """MONAI DenseNet-201 (2D). Huang et al., Densely Connected Convolutional Networks, CVPR 2017."""
    return _monai_densenet(DenseNet201, "densenet201", in_channels, num_classes, dropout_prob)


def _monai_resnet(
    factory: Callable[..., nn.Module],
    name: str,
    in_channels: int,
    num_classes: int,
    conv1_t_size: int,
    conv1_t_stride: int,
) -> ClassifierModel:
    if conv1_t_stride not in (1, 2):
        raise ValueError(f"conv1_t_stride must be 1 or 2, got {conv1_t_stride}")
    net = factory(
        pretrained=False,
        spatial_dims=2,
        n_input_channels=in_channels,
        num_classes=num_classes,
        conv1_t_size=conv1_t_size,
        conv1_t_stride=conv1_t_stride,
    )
    features = nn.Sequential(
        OrderedDict(
            conv1=net.conv1,
            bn1=net.bn1,
            act=net.act,
            maxpool=net.maxpool,
            layer1=net.layer1,
            layer2=net.layer2,
            layer3=net.layer3,
            layer4=net.layer4,
        )
    )
    return ClassifierModel(
        features,
        _pool_head(net.fc.in_features, net.fc, num_classes),
        name=name,
        in_channels=in_channels,
        num_classes=num_classes,
        feature_channels=net.fc.in_features,
        cam_layer="features.layer4",
        min_input_size=16 * conv1_t_stride,
        native=net,
    )


_RESNET_REF = "He, Zhang, Ren, Sun. Deep Residual Learning for Image Recognition. CVPR 2016"


@register(MODELS, "resnet18", _RESNET_REF)
def resnet18(in_channels: int, num_classes: int, *, conv1_t_size: int = 7, conv1_t_stride: int = 2) -> ClassifierModel:
    """MONAI ResNet-18 (2D) with the ImageNet stem of He et al., CVPR 2016 (7x7 conv, stride 2).

    MONAI's default ``conv1_t_stride=1`` (meant for 3D volumes) quadruples the cost at 224 px; pass
    it explicitly to get MONAI's stem. Minimum input: 16 x ``conv1_t_stride``.
    """
    return _monai_resnet(monai_resnet18, "resnet18", in_channels, num_classes, conv1_t_size, conv1_t_stride)


@register(MODELS, "resnet50", _RESNET_REF)
def resnet50(in_channels: int, num_classes: int, *, conv1_t_size: int = 7, conv1_t_stride: int = 2) -> ClassifierModel:
    """MONAI ResNet-50 (2D, bottleneck blocks) with the ImageNet stem of He et al., CVPR 2016.

    Used in study 2 (Pasupa et al., focal loss for red-blood-cell morphology). See
    :func:`resnet18` for the stem options.
    """
    return _monai_resnet(monai_resnet50, "resnet50", in_channels, num_classes, conv1_t_size, conv1_t_stride)


@register(MODELS, "seresnet50", "Hu, Shen, Sun. Squeeze-and-Excitation Networks. CVPR 2018")
def seresnet50(in_channels: int, num_classes: int, *, dropout_prob: float | None = None) -> ClassifierModel:
    """MONAI SE-ResNet-50 (2D). Hu, Shen, Sun, Squeeze-and-Excitation Networks, CVPR 2018."""
    if dropout_prob is not None:
        dropout_prob = _check_dropout("dropout_prob", dropout_prob)
    net = SEResNet50(
        spatial_dims=2, in_channels=in_channels, num_classes=num_classes, pretrained=False, dropout_prob=dropout_prob
    )
    features = nn.Sequential(
        OrderedDict(layer0=net.layer0, layer1=net.layer1, layer2=net.layer2, layer3=net.layer3, layer4=net.layer4)
    )
    head = [("pool", net.adaptive_avg_pool)]
    if net.dropout is not None:
        head.append(("dropout", net.dropout))
    head += [("flatten", nn.Flatten(1)), ("fc", net.last_linear)]
    return ClassifierModel(
        features,
        nn.Sequential(OrderedDict(head)),
        name="seresnet50",
        in_channels=in_channels,
        num_classes=num_classes,
        feature_channels=net.last_linear.in_features,
        cam_layer="features.layer4",
        min_input_size=32,
        native=net,
    )


@register(
    MODELS,
    "efficientnet_b0",
    "Tan, Le. EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks. ICML 2019",
)
def efficientnet_b0(in_channels: int, num_classes: int) -> ClassifierModel:
    """MONAI EfficientNetBN ``efficientnet-b0`` (2D). Tan and Le, ICML 2019.

    The backbone of study 1 (Rajaraman et al., PLoS ONE 2021). MONAI computes TF-style static
    "same" padding for 224 px; other input sizes work too.
    """
    net = EfficientNetBN(
        "efficientnet-b0",
        pretrained=False,
        progress=False,
        spatial_dims=2,
        in_channels=in_channels,
        num_classes=num_classes,
    )
    features = nn.Sequential(
        OrderedDict(
            stem_padding=net._conv_stem_padding,
            stem=net._conv_stem,
            bn0=net._bn0,
            act0=Act["memswish"](),
            blocks=net._blocks,
            head_padding=net._conv_head_padding,
            conv_head=net._conv_head,
            bn1=net._bn1,
            act_head=Act["memswish"](),
        )
    )
    head = nn.Sequential(OrderedDict(pool=net._avg_pooling, flatten=nn.Flatten(1), dropout=net._dropout, fc=net._fc))
    return ClassifierModel(
        features,
        head,
        name="efficientnet_b0",
        in_channels=in_channels,
        num_classes=num_classes,
        feature_channels=net._fc.in_features,
        cam_layer="features.act_head",
        min_input_size=32,
        native=net,
    )


# --------------------------------------------------------------------------------------------
# torchvision networks
# --------------------------------------------------------------------------------------------


class _Container(nn.Module):
    """Holds the parts of a torchvision network that exist, so their state_dict keys match it."""


@register(
    MODELS,
    "tv_vgg19",
    "Simonyan, Zisserman. Very Deep Convolutional Networks for Large-Scale Image Recognition. ICLR 2015",
)
def tv_vgg19(in_channels: int, num_classes: int, *, head: str = "global", dropout: float = 0.5) -> ClassifierModel:
    """torchvision VGG-19 (no batch norm). Simonyan and Zisserman, ICLR 2015; a branch of study 4.

    Args:
        in_channels: input channels.
        num_classes: number of classes.
        head: ``"global"`` (default): global average pooling -> dropout -> linear, as the study-4
            branches and most transfer-learning heads use; ``"native"``: torchvision's last max
            pool, 7 x 7 average pool and 4096-4096 MLP (about 120M parameters).
        dropout: dropout before the linear layer(s).

    The feature map is the last conv block's ReLU output (before the last max pool), the layer
    Grad-CAM uses for VGG (Selvaraju et al., ICCV 2017).
    """
    if head not in ("global", "native"):
        raise ValueError(f"head must be 'global' or 'native', got {head!r}")
    dropout = _check_dropout("dropout", dropout)
    if head == "native":
        net: nn.Module = tvm.vgg19(weights=None, num_classes=num_classes, dropout=dropout)
    else:
        # Building only the conv part avoids allocating the unused 120M-parameter classifier.
        net = _Container()
        net.features = tvm.vgg.make_layers(tvm.vgg.cfgs["E"], batch_norm=False)
        for m in net.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
    net.features[0] = replace_first_conv(net.features[0], in_channels)
    last = len(net.features) - 1  # the final max pool
    features = net.features[:last]
    if head == "native":
        head_module = nn.Sequential(
            OrderedDict(pool5=net.features[last], avgpool=net.avgpool, flatten=nn.Flatten(1), classifier=net.classifier)
        )
    else:
        head_module = _pool_head(512, None, num_classes, dropout)
    return ClassifierModel(
        features,
        head_module,
        name="tv_vgg19",
        in_channels=in_channels,
        num_classes=num_classes,
        feature_channels=512,
        cam_layer=f"features.{last - 1}",
        min_input_size=32,
        native=net,
    )


@register(MODELS, "tv_resnet152", _RESNET_REF)
def tv_resnet152(in_channels: int, num_classes: int) -> ClassifierModel:
    """torchvision ResNet-152 (v1.5). He et al., CVPR 2016; a branch of study 4.

    Study 4 used Keras' ResNet152V2 (pre-activation, He et al. ECCV 2016); torchvision has only
    the post-activation v1.5, used here.
    """
    net = tvm.resnet152(weights=None, num_classes=num_classes)
    net.conv1 = replace_first_conv(net.conv1, in_channels)
    features = nn.Sequential(
        OrderedDict(
            conv1=net.conv1,
            bn1=net.bn1,
            relu=net.relu,
            maxpool=net.maxpool,
            layer1=net.layer1,
            layer2=net.layer2,
            layer3=net.layer3,
            layer4=net.layer4,
        )
    )
    return ClassifierModel(
        features,
        _pool_head(net.fc.in_features, net.fc, num_classes),
        name="tv_resnet152",
        in_channels=in_channels,
        num_classes=num_classes,
        feature_channels=net.fc.in_features,
        cam_layer="features.layer4",
        min_input_size=32,
        native=net,
    )


@register(
    MODELS,
    "tv_mobilenet_v2",
    "Sandler, Howard, Zhu, Zhmoginov, Chen. MobileNetV2: Inverted Residuals and Linear Bottlenecks. CVPR 2018",
)
def tv_mobilenet_v2(in_channels: int, num_classes: int, *, dropout: float = 0.2) -> ClassifierModel:
    """torchvision MobileNetV2. Sandler et al., CVPR 2018; the MobileNet branch of study 4."""
    net = tvm.mobilenet_v2(weights=None, num_classes=num_classes, dropout=_check_dropout("dropout", dropout))
    net.features[0][0] = replace_first_conv(net.features[0][0], in_channels)
    last = len(net.features) - 1
    fc = net.classifier[1]
    head = nn.Sequential(OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1), classifier=net.classifier))
    return ClassifierModel(
        net.features,
        head,
        name="tv_mobilenet_v2",
        in_channels=in_channels,
        num_classes=num_classes,
        feature_channels=fc.in_features,
        cam_layer=f"features.{last}",
        min_input_size=32,
        native=net,
    )


_INCEPTION_STAGES = (
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "maxpool1",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
    "maxpool2",
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "Mixed_6a",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
    "Mixed_6e",
    "Mixed_7a",
    "Mixed_7b",
    "Mixed_7c",
)


@register(
    MODELS,
    "tv_inception_v3",
    "Szegedy, Vanhoucke, Ioffe, Shlens, Wojna. Rethinking the Inception Architecture for Computer Vision. CVPR 2016",
)
def tv_inception_v3(in_channels: int, num_classes: int, *, dropout: float = 0.5) -> ClassifierModel:
    """torchvision Inception-v3 without auxiliary logits or input transform. Szegedy et al., CVPR 2016.

    A branch of study 4. Minimum input 75 x 75 (torchvision's documented minimum).
    """
    net = tvm.inception_v3(
        weights=None,
        num_classes=num_classes,
        aux_logits=False,
        transform_input=False,
        init_weights=True,
        dropout=_check_dropout("dropout", dropout),
    )
    net.Conv2d_1a_3x3.conv = replace_first_conv(net.Conv2d_1a_3x3.conv, in_channels)
    features = nn.Sequential(OrderedDict((s, getattr(net, s)) for s in _INCEPTION_STAGES))
    head = nn.Sequential(OrderedDict(pool=net.avgpool, dropout=net.dropout, flatten=nn.Flatten(1), fc=net.fc))
    return ClassifierModel(
        features,
        head,
        name="tv_inception_v3",
        in_channels=in_channels,
        num_classes=num_classes,
        feature_channels=net.fc.in_features,
        cam_layer="features.Mixed_7c",
        min_input_size=75,
        native=net,
    )


@register(MODELS, "tv_densenet201", _DENSENET_REF)
def tv_densenet201(in_channels: int, num_classes: int, *, drop_rate: float = 0.0) -> ClassifierModel:
    """torchvision DenseNet-201. Huang et al., CVPR 2017; a branch of study 4."""
    net = tvm.densenet201(weights=None, num_classes=num_classes, drop_rate=_check_dropout("drop_rate", drop_rate))
    net.features.conv0 = replace_first_conv(net.features.conv0, in_channels)
    # torchvision applies this ReLU functionally in forward(); as a module it can be hooked.
    net.features.add_module("relu5", nn.ReLU(inplace=False))
    return ClassifierModel(
        net.features,
        _pool_head(net.classifier.in_features, net.classifier, num_classes),
        name="tv_densenet201",
        in_channels=in_channels,
        num_classes=num_classes,
        feature_channels=net.classifier.in_features,
        cam_layer="features.relu5",
        min_input_size=32,
        native=net,
    )
