"""Penultimate-layer embeddings of classifiers: what the content-drift test compares.

THE RULE: a classifier's embedding is the input of its classification layer, the last
``nn.Linear`` of ``net.head`` (in module order), flattened to ``(N, D)``. For every medens
classifier that is the pooled feature vector (``_pool_head``: pool -> flatten -> [dropout] -> fc;
timm backbones included), the last hidden layer's activation of an MLP head (study 4's dense
head, ``hog_mlp``), or the fused embedding of a model-level fusion. Dropout sits before ``fc`` in
some heads; models are embedded in eval mode, where it is the identity.

The embedding is captured with a forward pre-hook during the ordinary forward, so serving gets it
from the prediction's own forward at no extra cost (:func:`capture_embeddings`); only the first
forward of each network inside the context is kept (the identity view: test-time flips come
after it). An exported graph (ONNX) reproduces the rule by adding the classification layer's input
as a second output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["capture_embeddings", "classification_layer", "embed"]


def classification_layer(net: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` of ``net.head``: its input is the embedding (see the module docstring)."""
    head = getattr(net, "head", None)
    if not isinstance(head, nn.Module):
        raise ValueError(f"{type(net).__name__} has no classification head (``head``): embeddings are defined "
                         f"for medens classifiers only")
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"the head of {getattr(net, 'name', type(net).__name__)} has no nn.Linear layer: "
                         f"no penultimate embedding")
    return linears[-1]


@contextlib.contextmanager
def capture_embeddings(nets: Sequence[nn.Module]) -> Iterator[list[np.ndarray | None]]:
    """Within the context, the first forward of ``nets[i]`` stores its embedding ``(N, D)`` float32
    in ``captured[i]`` (``None`` until then); the hooks are removed on exit."""
    captured: list[np.ndarray | None] = [None] * len(nets)
    handles = []

    def hook(i: int):
        def pre(_module: nn.Module, args: tuple) -> None:
            if captured[i] is None:
                captured[i] = args[0].detach().flatten(1).float().cpu().numpy()
        return pre

    try:
        for i, net in enumerate(nets):
            handles.append(classification_layer(net).register_forward_pre_hook(hook(i)))
        yield captured
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def embed(net: nn.Module, x: torch.Tensor | np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Embeddings ``(N, D)`` float32 of preprocessed inputs ``(N, C, H, W)`` (eval mode, restored after)."""
    xt = torch.as_tensor(x, dtype=torch.float32)
    device = next(iter(net.parameters()), torch.empty(0)).device
    was_training = net.training
    net.eval()
    out = []
    try:
        for s in range(0, len(xt), batch_size):
            with capture_embeddings([net]) as captured:
                net(xt[s:s + batch_size].to(device))
            assert captured[0] is not None
            out.append(captured[0])
    finally:
        net.train(was_training)
    dim = classification_layer(net).in_features
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)
