"""DICOM images (pydicom, with pylibjpeg's JPEG / JPEG-LS / JPEG 2000 decoders) -> pixel values.

:func:`read_dicom` returns the stored pixels with the modality transform applied (rescale slope
and intercept, or a modality LUT: CT in Hounsfield units) as float64, exactly pydicom's
``apply_modality_lut(ds.pixel_array, ds)``, plus what the display mapping needs. A file that
cannot be used is refused with a :class:`DicomError` naming the file and the reason: no pixel
data, a transfer syntax no installed decoder handles (with the package that would decode it), a
multi-frame object (a volume or a cine loop, not one 2D image), an unsupported photometric
interpretation.

:func:`dicom_to_pixels` is the display mapping medens trains and serves on: the VOI window from
the file's own Window Center / Width (the first, where several are given) or, without one, the
image's full range, then MONOCHROME1 inverted (0 is white there), rounded to 8 (or 16) bits. Colour
images (RGB, YBR converted to RGB by pydicom, palette colour through its LUT) are taken as 8-bit
RGB. Both the data stage (``.dcm`` files in a folder or manifest) and the endpoint (uploads whose
bytes carry the ``DICM`` preamble) call :func:`dicom_pixels`, so the model sees the same pixels.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg",  # JPEG extended
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg",  # JPEG lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "pylibjpeg-libjpeg",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pylibjpeg-libjpeg",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.201": "pylibjpeg-openjpeg",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202": "pylibjpeg-openjpeg",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203": "pylibjpeg-openjpeg",  # HTJ2K
}
"""Transfer syntax UID -> the registry package whose pylibjpeg plugin decodes it."""

GREY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")


class DicomError(ValueError):
    """A DICOM object medens cannot use; the message names the file and the reason."""


@dataclass
class DicomImage:
    """One 2D DICOM image: ``values`` after the modality transform (float64 ``(H, W)``; colour:
    uint8 ``(H, W, 3)``) and the tags the display mapping and the data stage use."""

    values: np.ndarray
    photometric: str
    window: tuple[float, float] | None
    transfer_syntax: str
    tags: dict[str, Any] = field(default_factory=dict)


def is_dicom_bytes(data: bytes) -> bool:
    """Whether ``data`` is a DICOM Part 10 file (128-byte preamble, then ``DICM``)."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def has_dicom_preamble(path: str | os.PathLike) -> bool:
    """Whether the file at ``path`` starts as a DICOM Part 10 file (reads its first 132 bytes only)."""
    try:
        with Path(path).open("rb") as f:
            return is_dicom_bytes(f.read(132))
    except OSError:
        return False


def is_dicom_file(path: str | os.PathLike) -> bool:
    """A ``.dcm``/``.dicom`` name, or any other file whose content has the DICOM preamble."""
    return Path(path).suffix.lower() in (".dcm", ".dicom") or has_dicom_preamble(path)


def _first(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str | bytes) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _syntax(ds: Any) -> tuple[str, str]:
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return (str(uid), getattr(uid, "name", str(uid))) if uid is not None else ("", "unknown")


