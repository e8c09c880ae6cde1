"""Decoded images -> pixel arrays: the one intensity mapping that training (file sources) and
the endpoint (uploads) share, so a file gives the model the same pixels in both.

Pixels are stored at the bit depth the spec asks for (``data.bit_depth``, :class:`Reading`):
uint8 (default) or uint16, and normalised only by the model's input spec
(:mod:`medens.data.transforms`: ``x / max_value``, then mean/std). At 8 bits, 16-bit greyscale
(a common export of radiographs: PNG/TIFF modes ``I;16*``) is scaled over its full range,
``round(v * 255 / 65535)``; 32-bit integer images (mode ``I``) the same way when any value exceeds
255, else taken as 8-bit values. Pillow's own ``convert("L")`` clips such images (a full-range
16-bit gradient becomes almost all white), which is why nothing here uses it for them. At 16 bits
those values are kept as they are, and 8-bit images are widened exactly (``v * 257``, so 255 ->
65535). Other modes become grey (``L``) or RGB as Pillow converts them. DICOM and the volume
formats have their own mapping (:mod:`medens.data.dicom`, :mod:`medens.data.volumes`: a VOI
window onto the full 8- or 16-bit range); :func:`decode_bytes` dispatches encoded bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

DEPTHS = {8: np.uint8, 16: np.uint16}
"""Supported stored bit depths and their dtypes."""


@dataclass(frozen=True)
class Reading:
    """How files become stored pixels: the VOI ``window`` ``(center, width)`` for DICOM and the
    volume formats (``None``: a DICOM file's own, else the image's full range) and the stored
    bit ``depth`` (8 or 16). Built from the spec's ``data.window`` and ``data.bit_depth``, recorded
    in every model artifact, and applied to uploads by the endpoint."""

    window: tuple[float, float] | None = None
    depth: int = 8

    def __post_init__(self) -> None:
        if self.depth not in DEPTHS:
            raise ValueError(f"bit depth must be 8 or 16, got {self.depth!r}")

    @property
    def dtype(self) -> type:
        """``np.uint8`` or ``np.uint16``."""
        return DEPTHS[self.depth]

    @property
    def top(self) -> int:
        """The largest stored value: 255 or 65535."""
        return (1 << self.depth) - 1


def max_value(dtype: Any) -> float:
    """What ``x / max_value`` normalises stored pixels of ``dtype`` by: 65535 for uint16, else 255
    (uint8, and float arrays given in 8-bit units)."""
    return 65535.0 if np.dtype(dtype) == np.uint16 else 255.0


def widen(a: np.ndarray, depth: int) -> np.ndarray:
    """uint8 pixels at ``depth`` bits: unchanged at 8, ``v * 257`` (exact: 255 -> 65535) at 16."""
    if depth == 8 or a.dtype != np.uint8:
        return a
    return a.astype(np.uint16) * np.uint16(257)

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")

PREPROCESSING = {
    "version": 1,
    "images": "Pillow decode; 16-bit (I;16*, I above 255) scaled v * 255 / 65535; other modes converted to L or RGB",
    "dicom": "pydicom; modality LUT (rescale slope/intercept); VOI window from the file, else the image's full "
             "range; MONOCHROME1 inverted; 8-bit; colour and palette as RGB",
    "volumes": "2D NIfTI, NRRD, MetaImage through MONAI LoadImage, rows along the second voxel axis; the VOI "
               "window of data.window, else the image's full range; 8-bit",
    "resize": "Pillow bilinear on uint8 to the input size (files in the data stage, uploads at the endpoint)",
    "bit_depth": "data.bit_depth: 8 as above; 16 keeps 16-bit values, widens 8-bit ones v * 257, windows onto "
                 "0-65535 (DICOM, volumes), resizes on 16-bit (Pillow I;16) and normalises x / 65535",
}
"""How pixels reach a model, recorded in every model artifact (``model.json`` ``preprocessing``):
the endpoint applies the same functions, and a different version is reported when it loads."""
GREY_MODES = ("1", "L", "LA", "F", "I", *SIXTEEN_BIT_MODES)


def image_to_array(img: Any, channels: int | None = None, depth: int = 8) -> np.ndarray:
    """A loaded Pillow image as uint8 (``depth`` 8) or uint16 (``depth`` 16) ``(H, W, C)``.

    Args:
        img: the ``PIL.Image.Image`` (already ``load()``-ed or loadable).
        channels: 1 (grey) or 3 (RGB) to convert to; ``None`` keeps the image's own (grey modes
            give 1 channel, everything else 3).
        depth: the stored bit depth (see the module docstring).
    """
    if img.mode in SIXTEEN_BIT_MODES or img.mode == "I":
        a = np.asarray(img, dtype=np.float64)
        if a.ndim == 3:  # some plugins give (H, W, 1)
            a = a[..., 0]
        top = 65535.0 if img.mode in SIXTEEN_BIT_MODES or a.max(initial=0) > 255 else 255.0
        if depth == 16:
            grey = np.clip(np.rint(a * (65535.0 / top)), 0, 65535).astype(np.uint16)
        else:
            grey = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
        if channels == 3:
            return np.repeat(grey[..., None], 3, axis=-1)
        return grey[..., None]
    want = channels or (1 if img.mode in GREY_MODES else 3)
    target = "L" if want == 1 else "RGB"
    if img.mode != target:
        img = img.convert(target)
    a = np.asarray(img, dtype=np.uint8)
    return widen(a[..., None] if a.ndim == 2 else a, depth)


def resize_pixels(a: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """Resize uint8 or uint16 ``(H, W)`` or ``(H, W, C)`` to ``size`` x ``size`` with Pillow
    (bilinear, or nearest neighbour for masks); uint16 on Pillow's 16-bit mode, channel by channel."""
    from PIL import Image

    if a.shape[0] == size and a.shape[1] == size:
        return a
    method = Image.NEAREST if nearest else Image.BILINEAR
    if a.dtype == np.uint16 and a.ndim == 3:  # Pillow has no 16-bit RGB mode
        return np.stack([resize_pixels(a[..., c], size, nearest=nearest) for c in range(a.shape[-1])], axis=-1)
    squeeze = a.ndim == 3 and a.shape[-1] == 1
    im = Image.fromarray(a[..., 0] if squeeze else a)
    out = np.asarray(im.resize((size, size), method), dtype=a.dtype)
    return out[..., None] if squeeze else out


