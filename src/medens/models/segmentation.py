"""Segmentation architectures (MONAI), registered in ``SEG_MODELS``.

Built through ``medens.models.build(name, in_channels, num_classes, task="segmentation",
spatial_dims=2, **options)``; each returns a :class:`~medens.models._common.SegmentationModel`
whose output is ``B x num_classes x H x W[x D]`` logits. Spatial sizes must be multiples of
``size_divisor`` (the total down-sampling) and at least ``min_input_size``. Never downloads
weights (``pretrained=False``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai.networks.nets import BasicUNet, FlexibleUNet, SegResNet, UNet

from medens.models._common import SEG_MODELS, SegmentationModel, register

__all__ = ["basic_unet", "segresnet", "unet"]


def _check_dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return int(spatial_dims)


@register(
    SEG_MODELS,
    "unet",
    "Ronneberger, Fischer, Brox. U-Net, MICCAI 2015; residual units: Kerfoot et al., STACOM 2018",
)
def unet(
    in_channels: int,
    num_classes: int,
    *,
    spatial_dims: int = 2,
    channels: Sequence[int] = (16, 32, 64, 128, 256),
    strides: Sequence[int] = (2, 2, 2, 2),
    num_res_units: int = 2,
    dropout: float = 0.0,
) -> SegmentationModel:
    """MONAI UNet with residual units (Kerfoot et al., STACOM 2018; Ronneberger et al., MICCAI 2015).

    Uses MONAI's default instance norm, which needs more than one voxel at the bottom level, so
    the minimum size is twice the total stride.
    """
    spatial_dims = _check_dims(spatial_dims)
    if len(strides) != len(channels) - 1:
        raise ValueError(f"strides needs len(channels) - 1 = {len(channels) - 1} entries, got {len(strides)}")
    net = UNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=num_classes,
        channels=tuple(channels),
        strides=tuple(strides),
        num_res_units=num_res_units,
        dropout=dropout,
    )
    divisor = math.prod(int(s) for s in strides)
    return SegmentationModel(
        net,
        name="unet",
        in_channels=in_channels,
        num_classes=num_classes,
        spatial_dims=spatial_dims,
        size_divisor=divisor,
        min_input_size=2 * divisor,
    )


@register(SEG_MODELS, "basic_unet", "Ronneberger, Fischer, Brox. U-Net. MICCAI 2015 (MONAI BasicUNet)")
def basic_unet(
    in_channels: int,
    num_classes: int,
    *,
    spatial_dims: int = 2,
    features: Sequence[int] = (32, 32, 64, 128, 256, 32),
    dropout: float = 0.0,
) -> SegmentationModel:
    """MONAI BasicUNet, the original U-Net layout (Ronneberger et al., MICCAI 2015).

    Four 2x down-samplings (divisor 16); instance norm, so the minimum size is 32.
    """
    spatial_dims = _check_dims(spatial_dims)
    if len(features) != 6:
        raise ValueError(f"features needs 6 entries (5 levels + the output level), got {len(features)}")
    net = BasicUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=num_classes,
        features=tuple(features),
        dropout=dropout,
    )
    return SegmentationModel(
        net,
        name="basic_unet",
        in_channels=in_channels,
        num_classes=num_classes,
        spatial_dims=spatial_dims,
        size_divisor=16,
        min_input_size=32,
    )


@register(
    SEG_MODELS,
    "segresnet",
    "Myronenko. 3D MRI brain tumor segmentation using autoencoder regularization. BrainLes 2018",
)
def segresnet(
    in_channels: int,
    num_classes: int,
    *,
    spatial_dims: int = 2,
    init_filters: int = 8,
    blocks_down: Sequence[int] = (1, 2, 2, 4),
    blocks_up: Sequence[int] = (1, 1, 1),
    dropout_prob: float | None = None,
) -> SegmentationModel:
    """MONAI SegResNet (Myronenko, BrainLes 2018), without the VAE branch.

    ``len(blocks_down) - 1`` down-samplings; group norm with 8 groups, so ``init_filters`` must
    be a multiple of 8.
    """
    spatial_dims = _check_dims(spatial_dims)
    if len(blocks_up) != len(blocks_down) - 1:
        raise ValueError(f"blocks_up needs len(blocks_down) - 1 = {len(blocks_down) - 1} entries, got {len(blocks_up)}")
    if init_filters % 8:
        raise ValueError(f"init_filters must be a multiple of 8 (group norm with 8 groups), got {init_filters}")
    net = SegResNet(
        spatial_dims=spatial_dims,
        init_filters=init_filters,
        in_channels=in_channels,
        out_channels=num_classes,
        dropout_prob=dropout_prob,
        blocks_down=tuple(blocks_down),
        blocks_up=tuple(blocks_up),
    )
    divisor = 2 ** (len(blocks_down) - 1)
    return SegmentationModel(
        net,
        name="segresnet",
        in_channels=in_channels,
        num_classes=num_classes,
        spatial_dims=spatial_dims,
        size_divisor=divisor,
        min_input_size=divisor,
    )


def _flexible_unet(
    depth: int,
    in_channels: int,
    num_classes: int,
    spatial_dims: int,
    decoder_channels: Sequence[int],
    dropout: float,
) -> SegmentationModel:
    spatial_dims = _check_dims(spatial_dims)
    if len(decoder_channels) != 5:
        raise ValueError(f"decoder_channels needs 5 entries, got {len(decoder_channels)}")
    net = FlexibleUNet(
        in_channels=in_channels,
        out_channels=num_classes,
        backbone=f"resnet{depth}",
        pretrained=False,
        decoder_channels=tuple(decoder_channels),
        spatial_dims=spatial_dims,
        dropout=dropout,
    )
    return SegmentationModel(
        net,
        name=f"flexible_unet_resnet{depth}",
        in_channels=in_channels,
        num_classes=num_classes,
        spatial_dims=spatial_dims,
        size_divisor=32,
        min_input_size=32,
    )


def _register_flexible(depth: int) -> None:
    name = f"flexible_unet_resnet{depth}"

    def factory(
        in_channels: int,
        num_classes: int,
        *,
        spatial_dims: int = 2,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        dropout: float = 0.0,
    ) -> SegmentationModel:
        return _flexible_unet(depth, in_channels, num_classes, spatial_dims, decoder_channels, dropout)

    factory.__name__ = factory.__qualname__ = name.replace("-", "_")
    factory.__doc__ = (
        f"MONAI FlexibleUNet with a ResNet-{depth} encoder (He et al., CVPR 2016) and a U-Net decoder.\n\n"
        "Five 2x down-samplings, so sizes must be multiples of 32. Study 3 (Roshan et al., Computers in\n"
        "Biology and Medicine 2024) uses two U-Nets with ResNet-101 encoders at 256 px."
    )
    register(
        SEG_MODELS,
        name,
        f"U-Net decoder (Ronneberger et al., MICCAI 2015) on a ResNet-{depth} encoder (He et al., CVPR 2016)",
    )(factory)


for _depth in (18, 34, 50, 101):
    _register_flexible(_depth)
