"""The input codec and the serving settings, without a server."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

from medens.serving.inputs import (
    InputError,
    check_count,
    decode_base64,
    decode_image_bytes,
    decode_instance,
    decode_v1,
    decode_v2_input,
)
from medens.serving.settings import ServingSettings

LIMIT = 10_000


def encode(a: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


def reason(fn, *args) -> str:
    with pytest.raises(InputError) as e:
        fn(*args)
    return e.value.reason


def test_png_round_trip_grey_and_rgb_exact():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (7, 5), dtype=np.uint8)
    rgb = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image_bytes(encode(grey), "x", LIMIT), grey[..., None])
    np.testing.assert_array_equal(decode_image_bytes(encode(rgb), "x", LIMIT), rgb)
    # the same through base64, {"b64": ...} and a data URI
    text = base64.b64encode(encode(rgb)).decode()
    for inst in (text, {"b64": text}, "data:image/png;base64," + text):
        np.testing.assert_array_equal(decode_instance(inst, "i", LIMIT), rgb)


def test_sixteen_bit_and_rgba_and_jpeg():
    a16 = np.array([[0, 65535], [257 * 100, 257 * 200]], dtype=np.uint16)
    out = decode_image_bytes(encode(a16), "x", LIMIT)
    np.testing.assert_array_equal(out[..., 0], [[0, 255], [100, 200]])
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    assert decode_image_bytes(encode(rgba), "x", LIMIT).shape == (4, 4, 3)
    flat = np.full((16, 16, 3), 120, np.uint8)
    jpg = decode_image_bytes(encode(flat, "JPEG"), "x", LIMIT)
    assert jpg.shape == (16, 16, 3) and np.abs(jpg.astype(int) - 120).max() <= 2


def test_pixel_limit_is_checked_before_decoding():
    big = np.zeros((101, 100), np.uint8)
    with pytest.raises(InputError, match="101 = 10100 pixels is over the limit of 10000") as e:
        decode_image_bytes(encode(big), "instances[3]", LIMIT)
    assert e.value.reason == "image_too_large" and "instances[3]" in str(e.value)


@pytest.mark.parametrize("value,why", [
    ("@@@", "invalid_base64"), ("", "empty_image"), ("data:image/png,abc", "invalid_base64"),
    (base64.b64encode(b"GIF89a-not-really").decode(), "not_an_image"),
    ({"image": "x"}, "bad_instance"), (3.5, "bad_instance"), ([], "empty_image"),
    ([[1, 2], [3]], "ragged_array"), ([["a"]], "not_numeric"),
    (np.zeros((2, 2, 2, 1)).tolist(), "wrong_rank"), (np.zeros((3, 3, 2)).tolist(), "wrong_channels"),
    ([[0, 256]], "out_of_range"), ([[-1, 2]], "out_of_range"),
])
def test_bad_instances_have_named_reasons(value, why):
    assert reason(decode_instance, value, "instances[0]", LIMIT) == why


def test_truncated_png_is_refused():
    png = encode(np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8))
    assert reason(decode_image_bytes, png[: len(png) // 2], "x", LIMIT) == "corrupt_image"


def test_arrays_keep_float_intensities():
    a = [[0.5, 254.5], [10.25, 3.0]]
    out = decode_instance(a, "i", LIMIT)
    assert out.dtype == np.float32 and out.shape == (2, 2, 1)
    np.testing.assert_array_equal(out[..., 0], np.array(a, np.float32))


def test_v1_body_checks():
    img = base64.b64encode(encode(np.zeros((4, 4), np.uint8))).decode()
    images, params = decode_v1({"instances": [img, img], "parameters": {"return_members": True}}, 4, LIMIT)
    assert len(images) == 2 and params == {"return_members": True}
    assert reason(decode_v1, [img], 4, LIMIT) == "bad_request"
    assert reason(decode_v1, {"x": 1}, 4, LIMIT) == "bad_request"
    assert reason(decode_v1, {"instances": [img] * 5}, 4, LIMIT) == "batch_too_large"
    assert reason(decode_v1, {"instances": []}, 4, LIMIT) == "empty_request"
    assert reason(decode_v1, {"instances": [img], "parameters": [1]}, 4, LIMIT) == "bad_request"


def test_v2_tensors():
    x = np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4)
    imgs = decode_v2_input("image", "FP32", [2, 3, 4], x.reshape(-1).tolist(), 8, LIMIT)
    assert [i.shape for i in imgs] == [(3, 4, 1), (3, 4, 1)]
    np.testing.assert_array_equal(imgs[1][..., 0], x[1])
    rgb = decode_v2_input("image", "UINT8", [1, 2, 2, 3], np.full(12, 7, np.uint8), 8, LIMIT)
    assert rgb[0].shape == (2, 2, 3) and float(rgb[0].max()) == 7.0
    png = base64.b64encode(encode(np.zeros((3, 3), np.uint8))).decode()
    assert decode_v2_input("image", "BYTES", [2, 1], [png, png], 8, LIMIT)[0].shape == (3, 3, 1)
    assert decode_v2_input("image", "BYTES", [1], np.array([encode(np.zeros((2, 2), np.uint8))], dtype=object), 8,
                           LIMIT)[0].shape == (2, 2, 1)
    assert reason(decode_v2_input, "i", "INT8", [1, 2, 2], [0] * 4, 8, LIMIT) == "wrong_datatype"
    assert reason(decode_v2_input, "i", "FP32", [1, 2, 2], [0] * 3, 8, LIMIT) == "shape_mismatch"
    assert reason(decode_v2_input, "i", "FP32", [4], [0] * 4, 8, LIMIT) == "wrong_rank"
    assert reason(decode_v2_input, "i", "FP32", [9, 1, 1], [0] * 9, 8, LIMIT) == "batch_too_large"
    assert reason(decode_v2_input, "i", "FP32", [1, 200, 200], [0], 8, LIMIT) == "image_too_large"
    assert reason(decode_v2_input, "i", "FP32", [1, 1, 2], [0, float("nan")], 8, LIMIT) == "non_finite"
    assert reason(decode_v2_input, "i", "BYTES", [2], [png], 8, LIMIT) == "shape_mismatch"
    assert reason(decode_v2_input, "i", "BYTES", [1, 2], [png, png], 8, LIMIT) == "bad_shape"
    assert reason(decode_v2_input, "i", "FP32", [1, -1, 2], [0], 8, LIMIT) == "bad_shape"


def test_check_count_and_base64_messages():
    with pytest.raises(InputError, match="no images: send at least one image"):
        check_count(0, 3, "images")
    with pytest.raises(InputError, match="invalid base64"):
        decode_base64("abc", "instances[0]")


def test_base64_with_line_breaks_is_accepted_as_rfc_2045_decoders_do():
    data = bytes(range(256)) * 3
    wrapped = base64.encodebytes(data).decode()  # what `base64` prints: 76-column lines
    assert "\n" in wrapped.strip()
    assert decode_base64(wrapped, "i") == data
    assert decode_base64(wrapped.replace("\n", "\r\n"), "i") == data
    assert decode_base64("data:image/png;base64," + wrapped, "i") == data
    with pytest.raises(InputError, match="invalid base64"):
        decode_base64(wrapped[:40] + "*" + wrapped[40:], "i")


def test_settings_from_env_flags_and_validation():
    s = ServingSettings.from_env({"MEDENS_SERVE_MAX_BATCH": "8", "MEDENS_SERVE_MAX_WAIT_MS": "2.5"}, max_batch=4)
    assert s.max_batch == 4 and s.max_wait_ms == 2.5 and s.max_instances == 64
    with pytest.raises(ValueError, match="MEDENS_SERVE_MAX_PIXELS must be a number"):
        ServingSettings.from_env({"MEDENS_SERVE_MAX_PIXELS": "lots"})
    with pytest.raises(ValueError, match="max_batch must be >= 1, got 0"):
        ServingSettings(max_batch=0)
    assert ServingSettings(max_wait_ms=0).max_wait_ms == 0
    # forward workers: 0 is auto (2 with ONNX Runtime on two or more cores), PyTorch always 1
    assert ServingSettings().workers_for("onnx", 2) == 2 and ServingSettings().workers_for("onnx", 1) == 1
    assert ServingSettings().workers_for("torch", 16) == 1
    s3 = ServingSettings.from_env({"MEDENS_SERVE_FORWARD_WORKERS": "3"})
    assert s3.workers_for("onnx", 1) == 3 and s3.workers_for("torch", 8) == 1
    with pytest.raises(ValueError, match="forward_workers must be >= 0"):
        ServingSettings(forward_workers=-1)


def test_request_pixel_budget_and_huge_integers():
    img = base64.b64encode(encode(np.zeros((60, 60), np.uint8))).decode()
    images, _ = decode_v1({"instances": [img, img]}, 8, LIMIT, max_request_pixels=7200)
    assert len(images) == 2
    with pytest.raises(InputError, match=r"instances\[2\]: the request's images hold more pixels") as e:
        decode_v1({"instances": [img, img, img]}, 8, LIMIT, max_request_pixels=7200)
    assert e.value.reason == "request_too_large"
    assert reason(decode_v2_input, "i", "FP32", [3, 60, 60], [0] * 10800, 8, LIMIT, 7200) == "request_too_large"
    assert reason(decode_v2_input, "i", "FP32", [1, 1, 2], [1, 10**400], 8, LIMIT) == "not_numeric"
    assert reason(decode_instance, [[1, 10**400]], "i", LIMIT) == "not_numeric"


def test_v1_body_left_as_bytes_is_parsed():
    img = base64.b64encode(encode(np.zeros((4, 4), np.uint8))).decode()
    body = json.dumps({"instances": [img], "parameters": {"return_members": True}}).encode()
    images, params = decode_v1(body, 4, LIMIT)
    assert len(images) == 1 and params == {"return_members": True}
    assert reason(decode_v1, b"{not json", 4, LIMIT) == "invalid_json"
