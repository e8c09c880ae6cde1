"""The input codec: request instances -> uint8 images ``(H, W, C)``, every problem a named 400.

Accepted images (any size up to ``max_pixels``, grey or RGB):

- encoded PNG/JPEG (any format Pillow reads), DICOM, NIfTI, NRRD or MetaImage as base64 text (v1
  instance, ``{"b64": ...}``, a ``data:image/...;base64,`` URI, or a v2 ``BYTES`` element) or raw
  bytes (a v2 ``BYTES`` element in the binary extension or gRPC, or a whole v1 body with a raw
  content type: :func:`decode_raw`);
- arrays of pixel intensities in [0, 255]: a v1 nested list ``(H, W)`` or ``(H, W, C)``, or a v2
  ``FP32``/``FP64``/``UINT8`` tensor ``(N, H, W)`` or ``(N, H, W, C)``, with ``C`` 1 or 3.

Colour images given to a grey model are converted with ITU-R 601 luma, grey images given to an
RGB model are repeated, 16-bit images are scaled to 8 bits; everything else the artifact's input
spec does (resize, normalise) happens in :func:`medens.data.transforms.preprocess`.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from medens.data.decode import Reading

ARRAY_DATATYPES = {"FP32": np.float32, "FP64": np.float64, "UINT8": np.uint8, "FP16": np.float16}
CHANNELS = (1, 3)


class PixelBudget:
    """Pixels one request may still decode (``max_request_pixels``): checked before each image's
    pixels are decoded, so a small body of many huge images cannot exhaust memory."""

    def __init__(self, limit: int | None) -> None:
        self.left = limit

    def take(self, pixels: int, where: str) -> None:
        if self.left is None:
            return
        if pixels > self.left:
            raise InputError("request_too_large", f"{where}: the request's images hold more pixels than the limit "
                                                  f"per request (MEDENS_SERVE_MAX_REQUEST_PIXELS); send fewer or "
                                                  f"smaller images")
        self.left -= pixels


class InputError(ValueError):
    """A request problem: ``reason`` is a short code for the error counter, the message names it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def decode_base64(text: str, where: str) -> bytes:
    """Base64 (an optional ``data:...;base64,`` prefix is dropped). Line breaks and other
    whitespace are ignored, as RFC 2045 decoders do (``base64`` prints 76-column lines by
    default); any other character outside the alphabet is refused."""
    if text.startswith("data:"):
        head, sep, text = text.partition(",")
        if not sep or ";base64" not in head:
            raise InputError("invalid_base64", f"{where}: a data URI must be ';base64,' encoded")
    text = "".join(text.split())
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError("invalid_base64", f"{where}: invalid base64 ({e})") from e
    if not data:
        raise InputError("empty_image", f"{where}: the encoded image is empty")
    return data


def decode_image_bytes(data: bytes, where: str, max_pixels: int, budget: PixelBudget | None = None, *,
                       reading: Reading | None = None) -> np.ndarray:
    """Encoded image bytes -> pixels ``(H, W, C)`` at the bit depth of ``reading`` (the model's:
    uint8 by default); the size is checked before pixels are decoded. A DICOM file (``DICM``
    preamble) is decoded as the data stage decodes ``.dcm`` files, with the VOI window the model
    was trained with (``None``: the file's own); a 2D NIfTI (plain or gzipped), NRRD or MetaImage
    file (recognised by its magic bytes) as the data stage decodes such files, with the same
    window (``None``: the image's full range)."""
    from PIL import Image, UnidentifiedImageError

    from medens.data.dicom import is_dicom_bytes
    from medens.data.volumes import sniff_volume_bytes

    reading = reading or Reading()
    if is_dicom_bytes(data):
        return _decode_dicom(data, where, max_pixels, budget, reading)
    suffix = sniff_volume_bytes(data)
    if suffix is not None:
        return _decode_slice(data, suffix, where, max_pixels, budget, reading)

    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # Pillow's own guard, far above ours
        raise InputError("image_too_large", f"{where}: {e} (the limit here is {max_pixels} pixels per image)") from e
    except UnidentifiedImageError as e:
        raise InputError("not_an_image", f"{where}: the bytes are not an image Pillow can read "
                                         f"({len(data)} bytes starting {data[:8]!r})") from e
    except Exception as e:  # malformed headers raise assorted errors inside Pillow
        raise InputError("not_an_image", f"{where}: unreadable image header ({type(e).__name__}: {e})") from e
    w, h = img.size
    _check_pixels(h, w, where, max_pixels)
    if budget is not None:
        budget.take(h * w, where)
    try:
        img.load()
    except Exception as e:
        raise InputError("corrupt_image", f"{where}: the {img.format} image is truncated or corrupt "
                                          f"({type(e).__name__}: {e})") from e
    from medens.data.decode import image_to_array

    return image_to_array(img, depth=reading.depth)  # the intensities training got from the same file