def to_channels(a: np.ndarray, channels: int) -> np.ndarray:
    """uint8 or uint16 ``(H, W, C)`` with ``C`` 1 or 3 -> ``channels`` channels (grey repeated; RGB
    to grey by Pillow's ITU-R 601 luma, as :func:`image_to_array` converts; the same weights,
    rounded, at 16 bits)."""
    from PIL import Image

    if a.shape[-1] == channels:
        return a
    if a.shape[-1] == 1 and channels == 3:
        return np.repeat(a, 3, axis=-1)
    if a.shape[-1] == 3 and channels == 1 and a.dtype == np.uint16:
        grey = a.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return np.clip(np.rint(grey), 0, 65535).astype(np.uint16)[..., None]
    if a.shape[-1] == 3 and channels == 1:
        return np.asarray(Image.fromarray(a).convert("L"), dtype=np.uint8)[..., None]
    raise ValueError(f"cannot convert {a.shape[-1]}-channel pixels to {channels} channels")


def decode_bytes(data: bytes, where: str = "image", reading: Reading | None = None) -> np.ndarray:
    """Encoded bytes (PNG, JPEG, TIFF, ..., a DICOM file, a 2D NIfTI/NRRD/MetaImage file) -> pixels
    ``(H, W, C)`` by the same mapping a file of those bytes gets in the data stage."""
    from PIL import Image

    from medens.data.dicom import dicom_pixels, is_dicom_bytes
    from medens.data.volumes import slice_pixels, sniff_volume_bytes

    r = reading or Reading()
    if is_dicom_bytes(data):
        return dicom_pixels(data, where, r.window, r.depth)
    suffix = sniff_volume_bytes(data)
    if suffix is not None:
        return slice_pixels(data, where, suffix, r.window, r.depth)
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return image_to_array(im, depth=r.depth)
