"""The data bugs a hospital engineer hit with real DICOM files (issue 22, item 6): patient splits
with split folders, DICOM recognised by content, the truncated-file message, the split unit in
``medens data summary`` and MONAI's nvImageCodec notice once per process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import yaml
from pydicom.data import get_testdata_file

from medens.config import parse_spec
from medens.data import build_dataset
from medens.data.dicom import DicomError, read_dicom
from medens.data.sources import image_folder

CT, MR = Path(get_testdata_file("CT_small.dcm")), Path(get_testdata_file("MR_small.dcm"))


def copy_dicom(src: Path, dst: Path, patient: str, shift: int = 0) -> Path:
    """A copy of a real file with its own PatientID and (``shift``) pixels, so no two copies are alike."""
    ds = pydicom.dcmread(src)
    ds.PatientID = patient
    a = ds.pixel_array.copy()
    a[0, 0] = a[0, 0] + shift
    ds.PixelData = a.tobytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst)
    return dst


def hospital_folder(root: Path, name=lambda cls, i: f"{cls}{i:02d}.dcm") -> dict[str, str]:
    """``root/{train,test}/{ct,mr}/``: 8 training patients and 3 test patients, one CT and one MR
    each. Returns relative path (under its split folder) -> patient."""
    patients = {}
    for split, ids in (("train", range(8)), ("test", range(10, 13))):
        for i in ids:
            for cls, src in (("ct", CT), ("mr", MR)):
                rel = f"{cls}/{name(cls, i)}"
                copy_dicom(src, root / split / rel, f"P{i:02d}", shift=i)
                patients[f"{split}/{rel}"] = f"P{i:02d}"
    return patients


def spec(path: Path, **data):
    return parse_spec({"name": "hospital", "task": "classification", "models": ["compact_cnn"], "losses": ["ce"],
                       "data": {"source": "image_folder", "path": str(path), "image_size": 16, "channels": 1,
                                **data}})


def patients_of(data, patients, split_folder):
    return {s: {patients[f"{split_folder[s]}/{i}"] for i in data.split(s).ids} for s in ("train", "val", "test")}


def test_dicom_patient_groups_with_train_and_test_folders(tmp_path):
    patients = hospital_folder(tmp_path / "h")
    data = build_dataset(spec(tmp_path / "h", group_by="dicom:PatientID"))
    seen = patients_of(data, patients, {"train": "train", "val": "train", "test": "test"})
    assert seen["test"] == {"P10", "P11", "P12"}
    assert not seen["train"] & seen["val"] and len(seen["train"] | seen["val"]) == 8
    assert data.info["split_unit"] == {"group_by": "dicom:PatientID",
                                       "groups": {"train": len(seen["train"]), "val": len(seen["val"]), "test": 3}}


def test_a_missing_file_is_reported_missing_not_headerless(tmp_path):
    from medens.data.groups import groups_from_dicom

    present = copy_dicom(CT, tmp_path / "a.dcm", "P1")
    groups, problems = groups_from_dicom([present, tmp_path / "gone.dcm"], "PatientID")
    assert groups == ["P1", None]
    assert problems == [f"missing group id: file {tmp_path / 'gone.dcm'} is missing (cannot read PatientID from it)"]


def test_extensionless_dicom_files_are_images(tmp_path):
    patients = hospital_folder(tmp_path / "h", name=lambda cls, i: f"IM{i:06d}")
    data = build_dataset(spec(tmp_path / "h", group_by="dicom:PatientID"))
    assert len(data.train) + len(data.val) + len(data.test) == len(patients) == 22
    assert sorted(data.test.ids) == sorted(f"{c}/IM{i:06d}" for c in ("ct", "mr") for i in (10, 11, 12))


def test_mixed_folder_keeps_dicom_by_content_and_skips_non_images(tmp_path):
    root = tmp_path / "mixed"
    for i in range(3):
        copy_dicom(CT, root / "ct" / f"IM{i:06d}", "P1", shift=i)  # PACS export names
        copy_dicom(CT, root / "ct" / f"1.2.840.113619.2.55.{i}", "P1", shift=10 + i)  # named by SOP instance UID
        copy_dicom(MR, root / "mr" / f"s{i}.dcm", "P2", shift=i)
    for junk in ("README", "notes.txt", "labels.json", ".DS_Store", "DICOMDIR"):
        (root / "ct" / junk).write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)  # even with the preamble
    (root / "ct" / "IM999999").write_bytes(b"not an image at all")
    pool = image_folder(str(root), 16, 1)
    ids = pool.parts["all"].ids
    assert sorted(ids) == sorted([f"ct/IM{i:06d}" for i in range(3)] + [f"ct/1.2.840.113619.2.55.{i}" for i in range(3)]
                                 + [f"mr/s{i}.dcm" for i in range(3)])


def test_a_class_of_no_images_says_what_was_ignored(tmp_path):
    root = tmp_path / "f"
    copy_dicom(MR, root / "mr" / "IM000001", "P1")
    (root / "ct").mkdir()
    (root / "ct" / "README.txt").write_text("exported from PACS")
    (root / "ct" / "IM000002").write_bytes(b"\0" * 200)  # no preamble: not DICOM
    with pytest.raises(ValueError) as e:
        image_folder(str(root), 16, 1)
    assert (f"all: class 'ct' has no images in {root / 'ct'} (ignored 2 file(s): IM000002 (no image ending and no "
            f"DICOM preamble), README.txt (not an image))") in str(e.value)


def test_a_truncated_uncompressed_dicom_is_called_truncated(tmp_path):
    data = CT.read_bytes()
    with pytest.raises(DicomError) as e:
        read_dicom(data[:-1000], "cut.dcm")
    msg = str(e.value)
    assert msg == ("cut.dcm: truncated or corrupt DICOM file: its pixel data holds 31906 bytes where "
                   "128 x 128 x 1 sample(s) at 16 bits need 32768")
    assert "pylibjpeg" not in msg
    # in a folder: the data stage's one error names the file
    root = tmp_path / "f"
    for cls, src in (("ct", CT), ("mr", MR)):
        copy_dicom(src, root / cls / "a.dcm", "P1")
        copy_dicom(src, root / cls / "b.dcm", "P2", shift=1)
    cut = root / "ct" / "b.dcm"
    cut.write_bytes(cut.read_bytes()[:-500])
    with pytest.raises(ValueError, match=rf"unusable DICOM {cut}: truncated or corrupt DICOM file"):
        image_folder(str(root), 16, 1)


def test_data_summary_prints_the_split_unit(tmp_path, capsys):
    from medens.cli import main

    hospital_folder(tmp_path / "h")
    for group_by, unit in (("dicom:PatientID", "split unit: patients/groups (data.group_by dicom:PatientID): "
                                               "train "), (None, "split unit: image")):
        data = {"source": "image_folder", "path": str(tmp_path / "h"), "image_size": 16, "channels": 1,
                **({"group_by": group_by} if group_by else {})}
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump({"name": "hospital", "models": ["compact_cnn"], "losses": ["ce"], "data": data}))
        assert main(["data", "summary", "--spec", str(path), "--out", str(tmp_path / "out")]) == 0
        out = capsys.readouterr().out
        assert unit in out, out
        if group_by:
            assert "test 3 groups" in out
        assert "duplicates: no image in two splits" in out


CODEC_SCRIPT = """
import numpy as np, nibabel as nib, sys
from medens.data.sources import read_image
for i in range(2):
    p = f"{sys.argv[1]}/s{i}.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(64, dtype=np.float32).reshape(8, 8, 1) + i, np.eye(4)), p)
    read_image(p, 1, 8)
"""


def test_the_nvimagecodec_notice_is_printed_at_most_once_per_process(tmp_path):
    run = subprocess.run([sys.executable, "-c", CODEC_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert (run.stdout + run.stderr).count("nvImageCodec") <= 1, run.stderr
