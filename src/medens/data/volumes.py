"""Volumes (NIfTI, NRRD, MetaImage, a DICOM series folder) and 2D slices through MONAI's ``LoadImage``.

:func:`read_volume` returns the voxel array as stored (no resampling), the voxel spacing in mm,
the affine in MONAI's RAS world convention and the orientation codes (``"LAS"``: the direction
each array axis increases towards, nibabel's ``aff2axcodes``). Readers: nibabel for NIfTI
(``.nii``, ``.nii.gz``), pynrrd for NRRD (``.nrrd``, ``.nhdr``; its LPS space converted to RAS),
ITK (``itk-core`` + ``itk-io``) for MetaImage (``.mha``, ``.mhd``), pydicom for a folder of DICOM
slices. :func:`reorient` turns a volume to the codes asked for (MONAI's ``Orientation``), so
volumes from different scanners line up.

2D images stored in these formats (a NIfTI, NRRD or MetaImage file with two spatial axes, or three
with one slice) are images like any PNG: :func:`read_slice` gives their values as ``(rows,
columns)`` in ITK's array order (rows along the second voxel axis, columns along the first: what
``itk.GetArrayFromImage`` and SimpleITK give; no reorientation), and :func:`slice_pixels` maps them
to 8 or 16 bits with the VOI window of the spec (``data.window``) or, without one, the image's full range
(:func:`medens.data.dicom.window_to_pixels`, the DICOM mapping). The data stage (files in a folder
or manifest) and the endpoint (uploads recognised by :func:`sniff_volume_bytes`) both call it.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

READERS = {".nii": "NibabelReader", ".nii.gz": "NibabelReader", ".nrrd": "NrrdReader", ".nhdr": "NrrdReader",
           ".mha": "ITKReader", ".mhd": "ITKReader"}
"""File-name ending -> the MONAI reader ``LoadImage`` is given."""


@dataclass
class Volume:
    """A volume: ``array`` ``(X, Y, Z[, T])`` float32, ``spacing`` of the spatial axes in mm,
    ``affine`` (4 x 4, RAS world), ``orientation`` codes of the spatial axes, ``reader``."""

    array: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray
    orientation: str
    reader: str


def _reader_for(path: Path) -> str:
    if path.is_dir():
        return "PydicomReader"
    suffix = volume_suffix(path)
    if suffix is not None:
        return READERS[suffix]
    raise ValueError(f"{path}: not a volume medens reads (NIfTI .nii/.nii.gz, NRRD .nrrd/.nhdr, MetaImage "
                     f".mha/.mhd, or a folder of DICOM slices)")


def volume_suffix(path: str | os.PathLike) -> str | None:
    """The ending of :data:`READERS` that ``path``'s name has (``".nii.gz"``, ``".mha"``, ...), else ``None``."""
    name = Path(path).name.lower()
    return next((suffix for suffix in READERS if name.endswith(suffix)), None)


def _volume(array: np.ndarray, affine: np.ndarray, reader: str) -> Volume:
    """A :class:`Volume` with spacing (the affine's column norms) and orientation codes from ``affine``."""
    import nibabel as nib

    affine = np.asarray(affine, dtype=np.float64)
    spacing = tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    return Volume(np.asarray(array, dtype=np.float32), spacing, affine, "".join(nib.aff2axcodes(affine)), reader)


def read_volume(path: str | os.PathLike) -> Volume:
    """Read one volume with MONAI's ``LoadImage`` (the reader chosen by the file name).

    Raises:
        ValueError: naming the file and the reason (unknown format, unreadable file, not 3D or 4D).
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p}: no such file or folder")
    reader = _reader_for(p)
    array, affine = _load(p, reader, str(p))
    if array.ndim not in (3, 4):
        raise ValueError(f"{p}: a volume must have 3 or 4 axes, got shape {array.shape}")
    return _volume(array, affine, reader)


CODEC_NOTICE_LOGGER = "monai.data.nvimgcodec_pydicom_plugin"
"""MONAI's logger that warns "nvImageCodec is not available; skipping pydicom decoder plugin
registration." each time ``LoadImage`` is built on a machine without nvImageCodec (every read)."""


class _OncePerProcess(logging.Filter):
    """Lets each distinct message through once in this process."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def _codec_notice_once() -> None:
    """MONAI's nvImageCodec notice at most once per process (installed on first read, not at import)."""
    logger = logging.getLogger(CODEC_NOTICE_LOGGER)
    if not any(isinstance(f, _OncePerProcess) for f in logger.filters):
        logger.addFilter(_OncePerProcess())


