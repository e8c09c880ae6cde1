"""gRPC v2 and raw-byte uploads through a real ``medens serve`` (issue 24, items 4, 5 and 7):
predictions equal REST v2's, ``confidence`` in v2 equals v1's, and the project's bad-input corpus
(``test_server.corpus``, plus DICOM cases) gets the same message through gRPC (typed and raw
contents), the v2 binary data extension and a raw ``application/dicom`` body as through base64
JSON, with the mapped status; the server stays healthy."""

from __future__ import annotations

import base64
import binascii
import io
import json
import struct
from pathlib import Path

import grpc
import numpy as np
import pytest
from _server import http
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from pydicom.data import get_testdata_file
from test_server import corpus, png_b64

CONTENTS = {"BYTES": "bytes_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BOOL": "bool_contents",
            "UINT8": "uint_contents"}
NUMPY = {"FP32": "<f4", "FP64": "<f8", "BOOL": "?", "UINT8": "u1"}
# REST answers these with 400 (KServe's InvalidInput) or 413 (the byte limit); gRPC with RESOURCE_EXHAUSTED
TOO_LARGE = ("batch over the limit", "payload over the byte limit", "huge image dimensions", "DICOM too large")


class Tensor:
    """One v2 input: BYTES elements are raw file bytes (base64 only in REST JSON)."""

    def __init__(self, name: str, datatype: str, shape: list[int], data: list) -> None:
        self.name, self.datatype, self.shape, self.data = name, datatype, shape, data

    def json(self) -> dict:
        data = [base64.b64encode(d).decode() for d in self.data] if self.datatype == "BYTES" else self.data
        return {"name": self.name, "shape": self.shape, "datatype": self.datatype, "data": data}

    def binary(self) -> bytes:
        if self.datatype == "BYTES":
            return b"".join(struct.pack("<I", len(d)) + d for d in self.data)
        return np.asarray(self.data, dtype=NUMPY[self.datatype]).tobytes()

    def typed(self) -> pb.ModelInferRequest.InferInputTensor:
        contents = pb.InferTensorContents(**{CONTENTS[self.datatype]: self.data})
        return pb.ModelInferRequest.InferInputTensor(name=self.name, datatype=self.datatype, shape=self.shape,
                                                     contents=contents)


def rest_json(server, tensors: list[Tensor], model: str | None = None, **params) -> tuple[int, dict]:
    body = {"inputs": [t.json() for t in tensors], **({"parameters": params} if params else {})}
    status, out, _ = http("POST", f"{server.url}/v2/models/{model or server.name}/infer", body)
    return status, out


def rest_binary(server, tensors: list[Tensor]) -> tuple[int, dict]:
    parts = [t.binary() for t in tensors]
    head = json.dumps({"inputs": [{"name": t.name, "shape": t.shape, "datatype": t.datatype,
                                   "parameters": {"binary_data_size": len(p)}} for t, p in zip(tensors, parts)]})
    status, out, _ = http("POST", f"{server.url}/v2/models/{server.name}/infer", head.encode() + b"".join(parts),
                          {"content-type": "application/octet-stream", "inference-header-content-length":
                           str(len(head.encode()))})
    return status, out


def grpc_call(server, tensors: list[Tensor], *, raw: bool, model: str | None = None, **params):
    """(status code, details, response or None) of ModelInfer over a real channel."""
    req = pb.ModelInferRequest(model_name=model or server.name, id="t1")
    for t in tensors:
        req.inputs.append(t.typed() if not raw else pb.ModelInferRequest.InferInputTensor(
            name=t.name, datatype=t.datatype, shape=t.shape))
        if raw:
            req.raw_input_contents.append(t.binary())
    for k, v in params.items():
        req.parameters[k].bool_param = bool(v)
    opts = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(server.grpc_target, options=opts) as channel:
        try:
            resp = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=60)
        except grpc.RpcError as e:
            return e.code(), e.details(), None
    return grpc.StatusCode.OK, "", resp


