"""NIfTI and NRRD volumes load with the right shape, spacing and orientation (medens.data.volumes)."""

from __future__ import annotations

import os

import nibabel as nib
import nrrd
import numpy as np
import pytest

from medens.data.volumes import read_volume, reorient

NIBABEL_DATA = os.path.join(os.path.dirname(nib.__file__), "tests", "data")


@pytest.mark.parametrize("name, shape, spacing, codes", [
    ("anatomical.nii", (33, 41, 25), (2.0, 2.0, 2.0), "LAS"),
    ("standard.nii.gz", (4, 5, 7), (1.0, 3.0, 2.0), "RAS"),
    ("example4d.nii.gz", (128, 96, 24, 2), (2.0, 2.0, 2.2), "LAS"),
])
def test_nifti_volumes_from_nibabels_test_data(name, shape, spacing, codes):
    path = os.path.join(NIBABEL_DATA, name)
    v = read_volume(path)
    ref = nib.load(path)
    assert v.array.shape == shape == ref.shape and v.reader == "NibabelReader"
    np.testing.assert_allclose(v.spacing, spacing, atol=1e-5)
    np.testing.assert_allclose(v.spacing, ref.header.get_zooms()[:3], atol=1e-5)
    assert v.orientation == codes == "".join(nib.aff2axcodes(ref.affine))
    np.testing.assert_allclose(v.affine, ref.affine, atol=1e-5)
    np.testing.assert_array_equal(v.array, np.asarray(ref.dataobj, dtype=np.float32))


def test_nrrd_in_lps_space_reads_back_as_the_same_ras_volume(tmp_path):
    ref = nib.load(os.path.join(NIBABEL_DATA, "anatomical.nii"))
    data = np.asarray(ref.dataobj)
    lps = np.diag([-1.0, -1.0, 1.0]) @ ref.affine[:3, :4]  # RAS world -> LPS world, as NRRD stores it
    nrrd.write(str(tmp_path / "anat.nrrd"), data, {"space": "left-posterior-superior",
                                                   "space directions": lps[:, :3].T, "space origin": lps[:, 3]})
    v = read_volume(tmp_path / "anat.nrrd")
    assert v.reader == "NrrdReader" and v.array.shape == (33, 41, 25)
    assert v.orientation == "LAS" and v.spacing == (2.0, 2.0, 2.0)
    np.testing.assert_allclose(v.affine, ref.affine, atol=1e-6)
    np.testing.assert_array_equal(v.array, data.astype(np.float32))


def test_reorient_to_ras_flips_the_left_right_axis():
    v = read_volume(os.path.join(NIBABEL_DATA, "anatomical.nii"))
    r = reorient(v, "RAS")
    assert r.orientation == "RAS" and r.array.shape == v.array.shape and r.spacing == v.spacing
    np.testing.assert_array_equal(r.array, v.array[::-1])
    # the same world point: voxel (0, 0, 0) of the reoriented volume is voxel (32, 0, 0) of the original
    np.testing.assert_allclose(r.affine @ [0, 0, 0, 1], v.affine @ [32, 0, 0, 1])


def test_bad_volumes_are_named(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        read_volume(tmp_path / "missing.nii")
    (tmp_path / "x.vol").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"x.vol: not a volume medens reads"):
        read_volume(tmp_path / "x.vol")
    (tmp_path / "broken.nii").write_bytes(b"\0" * 20)
    with pytest.raises(ValueError, match=r"broken.nii: unreadable Nibabel file \("):
        read_volume(tmp_path / "broken.nii")


def test_a_folder_of_dicom_slices_is_one_volume_in_physical_units(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    series, study = generate_uid(), generate_uid()
    for k in (2, 0, 3, 1):  # written out of order: the reader sorts by position
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", "P1", series, study
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 6, 5, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelSpacing, ds.SliceThickness = [0.5, 0.7], 2.5  # row spacing, column spacing
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 2.5 * k], [1, 0, 0, 0, 1, 0]
        ds.InstanceNumber = k + 1
        ds.PixelData = np.full((6, 5), 1024 + 100 * k, np.uint16).tobytes()
        ds.save_as(tmp_path / f"slice{k}.dcm", enforce_file_format=True)
    v = read_volume(tmp_path)
    assert v.reader == "PydicomReader" and v.array.shape == (5, 6, 4)  # columns, rows, slices
    assert v.spacing == pytest.approx((0.7, 0.5, 2.5))
    assert v.orientation == "LPS"  # DICOM patient axes: +x left, +y posterior, +z superior
    np.testing.assert_array_equal(v.array[0, 0], [0, 100, 200, 300])  # Hounsfield units, sorted by position


# ---------------------------------------------------------------- MetaImage (ITK) and 2D slices


