"""DICOM in (medens.data.dicom): every bundled test file loads exactly or is refused with a reason;
the display mapping by hand; a real radiograph through the data stage, training and the endpoint."""

from __future__ import annotations

import copy
import glob
import os
import warnings
from collections import Counter
from pathlib import Path

import data_store  # the pydicom-data package
import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.pixels import apply_modality_lut
from pydicom.uid import generate_uid

from medens.data.dicom import DicomError, DicomImage, dicom_pixels, dicom_to_pixels, read_dicom

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
DATA_STORE = Path(data_store.__file__).parent / "data"
RADIOGRAPH = DATA_STORE / "RG1_UNCR.dcm"  # a computed radiograph of the chest, MONOCHROME1, 1955 x 1841


def bundled_files() -> list[Path]:
    found = glob.glob(str(PYDICOM_FILES / "**" / "*"), recursive=True) + glob.glob(str(DATA_STORE / "*"))
    return sorted(Path(f) for f in found if os.path.isfile(f) and not f.endswith((".py", ".pyc")))


def test_every_bundled_file_loads_exactly_or_is_refused_with_the_file_and_a_reason():
    loaded, refused = [], Counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the deliberately odd test files
        for f in bundled_files():
            try:
                image = read_dicom(f)
            except DicomError as e:
                assert str(e).startswith(f"{f}: "), str(e)
                refused[str(e)[len(str(f)) + 2:].split(" (")[0].split(":")[0]] += 1
                continue
            ds = pydicom.dcmread(f)
            if image.photometric == "RGB":
                assert image.values.dtype == np.uint8 and image.values.shape[-1] == 3
            else:  # exactly pydicom's pixels with the modality transform (rescale slope/intercept)
                np.testing.assert_array_equal(image.values, apply_modality_lut(ds.pixel_array, ds))
            loaded.append(f.name)
    print(f"bundled DICOM files: {len(loaded)} loaded, {sum(refused.values())} refused: {dict(refused)}")
    assert len(loaded) == 130 and sum(refused.values()) == 114
    assert {"RG1_UNCR.dcm", "RG1_J2KR.dcm", "CT_small.dcm", "MR2_UNCR.dcm", "MR_small_RLE.dcm",
            "MR_small_jpeg_ls_lossless.dcm"} <= set(loaded)
    assert refused["no pixel data"] >= 60 and refused["multi-frame object"] >= 20
    # lossless JPEG 2000 decodes to the very pixels of the uncompressed file
    np.testing.assert_array_equal(read_dicom(DATA_STORE / "RG1_J2KR.dcm").values, read_dicom(RADIOGRAPH).values)


def test_a_transfer_syntax_without_a_decoder_names_the_file_the_syntax_and_the_package(monkeypatch):
    f = PYDICOM_FILES / "MR_small_jp2klossless.dcm"

    def no_decoder(self):
        raise RuntimeError("unable to decompress: no plugin available")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_decoder))
    with pytest.raises(DicomError) as e:
        read_dicom(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}: cannot decode pixel data in transfer syntax JPEG 2000 Image Compression "
                          "(Lossless Only) (1.2.840.10008.1.2.4.90)")
    assert "pip install pylibjpeg-openjpeg" in msg


def test_rescale_window_and_monochrome1_by_hand(tmp_path, write_dicom):
    raw = np.array([[0, 1024, 2048], [3072, 4095, 512]])
    f = write_dicom(tmp_path / "ct.dcm", raw, slope=2.0, intercept=-1024.0, window=(1024.0, 2048.0))
    image = read_dicom(f)
    np.testing.assert_array_equal(image.values, raw * 2.0 - 1024.0)  # physical values
    assert image.window == (1024.0, 2048.0)
    # window [0, 2048]: -1024 -> 0, 1024 -> 127.5 -> 128, 3072 -> 255 (clipped), 0 -> 0
    assert dicom_to_pixels(image)[..., 0].tolist() == [[0, 128, 255], [255, 255, 0]]
    # without a window: the image's full range [-1024, 7166]
    lo, hi = -1024.0, 4095 * 2.0 - 1024.0
    full = np.rint((raw * 2.0 - 1024.0 - lo) / (hi - lo) * 255).astype(np.uint8)
    np.testing.assert_array_equal(dicom_to_pixels(DicomImage(image.values, "MONOCHROME2", None, ""))[..., 0], full)
    mono1 = write_dicom(tmp_path / "cr.dcm", raw, photometric="MONOCHROME1")
    np.testing.assert_array_equal(dicom_pixels(mono1)[..., 0], 255 - np.rint(raw / 4095 * 255).astype(np.uint8))