def _decode_dicom(data: bytes, where: str, max_pixels: int, budget: PixelBudget | None,
                  reading: Reading) -> np.ndarray:
    from medens.data.dicom import dicom_header, dicom_to_pixels, read_dicom

    return _decode_sized(where, max_pixels, budget, "bad_dicom", lambda: dicom_header(data, where),
                         lambda: dicom_to_pixels(read_dicom(data, where), reading.window, reading.depth))


def _decode_slice(data: bytes, suffix: str, where: str, max_pixels: int, budget: PixelBudget | None,
                  reading: Reading) -> np.ndarray:
    from medens.data.volumes import slice_pixels, slice_shape

    return _decode_sized(where, max_pixels, budget, "bad_volume", lambda: slice_shape(data, suffix, where),
                         lambda: slice_pixels(data, where, suffix, reading.window, reading.depth))


def _decode_sized(where: str, max_pixels: int, budget: PixelBudget | None, reason: str,
                  shape: Callable[[], tuple[int, int]], decode: Callable[[], np.ndarray]) -> np.ndarray:
    """``decode()`` once ``shape()`` (rows, columns from the header) is within the limits; the
    readers' ``ValueError`` (``DicomError`` included) becomes a 400 with ``reason``."""
    try:
        rows, cols = shape()
    except ValueError as e:
        raise InputError(reason, str(e)) from e
    _check_pixels(rows, cols, where, max_pixels)
    if budget is not None:
        budget.take(rows * cols, where)
    try:
        return decode()
    except ValueError as e:
        raise InputError(reason, str(e)) from e


def _check_pixels(h: int, w: int, where: str, max_pixels: int) -> None:
    if h < 1 or w < 1:
        raise InputError("empty_image", f"{where}: the image has size {w}x{h}")
    if h * w > max_pixels:
        raise InputError("image_too_large", f"{where}: {w}x{h} = {h * w} pixels is over the limit of "
                                            f"{max_pixels} pixels per image")


def check_array_image(a: np.ndarray, where: str, max_pixels: int, budget: PixelBudget | None = None) -> np.ndarray:
    """A numeric ``(H, W)`` or ``(H, W, C)`` array of intensities in [0, 255] -> float32 ``(H, W, C)``."""
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise InputError("wrong_rank", f"{where}: an image array must be (H, W) or (H, W, C), got rank "
                                       f"{a.ndim} with shape {tuple(a.shape)}")
    if a.shape[-1] not in CHANNELS:
        raise InputError("wrong_channels", f"{where}: {a.shape[-1]} channels in shape {tuple(a.shape)}; "
                                           f"images must have 1 (grey) or 3 (RGB) channels, last axis")
    _check_pixels(a.shape[0], a.shape[1], where, max_pixels)
    if budget is not None:
        budget.take(a.shape[0] * a.shape[1], where)
    if not np.isfinite(a).all():
        raise InputError("non_finite", f"{where}: the array contains NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 or hi > 255:
        raise InputError("out_of_range", f"{where}: intensities must be in [0, 255], got [{lo:g}, {hi:g}]")
    return a.astype(np.float32, copy=False)


def _nested_array(value: list, where: str, max_pixels: int, budget: PixelBudget | None = None) -> np.ndarray:
    # a bound on the element count before numpy builds anything (rows x cols x channels)
    rows = len(value)
    cols = len(value[0]) if rows and isinstance(value[0], list) else 0
    if rows * max(cols, 1) > max_pixels:
        raise InputError("image_too_large", f"{where}: {rows}x{cols} array is over the limit of {max_pixels} pixels")
    try:
        a = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError, OverflowError) as e:
        kind = "ragged_array" if "inhomogeneous" in str(e) or "sequence" in str(e) else "not_numeric"
        raise InputError(kind, f"{where}: not a rectangular numeric array ({e})") from e
    return check_array_image(a, where, max_pixels, budget)


