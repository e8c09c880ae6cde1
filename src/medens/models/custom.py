"""The classification networks implemented in medens itself, registered in ``MODELS``: QuadSNet
(study 5), the study-4 custom CNN and DarkNet-style branch, and ``compact_cnn`` for CPU presets.
Each factory returns a :class:`~medens.models._common.ClassifierModel`."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from medens.models._common import MODELS, ClassifierModel, register
from medens.models.classification import _check_dropout, _pool_head

__all__ = [
    "CompactCNN",
    "DarkNetBranch",
    "QuadSNet",
    "Study4CustomCNN",
    "quadsnet_parameter_count",
]



class _Concat(nn.Module):
    """Concatenate tensors along the channel axis (a module, so its output can be hooked)."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=1)


class _SeparableConv2d(nn.Sequential):
    """Depthwise k x k conv (no bias) then pointwise 1 x 1 conv (bias), as Keras SeparableConv2D.

    Chollet, Xception: Deep Learning with Depthwise Separable Convolutions, CVPR 2017.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(
            OrderedDict(
                depthwise=nn.Conv2d(
                    in_channels, in_channels, kernel_size, padding=kernel_size // 2, groups=in_channels, bias=False
                ),
                pointwise=nn.Conv2d(in_channels, out_channels, 1, bias=True),
            )
        )


class _QuadStreams(nn.Module):
    """The four QuadSNet streams and their channel concatenation (see :class:`QuadSNet`)."""

    def __init__(
        self, in_channels: int, filters: Sequence[int], dropout: float, bn_momentum: float, bn_eps: float
    ) -> None:
        super().__init__()
        self.streams = nn.ModuleDict()
        for stream in ("conv3", "conv5", "sep3", "sep5"):
            k = int(stream[-1])
            blocks: list[nn.Module] = []
            c = in_channels
            for f in filters:
                conv = (
                    nn.Conv2d(c, f, k, padding=k // 2, bias=True)
                    if stream.startswith("conv")
                    else _SeparableConv2d(c, f, k)
                )
                blocks.append(
                    nn.Sequential(
                        OrderedDict(
                            conv=conv,
                            act=nn.ReLU(inplace=True),
                            bn=nn.BatchNorm2d(f, eps=bn_eps, momentum=bn_momentum),
                            dropout=nn.Dropout(dropout),
                            pool=nn.MaxPool2d(2),
                        )
                    )
                )
                c = f
            self.streams[stream] = nn.Sequential(*blocks)
        self.concat = _Concat()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.concat(*(s(x) for s in self.streams.values()))


def quadsnet_parameter_count(in_channels: int, num_classes: int, filters: Sequence[int]) -> int:
    """Trainable parameters of :class:`QuadSNet` by formula (conv/BN/dense), for cross-checking.

    Per block with ``c`` inputs and ``f`` filters: a k x k conv has ``k*k*c*f + f``; a
    depthwise-separable one ``k*k*c + c*f + f``; batch norm ``2f`` trainable (gamma, beta;
    running statistics are buffers, Keras's "non-trainable" parameters). The classifier has
    ``4*filters[-1]*num_classes + num_classes``.
    """
    total = 0
    for k, separable in ((3, False), (5, False), (3, True), (5, True)):
        c = in_channels
        for f in filters:
            total += (k * k * c + c * f + f) if separable else (k * k * c * f + f)
            total += 2 * f
            c = f
    return total + 4 * filters[-1] * num_classes + num_classes


class QuadSNet(ClassifierModel):
    """QuadSNet: four parallel convolution streams on one input (IJACSA 12(7), 2021, doi 10.14569/IJACSA.2021.0120770).

    Streams: 3x3 conv, 5x5 conv, depthwise-separable 3x3, depthwise-separable 5x5. Each stream has
    four blocks: conv ("same" padding, ReLU) -> batch norm (Keras momentum 0.99, eps 1e-4, i.e.
    PyTorch ``momentum=0.01``) -> dropout 0.3 -> 2x2 max pool. The four stream outputs are
    concatenated on channels (the feature map, ``cam_layer="features.concat"``), then global
    average pooling -> dropout 0.3 -> linear classifier. Minimum input 16 x 16 (four pools).

    Parameter count. The paper reports 5,235,944 trainable parameters but neither its filter
    counts nor its input size are in our notes. The default ``filters=(64, 128, 256, 512)``
    (the usual doubling scheme, the same in every stream) with 3 input channels and 2 classes
    gives 6,231,016 trainable parameters (convolutions 6,219,238, batch-norm gamma/beta 7,680,
    dense 4,098; see :func:`quadsnet_parameter_count`), 995,072 (19.0%) more than reported;
    ``filters=(32, 64, 128, 256)`` gives 1,567,272. No uniform power-of-two scheme with 1 or 3
    input channels and 1-4 outputs reproduces 5,235,944 exactly, so the paper's streams must
    differ in width (e.g. a narrower 5x5 stream, which holds 69% of the parameters here) or
    carry extra dense layers. Parameter counts do not depend on the input size (global pooling).

    Trained in the paper from scratch with a weighted margin loss, Adam lr 1e-4, batch 32.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        filters: Sequence[int] = (64, 128, 256, 512),
        dropout: float = 0.3,
        bn_momentum: float = 0.01,
        bn_eps: float = 1e-4,
    ) -> None:
        """Build QuadSNet; ``filters`` are the per-block filter counts of every stream."""
        filters = [int(f) for f in filters]
        if len(filters) != 4 or min(filters) < 1:
            raise ValueError(f"filters must be 4 positive ints (one per block), got {filters}")
        dropout = _check_dropout("dropout", dropout)
        features = _QuadStreams(in_channels, filters, dropout, bn_momentum, bn_eps)
        super().__init__(
            features,
            _pool_head(4 * filters[-1], None, num_classes, dropout),
            name="quadsnet",
            in_channels=in_channels,
            num_classes=num_classes,
            feature_channels=4 * filters[-1],
            cam_layer="features.concat",
            min_input_size=2 ** len(filters),
        )


