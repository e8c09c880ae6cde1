"""Saved predictions: what every member hands to the ensembles (docs/architecture.md section 5.3).

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

from medens.models.artifact import LoadedModel, logits_to_probs
from medens.storage.atomic import atomic_write_bytes

__all__ = ["Predictions", "logits_to_probs", "predict_probs"]


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
def predict_probs(model: torch.nn.Module | LoadedModel, x: np.ndarray | torch.Tensor, *, batch_size: int = 256,
                  device: torch.device | str = "cpu", task: str = "classification") -> np.ndarray:
    """Probabilities of ``model`` on preprocessed float inputs ``(N, C, H, W)``: a plain module's
    softmax, or a loaded artifact's own (:meth:`LoadedModel.probs`: test-time augmentation and
    temperature as the artifact defines them).

    One output channel (binary sigmoid) becomes two columns ``[1 - s, s]``.
    """
    if isinstance(model, LoadedModel):
        forward, task = model.probs, model.task
    else:
        model.eval()
        forward = lambda t: logits_to_probs(model(t).float())  # noqa: E731
    out = []
    t = torch.as_tensor(x)
    for i in range(0, len(t), batch_size):
        out.append(forward(t[i:i + batch_size].to(device)).cpu())
    if not out:
        return np.empty((0,), np.float32)
    probs = torch.cat(out).numpy()
    return probs.astype(np.float16 if task == "segmentation" else np.float32)