def test_12_bit_dicom_gives_training_and_the_endpoint_the_same_pixels(tmp_path, write_dicom):
    from medens.data.sources import read_image
    from medens.serving.inputs import decode_image_bytes

    raw = np.tile(np.linspace(0, 4095, 40).round().astype(np.uint16), (24, 1))
    f = write_dicom(tmp_path / "x.dcm", raw)
    trained = read_image(f, 1, None)
    served = decode_image_bytes(f.read_bytes(), "instances[0]", 10**6)
    np.testing.assert_array_equal(trained, served)
    assert trained[0, 0, 0] == 0 and trained[0, -1, 0] == 255  # the 12-bit range, not clipped at 255
    np.testing.assert_array_equal(read_image(f, 1, 16), read_image(tmp_path / "x.dcm", 1, 16))
    assert read_image(f, 3, None).shape == (24, 40, 3)


def test_bad_dicom_uploads_are_named_400s():
    from medens.serving.inputs import InputError, decode_image_bytes

    data = RADIOGRAPH.read_bytes()
    with pytest.raises(InputError, match="1841x1955 = 3599155 pixels is over the limit") as e:
        decode_image_bytes(data, "instances[0]", 10**6)
    assert e.value.reason == "image_too_large"
    with pytest.raises(InputError, match=r"instances\[0\]: unreadable DICOM header") as e:
        decode_image_bytes(data[:400], "instances[0]", 10**7)
    assert e.value.reason == "bad_dicom"
    multi = (DATA_STORE / "OBXXXX1A_2frame.dcm").read_bytes()
    with pytest.raises(InputError, match=r"multi-frame object \(2 frames\)"):
        decode_image_bytes(multi, "instances[0]", 10**7)


def radiograph_folder(root: Path, per_class: int = 10, size: int = 384, seed: int = 0) -> dict[str, list[Path]]:
    """Two classes of real radiograph crops written as DICOM: crops of RG1 (class a) and RG3 (class b)."""
    rng = np.random.default_rng(seed)
    out = {}
    for cls, name in (("a", "RG1_UNCR.dcm"), ("b", "RG3_UNCR.dcm")):
        ds = pydicom.dcmread(DATA_STORE / name)
        pixels = ds.pixel_array
        (root / cls).mkdir(parents=True, exist_ok=True)
        out[cls] = []
        for i in range(per_class):
            r, c = (int(rng.integers(0, n - size)) for n in pixels.shape)
            crop = copy.deepcopy(ds)
            crop.Rows = crop.Columns = size
            crop.PixelData = np.ascontiguousarray(pixels[r:r + size, c:c + size]).tobytes()
            crop.SOPInstanceUID = generate_uid()
            path = root / cls / f"{cls}{i:02d}.dcm"
            crop.save_as(path)
            out[cls].append(path)
    return out


