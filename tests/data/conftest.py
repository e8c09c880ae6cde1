"""Helpers shared by the data tests: a minimal DICOM writer, and the endpoint in a subprocess."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def _write_dicom(path: Path, pixels: np.ndarray, *, photometric="MONOCHROME2", bits=12, slope=1.0, intercept=0.0,
                window=None) -> Path:
    """A minimal secondary-capture DICOM file of unsigned ``pixels``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "OT", "P1"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def write_dicom():
    """``write_dicom(path, pixels, *, photometric, bits, slope, intercept, window) -> path``."""
    return _write_dicom


@pytest.fixture
def serve_files():
    """``serve_files(ensemble_dir, name, files, log) -> probabilities`` (tests/serving/_server.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
    try:
        from _server import serve_files as serve
    finally:
        sys.path.pop(0)
    return serve
