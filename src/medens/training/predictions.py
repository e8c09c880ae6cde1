"""Saved predictions: what every member hands to the ensembles (DESIGN section 2, step 4).

Classification: ``probs`` (N, K) float32, ``labels`` (N,), ``ids``. Segmentation: ``probs``
(N, K, H, W) float16 (probability maps; half precision keeps them small), ``masks`` (N, H, W).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medens.storage.atomic import atomic_write_bytes


@dataclass
class Predictions:
    probs: np.ndarray
    ids: list[str]
    labels: np.ndarray | None = None
    masks: np.ndarray | None = None
    class_names: list[str] | None = None

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.probs):
            raise ValueError(f"{len(self.ids)} ids for {len(self.probs)} predictions")

    def save(self, path: str | os.PathLike) -> Path:
        arrays = {"probs": self.probs, "ids": np.asarray(self.ids, dtype=str)}
        if self.labels is not None:
            arrays["labels"] = self.labels
        if self.masks is not None:
            arrays["masks"] = self.masks
        if self.class_names is not None:
            arrays["class_names"] = np.asarray(self.class_names, dtype=str)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Predictions:
        with np.load(path, allow_pickle=False) as z:
            return cls(
                probs=z["probs"],
                ids=[str(i) for i in z["ids"]],
                labels=z["labels"] if "labels" in z else None,
                masks=z["masks"] if "masks" in z else None,
                class_names=[str(c) for c in z["class_names"]] if "class_names" in z else None,
            )


@torch.no_grad()
def predict_probs(model: torch.nn.Module, x: np.ndarray | torch.Tensor, *, batch_size: int = 256,
                  device: torch.device | str = "cpu", task: str = "classification") -> np.ndarray:
    """Softmax probabilities of ``model`` on preprocessed float inputs ``(N, C, H, W)``.

    One output channel (binary sigmoid) becomes two columns ``[1 - s, s]``.
    """
    model.eval()
    out = []
    t = torch.as_tensor(x)
    for i in range(0, len(t), batch_size):
        logits = model(t[i:i + batch_size].to(device)).float()
        out.append(logits_to_probs(logits).cpu())
    if not out:
        return np.empty((0,), np.float32)
    probs = torch.cat(out).numpy()
    return probs.astype(np.float16 if task == "segmentation" else np.float32)


def logits_to_probs(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 1; a single channel is a sigmoid, returned as two channels."""
    if logits.shape[1] == 1:
        s = torch.sigmoid(logits)
        return torch.cat([1 - s, s], dim=1)
    return torch.softmax(logits, dim=1)
