"""Volumes (NIfTI, NRRD, a DICOM series folder) through MONAI's ``LoadImage``.

:func:`read_volume` returns the voxel array as stored (no resampling), the voxel spacing in mm,
the affine in MONAI's RAS world convention and the orientation codes (``"LAS"``: the direction
each array axis increases towards, nibabel's ``aff2axcodes``). Readers: nibabel for NIfTI
(``.nii``, ``.nii.gz``), pynrrd for NRRD (``.nrrd``, ``.nhdr``; its LPS space converted to RAS),
pydicom for a folder of DICOM slices. :func:`reorient` turns a volume to the codes asked for
(MONAI's ``Orientation``), so volumes from different scanners line up.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

READERS = {".nii": "NibabelReader", ".nii.gz": "NibabelReader", ".nrrd": "NrrdReader", ".nhdr": "NrrdReader"}


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
    name = path.name.lower()
    for suffix, reader in READERS.items():
        if name.endswith(suffix):
            return reader
    raise ValueError(f"{path}: not a volume medens reads (NIfTI .nii/.nii.gz, NRRD .nrrd/.nhdr, or a folder of "
                     f"DICOM slices)")


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
    from monai.transforms import LoadImage

    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p}: no such file or folder")
    reader = _reader_for(p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img, meta = LoadImage(image_only=False, reader=reader)(str(p))
    except Exception as e:  # the readers raise assorted errors on corrupt files
        raise ValueError(f"{p}: unreadable volume ({reader}: {type(e).__name__}: {e})") from e
    array = np.asarray(img, dtype=np.float32)
    if array.ndim not in (3, 4):
        raise ValueError(f"{p}: a volume must have 3 or 4 axes, got shape {array.shape}")
    return _volume(array, meta["affine"], reader)


def reorient(volume: Volume, codes: str = "RAS") -> Volume:
    """The volume with its axes permuted and flipped to ``codes`` (e.g. ``RAS``), affine updated."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    t = MetaTensor(torch.from_numpy(np.ascontiguousarray(volume.array))[None], affine=torch.as_tensor(volume.affine))
    out = Orientation(axcodes=codes, labels=(("L", "R"), ("P", "A"), ("I", "S")))(t)
    return _volume(out[0], out.affine, volume.reader)