def _load(p: Path, reader: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``LoadImage`` with ``reader``: the array (float32, MONAI's axis order) and its RAS affine."""
    from monai.transforms import LoadImage

    _codec_notice_once()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img, meta = LoadImage(image_only=False, reader=reader)(str(p))
    except Exception as e:  # the readers raise assorted errors on corrupt files
        # MONAI appends every reader's traceback to its message: the first line says what failed
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ValueError(f"{where}: unreadable {reader.removesuffix('Reader')} file "
                         f"({type(e).__name__}: {first})") from e
    return np.asarray(img, dtype=np.float32), np.asarray(meta["affine"], dtype=np.float64)


def read_slice(source: str | os.PathLike | bytes, where: str | None = None, suffix: str | None = None) -> np.ndarray:
    """One 2D image stored as NIfTI, NRRD or MetaImage: float64 ``(rows, columns)`` values.

    ``source`` is a path, or a file's bytes with its ``suffix`` (see :func:`sniff_volume_bytes`).
    Three spatial axes are accepted when one of them has a single slice.

    Raises:
        ValueError: naming ``where`` (default: the path) and the reason: unreadable, a volume of
            several slices, or more axes.
    """
    if isinstance(source, bytes):
        import tempfile

        if suffix not in READERS:
            raise ValueError(f"{where or 'bytes'}: not NIfTI, NRRD or MetaImage bytes")
        with tempfile.TemporaryDirectory(prefix="medens-slice-") as tmp:
            path = Path(tmp) / f"upload{suffix}"
            path.write_bytes(source)
            return read_slice(path, where or f"{suffix} bytes")
    p = Path(source)
    name = where or str(p)
    reader = READERS.get(volume_suffix(p) or "")
    if reader is None:
        raise ValueError(f"{name}: not a NIfTI, NRRD or MetaImage file name ({', '.join(READERS)})")
    array, _ = _load(p, reader, name)
    if array.ndim == 3 and 1 in array.shape:
        array = array.squeeze(axis=array.shape.index(1))
    if array.ndim != 2:
        raise ValueError(f"{name}: an array of shape {tuple(array.shape)}, not one 2D image; medens classifies "
                         f"2D images: save each slice of a volume as its own file")
    return np.ascontiguousarray(array.T, dtype=np.float64)


def slice_pixels(source: str | os.PathLike | bytes, where: str | None = None, suffix: str | None = None,
                 window: tuple[float, float] | None = None, depth: int = 8) -> np.ndarray:
    """``(rows, columns, 1)`` pixels at ``depth`` bits of a 2D NIfTI, NRRD or MetaImage image:
    :func:`read_slice`, then the spec's VOI ``window`` or, without one, the image's full range."""
    from medens.data.dicom import window_to_pixels

    return window_to_pixels(read_slice(source, where, suffix), window, depth)


def sniff_volume_bytes(data: bytes) -> str | None:
    """The file ending (``".nii"``, ``".nii.gz"``, ``".nrrd"``, ``".mha"``) of an encoded NIfTI-1/2
    (plain or gzipped), NRRD or single-file MetaImage, recognised by its magic bytes; else ``None``."""
    if data[:2] == b"\x1f\x8b":  # gzip: a .nii.gz when what it inflates starts with a NIfTI header
        try:
            return ".nii.gz" if _is_nifti(_inflate_head(data)) else None
        except ValueError:
            return None
    if _is_nifti(data):
        return ".nii"
    if data[:7] == b"NRRD000":
        return ".nrrd"
    head = data[:4096]
    if head.startswith((b"ObjectType", b"NDims")) and b"ElementDataFile = LOCAL" in head:
        return ".mha"
    return None


def _inflate_head(data: bytes, n: int = 540) -> bytes:
    """The first ``n`` bytes gzip ``data`` inflates to (a NIfTI-2 header is 540 bytes), without
    inflating the rest."""
    import zlib

    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[:1 << 16], n)
    except zlib.error as e:
        raise ValueError(f"corrupt gzip stream ({e})") from e


def _is_nifti(head: bytes) -> bool:
    return (len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00")) or head[4:8] == b"n+2\x00"


def slice_shape(data: bytes, suffix: str, where: str) -> tuple[int, int]:
    """``(rows, columns)`` of an encoded 2D slice from its header alone (the endpoint checks the size
    before it decodes pixels); a volume of several slices gives its first two axes."""
    import io

    try:
        if suffix in (".nii", ".nii.gz"):
            import nibabel as nib

            head = _inflate_head(data) if suffix == ".nii.gz" else data[:540]
            header_class = nib.Nifti2Header if head[4:8] == b"n+2\x00" else nib.Nifti1Header
            shape = header_class.from_fileobj(io.BytesIO(head)).get_data_shape()
        elif suffix == ".nrrd":
            import nrrd

            shape = tuple(int(v) for v in nrrd.read_header(io.BytesIO(data))["sizes"])
        else:
            text = data[:4096].decode("latin-1")
            line = next(ln for ln in text.splitlines() if ln.replace(" ", "").startswith("DimSize="))
            shape = tuple(int(v) for v in line.split("=", 1)[1].split())
    except Exception as e:
        raise ValueError(f"{where}: unreadable {suffix} header ({type(e).__name__}: {e})") from e
    if len(shape) < 2:
        raise ValueError(f"{where}: a {suffix} image needs two spatial axes, got shape {shape}")
    return int(shape[1]), int(shape[0])  # voxel axes (x, y): rows follow y


def reorient(volume: Volume, codes: str = "RAS") -> Volume:
    """The volume with its axes permuted and flipped to ``codes`` (e.g. ``RAS``), affine updated."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    t = MetaTensor(torch.from_numpy(np.ascontiguousarray(volume.array))[None], affine=torch.as_tensor(volume.affine))
    out = Orientation(axcodes=codes, labels=(("L", "R"), ("P", "A"), ("I", "S")))(t)
    return _volume(out[0], out.affine, volume.reader)
