"""Grad-CAM explanations and their overlays (docs/methods.md section 11.1).

Grad-CAM (Selvaraju, Cogswell, Das, Vedantam, Parikh, Batra. Grad-CAM: Visual Explanations from
Deep Networks via Gradient-based Localization. ICCV 2017): for class c and a conv layer with
activations ``A^k``, the channel weights are the spatially averaged gradients
``alpha_k = mean_ij d y^c / d A^k_ij`` and the map is ``ReLU(sum_k alpha_k A^k)``, upsampled to
the input size. Study 1 (Rajaraman et al., PLoS ONE 2021) shows it at the deepest conv layer,
which is every medens model's ``cam_layer`` (fused models included).

The maps come from ``monai.visualize.GradCAM`` with three corrections:

- MONAI's default post-processing (``default_normalizer``) maps (min, max) to (1, 0), i.e. it
  *inverts* the map; we pass an identity and min-max normalise each map ourselves to [0, 1]
  (a flat map, which carries no localisation, becomes all zeros).
- With ``class_idx=None`` MONAI scores a batch as ``logits[:, argmax].sum()``, which mixes the
  predicted classes of different samples; we group the batch by target class and call MONAI with
  one integer class per group, so every map is that of its own sample's class.
- MONAI registers its forward/backward hooks on the model without keeping the handles and caches
  activations, gradients and the score (which hold the autograd graph); we remove exactly the
  hooks it added and clear its caches after every call, so the model is left as it was.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medens.storage.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from medens.data.transforms import InputSpec

__all__ = ["gradcam_grid", "grad_cam", "normalize_maps", "overlay", "save_overlay_png"]


def normalize_maps(maps: torch.Tensor | np.ndarray) -> np.ndarray:
    """Min-max normalise each map of ``(N, H, W)`` to [0, 1] (float32); flat maps become zeros.

    A map counts as flat when ``max - min <= 1e-6 * max(|max|, |min|)`` (including all-equal maps),
    e.g. a 1 x 1 layer or a class whose gradient vanishes everywhere.
    """
    m = maps.detach().float().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps, np.float32)
    m = m.astype(np.float32, copy=False)
    if m.ndim != 3:
        raise ValueError(f"maps must have shape (N, H, W), got {tuple(m.shape)}")
    flat = m.reshape(len(m), -1)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    rng = hi - lo
    scale = np.maximum(np.abs(hi), np.abs(lo))
    ok = np.isfinite(rng) & (rng > 1e-6 * scale) & (rng > 0)
    out = np.zeros_like(m)
    out[ok] = (m[ok] - lo[ok, None, None]) / rng[ok, None, None]
    return np.clip(out, 0.0, 1.0)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _module(model: nn.Module, layer: str) -> nn.Module:
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"layer {layer!r} is not a module of {getattr(model, 'name', type(model).__name__)}")
    return modules[layer]


def grad_cam(
    model: nn.Module,
    x: torch.Tensor | np.ndarray,
    *,
    class_idx: int | Sequence[int] | torch.Tensor | np.ndarray | None = None,
    layer: str | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Grad-CAM maps (Selvaraju et al., ICCV 2017) of ``model`` at ``layer`` for a batch.

    Uses ``monai.visualize.GradCAM`` with an identity post-processing (MONAI's default inverts the
    map) and normalises each ReLU'd, input-size map to [0, 1] itself (see the module docstring).

    Args:
        model: a medens classification model (member or fusion) giving logits ``B x K``.
        x: preprocessed input ``(N, C, H, W)`` (``medens.data.transforms.preprocess``).
        class_idx: class to explain: ``None`` for each sample's predicted class, one int for all,
            or one int per sample.
        layer: dotted module name; default ``model.cam_layer``.
        batch_size: samples per forward/backward pass.

    Returns:
        float32 ``(N, H, W)`` maps in [0, 1]; the maximum is 1 unless the map is flat (all zeros).

    Raises:
        ValueError: unknown layer, bad ``class_idx`` or input shape.

    The model runs in eval mode; its previous mode is restored, and no hook or cached tensor is
    left on it.
    """
    from monai.visualize import GradCAM

    layer = layer if layer is not None else getattr(model, "cam_layer", None)
    if not layer:
        raise ValueError("model has no cam_layer; pass layer=...")
    target = _module(model, layer)
    xt = torch.as_tensor(x, dtype=torch.float32)
    if xt.ndim != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {tuple(xt.shape)}")
    n = len(xt)
    try:
        device = next(model.parameters()).device
    except StopIteration:  # pragma: no cover - every medens model has parameters
        device = torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        if class_idx is None:
            targets = _predict(model, xt, device, batch_size)
        else:
            targets = np.broadcast_to(np.asarray(class_idx, dtype=np.int64), (n,)).copy()
        k = int(getattr(model, "num_classes", 0) or 0)
        if n and (targets.min() < 0 or (k and targets.max() >= k)):
            raise ValueError(f"class_idx must be in [0, {k}), got {sorted(set(targets.tolist()))}")
        out = np.zeros((n, *xt.shape[2:]), dtype=np.float32)
        for c in np.unique(targets):
            idx = np.flatnonzero(targets == c)
            for s in range(0, len(idx), batch_size):
                part = idx[s : s + batch_size]
                out[part] = _monai_cam(GradCAM, model, target, layer, xt[part].to(device), int(c))
        return out
    finally:
        model.train(was_training)


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int) -> np.ndarray:
    out = [model(x[s : s + batch_size].to(device)).argmax(1).cpu() for s in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


def _monai_cam(gradcam_cls: type, model: nn.Module, target: nn.Module, layer: str, x: torch.Tensor,
               class_idx: int) -> np.ndarray:
    hook_dicts = ("_forward_hooks", "_backward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called")
    before = {name: set(getattr(target, name, {})) for name in hook_dicts}
    full_backward = getattr(target, "_is_full_backward_hook", None)
    cam = None
    try:
        cam = gradcam_cls(nn_module=model, target_layers=layer, postprocessing=_identity)
        # Gradients must reach the layer even when the parameters before it are frozen (fusion
        # members) or the whole model is: differentiate with respect to the input as well.
        x = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            maps = cam(x, class_idx=class_idx)
        return normalize_maps(maps[:, 0])
    finally:
        for name in hook_dicts:
            d = getattr(target, name, None)
            if d is not None:
                for key in set(d) - before[name]:
                    del d[key]
        if hasattr(target, "_is_full_backward_hook"):
            target._is_full_backward_hook = full_backward
        if cam is not None:
            hooks = cam.nn_module
            hooks.activations.clear()
            hooks.gradients.clear()
            hooks.score = None
            hooks.class_idx = None
        model.zero_grad(set_to_none=True)


def _rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype == np.uint16:  # 16-bit pixels: shown at 8 bits
        img = np.rint(img / 257.0).astype(np.uint8)
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8 or uint16, got {img.dtype}")
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=-1)
    if img.ndim == 3 and img.shape[-1] == 3:
        return img
    raise ValueError(f"image must be (H, W), (H, W, 1) or (H, W, 3), got shape {tuple(img.shape)}")


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.4, cmap: str = "jet") -> np.ndarray:
    """Blend a colour-mapped Grad-CAM map onto an image.

    Args:
        image: uint8 (or uint16, shown at 8 bits) ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)``.
        cam: ``(h, w)`` map in [0, 1] (values outside are clipped); resized bilinearly to the image
            size when it differs (e.g. a map at the model's input size over the original image).
        alpha: weight of the heat map: ``(1 - alpha) * image + alpha * cmap(cam)``.
        cmap: a matplotlib colormap name.

    Returns:
        uint8 RGB ``(H, W, 3)``.
    """
    import matplotlib

    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = _rgb(image)
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"cam must have shape (H, W), got {tuple(cam.shape)}")
    h, w = rgb.shape[:2]
    if cam.shape != (h, w):
        t = torch.from_numpy(np.ascontiguousarray(cam))[None, None]
        cam = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    heat = matplotlib.colormaps[cmap](np.clip(cam, 0.0, 1.0))[..., :3] * 255.0
    out = (1.0 - alpha) * rgb.astype(np.float32) + alpha * heat
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def save_overlay_png(path: str | os.PathLike[str], image: np.ndarray, cam: np.ndarray, alpha: float = 0.4,
                     cmap: str = "jet") -> Path:
    """Write :func:`overlay` of ``image`` and ``cam`` as an RGB PNG (atomically); returns the path."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(overlay(image, cam, alpha=alpha, cmap=cmap), mode="RGB").save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def _select(labels: np.ndarray, pred: np.ndarray, k: int, per_class: int) -> list[tuple[int, list[int]]]:
    rows = []
    for c in range(k):
        of_c = np.flatnonzero(labels == c)
        right = of_c[pred[of_c] == c].tolist()
        wrong = of_c[pred[of_c] != c].tolist()
        rows.append((c, (right + wrong)[:per_class]))
    return rows


def gradcam_grid(
    model: nn.Module,
    images: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    input_spec: InputSpec,
    per_class: int = 4,
    path: str | os.PathLike[str] = "gradcam.png",
    *,
    layer: str | None = None,
    alpha: float = 0.4,
    cmap: str = "jet",
    batch_size: int = 32,
    dpi: int = 100,
) -> Path:
    """A PNG grid of Grad-CAM overlays (Selvaraju et al., ICCV 2017): one row per class.

    For every class the first ``per_class`` correctly classified images (in input order) are
    shown; when a class has fewer, its misclassified images fill the row (their title says so).
    Each example takes two panels, the original image and the overlay of the Grad-CAM map of the
    *predicted* class, titled with the true class, the predicted class and its probability.

    Args:
        model: a medens classification model (member or fusion).
        images: uint8 ``(N, H, W[, C])`` original images.
        labels: true class per image.
        class_names: names of the ``K`` classes.
        input_spec: the model's input spec (``LoadedModel.input_spec``); model inputs are made with
            ``medens.data.transforms.preprocess``.
        per_class: examples per class.
        path: PNG to write (atomically).
        layer: Grad-CAM layer (default ``model.cam_layer``).
        alpha: overlay opacity; ``cmap``: colormap.
        batch_size: batch size of the forward passes.
        dpi: figure resolution.

    Returns:
        The PNG path.
    """
    from medens.data.transforms import preprocess

    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    x = torch.from_numpy(preprocess(images, input_spec))
    probs = _predict_probs(model, x, batch_size)
    rows = _select(labels, probs.argmax(1), len(class_names), per_class)
    chosen = [i for _, idx in rows for i in idx]
    cams = dict(zip(chosen, grad_cam(model, x[chosen], layer=layer, batch_size=batch_size))) if chosen else {}
    fig = _grid_figure(rows, images, cams, probs, class_names, per_class, alpha=alpha, cmap=cmap, dpi=dpi)
    fig.suptitle(f"Grad-CAM ({layer or getattr(model, 'cam_layer', '')})", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


def _predict_probs(model: nn.Module, x: torch.Tensor, batch_size: int) -> np.ndarray:
    """Softmax probabilities ``(N, K)`` of ``model`` on ``x`` in eval mode, without gradients and
    in batches on the model's device; the model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            return torch.cat([torch.softmax(model(x[s : s + batch_size].to(device)).float(), 1).cpu()
                              for s in range(0, len(x), batch_size)]).numpy()
    finally:
        model.train(was_training)


