"""Input preprocessing recorded in every artifact, so training, evaluation and serving agree.

``InputSpec`` holds channels, size and intensity normalisation; ``preprocess`` turns uint8 or
uint16 ``(N, H, W, C)`` images (any size) into float32 ``(N, C, size, size)`` arrays.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class InputSpec:
    """What a model expects: ``channels``, square ``size``, and ``(x / max_value - mean) / std``
    (``max_value`` 255 for 8-bit pixels, 65535 for 16-bit ones)."""

    channels: int
    size: int
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    max_value: float = 255.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        return cls(channels=int(d["channels"]), size=int(d["size"]), mean=list(d["mean"]), std=list(d["std"]),
                   max_value=float(d.get("max_value", 255.0)))  # artifacts before 16-bit pixels: 255

    @classmethod
    def fit(cls, images: np.ndarray, mode: str = "unit") -> InputSpec:
        """Normalisation from training images: ``unit`` (x / max_value) or ``zscore`` (per-channel);
        ``max_value`` from the images' dtype (:func:`medens.data.decode.max_value`)."""
        from medens.data.decode import max_value

        if images.ndim != 4:
            raise ValueError(f"images must be (N, H, W, C), got shape {tuple(images.shape)}")
        c, size, top = int(images.shape[-1]), int(images.shape[1]), max_value(images.dtype)
        if mode == "unit":
            return cls(channels=c, size=size, mean=[0.0] * c, std=[1.0] * c, max_value=top)
        if mode == "zscore":  # in row chunks: the images may be on disk (FileArray)
            from medens.data.filearray import iter_rows

            total, sq, n = np.zeros(c), np.zeros(c), 0
            for chunk in iter_rows(images, 8 * 2**20):  # float64 copies: 64 MiB of scratch
                x = chunk.reshape(-1, c).astype(np.float64) / top
                total += x.sum(axis=0)
                sq += (x * x).sum(axis=0)
                n += len(x)
            mean = total / max(n, 1)
            std = np.maximum(np.sqrt(np.maximum(sq / max(n, 1) - mean * mean, 0.0)), 1e-6)
            return cls(channels=c, size=size, mean=mean.round(6).tolist(), std=std.round(6).tolist(), max_value=top)
        raise ValueError(f"unknown normalisation {mode!r}; expected 'unit' or 'zscore'")


def preprocess(images: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Pixels ``(N, H, W, C)`` -> float32 ``(N, C, size, size)``: channel conversion, resize, normalise
    (``x / spec.max_value``, then mean/std)."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C) or (N, H, W), got shape {tuple(x.shape)}")
    c = x.shape[-1]
    if c != spec.channels:
        if c == 3 and spec.channels == 1:
            x = (x.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        elif c == 1 and spec.channels == 3:
            x = np.repeat(x, 3, axis=-1)
        else:
            raise ValueError(f"images have {c} channels; the model expects {spec.channels}")
    x = x.astype(np.float32)
    if x.shape[1] != spec.size or x.shape[2] != spec.size:
        x = resize_batch(x, spec.size)
    x = x / np.float32(spec.max_value)
    mean = np.asarray(spec.mean, np.float32).reshape(1, 1, 1, -1)
    std = np.asarray(spec.std, np.float32).reshape(1, 1, 1, -1)
    x = (x - mean) / std
    return np.ascontiguousarray(np.moveaxis(x, -1, 1))


def resize_batch(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of float ``(N, H, W, C)`` to ``(N, size, size, C)`` (torch, antialiased)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return np.moveaxis(t.numpy(), 1, -1)