@pytest.mark.parametrize("window", [None, [600.0, 800.0]], ids=["file-window", "spec-window"])
def test_a_real_radiograph_through_the_data_stage_training_and_the_endpoint(tmp_path, capsys, window,
                                                                           serve_files):
    import json

    from medens.cli import main
    from medens.config import TrainingSpec, parse_spec
    from medens.data import build_dataset
    from medens.ensemble.artifact import write_ensemble
    from medens.training import fit, predict_split

    radiograph_folder(tmp_path / "xr")
    spec = parse_spec({"name": "xr", "models": ["compact_cnn"], "losses": ["ce"],
                       "data": {"source": "image_folder", "path": str(tmp_path / "xr"), "image_size": 32,
                                "channels": 1, "split": {"train": 0.5, "val": 0.25, "test": 0.25},
                                "window": window}})
    spec.save(tmp_path / "spec.yaml")
    assert main(["data", "summary", "--spec", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "ds"),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["image_size"] == [32, 32] and summary["channels"] == 1
    assert sum(s["n"] for s in summary["splits"].values()) == 20
    data = build_dataset(spec)
    res = fit("compact_cnn", "ce", data, TrainingSpec(epochs=1, min_steps=0, batch_size=8, augment="none"), tmp_path / "m",
              progress=False)
    offline = predict_split(res.path, data.test).probs
    manifest = json.loads((res.path / "model.json").read_text())
    assert manifest["preprocessing"]["dicom_window"] == window  # recorded in the artifact
    if window is not None:  # the spec's window, not the file's, made the training pixels
        first = tmp_path / "xr" / data.train.ids[0]
        own = dicom_pixels(first)
        assert not np.array_equal(own, dicom_pixels(first, window=tuple(window)))
    write_ensemble(tmp_path / "ens", name="xr", member_dirs={"m": res.path}, combiner=None)

    test_files = [tmp_path / "xr" / i for i in data.test.ids]
    served = serve_files(tmp_path / "ens", "xr", test_files, tmp_path / "serve.log")
    assert served.shape == offline.shape
    np.testing.assert_allclose(served, offline, atol=1e-5, rtol=0)


def test_a_folder_with_bad_files_gets_one_error_listing_each_and_nothing_is_written(tmp_path, capsys):
    import shutil

    from medens.cli import main
    from medens.config import parse_spec

    folders = radiograph_folder(tmp_path / "xr", per_class=4, size=64)
    shutil.copy(DATA_STORE / "OBXXXX1A_2frame.dcm", tmp_path / "xr" / "a" / "cine.dcm")  # multi-frame
    shutil.copy(PYDICOM_FILES / "test-SR.dcm", tmp_path / "xr" / "b" / "report.dcm")  # a structured report
    (tmp_path / "xr" / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    spec = parse_spec({"name": "xr", "models": ["compact_cnn"], "losses": ["ce"],
                       "data": {"source": "image_folder", "path": str(tmp_path / "xr"), "image_size": 32,
                                "channels": 1}})
    spec.save(tmp_path / "spec.yaml")
    assert main(["data", "summary", "--spec", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "ds")]) != 0
    text = capsys.readouterr().err
    assert "(3 problems)" in text
    assert f"unusable DICOM {tmp_path / 'xr' / 'a' / 'cine.dcm'}: multi-frame object (2 frames)" in text
    assert f"unusable DICOM {tmp_path / 'xr' / 'b' / 'report.dcm'}: no pixel data (modality SR" in text
    assert f"unreadable file {tmp_path / 'xr' / 'b' / 'broken.png'}: UnidentifiedImageError" in text
    assert not (tmp_path / "ds").exists() and len(folders["a"]) == 4


def test_group_by_a_dicom_tag_keeps_each_patient_in_one_split(tmp_path):
    from medens.config import parse_spec
    from medens.data import build_dataset

    folders = radiograph_folder(tmp_path / "xr", per_class=12, size=32)
    patient = {}
    for cls, paths in folders.items():
        for i, p in enumerate(paths):
            ds = pydicom.dcmread(p)
            ds.PatientID = f"{cls}-patient{i // 2}"  # two images per patient
            ds.save_as(p)
            patient[f"{cls}/{p.name}"] = ds.PatientID
    spec = parse_spec({"name": "xr", "models": ["compact_cnn"], "losses": ["ce"],
                       "data": {"source": "image_folder", "path": str(tmp_path / "xr"), "image_size": 16,
                                "channels": 1, "group_by": "dicom:PatientID",
                                "split": {"train": 0.5, "val": 0.25, "test": 0.25}}})
    data = build_dataset(spec)
    seen = {s: {patient[i] for i in data.split(s).ids} for s in ("train", "val", "test")}
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])
    assert sum(len(v) for v in seen.values()) == 12
    ds = pydicom.dcmread(folders["a"][0])
    del ds.PatientID
    ds.save_as(folders["a"][0])
    with pytest.raises(ValueError, match=r"missing group id: .*a00.dcm has no PatientID"):
        build_dataset(spec)
