"""data.bit_depth 16: the original bit depth is kept until the model's normalisation (x / 65535),
in the data stage, the saved dataset, training and the endpoint alike (medens.data.decode)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from medens.data.decode import Reading, image_to_array, max_value, resize_pixels, to_channels, widen
from medens.data.dicom import dicom_pixels
from medens.data.sources import read_image
from medens.data.transforms import InputSpec, preprocess
from medens.serving.inputs import decode_image_bytes

R16 = Reading(depth=16)


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_reading_refuses_other_depths_and_names_its_dtype():
    assert (R16.dtype, R16.top, Reading().dtype, Reading().top) == (np.uint16, 65535, np.uint8, 255)
    with pytest.raises(ValueError, match="bit depth must be 8 or 16, got 12"):
        Reading(depth=12)
    assert max_value(np.uint16) == 65535.0 and max_value(np.uint8) == max_value(np.float32) == 255.0


def test_16_bit_png_values_are_kept_and_8_bit_ones_widened_exactly(tmp_path):
    values = np.tile(np.arange(0, 65536, 1024, dtype=np.uint16), (4, 1))  # 64 levels, 8-bit apart would merge
    values[0, 1] = 1  # one step of 1/65535: lost at 8 bits, kept at 16
    data = png_bytes(values)
    (tmp_path / "x16.png").write_bytes(data)
    kept = read_image(tmp_path / "x16.png", 1, None, reading=R16)
    assert kept.dtype == np.uint16
    np.testing.assert_array_equal(kept[..., 0], values)
    np.testing.assert_array_equal(decode_image_bytes(data, "instances[0]", 10**6, reading=R16), kept)
    eight = read_image(tmp_path / "x16.png", 1, None)
    assert eight.dtype == np.uint8 and eight[0, 0, 0] == eight[0, 1, 0] == 0  # the step is gone at 8 bits
    grey8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    (tmp_path / "x8.png").write_bytes(png_bytes(grey8))
    wide = read_image(tmp_path / "x8.png", 1, None, reading=R16)
    np.testing.assert_array_equal(wide[..., 0], grey8.astype(np.uint16) * 257)
    assert wide.max() == 65535
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    with Image.fromarray(rgb) as im:
        np.testing.assert_array_equal(image_to_array(im, depth=16), rgb.astype(np.uint16) * 257)


def test_a_12_bit_dicom_keeps_its_4096_levels_at_16_bits(tmp_path, write_dicom):
    raw = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    f = write_dicom(tmp_path / "x.dcm", raw, bits=12)
    kept = read_image(f, 1, None, reading=R16)
    assert kept.dtype == np.uint16 and len(np.unique(kept)) == 4096  # 8 bits: 256
    assert len(np.unique(read_image(f, 1, None))) == 256
    np.testing.assert_array_equal(kept[..., 0], np.rint(raw / 4095.0 * 65535.0).astype(np.uint16))
    np.testing.assert_array_equal(decode_image_bytes(f.read_bytes(), "instances[0]", 10**6, reading=R16), kept)
    # a window maps onto the 16-bit range; MONOCHROME1 inverts within it
    win = dicom_pixels(f, window=(2048.0, 1024.0), depth=16)[..., 0]
    np.testing.assert_array_equal(win, np.rint(np.clip((raw - 1536.0) / 1024.0, 0, 1) * 65535).astype(np.uint16))


def test_16_bit_resize_and_channels():
    a = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)
    out = resize_pixels(a[..., None], 32)
    assert out.dtype == np.uint16 and out.shape == (32, 32, 1)
    ref = np.asarray(Image.fromarray(a).resize((32, 32), Image.BILINEAR))
    np.testing.assert_array_equal(out[..., 0], ref)
    rgb = np.stack([a, a // 2, a // 3], axis=-1)
    both = resize_pixels(rgb, 32)
    np.testing.assert_array_equal(both[..., 1], resize_pixels(rgb[..., 1], 32))
    grey = to_channels(rgb, 1)
    np.testing.assert_array_equal(grey[..., 0], np.rint(rgb @ np.array([0.299, 0.587, 0.114])).astype(np.uint16))
    assert to_channels(a[..., None], 3).shape == (48, 64, 3)


def test_normalisation_divides_by_the_depth_and_old_specs_read_as_8_bit():
    rng = np.random.default_rng(0)
    eight = rng.integers(0, 256, (3, 16, 16, 1), dtype=np.uint8)
    sixteen = widen(eight, 16)
    s8, s16 = InputSpec.fit(eight), InputSpec.fit(sixteen)
    assert (s8.max_value, s16.max_value) == (255.0, 65535.0)
    np.testing.assert_allclose(preprocess(sixteen, s16), preprocess(eight, s8), atol=1e-6)
    z8, z16 = InputSpec.fit(eight, "zscore"), InputSpec.fit(sixteen, "zscore")
    np.testing.assert_allclose(z16.mean, z8.mean, atol=1e-6)
    np.testing.assert_allclose(z16.std, z8.std, atol=1e-6)
    old = {"channels": 1, "size": 16, "mean": [0.0], "std": [1.0]}  # model.json before 16-bit pixels
    assert InputSpec.from_dict(old).max_value == 255.0
    assert InputSpec.from_dict(s16.to_dict()) == s16


def test_a_16_bit_dataset_trains_saves_and_serves_the_same_pixels(tmp_path):
    from medens.config import TrainingSpec, parse_spec
    from medens.data import SplitData, build_dataset
    from medens.ensemble.artifact import write_ensemble
    from medens.serving.predictor import EnsemblePredictor
    from medens.training import fit, predict_split

    rng = np.random.default_rng(0)
    for cls, base in (("a", 1000), ("b", 40000)):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(8):
            arr = (base + rng.integers(0, 20000, (40, 40))).astype(np.uint16)
            (tmp_path / "img" / cls / f"{cls}{i}.png").write_bytes(png_bytes(arr))
    spec = parse_spec({"name": "d16", "models": ["compact_cnn"], "losses": ["ce"],
                       "data": {"source": "image_folder", "path": str(tmp_path / "img"), "image_size": 32,
                                "channels": 1, "bit_depth": 16, "split": {"train": 0.5, "val": 0.25, "test": 0.25}}})
    data = build_dataset(spec)
    assert data.train.images.dtype == np.uint16 and data.info["bit_depth"] == 16
    first = tmp_path / "img" / data.train.ids[0]
    np.testing.assert_array_equal(data.train.images[0], read_image(first, 1, 32, reading=R16))
    data.save(tmp_path / "ds")
    again = SplitData.load(tmp_path / "ds")
    assert again.train.images.dtype == np.uint16
    np.testing.assert_array_equal(np.asarray(again.test.images), np.asarray(data.test.images))
    res = fit("compact_cnn", "ce", data, TrainingSpec(epochs=1, min_steps=0, batch_size=8, augment="none"), tmp_path / "m",
              progress=False)
    import json

    manifest = json.loads((res.path / "model.json").read_text())
    assert manifest["preprocessing"]["bit_depth"] == 16 and manifest["input"]["max_value"] == 65535.0
    offline = predict_split(res.path, data.test).probs
    write_ensemble(tmp_path / "ens", name="d16", member_dirs={"m": res.path}, combiner=None)
    predictor = EnsemblePredictor.load(tmp_path / "ens")
    assert predictor.reading == R16
    uploads = [decode_image_bytes((tmp_path / "img" / i).read_bytes(), "x", 10**6, reading=predictor.reading)
               for i in data.test.ids]
    served = np.stack([r["probs"] for r in predictor.forward(predictor.prepare(uploads))])
    np.testing.assert_allclose(served, offline, atol=1e-5, rtol=0)
    # the same uploads decoded at 8 bits would give the model other inputs
    eight = [decode_image_bytes((tmp_path / "img" / i).read_bytes(), "x", 10**6) for i in data.test.ids]
    assert not np.allclose(predictor.prepare(eight), predictor.prepare(uploads), atol=1e-6)


def test_synthetic_pixels_are_widened_at_16_bits():
    from medens.config import parse_spec
    from medens.data import build_dataset

    base = {"name": "s", "models": ["compact_cnn"], "losses": ["ce"],
            "data": {"source": "synthetic_cells", "image_size": 24, "channels": 1,
                     "synthetic": {"counts": {"normal": 10, "codocyte": 10, "hypochromia": 10}}}}
    d8 = build_dataset(parse_spec(base))
    d16 = build_dataset(parse_spec({**base, "data": {**base["data"], "bit_depth": 16}}))
    np.testing.assert_array_equal(d16.train.images, d8.train.images.astype(np.uint16) * 257)