def decode_instance(value: Any, where: str, max_pixels: int, budget: PixelBudget | None = None, *,
                    reading: Reading | None = None) -> np.ndarray:
    """One v1 instance: base64 text, ``{"b64": text}``, raw bytes or a nested list."""
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise InputError("bad_instance", f"{where}: an object instance must be {{\"b64\": \"<base64 image>\"}}, "
                                             f"got keys {sorted(value)}")
        value = value["b64"]
    if isinstance(value, str):
        return decode_image_bytes(decode_base64(value, where), where, max_pixels, budget, reading=reading)
    if isinstance(value, bytes | bytearray):
        if not value:
            raise InputError("empty_image", f"{where}: the encoded image is empty")
        return decode_image_bytes(bytes(value), where, max_pixels, budget, reading=reading)
    if isinstance(value, list):
        if not value:
            raise InputError("empty_image", f"{where}: the image array is empty")
        return _nested_array(value, where, max_pixels, budget)
    raise InputError("bad_instance", f"{where}: expected a base64 image, {{\"b64\": ...}} or a nested list "
                                     f"of intensities, got {type(value).__name__}")


RAW_CONTENT_TYPES = ("application/dicom",)


def is_raw_upload(headers: dict[str, str] | None) -> bool:
    """Whether a request body is one encoded image file (``Content-Type: application/dicom`` or
    ``image/*``) rather than JSON. (``application/octet-stream`` is not: KServe's v1 route reads
    it as JSON, and v2 as the binary data extension.)"""
    ctype = (headers or {}).get("content-type", "").split(";")[0].strip().lower()
    return ctype in RAW_CONTENT_TYPES or ctype.startswith("image/")


def decode_raw(body: bytes, max_pixels: int, max_request_pixels: int | None = None, *,
               reading: Reading | None = None) -> list[np.ndarray]:
    """A raw request body, one encoded image file (DICOM, PNG, ...) -> one image, decoded and named
    exactly as the same file sent base64 as the first v1 instance (``instances[0]``)."""
    return [decode_instance(bytes(body), "instances[0]", max_pixels, PixelBudget(max_request_pixels),
                            reading=reading)]


def bytes_elements(part: bytes, where: str) -> list[bytes]:
    """The elements of a binary ``BYTES`` tensor (each a little-endian uint32 length, then that
    many bytes), as the v2 binary data extension and gRPC ``raw_input_contents`` carry them."""
    out: list[bytes] = []
    at = 0
    while at < len(part):
        if at + 4 > len(part):
            raise InputError("bad_binary", f"{where}: malformed binary BYTES data: {len(part) - at} bytes left "
                                           f"where element {len(out)}'s 4-byte length was expected")
        n = struct.unpack_from("<I", part, at)[0]
        at += 4
        if at + n > len(part):
            raise InputError("bad_binary", f"{where}: malformed binary BYTES data: element {len(out)} declares "
                                           f"{n} bytes but {len(part) - at} remain")
        out.append(part[at:at + n])
        at += n
    return out


def raw_tensor(name: str, datatype: str, raw: bytes) -> np.ndarray:
    """The flat elements of one tensor's binary data (gRPC ``raw_input_contents``), for
    :func:`decode_v2_input` to check against the shape as it checks JSON ``data``."""
    where = f"input {name!r}"
    dt = str(datatype).upper()
    if dt == "BYTES":
        return np.array(bytes_elements(bytes(raw), where) or [], dtype=object)
    if dt not in ARRAY_DATATYPES:
        return np.zeros(0)  # decode_v2_input names the datatype
    dtype = np.dtype(ARRAY_DATATYPES[dt]).newbyteorder("<")
    if len(raw) % dtype.itemsize:
        raise InputError("shape_mismatch", f"{where}: {len(raw)} bytes of binary data are not a whole number of "
                                           f"{dt} elements ({dtype.itemsize} bytes each)")
    return np.frombuffer(raw, dtype=dtype)


