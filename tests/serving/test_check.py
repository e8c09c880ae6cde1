"""`medens probe` (medens.serving.check) against the real server on 127.0.0.1, and against a stub
that answers wrongly."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medens.cli import main
from medens.serving.check import DEFAULT_SHAPE, ProbeError, grey_png, input_shape, probe


def test_probe_predicts_one_grey_image_on_the_real_server(server):
    r = probe(server.url, "tiny", timeout=30)
    assert r["model"] == "tiny" and r["url"] == server.url
    assert len(r["probabilities"]) == 3 and abs(sum(r["probabilities"]) - 1) <= 1e-4
    assert r["class_name"] in {"codocyte", "hypochromia", "normal"}
    assert r["shape"] == list(DEFAULT_SHAPE)  # the server's v2 metadata declares no image tensor shape


def test_the_cli_prints_one_line_and_exits_0_or_1(server, capsys):
    assert main(["probe", "--url", server.url + "/", "--model", "tiny", "--timeout", "30"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"probe ok: {server.url} model tiny: ")
    # a model the server does not have never becomes ready
    assert main(["probe", "--url", server.url, "--model", "absent", "--timeout", "1.5"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"probe FAILED: {server.url} model absent: ")
    assert "is not ready after 1.5 s (last: HTTP 404" in out[0]


@pytest.mark.parametrize("metadata, shape", [
    (None, (64, 64, 3)),
    ({"name": "m", "inputs": []}, (64, 64, 3)),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}]}, (64, 64, 3)),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1, -1, 3]}]}, (64, 64, 3)),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 32, 48, 3]}]}, (32, 48, 3)),
    ({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 28, 28]}]}, (28, 28, 1)),
])
def test_the_input_shape_comes_from_v2_metadata_when_declared(metadata, shape):
    assert input_shape(metadata) == shape


def test_the_grey_png_has_the_asked_size_and_mode():
    import io

    from PIL import Image

    rgb = Image.open(io.BytesIO(grey_png(32, 48, 3)))
    assert rgb.size == (48, 32) and rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (128, 128, 128)
    assert Image.open(io.BytesIO(grey_png(8, 8, 1))).mode == "L"


class _Stub(BaseHTTPRequestHandler):
    """Ready at once; predicts ``probabilities`` (class attribute) or answers ``status``."""

    probabilities: list = [0.5, 0.4]
    status = 200
    seen: list = []

    def _send(self, code: int, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self):  # noqa: N802
        if self.path == "/v1/models/m":
            self._send(200, {"name": "m", "ready": True})
        else:
            self._send(404, {"error": "no"})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).seen.append(body)
        if self.status != 200:
            self._send(self.status, {"error": "Model m failed"})
        else:
            self._send(200, {"predictions": [{"class_name": "a", "probabilities": self.probabilities}]})

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        _Stub.probabilities, _Stub.status, _Stub.seen = [0.5, 0.4], 200, []


def test_probabilities_not_summing_to_one_fail_with_the_sum(stub):
    with pytest.raises(ProbeError, match=r"the probabilities sum to 0\.900000, not 1 \(within 0\.0001\)"):
        probe(stub, "m", timeout=5)
    # the request is the v1 body the server decodes: one {"b64": PNG} instance
    (body,) = _Stub.seen
    assert list(body) == ["instances"] and list(body["instances"][0]) == ["b64"]
    _Stub.probabilities = [0.25, 0.25, 0.5 + 5e-5]
    assert probe(stub, "m", timeout=5)["probabilities"] == [0.25, 0.25, 0.50005]  # within 1e-4


def test_an_error_answer_fails_with_the_status(stub):
    _Stub.status = 500
    with pytest.raises(ProbeError, match=r":predict answered HTTP 500: \{'error': 'Model m failed'\}"):
        probe(stub, "m", timeout=5)


def test_nothing_listening_fails_after_the_timeout():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ProbeError, match=rf"http://127.0.0.1:{port}/v1/models/m is not ready after 1 s"):
        probe(f"http://127.0.0.1:{port}", "m", timeout=1)
    with pytest.raises(ValueError, match="timeout must be positive"):
        probe("http://127.0.0.1:1", "m", timeout=0)