def read_dicom(source: str | os.PathLike | bytes, where: str | None = None) -> DicomImage:
    """Read one 2D DICOM image (a path or the file's bytes).

    Raises:
        DicomError: naming ``where`` (default: the path) and the reason.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    name = where or (str(source) if not isinstance(source, bytes) else "DICOM bytes")
    try:
        ds = pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else source)
    except InvalidDicomError as e:
        raise DicomError(f"{name}: not a DICOM file ({e})") from e
    except Exception as e:  # truncated or malformed files raise assorted errors
        raise DicomError(f"{name}: unreadable DICOM ({type(e).__name__}: {e})") from e
    uid, syntax = _syntax(ds)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomError(_no_pixels(ds, name))
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise DicomError(f"{name}: invalid NumberOfFrames {ds.get('NumberOfFrames')!r}") from None
    if frames > 1:
        raise DicomError(f"{name}: multi-frame object ({frames} frames): a volume or cine loop, not one 2D image")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in GREY + COLOUR:
        raise DicomError(f"{name}: photometric interpretation {photometric!r} is not supported "
                         f"(grey {', '.join(GREY)} or colour {', '.join(COLOUR)})")
    try:
        pixels = ds.pixel_array
    except Exception as e:
        short = _truncated(ds, uid, name, frames)
        if short:
            raise DicomError(short) from e
        package = DECODER_PACKAGES.get(uid)
        hint = (f"; the registry package {package} decodes it (pip install {package})" if package
                else "; no installed pylibjpeg plugin handles it")
        raise DicomError(f"{name}: cannot decode pixel data in transfer syntax {syntax} ({uid}): "
                         f"{type(e).__name__}: {e}{hint}") from e
    tags = {k: str(ds.get(k)) for k in ("Modality", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
                                        "BitsStored", "Rows", "Columns") if ds.get(k) is not None}
    if photometric in COLOUR:
        rgb = apply_color_lut(pixels, ds) if photometric == "PALETTE COLOR" else pixels
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise DicomError(f"{name}: colour image of shape {rgb.shape}, expected (rows, columns, 3)")
        if rgb.dtype != np.uint8:  # 16-bit palettes and colour: scale the full range
            rgb = np.clip(np.rint(rgb.astype(np.float64) * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return DicomImage(rgb, "RGB", None, syntax, tags)
    if pixels.ndim != 2:
        raise DicomError(f"{name}: grey image of shape {pixels.shape}, expected (rows, columns)")
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    window = (center, width) if center is not None and width is not None and width > 0 else None
    return DicomImage(values, photometric, window, syntax, tags)


def _no_pixels(ds: Any, name: str) -> str:
    sop = ds.get("SOPClassUID")
    return (f"{name}: no pixel data (modality {ds.get('Modality', '?')}, "
            f"SOP class {getattr(sop, 'name', sop) if sop is not None else '?'}): the DICOM object holds no image")


UNCOMPRESSED = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")
"""Implicit and explicit VR little endian, explicit VR big endian: pixel data of a known length."""


def _truncated(ds: Any, uid: str, name: str, frames: int) -> str | None:
    """The message for an uncompressed image with fewer pixel bytes than its header describes (a
    truncated or corrupt file), else ``None``."""
    if uid not in UNCOMPRESSED or "PixelData" not in ds:
        return None
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        return None  # pydicom's own message says what the header lacks
    expected = (rows * cols * samples * frames * bits + 7) // 8
    actual = len(ds.PixelData)
    if actual >= expected:
        return None
    return (f"{name}: truncated or corrupt DICOM file: its pixel data holds {actual} bytes where "
            f"{rows} x {cols} x {samples} sample(s) at {bits} bits need {expected}")


def dicom_header(data: bytes, where: str) -> tuple[int, int]:
    """Rows and columns from a DICOM file's header, without decoding its pixels (the endpoint
    checks the size first). An object without an image (an RT plan, a structured report) is
    refused as having no pixel data."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as e:
        raise DicomError(f"{where}: unreadable DICOM header ({type(e).__name__}: {e})") from e
    if "Rows" not in ds or "Columns" not in ds:
        if "SOPClassUID" in ds:  # a whole object that is not an image (an RT plan, a report)
            raise DicomError(_no_pixels(ds, where))
        raise DicomError(f"{where}: unreadable DICOM header (no Rows, Columns or SOP class: a truncated file?)")
    try:
        return int(ds.Rows), int(ds.Columns)
    except (TypeError, ValueError) as e:
        raise DicomError(f"{where}: unreadable DICOM header ({type(e).__name__}: {e})") from e


def window_to_pixels(values: np.ndarray, window: tuple[float, float] | None, depth: int = 8) -> np.ndarray:
    """Physical values ``(H, W)`` -> ``(H, W, 1)`` pixels at ``depth`` bits (uint8 or uint16):
    linear from ``center - width / 2`` (0) to ``center + width / 2`` (255 or 65535), clipped,
    rounded; without a window, the image's full range (min -> 0, max -> top; a constant image ->
    0). The mapping of DICOM and of NIfTI, NRRD and MetaImage slices alike
    (:mod:`medens.data.volumes`)."""
    top, dtype = (65535.0, np.uint16) if depth == 16 else (255.0, np.uint8)
    v = np.asarray(values, dtype=np.float64)
    if window is None:
        lo, hi = float(v.min(initial=0.0)), float(v.max(initial=0.0))
    else:
        c, w = window
        lo, hi = c - w / 2.0, c + w / 2.0
    scaled = np.zeros_like(v) if hi <= lo else (v - lo) / (hi - lo)
    return np.rint(np.clip(scaled, 0.0, 1.0) * top).astype(dtype)[..., None]


def dicom_to_pixels(image: DicomImage, window: tuple[float, float] | None = None, depth: int = 8) -> np.ndarray:
    """The display mapping at ``depth`` bits: ``(H, W, 1)`` (grey) or ``(H, W, 3)`` (colour).

    Grey: the window ``(center, width)`` given, else the file's, else the image's full range;
    values map linearly from ``center - width / 2`` (0) to ``center + width / 2`` (255, or 65535
    at 16 bits), clipped; MONOCHROME1 is inverted afterwards. Colour is 8-bit RGB, widened
    ``v * 257`` at 16 bits.
    """
    if image.photometric == "RGB":
        return image.values.astype(np.uint16) * np.uint16(257) if depth == 16 else image.values
    out = window_to_pixels(image.values, window or image.window, depth)
    if image.photometric == "MONOCHROME1":
        out = out.dtype.type((1 << depth) - 1) - out
    return out


def dicom_pixels(source: str | os.PathLike | bytes, where: str | None = None,
                 window: tuple[float, float] | None = None, depth: int = 8) -> np.ndarray:
    """Pixels of a DICOM file or its bytes at ``depth`` bits: :func:`read_dicom`, then
    :func:`dicom_to_pixels` (``window``: the spec's ``data.window``, else the file's own)."""
    return dicom_to_pixels(read_dicom(source, where), window, depth)