def grpc_outputs(resp: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    out = {}
    for i, o in enumerate(resp.outputs):
        if resp.raw_output_contents:
            raw = resp.raw_output_contents[i]
            arr = np.frombuffer(raw, dtype={"FP32": "<f4", "INT64": "<i8"}.get(o.datatype, "u1")) \
                if o.datatype != "BYTES" else np.array([raw], dtype=object)
        elif o.datatype == "BYTES":
            arr = np.array(list(o.contents.bytes_contents), dtype=object)
        else:
            arr = np.asarray({"FP32": o.contents.fp32_contents, "INT64": o.contents.int64_contents}[o.datatype])
        out[o.name] = arr.reshape(list(o.shape)) if o.datatype != "BYTES" else arr
    return out


def rest_outputs(out: dict) -> dict[str, np.ndarray]:
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in out["outputs"]}


# ---------------------------------------------------------------- the corpus, as tensors and files
def as_tensors(kind: str, suffix: str, body) -> list[Tensor] | None:
    """A corpus case as the v2 tensors that hold the same content (image files as raw bytes), or
    None where gRPC and raw uploads have no counterpart (JSON syntax, base64 text, JSON schema)."""
    if kind == "payload over the byte limit":
        return [Tensor("image", "BYTES", [1], [b"\x00" * 2_100_000])]
    if isinstance(body, dict) and suffix == ":predict" and isinstance(body.get("instances"), list):
        inst = body["instances"]
        if all(isinstance(v, str) for v in inst):
            try:
                return [Tensor("image", "BYTES", [len(inst)], [base64.b64decode(v, validate=True) for v in inst])]
            except binascii.Error:
                return None
        if len(inst) == 1 and isinstance(inst[0], list):
            try:
                a = np.asarray(inst[0], dtype=np.float64)
            except (ValueError, TypeError):
                return None  # ragged or strings: no typed tensor holds them
            return [Tensor("image", "FP64", [1, *a.shape], a.ravel().tolist())]
        return None
    if isinstance(body, bytes) and suffix == "/infer" and b"binary_data_size" in body and b"FP32" in body:
        raw = body[body.index(b"}]}") + 3:]
        return [Tensor("image", "FP32", [1, 2, 2], np.frombuffer(raw, "<f4").tolist())]
    if isinstance(body, dict) and suffix == "/infer" and isinstance(body.get("inputs"), list):
        tensors = []
        for i in body["inputs"]:
            data = i["data"]
            if i["datatype"] == "BYTES":
                try:
                    data = [base64.b64decode(d, validate=True) for d in data]
                except binascii.Error:
                    return None
            tensors.append(Tensor(i["name"], i["datatype"], i["shape"], data))
        return tensors
    return None