@register(MODELS, "quadsnet", "QuadSNet, IJACSA 12(7), 2021, doi 10.14569/IJACSA.2021.0120770")
def quadsnet(
    in_channels: int,
    num_classes: int,
    *,
    filters: Sequence[int] = (64, 128, 256, 512),
    dropout: float = 0.3,
    bn_momentum: float = 0.01,
    bn_eps: float = 1e-4,
) -> ClassifierModel:
    """QuadSNet (study 5); see :class:`QuadSNet`."""
    return QuadSNet(in_channels, num_classes, filters, dropout, bn_momentum, bn_eps)


def _conv_bn_act(c_in: int, c_out: int, k: int, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False),
            bn=nn.BatchNorm2d(c_out),
            act=act,
        )
    )


def _embedding_head(in_features: int, embedding_dims: Sequence[int], num_classes: int) -> nn.Sequential:
    """Global average pooling -> [dense -> ReLU]* -> linear: the study-4 branch head (dense 16 -> dense 8)."""
    layers: list[tuple[str, nn.Module]] = [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten(1))]
    d = in_features
    for i, h in enumerate(embedding_dims):
        layers += [(f"dense{i + 1}", nn.Linear(d, int(h))), (f"act{i + 1}", nn.ReLU(inplace=True))]
        d = int(h)
    layers.append(("fc", nn.Linear(d, num_classes)))
    return nn.Sequential(OrderedDict(layers))