def check_count(n: int, max_instances: int, what: str = "instances") -> None:
    if n == 0:
        raise InputError("empty_request", f"no {what}: send at least one image")
    if n > max_instances:
        raise InputError("batch_too_large", f"{n} {what} is over the limit of {max_instances} per request")


def decode_v1(body: Any, max_instances: int, max_pixels: int, max_request_pixels: int | None = None, *,
              reading: Reading | None = None) -> tuple[list[np.ndarray], dict]:
    """A v1 body ``{"instances": [...], "parameters": {...}}`` -> images and request parameters.

    A body KServe left undecoded (a JSON content type it does not list, e.g. with a charset
    parameter) is parsed here."""
    if isinstance(body, bytes | bytearray | str):
        import orjson

        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise InputError("invalid_json", f"the request body is not JSON ({e})") from e
    if not isinstance(body, dict):
        raise InputError("bad_request", f"the request body must be a JSON object, got {type(body).__name__}")
    if "instances" not in body:
        raise InputError("bad_request", f"the request has no 'instances' (keys: {sorted(body)})")
    instances = body["instances"]
    if not isinstance(instances, list):
        raise InputError("bad_request", f"'instances' must be a list, got {type(instances).__name__}")
    check_count(len(instances), max_instances)
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise InputError("bad_request", "'parameters' must be an object")
    budget = PixelBudget(max_request_pixels)
    images = [decode_instance(v, f"instances[{i}]", max_pixels, budget, reading=reading)
              for i, v in enumerate(instances)]
    return images, params


def decode_v2_input(name: str, datatype: str, shape: list[int], data: Any, max_instances: int,
                    max_pixels: int, max_request_pixels: int | None = None, *,
                    reading: Reading | None = None) -> list[np.ndarray]:
    """One v2 input tensor -> images. ``data`` is a flat list (JSON), a numpy array or raw byte strings."""
    where = f"input {name!r}"
    dt = str(datatype).upper()
    shape = [int(s) for s in shape]
    if any(s < 0 for s in shape):
        raise InputError("bad_shape", f"{where}: negative dimension in shape {shape}")
    if dt == "BYTES":
        items = list(np.asarray(data, dtype=object).reshape(-1)) if not isinstance(data, list) else _flatten(data)
        n = math.prod(shape) if shape else 0
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise InputError("bad_shape", f"{where}: BYTES images need shape [N] or [N, 1], got {shape}")
        if n != len(items):
            raise InputError("shape_mismatch", f"{where}: shape {shape} holds {n} elements but {len(items)} were sent")
        check_count(n, max_instances, "images")
        budget = PixelBudget(max_request_pixels)
        return [decode_instance(v, f"{where}[{i}]", max_pixels, budget, reading=reading) for i, v in enumerate(items)]
    if dt not in ARRAY_DATATYPES:
        raise InputError("wrong_datatype", f"{where}: datatype {datatype!r} is not supported; send BYTES "
                                           f"(encoded images) or one of {', '.join(ARRAY_DATATYPES)} (intensities)")
    if len(shape) not in (3, 4):
        raise InputError("wrong_rank", f"{where}: an image tensor must be [N, H, W] or [N, H, W, C], got {shape}")
    check_count(shape[0], max_instances, "images")
    budget = PixelBudget(max_request_pixels)
    for i in range(shape[0]):
        _check_pixels(shape[1], shape[2], f"{where}[{i}]", max_pixels)
        budget.take(shape[1] * shape[2], f"{where}[{i}]")
    if isinstance(data, np.ndarray):
        flat = data.reshape(-1)
    else:
        try:
            flat = np.asarray(_flatten(data) if isinstance(data, list) else data, dtype=np.float64)
        except (ValueError, TypeError, OverflowError) as e:
            raise InputError("not_numeric", f"{where}: {dt} data must be numbers ({e})") from e
    if flat.ndim != 1:
        flat = flat.reshape(-1)
    if flat.size != math.prod(shape):
        raise InputError("shape_mismatch", f"{where}: shape {shape} holds {math.prod(shape)} elements but "
                                           f"{flat.size} were sent")
    arr = flat.astype(np.float64, copy=False).reshape(shape)
    return [check_array_image(arr[i], f"{where}[{i}]", max_pixels) for i in range(shape[0])]


def _flatten(data: list) -> list:
    out: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out