def _grid_figure(
    rows: list[tuple[int, list[int]]],
    images: np.ndarray,
    cams: dict[int, np.ndarray],
    probs: np.ndarray,
    class_names: Sequence[str],
    per_class: int,
    *,
    alpha: float,
    cmap: str,
    dpi: int,
) -> Figure:
    """The figure of :func:`gradcam_grid`: one row of ``2 * per_class`` bare panels per class
    (``rows`` from :func:`_select`), each chosen image and its overlay drawn in a pair of them;
    a class with no images says so."""
    from matplotlib.figure import Figure

    k, cols = len(class_names), 2 * per_class
    fig = Figure(figsize=(1.6 * cols, 2.1 * k + 0.4), dpi=dpi)
    axes = fig.subplots(k, cols, squeeze=False)
    for c, idx in rows:
        for j in range(per_class):
            a_img, a_cam = axes[c][2 * j], axes[c][2 * j + 1]
            _bare_axes(a_img, a_cam)
            if j < len(idx):
                i = idx[j]
                _draw_example(a_img, a_cam, images[i], cams[i], c, probs[i], class_names, alpha=alpha, cmap=cmap)
        axes[c][0].set_ylabel(class_names[c], fontsize=9)
        if not idx:
            axes[c][0].text(0.5, 0.5, "no images", ha="center", va="center", fontsize=7,
                            transform=axes[c][0].transAxes)
    return fig


def _bare_axes(*axes: Axes) -> None:
    """Hide the ticks and the frame of each matplotlib axes."""
    for a in axes:
        a.set_xticks([])
        a.set_yticks([])
        for spine in a.spines.values():
            spine.set_visible(False)


def _draw_example(
    a_img: Axes,
    a_cam: Axes,
    image: np.ndarray,
    cam: np.ndarray,
    c: int,
    probs: np.ndarray,
    class_names: Sequence[str],
    *,
    alpha: float,
    cmap: str,
) -> None:
    """One example of :func:`gradcam_grid`: the image titled with its true class ``c``, and the
    overlay of its Grad-CAM map titled with the predicted class and its probability (in red,
    marked "(wrong)", when the prediction is not ``c``)."""
    img = _rgb(image)
    a_img.imshow(img)
    a_cam.imshow(overlay(img, cam, alpha=alpha, cmap=cmap))
    p = int(probs.argmax())
    mark = "" if p == c else " (wrong)"
    a_img.set_title(f"true: {class_names[c]}", fontsize=7)
    a_cam.set_title(f"pred: {class_names[p]}{mark}\np={probs[p]:.2f}", fontsize=7,
                    color="black" if p == c else "red")
