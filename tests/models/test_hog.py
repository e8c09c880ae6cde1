"""The HOG member: torch HOG against scikit-image's reference, and hog_mlp behind the common interface."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.feature import hog as sk_hog

from medens.evaluation.explain import grad_cam
from medens.models import build
from medens.models.hog import HOG


def _ours(image: np.ndarray, **kw) -> np.ndarray:
    """Our HOG of one (H, W) or (H, W, C) float64 image, flattened as skimage's feature vector."""
    t = torch.from_numpy(image[None, None] if image.ndim == 2 else np.moveaxis(image, -1, 0)[None])
    return HOG(**kw)(t).permute(0, 2, 3, 1).reshape(-1).numpy()


@pytest.mark.parametrize(
    ("shape", "kw"),
    [
        ((64, 64), {}),
        ((67, 53), {}),  # rows/columns past the last whole cell are ignored
        ((48, 40, 3), {}),  # colour: per pixel the channel of largest gradient
        ((64, 64), {"orientations": 12, "cell": 6, "block": 3}),
    ],
)
def test_hog_equals_scikit_image(shape, kw):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, shape).astype(np.float64)
    ref = sk_hog(image, orientations=kw.get("orientations", 9), pixels_per_cell=(kw.get("cell", 8),) * 2,
                 cells_per_block=(kw.get("block", 2),) * 2, block_norm="L2-Hys",
                 channel_axis=-1 if len(shape) == 3 else None)
    ours = _ours(image, **kw)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_hog_of_a_pure_vertical_edge_is_one_orientation():
    # Intensity rises along columns only: the gradient points along the column axis, 0 degrees,
    # so every cell's histogram is all in bin 0 and each normalised block is (1/2, 0, ..., 0) x 4
    # cells (L2 over 4 equal entries -> 1/2 each; 0.5 > 0.2 is clipped, renormalised -> 1/2 again).
    image = np.tile(np.arange(32, dtype=np.float64) * 3.0, (32, 1))
    out = HOG()(torch.from_numpy(image)[None, None])
    assert out.shape == (1, 36, 3, 3)
    per_block = out[0].permute(1, 2, 0).reshape(3, 3, 2, 2, 9)
    # blocks touching the zero-gradient border columns have smaller first/last cells: check the
    # centre block, whose four cells are interior
    centre = per_block[1, 1]
    torch.testing.assert_close(centre[..., 0], torch.full((2, 2), 0.5, dtype=torch.float64))
    assert centre[..., 1:].abs().max() == 0


def test_hog_refuses_small_images_and_bad_options():
    with pytest.raises(ValueError, match="at least 16 px"):
        HOG()(torch.zeros(1, 1, 15, 64))
    with pytest.raises(ValueError, match="cell must be a positive int"):
        HOG(cell=0)
    with pytest.raises(ValueError, match="dropout"):
        build("hog_mlp", in_channels=1, num_classes=3, dropout=1.0)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_hog_mlp_interface_and_training_step(in_channels):
    torch.manual_seed(0)
    model = build("hog_mlp", in_channels=in_channels, num_classes=3)
    assert (model.min_input_size, model.feature_channels) == (16, 36)
    x = torch.rand(4, in_channels, 64, 64)
    model.eval()  # no dropout while comparing the two paths
    feats = model.forward_features(x)
    assert feats.shape == (4, 36, 7, 7)
    logits = model(x)
    torch.testing.assert_close(model.forward_head(feats), logits)
    model.train()
    logits = model(x)
    # the HOG map is fixed: the only parameters are the MLP's, and one step moves them
    assert all(name.startswith("head.") for name, _ in model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # rebuilt from its build kwargs with the same weights it gives the same logits
    model.eval()
    twin = build(**model.build_kwargs)
    twin.load_state_dict(model.state_dict())
    twin.eval()
    torch.testing.assert_close(twin(x), model(x))
    # another input size is pooled onto the same 7 x 7 grid
    assert model(torch.rand(2, in_channels, 96, 96)).shape == (2, 3)


def test_hog_mlp_grad_cam_maps():
    # A head whose class-1 logit grows with every HOG entry: the Grad-CAM weights are all positive,
    # so the map follows the HOG energy: textured left half high, flat right half zero.
    model = build("hog_mlp", in_channels=1, num_classes=2, hidden=4).eval()
    with torch.no_grad():
        model.head[2].weight.fill_(0.01)
        model.head[2].bias.zero_()
        model.head[5].weight.copy_(torch.tensor([[0.0] * 4, [1.0] * 4]))
        model.head[5].bias.zero_()
    x = torch.zeros(1, 1, 64, 64)
    x[..., :32] = torch.rand(1, 1, 64, 32, generator=torch.Generator().manual_seed(0))
    # medens' grad_cam differentiates through the input, so the fixed HOG map carries a gradient
    maps = grad_cam(model, x, class_idx=1)
    assert maps.shape == (1, 64, 64)
    assert np.isfinite(maps).all() and maps.max() == pytest.approx(1.0)
    assert maps[0, :, :24].min() > 0.2
    assert maps[0, :, 56:].max() < 1e-6  # the 7 x 7 map is upsampled bilinearly: the edge blurs
