"""One intensity mapping for training files and endpoint uploads (medens.data.decode)."""

import io

import numpy as np
import pytest
from PIL import Image

from medens.data.decode import image_to_array, resize_pixels
from medens.data.sources import read_image
from medens.serving.inputs import decode_image_bytes


def gradient16() -> np.ndarray:
    """A full-range 16-bit horizontal gradient, 0 to 65535."""
    return np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (16, 1))


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["16-bit", "8-bit", "rgb"])
def test_training_and_the_endpoint_get_the_same_pixels_from_one_file(kind, tmp_path):
    if kind == "16-bit":
        array = gradient16()
    elif kind == "8-bit":
        array = np.tile(np.arange(64, dtype=np.uint8) * 4, (16, 1))
    else:
        array = np.random.default_rng(0).integers(0, 256, (16, 64, 3), dtype=np.uint8)
    data = png_bytes(array)
    (tmp_path / "x.png").write_bytes(data)
    channels = 3 if kind == "rgb" else 1
    trained = read_image(tmp_path / "x.png", channels, None)
    served = decode_image_bytes(data, "instances[0]", 10**6)
    assert trained.dtype == served.dtype == np.uint8
    np.testing.assert_array_equal(trained, served)
    if kind == "16-bit":
        with Image.open(io.BytesIO(data)) as im:
            assert im.mode.startswith("I;16") or im.mode == "I"
        # full range kept: 0 -> 0, 65535 -> 255, mean 127.5 (Pillow's convert("L") gives mean ~254.5)
        assert trained[0, 0, 0] == 0 and trained[0, -1, 0] == 255
        assert trained.mean() == pytest.approx(127.5, abs=0.6)
        expected = np.rint(gradient16().astype(np.float64) * 255 / 65535).astype(np.uint8)
        np.testing.assert_array_equal(trained[..., 0], expected)


def test_integer_images_within_8_bits_keep_their_values():
    im = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32), mode="I")
    np.testing.assert_array_equal(image_to_array(im)[..., 0], [[0, 100, 255]])
    assert image_to_array(im, 3).shape == (1, 3, 3)


def test_resize_keeps_uint8_and_masks_stay_labels():
    a = np.zeros((4, 4, 1), np.uint8)
    a[:2] = 200
    out = resize_pixels(a, 8)
    assert out.shape == (8, 8, 1) and out.dtype == np.uint8 and out[0, 0, 0] == 200 and out[-1, 0, 0] == 0
    m = np.array([[0, 2], [1, 0]], np.uint8)
    assert set(np.unique(resize_pixels(m, 6, nearest=True)).tolist()) == {0, 1, 2}
    assert resize_pixels(a, 4) is a
