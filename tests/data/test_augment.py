"""Training augmentation (MONAI transforms): labels kept, masks follow their images, draws repeatable."""

import numpy as np
import pytest
import torch

from medens.config import TrainingSpec
from medens.data.augment import AUGMENTATIONS, augment_batch, build_augmentation, dihedral


def discs(n=12, size=48, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), np.int64)
    for i in range(n):
        cy, cx = rng.integers(14, size - 14, 2)
        r = rng.integers(6, 12)
        masks[i] = ((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r
    return torch.from_numpy(masks)


@pytest.mark.parametrize("mode", AUGMENTATIONS)
def test_classification_labels_are_kept_and_draws_repeat(mode):
    x = torch.randn(16, 3, 40, 40)
    y = torch.arange(16) % 4
    a = augment_batch(x, y, mode, torch.Generator().manual_seed(5))
    b = augment_batch(x, y, mode, torch.Generator().manual_seed(5))
    assert torch.equal(a[1], y) and a[0].shape == x.shape and a[0].dtype == x.dtype
    assert torch.equal(a[0], b[0])  # the same generator state gives the same augmentation (resumable)
    assert torch.equal(a[0], x) == (mode == "none")


@pytest.mark.parametrize("mode", ["flips", "light", "strong"])
def test_segmentation_masks_follow_their_images(mode):
    """The image is its own mask (0/1 intensities); after augmentation the thresholded image and the
    transformed mask agree on almost every pixel (interpolation differs only along the rim)."""
    masks = discs()
    x = masks[:, None].float()
    xa, ya = augment_batch(x, masks, mode, torch.Generator().manual_seed(3))
    assert ya.dtype == masks.dtype and ya.shape == masks.shape and set(ya.unique().tolist()) <= {0, 1}
    lo = xa.amin(dim=(1, 2, 3), keepdim=True)
    hi = xa.amax(dim=(1, 2, 3), keepdim=True)
    thresholded = ((xa - lo) / (hi - lo + 1e-8) > 0.5)[:, 0].long()
    agreement = (thresholded == ya).float().mean().item()
    assert agreement > 0.97, agreement
    assert not torch.equal(ya, masks)  # something moved


def test_dihedral_flips_respect_the_allowed_axes():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).reshape(2, 1, 5, 5).repeat(32, 1, 1, 1)
    y = torch.zeros(len(x), dtype=torch.long)
    out, _ = dihedral(x, y, torch.Generator().manual_seed(0), flips="horizontal")
    for a, b in zip(out, x):
        assert torch.equal(a, b) or torch.equal(a, b.flip(-1))
    assert any(torch.equal(a, b.flip(-1)) for a, b in zip(out, x))
    none, _ = dihedral(x, y, torch.Generator().manual_seed(0), flips="none")
    assert torch.equal(none, x)


def test_dihedral_by_hand():
    g = torch.Generator().manual_seed(11)
    draws = torch.rand(4, 3, generator=torch.Generator().manual_seed(11))
    x = torch.randn(4, 1, 6, 6)
    out, _ = dihedral(x, torch.zeros(4, dtype=torch.long), g)
    for i in range(4):
        e = x[i]
        if draws[i, 0] < 0.5:
            e = e.flip(-1)
        if draws[i, 1] < 0.5:
            e = e.flip(-2)
        if draws[i, 2] < 0.5:
            e = e.transpose(-1, -2)
        assert torch.equal(out[i], e)


def test_spec_choices_and_errors():
    assert TrainingSpec(augment=True).augment == "flips" and TrainingSpec(augment=False).augment == "none"
    assert TrainingSpec().augment == "flips" and TrainingSpec(augment="strong").augment == "strong"
    with pytest.raises(ValueError):
        TrainingSpec(augment="extreme")
    with pytest.raises(ValueError, match="training.augment must be one of none, flips, light, strong"):
        build_augmentation("extreme", (8, 8))
    assert build_augmentation("flips", (8, 8)) is None and build_augmentation("none", (8, 8)) is None
