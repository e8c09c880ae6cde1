"""Grad-CAM (Selvaraju et al., ICCV 2017) through MONAI, normalised by us, and its overlays.

The localisation test trains a small CNN on 32 px noise images where the class is a square's
brightness (bright = "bright", dark = "dark") at a random, recorded position, then requires the
map's peak to lie in that square for correctly classified images. An inverted map (MONAI's
default post-processing) fails it, which the test checks too.
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from medens.config import TrainingSpec
from medens.data.transforms import preprocess
from medens.data.types import Split, SplitData
from medens.evaluation.explain import grad_cam, gradcam_grid, normalize_maps, overlay, save_overlay_png
from medens.models import build
from medens.models.artifact import load_artifact
from medens.models.fusion import EmbeddingFusion, FeatureFusion  # importing registers the fusion models
from medens.training import fit

SIZE, OBJ = 32, 8
TOL = 2  # the peak may lie up to 2 px outside the 8x8 square (half a cell of the 16x16 feature map)


def squares(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grey noise (mean 128) with one 8x8 square at a random position: dark (class 0) or bright (1).

    Returns uint8 images (n, 32, 32, 1), labels and the squares' boxes (row0, col0, row1, col1).
    """
    rng = np.random.default_rng(seed)
    images = rng.normal(128, 25, (n, SIZE, SIZE))
    labels = np.arange(n) % 2
    boxes = np.zeros((n, 4), np.int64)
    for i in range(n):
        r, c = rng.integers(0, SIZE - OBJ + 1, 2)
        images[i, r : r + OBJ, c : c + OBJ] = rng.normal(230 if labels[i] else 25, 15, (OBJ, OBJ))
        boxes[i] = (r, c, r + OBJ, c + OBJ)
    return images.clip(0, 255).astype(np.uint8)[..., None], labels, boxes


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """compact_cnn (16, 32): a 16x16 feature map at 32 px, trained 4 epochs through medens.training.fit."""
    splits = {name: squares(n, seed) for name, n, seed in (("train", 400, 0), ("val", 100, 1), ("test", 100, 2))}
    data = SplitData(
        "classification", ["dark", "bright"],
        *[Split(images=im, labels=lab, ids=[f"{k}{i}" for i in range(len(lab))]) for k, (im, lab, _) in splits.items()],
    )
    spec = TrainingSpec(epochs=4, min_steps=0, lr=3e-3, batch_size=32, patience=None, plateau_patience=None, device="cpu",
                        augment=False, monitor="val_loss")
    path = fit({"name": "compact_cnn", "params": {"widths": [16, 32], "dropout": 0.0}}, "ce", data, spec,
               tmp_path_factory.mktemp("cam") / "model", seed=0, progress=False).path
    loaded = load_artifact(path)
    return loaded, splits["test"]


def peak_in_box(cams: np.ndarray, boxes: np.ndarray, tol: int = TOL) -> np.ndarray:
    flat = cams.reshape(len(cams), -1).argmax(1)
    r, c = np.unravel_index(flat, cams.shape[1:])
    return (r >= boxes[:, 0] - tol) & (r < boxes[:, 2] + tol) & (c >= boxes[:, 1] - tol) & (c < boxes[:, 3] + tol)


def test_peak_lies_in_the_class_region(trained):
    loaded, (images, labels, boxes) = trained
    model = loaded.model
    x = torch.from_numpy(preprocess(images, loaded.input_spec))
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    right = pred == labels
    assert right.mean() >= 0.9, right.mean()

    cams = grad_cam(model, x[right])
    assert cams.shape == (right.sum(), SIZE, SIZE) and cams.dtype == np.float32
    # normalisation: in [0, 1], each map's maximum is exactly 1 (none is flat here), and minimum 0
    assert cams.min() >= 0.0 and cams.max() <= 1.0
    np.testing.assert_allclose(cams.reshape(len(cams), -1).max(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(cams.reshape(len(cams), -1).min(1), 0.0, atol=1e-6)

    hits = peak_in_box(cams, boxes[right])
    fraction = hits.mean()
    assert fraction >= 0.8, fraction
    for k in (0, 1):  # both classes: the dark square explains "dark", the bright one "bright"
        assert hits[labels[right] == k].mean() >= 0.8, (k, hits[labels[right] == k].mean())
    # not inverted: the map is higher inside the square than outside, and the inverted map's peak misses it
    inside = np.zeros_like(cams, dtype=bool)
    for i, (r0, c0, r1, c1) in enumerate(boxes[right]):
        inside[i, r0:r1, c0:c1] = True
    assert cams[inside].mean() > 2 * cams[~inside].mean()
    assert peak_in_box(1.0 - cams, boxes[right]).mean() < 0.2


def test_matches_hand_computed_grad_cam_per_sample_class(trained):
    """Grad-CAM by hand: alpha_k = mean of d y_c / d A_k over the map, ReLU(sum_k alpha_k A_k), bilinear
    upsampling, min-max. The batch mixes predicted classes, which MONAI alone would score together."""
    loaded, (images, labels, _) = trained
    model = loaded.model
    x = torch.from_numpy(preprocess(images[:16], loaded.input_spec))
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert len(set(pred.tolist())) == 2

    feats = model.forward_features(x).detach().requires_grad_(True)
    logits = model.forward_head(feats)
    for target in (pred, torch.ones_like(pred), torch.tensor(labels[:16])):
        (grads,) = torch.autograd.grad(logits[torch.arange(16), target].sum(), feats, retain_graph=True)
        cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * feats).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0].detach()
        lo = cam.amin(dim=(1, 2), keepdim=True)
        hi = cam.amax(dim=(1, 2), keepdim=True)
        expected = ((cam - lo) / (hi - lo)).numpy()
        idx = None if target is pred else (1 if target.eq(1).all() else target.numpy())
        got = grad_cam(model, x, class_idx=idx, batch_size=5)
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = build("compact_cnn", in_channels=1, num_classes=3, widths=[8, 16])
    model.train()
    layer = dict(model.named_modules())[model.cam_layer]
    cams = grad_cam(model, torch.randn(4, 1, 16, 16))
    assert cams.shape == (4, 16, 16)
    assert model.training  # mode restored
    assert not layer._forward_hooks and not layer._backward_hooks  # MONAI's hooks removed
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    grad_cam(model, torch.randn(2, 1, 16, 16), class_idx=2)
    assert not model.training
    ref = weakref.ref(model)
    del model, layer
    gc.collect()
    assert ref() is None  # nothing (MONAI's cached graph) keeps the model alive
    with pytest.raises(ValueError, match=r"class_idx must be in \[0, 3\)"):
        grad_cam(build("compact_cnn", in_channels=1, num_classes=3, widths=[8, 16]), torch.randn(1, 1, 16, 16),
                 class_idx=3)
    with pytest.raises(ValueError, match="layer 'nope' is not a module of compact_cnn"):
        grad_cam(build("compact_cnn", in_channels=1, num_classes=3, widths=[8, 16]), torch.randn(1, 1, 16, 16),
                 layer="nope")