def test_metaimage_written_by_itk_reads_as_the_same_volume(tmp_path):
    # ITK itself converts the NIfTI to MetaImage (LPS on disk); medens must read back the same
    # voxels, RAS affine, spacing and orientation as from the NIfTI
    import itk

    src = os.path.join(NIBABEL_DATA, "anatomical.nii")
    itk.imwrite(itk.imread(src), str(tmp_path / "anat.mha"))
    v, ref = read_volume(tmp_path / "anat.mha"), read_volume(src)
    assert v.reader == "ITKReader" and v.array.shape == ref.array.shape == (33, 41, 25)
    assert v.orientation == ref.orientation == "LAS" and v.spacing == pytest.approx(ref.spacing)
    np.testing.assert_allclose(v.affine, ref.affine, atol=1e-5)
    np.testing.assert_array_equal(v.array, ref.array)


def _slice(rows: int = 5, cols: int = 7) -> np.ndarray:
    """A 12-bit-like 2D image, CT-style signed values: distinct in every pixel, rows != columns."""
    return (np.arange(rows * cols, dtype=np.int16).reshape(rows, cols) * 97 - 1024).astype(np.int16)


def _write_slice(a: np.ndarray, path, kind: str) -> None:
    """Write ``a`` (rows, columns) the way each format's own library stores a 2D image: x (the first
    voxel axis) along the columns."""
    import itk

    if kind == "nifti":
        nib.save(nib.Nifti1Image(a.T.copy(), np.eye(4)), str(path))
    elif kind == "nrrd":
        nrrd.write(str(path), a.T.copy(), {"space dimension": 2, "space directions": np.eye(2),
                                           "space origin": np.zeros(2)})
    else:  # itk.image_from_array takes numpy (rows, columns) order
        itk.imwrite(itk.image_from_array(a), str(path))


SLICE_KINDS = [("nifti", "x.nii.gz"), ("nifti", "x.nii"), ("nrrd", "x.nrrd"), ("mha", "x.mha")]


@pytest.mark.parametrize("kind, name", SLICE_KINDS)
def test_2d_slices_read_in_itk_array_order_with_physical_values(kind, name, tmp_path):
    from medens.data.dicom import window_to_pixels
    from medens.data.volumes import read_slice, slice_pixels, slice_shape, sniff_volume_bytes

    a = _slice()
    _write_slice(a, tmp_path / name, kind)
    values = read_slice(tmp_path / name)
    assert values.dtype == np.float64
    np.testing.assert_array_equal(values, a)  # rows, columns and HU kept; no 8-bit step yet
    data = (tmp_path / name).read_bytes()
    suffix = sniff_volume_bytes(data)
    assert suffix == {"nifti": ".nii.gz" if name.endswith(".gz") else ".nii", "nrrd": ".nrrd", "mha": ".mha"}[kind]
    assert slice_shape(data, suffix, "upload") == (5, 7)
    np.testing.assert_array_equal(read_slice(data, "upload", suffix), a)
    # full range: min -> 0, max -> 255; with a window: hand-computed linear map, clipped
    full = slice_pixels(tmp_path / name)
    assert full.shape == (5, 7, 1) and full.min() == 0 and full.max() == 255
    np.testing.assert_array_equal(full[..., 0], np.rint((a + 1024) / (34 * 97) * 255).astype(np.uint8))
    win = slice_pixels(tmp_path / name, window=(0.0, 1000.0))
    np.testing.assert_array_equal(win[..., 0], np.rint(np.clip((a + 500.0) / 1000.0, 0, 1) * 255).astype(np.uint8))
    np.testing.assert_array_equal(win, window_to_pixels(a, (0.0, 1000.0)))


def test_single_slice_volumes_are_images_and_thicker_volumes_are_refused(tmp_path):
    from medens.data.volumes import read_slice

    a = _slice()
    nib.save(nib.Nifti1Image(a.T[..., None].copy(), np.eye(4)), str(tmp_path / "one.nii.gz"))
    np.testing.assert_array_equal(read_slice(tmp_path / "one.nii.gz"), a)
    nib.save(nib.Nifti1Image(np.stack([a.T, a.T], axis=-1), np.eye(4)), str(tmp_path / "two.nii.gz"))
    with pytest.raises(ValueError, match=r"two.nii.gz: an array of shape \(7, 5, 2\), not one 2D image"):
        read_slice(tmp_path / "two.nii.gz")
    (tmp_path / "bad.mha").write_bytes(b"ObjectType = Image\nNDims = 2\n")
    with pytest.raises(ValueError, match=r"bad.mha: unreadable ITK file"):
        read_slice(tmp_path / "bad.mha")


def test_other_bytes_are_not_taken_for_volumes():
    import gzip

    from medens.data.volumes import sniff_volume_bytes

    assert sniff_volume_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 400) is None
    assert sniff_volume_bytes(b"\0" * 128 + b"DICM" + b"\0" * 400) is None
    assert sniff_volume_bytes(gzip.compress(b"not a nifti header" * 40)) is None
    assert sniff_volume_bytes(b"\x1f\x8bnot gzip at all") is None
