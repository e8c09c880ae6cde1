"""Optimisers, learning-rate schedules, the weight EMA and encoder freezing of the training loop
(docs/methods.md: the recipe's AdamW, cosine warm-up and EMA)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from medens.config import TrainingSpec


def build_optimizer(params, spec: TrainingSpec) -> torch.optim.Optimizer:
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov and spec.momentum > 0,
                           weight_decay=spec.weight_decay)


def cosine_warmup_factor(step: int, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0) -> float:
    """Learning-rate factor at optimiser step ``step`` (0-based): linear warm-up to 1 over
    ``warmup_steps``, then cosine decay to ``min_ratio`` at ``total_steps`` (Loshchilov & Hutter,
    ICLR 2017, without restarts; Goyal et al. 2017 for the warm-up)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, spec: TrainingSpec, mode: str, steps_per_epoch: int,
               epochs: int) -> tuple[Any, bool]:
    """The learning-rate schedule and whether it steps per optimiser step (else per epoch)."""
    total = max(1, steps_per_epoch * epochs)
    if spec.schedule == "cosine":
        warm = int(round(spec.warmup_epochs * steps_per_epoch))
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_warmup_factor(step, total, warm, spec.min_lr_ratio)), True
    if spec.schedule == "onecycle":
        # one step more than is taken: the step after the last batch lands on the schedule's end
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                                   total_steps=total + 1), True
    if spec.plateau_patience:
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=spec.plateau_factor,
                                                          patience=spec.plateau_patience), False
    return None, False


def ema_model(net: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``net``'s weights and buffers:
    ``ema <- decay * ema + (1 - decay) * w`` after every optimiser step (torch's ``AveragedModel``)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def parameter_groups(net: nn.Module, spec: TrainingSpec) -> list[dict[str, Any]]:
    """One group for the encoder (``features``, at ``lr * encoder_lr_mult``) and one for the rest
    (the head), when the spec freezes or slows the encoder; else one group of everything."""
    if not spec.freeze_encoder_epochs and spec.encoder_lr_mult == 1.0:
        return [{"params": list(net.parameters())}]
    encoder = getattr(net, "features", None)
    if not isinstance(encoder, nn.Module) or not isinstance(getattr(net, "head", None), nn.Module):
        raise ValueError(f"training.freeze_encoder_epochs / encoder_lr_mult need a classification model with an "
                         f"encoder (features) and a head; {getattr(net, 'name', type(net).__name__)} has none")
    enc = {id(p) for p in encoder.parameters()}
    return [{"params": [p for p in net.parameters() if id(p) in enc], "lr": spec.lr * spec.encoder_lr_mult},
            {"params": [p for p in net.parameters() if id(p) not in enc], "lr": spec.lr}]


def set_encoder_frozen(net: nn.Module, frozen: bool) -> None:
    """Freeze (no gradients, BatchNorm statistics kept: eval mode) or release ``net.features``."""
    for p in net.features.parameters():
        p.requires_grad_(not frozen)
    if frozen:
        net.features.eval()
