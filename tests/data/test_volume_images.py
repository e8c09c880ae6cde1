"""2D NIfTI, NRRD and MetaImage files as images: the data stage, training and the endpoint see the
same pixels (medens.data.volumes.slice_pixels on both sides), and masks keep their labels."""

from __future__ import annotations

import json
import os
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pytest

from medens.data.decode import Reading
from medens.data.sources import read_image, seg_folder
from medens.data.volumes import slice_pixels
from medens.serving.inputs import InputError, decode_image_bytes

ANATOMICAL = os.path.join(os.path.dirname(nib.__file__), "tests", "data", "anatomical.nii")


def write_slices(root: Path) -> list[Path]:
    """The 25 axial slices of nibabel's real anatomical scan (33 x 41 voxels each) as 2D files, in
    two classes (lower and upper slices), alternately NIfTI-gz and MetaImage."""
    scan = nib.load(ANATOMICAL)
    data = np.asarray(scan.dataobj, dtype=np.int16)
    paths = []
    for k in range(data.shape[2]):
        cls = "lower" if k < 12 else "upper"
        (root / cls).mkdir(parents=True, exist_ok=True)
        xy = np.ascontiguousarray(data[:, :, k])
        if k % 2:
            path = root / cls / f"s{k:02d}.mha"
            itk.imwrite(itk.image_from_array(np.ascontiguousarray(xy.T)), str(path))
        else:
            path = root / cls / f"s{k:02d}.nii.gz"
            nib.save(nib.Nifti1Image(xy, np.eye(4)), str(path))
        paths.append(path)
    return paths


def test_training_and_the_endpoint_get_the_same_pixels_from_volume_files(tmp_path):
    for path in write_slices(tmp_path):
        for window in (None, (300.0, 400.0)):
            trained = read_image(path, 1, None, reading=Reading(window=window))
            served = decode_image_bytes(path.read_bytes(), "instances[0]", 10**6, reading=Reading(window=window))
            assert trained.shape == (41, 33, 1)  # rows along y
            np.testing.assert_array_equal(trained, served)
            np.testing.assert_array_equal(trained, slice_pixels(path, window=window))
    assert read_image(path, 3, 16).shape == (16, 16, 3)


def test_volume_uploads_that_are_too_large_or_thick_are_named_400s(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((2000, 1000), np.int16), np.eye(4)), str(tmp_path / "big.nii.gz"))
    with pytest.raises(InputError, match=r"2000x1000 = 2000000 pixels is over the limit") as e:
        decode_image_bytes((tmp_path / "big.nii.gz").read_bytes(), "instances[0]", 10**6)
    assert e.value.reason == "image_too_large"
    nib.save(nib.Nifti1Image(np.zeros((8, 6, 3), np.int16), np.eye(4)), str(tmp_path / "thick.nii"))
    with pytest.raises(InputError, match=r"instances\[1\]: an array of shape \(8, 6, 3\), not one 2D image") as e:
        decode_image_bytes((tmp_path / "thick.nii").read_bytes(), "instances[1]", 10**6)
    assert e.value.reason == "bad_volume"
    truncated = (tmp_path / "thick.nii").read_bytes()[:300]  # no NIfTI magic left: Pillow answers
    with pytest.raises(InputError) as e:
        decode_image_bytes(truncated, "instances[2]", 10**6)
    assert e.value.reason == "not_an_image"


def test_masks_in_volume_formats_keep_their_labels_and_pair_by_name(tmp_path):
    rng = np.random.default_rng(0)
    for d in ("images", "masks"):
        (tmp_path / d).mkdir()
    for i in range(3):
        image = rng.integers(-1000, 1000, (24, 20)).astype(np.int16)
        mask = np.zeros((24, 20), np.uint8)
        mask[4 + i:12, 3:9 + i] = 1
        nib.save(nib.Nifti1Image(image.T.copy(), np.eye(4)), str(tmp_path / "images" / f"case{i}.nii.gz"))
        nib.save(nib.Nifti1Image(mask.T.copy(), np.eye(4)), str(tmp_path / "masks" / f"case{i}_mask.nii.gz"))
        np.testing.assert_array_equal(read_image(tmp_path / "masks" / f"case{i}_mask.nii.gz", 1, None, mask=True),
                                      mask)
    pool = seg_folder(str(tmp_path), 24, 1)
    part = pool.parts["all"]
    assert part.ids == [f"images/case{i}.nii.gz" for i in range(3)]
    assert part.masks.shape == (3, 24, 24) and set(np.unique(part.masks)) == {0, 1}
    nib.save(nib.Nifti1Image(np.full((20, 24), 0.5, np.float32), np.eye(4)), str(tmp_path / "soft.nii.gz"))
    with pytest.raises(ValueError, match=r"soft.nii.gz: a mask must hold whole label values"):
        read_image(tmp_path / "soft.nii.gz", 1, None, mask=True)


def test_volume_files_through_the_data_stage_training_and_the_endpoint(tmp_path, capsys, serve_files):
    from medens.cli import main
    from medens.config import TrainingSpec, parse_spec
    from medens.data import build_dataset
    from medens.ensemble.artifact import write_ensemble
    from medens.training import fit, predict_split

    write_slices(tmp_path / "mr")
    window = [300.0, 400.0]
    spec = parse_spec({"name": "mr", "models": ["compact_cnn"], "losses": ["ce"],
                       "data": {"source": "image_folder", "path": str(tmp_path / "mr"), "image_size": 32,
                                "channels": 1, "split": {"train": 0.5, "val": 0.25, "test": 0.25},
                                "window": window}})
    spec.save(tmp_path / "spec.yaml")
    assert main(["data", "summary", "--spec", str(tmp_path / "spec.yaml"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sum(s["n"] for s in summary["splits"].values()) == 25
    data = build_dataset(spec)
    res = fit("compact_cnn", "ce", data, TrainingSpec(epochs=1, min_steps=0, batch_size=8, augment="none"), tmp_path / "m",
              progress=False)
    offline = predict_split(res.path, data.test).probs
    assert json.loads((res.path / "model.json").read_text())["preprocessing"]["dicom_window"] == window
    write_ensemble(tmp_path / "ens", name="mr", member_dirs={"m": res.path}, combiner=None)

    test_files = [tmp_path / "mr" / i for i in data.test.ids]
    assert {f.name.split(".", 1)[1] for f in test_files} == {"nii.gz", "mha"}  # both formats are served
    served = serve_files(tmp_path / "ens", "mr", test_files, tmp_path / "serve.log")
    assert served.shape == offline.shape
    np.testing.assert_allclose(served, offline, atol=1e-5, rtol=0)