class Study4CustomCNN(ClassifierModel):
    """The small custom CNN branch of study 4 (ensemble of CNNs for pediatric pneumonia, docs/methods.md section 2.4).

    ``len(filters)`` blocks of 3x3 conv -> batch norm -> ReLU -> 2x2 max pool, then the study-4
    branch head: global average pooling -> dense 16 -> ReLU -> dense 8 -> ReLU -> linear. In the
    study the nine 8-d branch outputs are concatenated into one sigmoid unit (model-level fusion);
    standalone, the final linear gives ``num_classes`` logits. The study gives no layer details,
    so the filters follow the usual doubling scheme (Simonyan and Zisserman, ICLR 2015).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        filters: Sequence[int] = (32, 64, 128),
        embedding_dims: Sequence[int] = (16, 8),
    ) -> None:
        """Build the custom CNN."""
        filters = [int(f) for f in filters]
        if not filters or min(filters) < 1:
            raise ValueError(f"filters must be positive ints, got {filters}")
        blocks: list[tuple[str, nn.Module]] = []
        c = in_channels
        for i, f in enumerate(filters):
            block = _conv_bn_act(c, f, 3, nn.ReLU(inplace=True))
            block.add_module("pool", nn.MaxPool2d(2))
            blocks.append((f"block{i + 1}", block))
            c = f
        super().__init__(
            nn.Sequential(OrderedDict(blocks)),
            _embedding_head(c, embedding_dims, num_classes),
            name="study4_custom_cnn",
            in_channels=in_channels,
            num_classes=num_classes,
            feature_channels=c,
            cam_layer=f"features.block{len(filters)}",
            min_input_size=2 ** len(filters),
        )


@register(MODELS, "study4_custom_cnn", "Study 4 (docs/methods.md section 2.4): ensemble of pretrained CNNs for pediatric pneumonia")
def study4_custom_cnn(
    in_channels: int,
    num_classes: int,
    *,
    filters: Sequence[int] = (32, 64, 128),
    embedding_dims: Sequence[int] = (16, 8),
) -> ClassifierModel:
    """The custom CNN branch of study 4; see :class:`Study4CustomCNN`."""
    return Study4CustomCNN(in_channels, num_classes, filters, embedding_dims)


class DarkNetBranch(ClassifierModel):
    """A DarkNet-19-style branch (Redmon and Farhadi, YOLO9000: Better, Faster, Stronger, CVPR 2017).

    The DarkNet-style branch of study 4, in the spirit of DarkCovidNet (Ozturk et al., Computers
    in Biology and Medicine 121, 2020), which built a chest X-ray classifier from DarkNet-19.
    Five stages of conv -> batch norm -> LeakyReLU(0.1): ``[w1]``, ``[w2]``, then
    ``[w, w/2 (1x1), w]`` bottleneck triples for the remaining widths, with a 2x2 max pool
    between stages (so the minimum input is 2 ** (stages - 1)). Head as in study 4:
    global average pooling -> dense 16 -> dense 8 -> linear.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        widths: Sequence[int] = (32, 64, 128, 256, 512),
        embedding_dims: Sequence[int] = (16, 8),
    ) -> None:
        """Build the branch; ``widths`` are the stage widths."""
        widths = [int(w) for w in widths]
        if len(widths) < 2 or min(widths) < 2:
            raise ValueError(f"widths must be at least 2 ints >= 2, got {widths}")
        stages: list[tuple[str, nn.Module]] = []
        c = in_channels
        for i, w in enumerate(widths):
            stage = nn.Sequential()
            if i > 0:
                stage.add_module("pool", nn.MaxPool2d(2))
            plan = [(w, 3)] if i < 2 else [(w, 3), (w // 2, 1), (w, 3)]
            for j, (f, k) in enumerate(plan):
                stage.add_module(f"conv{j + 1}", _conv_bn_act(c, f, k, nn.LeakyReLU(0.1, inplace=True)))
                c = f
            stages.append((f"stage{i + 1}", stage))
        super().__init__(
            nn.Sequential(OrderedDict(stages)),
            _embedding_head(c, embedding_dims, num_classes),
            name="darknet_branch",
            in_channels=in_channels,
            num_classes=num_classes,
            feature_channels=c,
            cam_layer=f"features.stage{len(widths)}",
            min_input_size=2 ** (len(widths) - 1),
        )


@register(MODELS, "darknet_branch", "Redmon, Farhadi. YOLO9000: Better, Faster, Stronger. CVPR 2017 (DarkNet-19)")
def darknet_branch(
    in_channels: int,
    num_classes: int,
    *,
    widths: Sequence[int] = (32, 64, 128, 256, 512),
    embedding_dims: Sequence[int] = (16, 8),
) -> ClassifierModel:
    """The DarkNet-style branch of study 4; see :class:`DarkNetBranch`."""
    return DarkNetBranch(in_channels, num_classes, widths, embedding_dims)


class CompactCNN(ClassifierModel):
    """A small VGG-style CNN for CPU presets on 48-64 px crops (about 290k parameters).

    Stem 3x3 conv(w1) -> BN -> ReLU -> 2x2 max pool; then for each further width two
    3x3 conv -> BN -> ReLU, with a 2x2 max pool after every stage except the last; global
    average pooling -> dropout -> linear. Follows Simonyan and Zisserman (ICLR 2015) stacked 3x3
    convs with batch norm (Ioffe and Szegedy, ICML 2015). With the default widths
    (16, 32, 64, 128) the feature map of a 64 px crop is 8x8 (stride 8), which keeps spatial
    detail such as a red cell's central pallor, at about 43M multiply-adds per 64 px image.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        widths: Sequence[int] = (16, 32, 64, 128),
        dropout: float = 0.2,
    ) -> None:
        """Build the compact CNN."""
        widths = [int(w) for w in widths]
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"widths must be at least 2 positive ints, got {widths}")
        stem = _conv_bn_act(in_channels, widths[0], 3, nn.ReLU(inplace=True))
        stem.add_module("pool", nn.MaxPool2d(2))
        stages: list[tuple[str, nn.Module]] = [("stem", stem)]
        c = widths[0]
        for i, w in enumerate(widths[1:], start=1):
            stage = nn.Sequential(
                OrderedDict(
                    conv1=_conv_bn_act(c, w, 3, nn.ReLU(inplace=True)),
                    conv2=_conv_bn_act(w, w, 3, nn.ReLU(inplace=True)),
                )
            )
            if i < len(widths) - 1:
                stage.add_module("pool", nn.MaxPool2d(2))
            stages.append((f"stage{i}", stage))
            c = w
        super().__init__(
            nn.Sequential(OrderedDict(stages)),
            _pool_head(c, None, num_classes, _check_dropout("dropout", dropout)),
            name="compact_cnn",
            in_channels=in_channels,
            num_classes=num_classes,
            feature_channels=c,
            cam_layer=f"features.stage{len(widths) - 1}",
            min_input_size=2 ** (len(widths) - 1),
        )


@register(MODELS, "compact_cnn", "Simonyan, Zisserman. ICLR 2015 (stacked 3x3 convs); Ioffe, Szegedy. ICML 2015 (BN)")
def compact_cnn(
    in_channels: int,
    num_classes: int,
    *,
    widths: Sequence[int] = (16, 32, 64, 128),
    dropout: float = 0.2,
) -> ClassifierModel:
    """Compact CNN for CPU presets; see :class:`CompactCNN`."""
    return CompactCNN(in_channels, num_classes, widths, dropout)
