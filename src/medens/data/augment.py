"""Training-time augmentation on the training device, from MONAI's dictionary transforms.

Chosen in the spec (``training.augment``):

- ``none``: nothing.
- ``flips`` (the historical default): the eight dihedral symmetries, per sample: horizontal and
  vertical flips and, for square images, a transpose.
- ``light``: flips (as ``training.flips`` allows) and a mild affine: rotation within +-15 degrees,
  scale within +-10 %, translation within +-5 % of the side (MONAI ``RandAffined``).
- ``strong`` (a medical-imaging default): ``light``'s affine with rotation +-20 degrees, scale
  +-15 %, translation +-8 %; zoom (``RandZoomd``); Gaussian noise (``RandGaussianNoised``,
  sigma 0.05 of the normalised intensities); contrast/gamma (``RandAdjustContrastd``, gamma
  0.7-1.5); intensity scaling (``RandScaleIntensityd``, +-10 %).

Masks (segmentation) go through the same spatial transforms with nearest-neighbour
interpolation, so image and mask stay in correspondence; intensity transforms touch the image
only. Random draws are seeded per batch from a ``torch.Generator`` (saved in the training
checkpoint), so a resumed run repeats them exactly.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

AUGMENTATIONS = ("none", "flips", "light", "strong")
Flips = Literal["both", "horizontal", "vertical", "none"]


def _flip_transforms(flips: Flips, keys: list[str]) -> list:
    from monai.transforms import RandFlipd

    out = []
    # MONAI spatial axes of a channel-first 2D array (C, H, W): 0 = H (vertical flip), 1 = W (horizontal)
    if flips in ("both", "vertical"):
        out.append(RandFlipd(keys=keys, prob=0.5, spatial_axis=0))
    if flips in ("both", "horizontal"):
        out.append(RandFlipd(keys=keys, prob=0.5, spatial_axis=1))
    return out


def build_augmentation(mode: str, size: tuple[int, int], *, segmentation: bool = False, flips: Flips = "both"):
    """The MONAI ``Compose`` of ``mode`` over ``{"image": (C, H, W)[, "mask": (1, H, W)]}`` for images of
    ``size`` (the translation range is a fraction of it); ``None`` for ``none`` and ``flips`` (those
    are applied batched, see :func:`augment_batch`)."""
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandZoomd,
    )

    if mode not in AUGMENTATIONS:
        raise ValueError(f"training.augment must be one of {', '.join(AUGMENTATIONS)}, got {mode!r}")
    if mode in ("none", "flips"):
        return None
    keys = ["image", "mask"] if segmentation else ["image"]
    spatial_mode = ["bilinear", "nearest"] if segmentation else ["bilinear"]
    strong = mode == "strong"
    deg = math.radians(20 if strong else 15)
    shift = 0.08 if strong else 0.05
    ts = _flip_transforms(flips, keys)
    ts.append(RandAffined(keys=keys, prob=0.8 if strong else 0.5, rotate_range=(deg,),
                          scale_range=((0.15, 0.15) if strong else (0.1, 0.1)),
                          translate_range=(shift * size[0], shift * size[1]), mode=spatial_mode,
                          padding_mode="border"))
    if strong:
        ts += [RandZoomd(keys=keys, prob=0.3, min_zoom=0.9, max_zoom=1.15, mode=["bilinear", "nearest"][: len(keys)],
                         padding_mode="edge", keep_size=True),
               RandGaussianNoised(keys=["image"], prob=0.3, std=0.05),
               RandAdjustContrastd(keys=["image"], prob=0.3, gamma=(0.7, 1.5)),
               RandScaleIntensityd(keys=["image"], prob=0.3, factors=0.1)]
    return Compose(ts)


def augment_batch(x: torch.Tensor, y: torch.Tensor, mode: str, generator: torch.Generator | None = None, *,
                  flips: Flips = "both", compose=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a normalised batch ``x`` ``(B, C, H, W)`` with targets ``y`` (labels ``(B,)`` or masks ``(B, H, W)``).

    Labels are returned unchanged; masks follow the images' spatial transforms.
    """
    if mode == "none":
        return x, y
    if mode == "flips":
        return dihedral(x, y, generator, flips=flips)
    seg = y.dim() == 3
    if compose is None:
        compose = build_augmentation(mode, tuple(x.shape[-2:]), segmentation=seg, flips=flips)
    # one seed per batch from the (checkpointed) generator: resumable and independent of MONAI's global state
    compose.set_random_state(seed=int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    xs, ys = [], []
    for i in range(x.shape[0]):
        item = {"image": x[i]}
        if seg:
            item["mask"] = y[i][None].float()
        out = compose(item)
        xs.append(torch.as_tensor(out["image"]).as_subclass(torch.Tensor).to(x.dtype))
        if seg:
            ys.append(torch.as_tensor(out["mask"]).as_subclass(torch.Tensor)[0].round().to(y.dtype))
    return torch.stack(xs), (torch.stack(ys) if seg else y)


def dihedral(x: torch.Tensor, y: torch.Tensor, g: torch.Generator | None, *,
             flips: Flips = "both") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample horizontal/vertical flips and (square images, ``flips="both"``) a transpose: the 8
    dihedral symmetries, batched on the tensors' device. Random draws come from ``g`` (on the CPU),
    so a resumed run repeats them."""
    b = x.shape[0]
    draws = torch.rand(b, 3, generator=g)
    seg = y.dim() == 3

    def where(mask: torch.Tensor, a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m = mask.to(a.device).view(-1, *([1] * (a.dim() - 1)))
        return torch.where(m, t, a)

    if flips in ("both", "horizontal"):
        x = where(draws[:, 0] < 0.5, x, x.flip(-1))
        if seg:
            y = where(draws[:, 0] < 0.5, y, y.flip(-1))
    if flips in ("both", "vertical"):
        x = where(draws[:, 1] < 0.5, x, x.flip(-2))
        if seg:
            y = where(draws[:, 1] < 0.5, y, y.flip(-2))
    if flips == "both" and x.shape[-1] == x.shape[-2]:
        x = where(draws[:, 2] < 0.5, x, x.transpose(-1, -2))
        if seg:
            y = where(draws[:, 2] < 0.5, y, y.transpose(-1, -2))
    return x, y