def dicom_cases() -> list[tuple[str, bytes]]:
    """DICOM uploads the endpoint must refuse by name (pydicom's own test files, no download)."""
    import pydicom

    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    ds = pydicom.dcmread(io.BytesIO(ct))
    ds.Rows, ds.Columns = 4000, 4000  # declared far over the server's 1e6 pixels, pixel data unchanged
    big = io.BytesIO()
    ds.save_as(big)
    return [("truncated DICOM", ct[: len(ct) // 2]),
            ("DICOM without pixel data", Path(get_testdata_file("rtplan.dcm")).read_bytes()),
            ("DICOM too large", big.getvalue())]


def bad_cases(img: np.ndarray) -> list[tuple[str, list[Tensor]]]:
    cases = [(kind, t) for kind, suffix, body, _, status, _ in corpus(img)
             if status < 500 and (t := as_tensors(kind, suffix, body)) is not None]
    return cases + [(kind, [Tensor("image", "BYTES", [1], [data])]) for kind, data in dicom_cases()]


def expected_code(kind: str, status: int) -> grpc.StatusCode:
    if status == 404:
        return grpc.StatusCode.NOT_FOUND
    return grpc.StatusCode.RESOURCE_EXHAUSTED if kind in TOO_LARGE else grpc.StatusCode.INVALID_ARGUMENT


def assert_healthy(server, img: np.ndarray) -> None:
    """Live and ready, and a good request answered by REST and gRPC alike; no 500 counted."""
    assert http("GET", f"{server.url}/v2/models/{server.name}/ready")[0] == 200
    png = [Tensor("image", "BYTES", [1], [base64.b64decode(png_b64(img))])]
    status, out = rest_json(server, png)
    assert status == 200, out
    code, details, resp = grpc_call(server, png, raw=True)
    assert code == grpc.StatusCode.OK, details
    np.testing.assert_allclose(grpc_outputs(resp)["probabilities"], rest_outputs(out)["probabilities"], atol=1e-6)
    assert 'reason="internal"' not in http("GET", f"{server.url}/metrics")[1]


# ---------------------------------------------------------------- tests
def test_grpc_and_binary_predictions_equal_rest_v2_and_v2_confidence_equals_v1(server, tiny_ensemble):
    imgs = tiny_ensemble[1][:6]
    files = [base64.b64decode(png_b64(i)) for i in imgs]
    status, ref = rest_json(server, [Tensor("image", "BYTES", [len(files)], files)], return_members=True)
    assert status == 200, ref
    ref_out = rest_outputs(ref)
    status, v1, _ = http("POST", f"{server.url}/v1/models/{server.name}:predict",
                         {"instances": [png_b64(i) for i in imgs]})
    assert status == 200, v1
    np.testing.assert_allclose(ref_out["confidence"], [p["confidence"] for p in v1["predictions"]], atol=1e-7, rtol=0)
    np.testing.assert_allclose(ref_out["confidence"], ref_out["probabilities"].max(1), atol=0, rtol=0)
    assert ref_out["member_probabilities"].shape == (len(imgs), 3, ref_out["probabilities"].shape[1])

    intensities = Tensor("image", "FP32", list(imgs.shape), imgs.astype(np.float32).ravel().tolist())
    variants = {"grpc typed BYTES": grpc_call(server, [Tensor("image", "BYTES", [len(files)], files)], raw=False,
                                              return_members=True),
                "grpc raw BYTES": grpc_call(server, [Tensor("image", "BYTES", [len(files)], files)], raw=True,
                                            return_members=True),
                "grpc raw FP32": grpc_call(server, [intensities], raw=True, return_members=True)}
    for what, (code, details, resp) in variants.items():
        assert code == grpc.StatusCode.OK, (what, details)
        out = grpc_outputs(resp)
        for name in ("probabilities", "confidence", "entropy", "disagreement", "member_probabilities"):
            np.testing.assert_allclose(out[name], ref_out[name], atol=1e-6, rtol=0, err_msg=f"{what}: {name}")
        assert out["label"].tolist() == ref_out["label"].tolist(), what
        assert [b.decode() for b in out["class_name"]] == ref_out["class_name"].tolist(), what
    status, binary = rest_binary(server, [Tensor("image", "BYTES", [len(files)], files)])
    assert status == 200, binary
    np.testing.assert_allclose(rest_outputs(binary)["probabilities"], ref_out["probabilities"], atol=1e-6, rtol=0)


def test_a_dicom_file_gives_the_same_probabilities_on_every_route(server):
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    status, v1, _ = http("POST", f"{server.url}/v1/models/{server.name}:predict",
                         {"instances": [base64.b64encode(ct).decode()]})
    assert status == 200, v1
    ref = np.asarray(v1["predictions"][0]["probabilities"])
    got = {}
    for ctype in ("application/dicom", "image/png"):
        status, out, _ = http("POST", f"{server.url}/v1/models/{server.name}:predict", ct, {"content-type": ctype})
        assert status == 200, (ctype, out)
        got[ctype] = out["predictions"][0]["probabilities"]
        assert out["predictions"][0]["confidence"] == v1["predictions"][0]["confidence"]
    tensor = [Tensor("image", "BYTES", [1], [ct])]
    status, out = rest_binary(server, tensor)
    assert status == 200, out
    got["v2 binary extension"] = rest_outputs(out)["probabilities"][0]
    for raw in (False, True):
        code, details, resp = grpc_call(server, tensor, raw=raw)
        assert code == grpc.StatusCode.OK, details
        got[f"grpc raw={raw}"] = grpc_outputs(resp)["probabilities"][0]
    for route, probs in got.items():
        np.testing.assert_allclose(probs, ref, atol=1e-6, rtol=0, err_msg=route)
    assert abs(ref.sum() - 1) < 1e-5


def test_raw_bodies_get_the_base64_status_and_message(server, tiny_ensemble):
    """Every one-file case of the corpus, sent as a raw body instead of a base64 instance."""
    img = tiny_ensemble[1][0]
    single = [(k, t[0].data[0]) for k, t in bad_cases(img) if len(t) == 1 and t[0].datatype == "BYTES"
              and len(t[0].data) == 1]
    assert {"bytes that are not an image", "truncated PNG", "DICOM without pixel data", "DICOM too large",
            "payload over the byte limit", "huge image dimensions", "empty image string"} <= {k for k, _ in single}
    failures = []
    url = f"{server.url}/v1/models/{server.name}:predict"
    for kind, data in single:
        ref_status, ref, _ = http("POST", url, {"instances": [base64.b64encode(data).decode()]})
        assert 400 <= ref_status < 500 and "error" in ref, (kind, ref_status, ref)
        for ctype in ("application/dicom", "image/png"):
            status, out, _ = http("POST", url, data, {"content-type": ctype})
            if (status, out) != (ref_status, ref):
                failures.append(f"{kind} ({ctype}): {status} {out} != {ref_status} {ref}")
    assert not failures, "\n".join(failures)
    assert_healthy(server, img)


def test_v2_binary_bytes_get_the_base64_status_and_message(server, tiny_ensemble):
    img = tiny_ensemble[1][0]
    cases = [(k, t) for k, t in bad_cases(img) if all(x.datatype == "BYTES" for x in t)]
    assert len(cases) >= 10
    failures = []
    for kind, tensors in cases:
        ref_status, ref = rest_json(server, tensors)
        assert 400 <= ref_status < 500 and "error" in ref, (kind, ref_status, ref)
        status, out = rest_binary(server, tensors)
        if (status, out) != (ref_status, ref):
            failures.append(f"{kind}: {status} {out} != {ref_status} {ref}")
    assert not failures, "\n".join(failures)
    # a binary part that contradicts its header is a named 400
    head = b'{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":8}}]}'
    status, out, _ = http("POST", f"{server.url}/v2/models/{server.name}/infer", head + b"\xff\x00\x00\x00abcd",
                          {"content-type": "application/octet-stream", "inference-header-content-length":
                           str(len(head))})
    assert status == 400 and "element 0 declares 255 bytes but 4 remain" in out["error"], out
    assert_healthy(server, img)


def test_grpc_bad_input_corpus_same_messages_mapped_status_server_healthy(server, tiny_ensemble):
    img = tiny_ensemble[1][0]
    cases = bad_cases(img)
    assert len(cases) >= 20
    failures = []
    for kind, tensors in cases:
        finite = all(t.datatype == "BYTES" or np.isfinite(np.asarray(t.data, dtype=float)).all() for t in tensors)
        ref_status, ref = rest_json(server, tensors) if finite else rest_binary(server, tensors)
        assert 400 <= ref_status < 500 and "error" in ref, (kind, ref_status, ref)
        raw_ok = all(t.datatype in NUMPY or t.datatype == "BYTES" for t in tensors)
        for raw in (False, True) if raw_ok else (False,):
            code, details, _ = grpc_call(server, tensors, raw=raw)
            want = expected_code(kind, ref_status)
            # over the byte limit gRPC itself refuses the message, naming the same limit
            same = "2000000" in details if ref_status == 413 else details == ref["error"]
            if code != want or not same:
                failures.append(f"{kind} (raw={raw}): {code} {details!r} != {want} {ref['error']!r}")
    code, details, _ = grpc_call(server, [Tensor("image", "BYTES", [1], [b"x"])], raw=False, model="no-such-model")
    status, ref = rest_json(server, [Tensor("image", "BYTES", [1], [b"x"])], model="no-such-model")
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, ref["error"]) and status == 404
    assert not failures, "\n".join(failures)
    assert_healthy(server, img)


@pytest.mark.parametrize("datatype", ["FP32", "BYTES"])
def test_grpc_raw_contents_that_contradict_the_shape_are_named(server, datatype):
    tensor = Tensor("image", datatype, [1, 2, 2] if datatype == "FP32" else [1], [])
    req = pb.ModelInferRequest(model_name=server.name)
    req.inputs.append(pb.ModelInferRequest.InferInputTensor(name="image", datatype=datatype, shape=tensor.shape))
    req.raw_input_contents.append(b"\x01\x02\x03" if datatype == "FP32" else b"\x09\x00\x00\x00abc")
    with grpc.insecure_channel(server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    want = "3 bytes of binary data are not a whole number of FP32 elements" if datatype == "FP32" else \
        "malformed binary BYTES data: element 0 declares 9 bytes but 3 remain"
    assert f"input 'image': {want}" in e.value.details()
