"""The served ensemble through a real ``medens serve`` on 127.0.0.1: parity with offline
predictions (v1 and v2, the latter through KServe's own REST client), explain, and the
bad-input corpus (every kind a 4xx JSON error naming the problem; the server stays healthy)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import zlib

import numpy as np
import pytest
from _server import http

from medens.data.transforms import preprocess
from medens.ensemble.artifact import load_ensemble


def png_b64(img: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    a = img[..., 0] if img.shape[-1] == 1 else img
    Image.fromarray(a).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def jpeg_bytes(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def offline(tiny_ensemble):
    """Offline ensemble probabilities and per-member probabilities of the first 12 test images."""
    path, images = tiny_ensemble
    ens = load_ensemble(path)
    imgs = images[:12]
    probs, members = ens.predict(preprocess(imgs, ens.input_spec))
    return imgs, probs, members, ens


def predict_v1(server, instances, **params):
    body = {"instances": instances}
    if params:
        body["parameters"] = params
    return http("POST", f"{server.url}/v1/models/{server.name}:predict", body)


def test_v1_base64_png_matches_offline_predictions(server, offline):
    imgs, probs, members, ens = offline
    status, body, _ = predict_v1(server, [png_b64(i) for i in imgs], return_members=True)
    assert status == 200, body
    preds = body["predictions"]
    served = np.array([p["probabilities"] for p in preds])
    np.testing.assert_allclose(served, probs, atol=1e-5, rtol=0)
    assert [p["label"] for p in preds] == probs.argmax(1).tolist()
    assert [p["class_name"] for p in preds] == [ens.class_names[k] for k in probs.argmax(1)]
    for mid, mp in members.items():
        np.testing.assert_allclose(np.array([p["members"][mid] for p in preds]), mp, atol=1e-5, rtol=0)
    # uncertainty: entropy of the ensemble probabilities, fraction of members off the ensemble label
    ent = -(probs * np.log(np.clip(probs, 1e-12, 1))).sum(1)
    np.testing.assert_allclose([p["entropy"] for p in preds], ent, atol=1e-5)
    dis = np.mean([m.argmax(1) != probs.argmax(1) for m in members.values()], axis=0)
    np.testing.assert_allclose([p["disagreement"] for p in preds], dis, atol=1e-12)
    np.testing.assert_allclose([p["confidence"] for p in preds], probs.max(1), atol=1e-5)


def test_v1_nested_arrays_and_other_sizes_match_offline(server, offline):
    imgs, probs, _, ens = offline
    status, body, _ = predict_v1(server, [i.tolist() for i in imgs[:4]])
    assert status == 200, body
    np.testing.assert_allclose([p["probabilities"] for p in body["predictions"]], probs[:4], atol=1e-5, rtol=0)
    # any size: a 2x up-scaled PNG is resized as the data stage resizes a file of that size (Pillow,
    # medens.data.decode.resize_pixels), then preprocessed: the input its training copy would give.
    # (preprocess() on the float batch resizes with torch instead: 4e-3 apart in pixels, which a
    # model trained past a couple of epochs turns into 3e-4 in probabilities)
    from medens.data.decode import resize_pixels

    big = np.repeat(np.repeat(imgs[:2], 2, axis=1), 2, axis=2)
    as_files = np.stack([resize_pixels(b, ens.input_spec.size) for b in big])
    expected, _ = ens.predict(preprocess(as_files, ens.input_spec))
    status, body, _ = predict_v1(server, [{"b64": png_b64(b)} for b in big])
    assert status == 200, body
    np.testing.assert_allclose([p["probabilities"] for p in body["predictions"]], expected, atol=1e-5, rtol=0)


def test_v2_through_kserve_rest_client_bytes_and_fp32(server, offline):
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    imgs, probs, members, _ = offline

    async def run():
        client = InferenceRESTClient(config=RESTConfig(protocol="v2", retries=0, timeout=60))
        try:
            # BYTES as base64 text in JSON (KServe's REST decoder turns binary BYTES into UTF-8 text)
            pngs = np.array([png_b64(i) for i in imgs], dtype=object)
            bytes_in = InferInput(name="image", shape=[len(imgs)], datatype="BYTES")
            bytes_in.set_data_from_numpy(pngs, binary_data=False)
            r_bytes = await client.infer(server.url, InferRequest(model_name=server.name, infer_inputs=[bytes_in],
                                                                  parameters={"return_members": True}),
                                         model_name=server.name)
            # FP32 intensities with the binary tensor extension
            fp = InferInput(name="image", shape=list(imgs.shape), datatype="FP32")
            fp.set_data_from_numpy(imgs.astype(np.float32), binary_data=True)
            r_fp = await client.infer(server.url, InferRequest(model_name=server.name, infer_inputs=[fp]),
                                      model_name=server.name)
            return r_bytes, r_fp
        finally:
            await client.close()

    r_bytes, r_fp = asyncio.run(run())
    names = [offline[3].class_names[k] for k in probs.argmax(1)]
    for resp in (r_bytes, r_fp):
        out = {o.name: o for o in resp.outputs}
        np.testing.assert_allclose(out["probabilities"].as_numpy(), probs, atol=1e-5, rtol=0)
        assert out["label"].as_numpy().tolist() == probs.argmax(1).tolist()
        assert [v.decode() if isinstance(v, bytes) else v for v in out["class_name"].data] == names
        ent = -(probs * np.log(np.clip(probs, 1e-12, 1))).sum(1)
        np.testing.assert_allclose(out["entropy"].as_numpy(), ent, atol=1e-5)
    out = {o.name: o for o in r_bytes.outputs}
    mp = out["member_probabilities"].as_numpy()
    assert mp.shape == (len(imgs), len(members), probs.shape[1])
    for j, m in enumerate(members.values()):
        np.testing.assert_allclose(mp[:, j], m, atol=1e-5, rtol=0)


def test_explain_returns_a_gradcam_overlay_png(server, offline):
    from PIL import Image

    imgs, probs, _, _ = offline
    status, body, _ = http("POST", f"{server.url}/v1/models/{server.name}:explain",
                           {"instances": [png_b64(imgs[0])]})
    assert status == 200, body
    e = body["explanations"][0]
    assert e["label"] == int(probs[0].argmax())
    ov = Image.open(io.BytesIO(base64.b64decode(e["overlay_png"])))
    assert ov.size == (imgs.shape[2], imgs.shape[1]) and ov.mode == "RGB"
    # the overlay differs from the plain image (the heat map is blended in)
    plain = np.repeat(imgs[0], 3, axis=-1) if imgs.shape[-1] == 1 else imgs[0]
    assert np.abs(np.asarray(ov, dtype=float) - plain).mean() > 1.0


def _png_with_bad_crc(img: np.ndarray) -> bytes:
    raw = bytearray(base64.b64decode(png_b64(img)))
    raw[-20] ^= 0xFF  # inside the IDAT/IEND tail
    return bytes(raw)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _huge_png_header() -> bytes:
    """A PNG declaring 50000 x 50000 pixels with a few bytes of pixel data (a decompression bomb's shape)."""
    ihdr = struct.pack(">IIBBBBB", 50000, 50000, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _chunk(b"IEND", b""))


def _binary_fp32(values: list[float]) -> tuple[bytes, dict]:
    """A v2 request body with a 1x2x2 FP32 tensor in the binary extension, and its headers."""
    raw = np.asarray(values, dtype="<f4").tobytes()
    head = json.dumps({"inputs": [{"name": "image", "shape": [1, 2, 2], "datatype": "FP32",
                                   "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return head + raw, {"content-type": "application/octet-stream", "inference-header-content-length": str(len(head))}


def corpus(img: np.ndarray) -> list[tuple[str, str, dict | bytes, dict, int, str]]:
    """(kind, path suffix, body, headers, expected status, text the error must contain)."""
    good = png_b64(img)
    png = base64.b64decode(good)
    h, w = img.shape[:2]
    v1, v2 = ":predict", "/infer"
    return [
        ("invalid JSON", v1, b'{"instances": [', {"content-type": "application/json"}, 400, "Unrecognized request"),
        ("invalid base64", v1, {"instances": ["not*base64!"]}, {}, 400, "invalid base64"),
        ("bytes that are not an image", v1, {"instances": [base64.b64encode(b"hello world, no image").decode()]},
         {}, 400, "not an image"),
        ("truncated PNG", v1, {"instances": [base64.b64encode(png[: len(png) // 2]).decode()]}, {}, 400, "truncated"),
        ("corrupt PNG checksum", v1, {"instances": [base64.b64encode(_png_with_bad_crc(img)).decode()]}, {}, 400,
         "instances[0]"),
        ("wrong channel count", v1, {"instances": [np.zeros((8, 8, 4)).tolist()]}, {}, 400, "4 channels"),
        ("wrong rank", v1, {"instances": [np.zeros((2, 8, 8, 1)).tolist()]}, {}, 400, "rank 4"),
        ("NaN literal in JSON", v1, b'{"instances": [[[0.0, NaN], [1.0, 2.0]]]}', {"content-type": "application/json"},
         400, "Unrecognized request format"),
        ("NaN in a binary FP32 tensor", v2, *_binary_fp32([0.0, float("nan"), 1.0, 2.0]), 400, "NaN or infinite"),
        ("inf in a binary FP32 tensor", v2, *_binary_fp32([0.0, float("inf"), 1.0, 2.0]), 400, "NaN or infinite"),
        ("intensity out of range", v1, {"instances": [[[0.0, 300.0], [1.0, 2.0]]]}, {}, 400, "[0, 255]"),
        ("ragged array", v1, {"instances": [[[1, 2], [3]]]}, {}, 400, "rectangular"),
        ("strings in an array", v1, {"instances": [[["a", "b"], ["c", "d"]]]}, {}, 400, "numeric"),
        ("empty instances", v1, {"instances": []}, {}, 400, "no instances"),
        ("instances not a list", v1, {"instances": "x"}, {}, 400, "to be a list"),
        ("no instances key", v1, {"inputs": [good]}, {}, 400, "no 'instances'"),
        ("batch over the limit", v1, {"instances": [good] * 17}, {}, 400, "over the limit of 16"),
        ("payload over the byte limit", v1, {"instances": ["A" * 2_100_000]}, {}, 413, "over the limit of 2000000"),
        ("huge image dimensions", v1, {"instances": [base64.b64encode(_huge_png_header()).decode()]}, {}, 400,
         "2500000000 pixels"),
        ("empty image string", v1, {"instances": [""]}, {}, 400, "empty"),
        ("object instance with other keys", v1, {"instances": [{"data": good}]}, {}, 400, "b64"),
        ("unknown model name", "UNKNOWN", {"instances": [good]}, {}, 404, "does not exist"),
        ("wrong v2 datatype", v2, {"inputs": [{"name": "image", "shape": [1, h, w], "datatype": "BOOL",
                                               "data": [True] * (h * w)}]}, {}, 400, "datatype 'BOOL'"),
        ("v2 shape does not match data length", v2,
         {"inputs": [{"name": "image", "shape": [1, h, w], "datatype": "FP32", "data": [0.0] * 10}]}, {}, 400,
         "holds"),
        ("v2 wrong rank", v2, {"inputs": [{"name": "image", "shape": [h * w], "datatype": "FP32",
                                           "data": [0.0] * (h * w)}]}, {}, 400, "[N, H, W]"),
        ("v2 two inputs", v2, {"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": [good]},
                                          {"name": "b", "shape": [1], "datatype": "BYTES", "data": [good]}]}, {}, 400,
         "exactly one input"),
        ("v2 BYTES not base64", v2, {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                                 "data": ["%%%"]}]}, {}, 400, "invalid base64"),
        ("v2 binary BYTES", v2, b'{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES",'
         b'"parameters":{"binary_data_size":8}}]}\x04\x00\x00\x00abcd',
         {"content-type": "application/octet-stream", "inference-header-content-length": "96"}, 400,
         "input 'image'[0]: the bytes are not an image"),
        ("v2 binary header without a list of inputs", v2, b'{"inputs": 5}abcd',
         {"content-type": "application/octet-stream", "inference-header-content-length": "13"}, 400,
         "malformed binary request"),
        ("v2 integer too large for a float", v2, b'{"inputs": [{"name": "image", "shape": [1, 1, 2], "datatype": "FP32", '
         b'"data": [1, 1' + b"0" * 400 + b']}]}', {"content-type": "application/json"}, 400, "numbers"),
        ("v2 missing inputs", v2, {"outputs": []}, {}, 422, "inputs"),
    ]


def test_bad_input_corpus_gets_named_4xx_and_server_stays_healthy(server, offline):
    imgs, probs, _, _ = offline
    cases = corpus(imgs[0])
    assert len(cases) >= 20
    failures = []
    for kind, suffix, body, headers, want, text in cases:
        if suffix == "UNKNOWN":
            url = f"{server.url}/v1/models/no-such-model:predict"
        elif suffix == "/infer":
            url = f"{server.url}/v2/models/{server.name}/infer"
        else:
            url = f"{server.url}/v1/models/{server.name}{suffix}"
        status, resp, _ = http("POST", url, body, headers)
        message = json.dumps(resp) if isinstance(resp, dict) else str(resp)
        if status != want or not isinstance(resp, dict) or text not in message:
            failures.append(f"{kind}: HTTP {status} {message[:300]}")
    assert not failures, "\n".join(failures)
    # afterwards: live, ready, and a valid request is answered correctly, whatever the JSON content type says
    assert http("GET", f"{server.url}/v1/models/{server.name}")[0] == 200
    status, body, _ = predict_v1(server, [png_b64(imgs[1])])
    assert status == 200
    np.testing.assert_allclose(body["predictions"][0]["probabilities"], probs[1], atol=1e-5, rtol=0)
    for ctype in ("application/json; charset=utf-8", "text/plain"):
        status, body, _ = http("POST", f"{server.url}/v1/models/{server.name}:predict",
                               json.dumps({"instances": [png_b64(imgs[1])]}).encode(), {"content-type": ctype})
        assert status == 200, (ctype, body)
        np.testing.assert_allclose(body["predictions"][0]["probabilities"], probs[1], atol=1e-5, rtol=0)
    # no unexpected 500 was counted on the way
    status, text, _ = http("GET", f"{server.url}/metrics")
    assert 'reason="internal"' not in text
