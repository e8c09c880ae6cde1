"""Decoded images -> uint8 pixel arrays: the one intensity mapping that training (file sources)
and the endpoint (uploads) share, so a file gives the model the same pixels in both.

16-bit greyscale (a common export of radiographs: PNG/TIFF modes ``I;16*``) is scaled over its
full range, ``round(v * 255 / 65535)``; 32-bit integer images (mode ``I``) the same way when any
value exceeds 255, else taken as 8-bit values. Pillow's own ``convert("L")`` clips such images
(a full-range 16-bit gradient becomes almost all white), which is why nothing here uses it for
them. Other modes become grey (``L``) or RGB as Pillow converts them. DICOM has its own mapping
(:mod:`medens.data.dicom`); :func:`decode_bytes` dispatches encoded bytes to the right one.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")

PREPROCESSING = {
    "version": 1,
    "images": "Pillow decode; 16-bit (I;16*, I above 255) scaled v * 255 / 65535; other modes converted to L or RGB",
    "dicom": "pydicom; modality LUT (rescale slope/intercept); VOI window from the file, else the image's full "
             "range; MONOCHROME1 inverted; 8-bit; colour and palette as RGB",
    "volumes": "2D NIfTI, NRRD, MetaImage through MONAI LoadImage, rows along the second voxel axis; the VOI "
               "window of data.window, else the image's full range; 8-bit",
    "resize": "Pillow bilinear on uint8 to the input size (files in the data stage, uploads at the endpoint)",
}
"""How pixels reach a model, recorded in every model artifact (``model.json`` ``preprocessing``):
the endpoint applies the same functions, and a different version is reported when it loads."""
GREY_MODES = ("1", "L", "LA", "F", "I", *SIXTEEN_BIT_MODES)


def image_to_array(img: Any, channels: int | None = None) -> np.ndarray:
    """A loaded Pillow image as uint8 ``(H, W, C)``.

    Args:
        img: the ``PIL.Image.Image`` (already ``load()``-ed or loadable).
        channels: 1 (grey) or 3 (RGB) to convert to; ``None`` keeps the image's own (grey modes
            give 1 channel, everything else 3).
    """
    if img.mode in SIXTEEN_BIT_MODES or img.mode == "I":
        a = np.asarray(img, dtype=np.float64)
        if a.ndim == 3:  # some plugins give (H, W, 1)
            a = a[..., 0]
        top = 65535.0 if img.mode in SIXTEEN_BIT_MODES or a.max(initial=0) > 255 else 255.0
        grey = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
        if channels == 3:
            return np.repeat(grey[..., None], 3, axis=-1)
        return grey[..., None]
    want = channels or (1 if img.mode in GREY_MODES else 3)
    target = "L" if want == 1 else "RGB"
    if img.mode != target:
        img = img.convert(target)
    a = np.asarray(img, dtype=np.uint8)
    return a[..., None] if a.ndim == 2 else a


def resize_uint8(a: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """Resize uint8 ``(H, W)`` or ``(H, W, C)`` to ``size`` x ``size`` with Pillow (bilinear, or
    nearest neighbour for masks)."""
    from PIL import Image

    if a.shape[0] == size and a.shape[1] == size:
        return a
    squeeze = a.ndim == 3 and a.shape[-1] == 1
    im = Image.fromarray(a[..., 0] if squeeze else a)
    out = np.asarray(im.resize((size, size), Image.NEAREST if nearest else Image.BILINEAR), dtype=np.uint8)
    return out[..., None] if squeeze else out


def to_channels(a: np.ndarray, channels: int) -> np.ndarray:
    """uint8 ``(H, W, C)`` with ``C`` 1 or 3 -> ``channels`` channels (grey repeated; RGB to grey by
    Pillow's ITU-R 601 luma, as :func:`image_to_array` converts)."""
    from PIL import Image

    if a.shape[-1] == channels:
        return a
    if a.shape[-1] == 1 and channels == 3:
        return np.repeat(a, 3, axis=-1)
    if a.shape[-1] == 3 and channels == 1:
        return np.asarray(Image.fromarray(a).convert("L"), dtype=np.uint8)[..., None]
    raise ValueError(f"cannot convert {a.shape[-1]}-channel pixels to {channels} channels")


def decode_bytes(data: bytes, where: str = "image") -> np.ndarray:
    """Encoded bytes (PNG, JPEG, TIFF, ... or a DICOM file) -> uint8 ``(H, W, C)`` by the same
    mapping a file of those bytes gets in the data stage."""
    from PIL import Image

    from medens.data.dicom import dicom_pixels, is_dicom_bytes

    if is_dicom_bytes(data):
        return dicom_pixels(data, where)
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return image_to_array(im)
