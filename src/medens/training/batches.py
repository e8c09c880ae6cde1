"""Batches for the training loop: a loader that gathers whole batches (in memory or on disk) and the
transform that moves them to the run's device, normalised and augmented."""

from __future__ import annotations

import numpy as np
import torch

from medens.data.augment import Flips
from medens.data.transforms import InputSpec
from medens.data.types import Split
from medens.training.device import Precision


class _IndexedArrays(torch.utils.data.Dataset):
    """Fetches a whole batch per ``__getitem__`` (a list of indices): one gather, no per-item
    collation. The images may be in memory or on disk (a ``FileArray``: only the batch is read)."""

    def __init__(self, images, targets: torch.Tensor) -> None:
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        i = np.asarray(idx, dtype=np.int64)
        images = torch.from_numpy(np.ascontiguousarray(self.images[i]))
        if isinstance(self.targets, torch.Tensor):
            return images, self.targets[torch.from_numpy(i)]
        # masks stay uint8 (in memory or on disk): only the batch becomes int64
        return images, torch.from_numpy(np.asarray(self.targets[i]).astype(np.int64))


def _targets(split: Split, task: str):
    """Labels as one long tensor; masks as they are stored (an int64 copy of every mask would be
    eight times their size): the loader converts each batch."""
    if task == "classification":
        return torch.as_tensor(split.labels, dtype=torch.long)
    return split.masks


def make_loader(split: Split, task: str, batch_size: int, *, shuffle: bool, precision: Precision,
                generator: torch.Generator | None = None, sample_weights: np.ndarray | None = None):
    """A DataLoader of uint8 ``(B, H, W, C)`` image batches and long targets."""
    ds = _IndexedArrays(split.images, _targets(split, task))
    n = len(ds)
    if sample_weights is not None:
        base = torch.utils.data.WeightedRandomSampler(torch.as_tensor(sample_weights, dtype=torch.double), n,
                                                      replacement=True, generator=generator)
    elif shuffle:
        base = torch.utils.data.RandomSampler(ds, generator=generator)
    else:
        base = torch.utils.data.SequentialSampler(ds)
    # A last batch of one sample breaks BatchNorm in training mode: drop it when shuffling.
    drop_last = shuffle and n % batch_size == 1 and n > batch_size
    batches = torch.utils.data.BatchSampler(base, batch_size, drop_last=drop_last)
    return torch.utils.data.DataLoader(
        ds, batch_size=None, sampler=batches, num_workers=precision.num_workers,
        pin_memory=precision.pin_memory, persistent_workers=precision.num_workers > 0,
    )


class DeviceTransform:
    """uint8/uint16 ``(B, H, W, C)`` on any device -> normalised float ``(B, C, H, W)`` on the run's device,
    with optional augmentation (:mod:`medens.data.augment`; masks transformed identically)."""

    def __init__(self, spec: InputSpec, precision: Precision, *, augment: str = "none", flips: Flips = "both",
                 task: str = "classification") -> None:
        from medens.data.augment import build_augmentation

        self.augment, self.flips = augment, flips
        self.compose = build_augmentation(augment, (spec.size, spec.size), segmentation=task == "segmentation",
                                          flips=flips)
        dev = precision.device
        self.device = dev
        self.mean = torch.tensor(spec.mean, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
        self.std = torch.tensor(spec.std, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
        self.max_value = float(spec.max_value)
        self.channels_last = precision.channels_last
        self.non_blocking = precision.pin_memory

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, *, augment: bool = False,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalise; with ``augment`` (training batches) apply the configured augmentation."""
        from medens.data.augment import augment_batch

        x = images.to(self.device, non_blocking=self.non_blocking).permute(0, 3, 1, 2).float().div_(self.max_value)
        x = (x - self.mean) / self.std
        y = targets.to(self.device, non_blocking=self.non_blocking)
        if augment and self.augment != "none":
            x, y = augment_batch(x, y, self.augment, generator, flips=self.flips, compose=self.compose)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y