def test_normalize_maps():
    maps = np.stack([np.arange(16, dtype=np.float32).reshape(4, 4) + 3, np.full((4, 4), 5.0, np.float32),
                     np.zeros((4, 4), np.float32)])
    out = normalize_maps(maps)
    np.testing.assert_allclose(out[0], (maps[0] - 3) / 15)
    assert not out[1].any() and not out[2].any()  # flat maps carry no localisation -> zeros


def test_grad_cam_on_fusion_models():
    torch.manual_seed(0)
    specs = [{"name": "compact_cnn", "kwargs": {"widths": [8, 16]}},
             {"name": "compact_cnn", "kwargs": {"widths": [8, 16, 24]}}]
    x = torch.randn(3, 1, 16, 16)
    fused = build("feature_fusion", in_channels=1, num_classes=3, members=specs, channels=32)
    assert isinstance(fused, FeatureFusion)
    cams = grad_cam(fused, x)
    assert cams.shape == (3, 16, 16) and np.isfinite(cams).all()
    # each map is normalised (max 1) or flat (all zeros: an untrained head may have no positive evidence)
    peaks = cams.reshape(3, -1).max(1)
    assert cams.min() >= 0 and set(peaks.tolist()) <= {0.0, 1.0} and peaks.max() == 1.0
    # a member layer inside the fusion (frozen parameters) works too
    member_layer = f"features.frozen.members.0.{fused.members[0].cam_layer}"
    cams = grad_cam(fused, x, layer=member_layer)
    assert cams.shape == (3, 16, 16) and np.isfinite(cams).all() and cams.max() == 1.0
    assert all(not p.requires_grad for p in fused.members.parameters())

    emb = build("embedding_fusion", in_channels=1, num_classes=3, members=specs)
    assert isinstance(emb, EmbeddingFusion)
    assert not grad_cam(emb, x).any()  # its own cam layer is 1 x 1: a flat map, zeros
    assert grad_cam(emb, x, layer=f"features.frozen.members.1.{emb.members[1].cam_layer}").max() == 1.0


def test_overlay_values(tmp_path):
    image = np.full((4, 6), 100, np.uint8)
    cam = np.zeros((4, 6), np.float32)
    cam[1, 2] = 1.0
    out = overlay(image, cam, alpha=0.5, cmap="gray")
    assert out.shape == (4, 6, 3) and out.dtype == np.uint8
    assert (out[1, 2] == round(0.5 * 100 + 0.5 * 255)).all()
    assert (out[0, 0] == 50).all()
    np.testing.assert_array_equal(overlay(image, cam, alpha=0.0), np.repeat(image[..., None], 3, -1))
    # a map at another size is resized to the image; RGB images pass through
    rgb = np.zeros((8, 12, 3), np.uint8)
    assert overlay(rgb, cam).shape == (8, 12, 3)
    with pytest.raises(ValueError, match="image must be uint8"):
        overlay(image.astype(np.float32), cam)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        overlay(image, cam, alpha=1.5)
    path = save_overlay_png(tmp_path / "o.png", image, cam)
    with Image.open(path) as im:
        assert im.size == (6, 4) and im.mode == "RGB"


def test_gradcam_grid_png(trained, tmp_path):
    loaded, (images, labels, _) = trained
    path = gradcam_grid(loaded.model, images[:40], labels[:40], loaded.class_names, loaded.input_spec, per_class=3,
                        path=tmp_path / "grid.png")
    assert path == tmp_path / "grid.png"
    with Image.open(path) as im:
        im.load()
        w, h = im.size
        assert im.format == "PNG" and w > 300 and h > 150
        assert w > h  # 2 rows of 6 panels
        arr = np.asarray(im.convert("RGB"))
        assert arr.std() > 10  # not blank
