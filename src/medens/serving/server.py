"""Start the KServe model server for one ensemble artifact (``medens serve``).

One uvicorn worker (counters stay whole), the REST protocols (v1 and v2 on one port),
``/metrics`` with KServe's and medens' metrics, and a guard in front of every route
(:class:`RequestGuard`) that refuses bodies over the byte limit with 413 before KServe reads
them, inlines binary ``BYTES`` tensors of the v2 binary data extension (:func:`inline_binary_bytes`),
and counts every error response by reason; the v2 gRPC protocol on its own port
(:mod:`medens.serving.grpc_server`) unless ``grpc_port`` is 0.

KServe's ``kserve.model_server`` parses ``sys.argv`` when it is imported; :func:`import_kserve`
imports it with a clean ``argv`` so ``medens serve``'s own flags never reach that parser.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import sys
from typing import Any

from medens.serving.inputs import bytes_elements
from medens.serving.settings import ServingSettings

STATUS_REASONS = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
                  422: "invalid_schema", 500: "internal", 501: "not_implemented", 503: "not_ready"}


def import_kserve() -> Any:
    """``kserve.model_server`` imported without seeing this process's command line."""
    if "kserve.model_server" in sys.modules:
        return sys.modules["kserve.model_server"]
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        import kserve.model_server as ms
    finally:
        sys.argv = saved
    return ms


class _NoTiming:
    """Stands in for KServe's ``TimingMiddleware``: KServe adds it to every REST app whatever
    ``enable_latency_logging`` says, and per request it calls ``getrusage`` twice (the kernel sums
    every thread of the process: the forwards' too) and writes two ``kserve.trace`` log lines. On
    2 cores at concurrency 32 that was half the event loop's busy time (py-spy; benchmarks/serve.py).
    Latency is in Prometheus (``medens_forward_seconds``, the request counters) instead."""

    def __init__(self, app: Any, **_: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def without_kserve_timing() -> None:
    """KServe's REST server builds its app without ``TimingMiddleware`` (see :class:`_NoTiming`)."""
    import kserve.protocol.rest.server as rest

    rest.TimingMiddleware = _NoTiming  # type: ignore[misc,assignment]


class RequestGuard:
    """ASGI middleware: the payload byte limit (413), a counter of every inference request and an
    error counter for every 4xx/5xx answer (the error ratio's numerator and denominator)."""

    def __init__(self, app: Any, max_bytes: int, model_name: str) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)
        self.model_name = model_name

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from medens.serving.metrics import ERROR_COUNTED, REQUESTS, record_error

        holder: dict[str, Any] = {"counted": False}
        token = ERROR_COUNTED.set(holder)
        try:
            if scope.get("method") in ("POST", "PUT", "PATCH"):
                REQUESTS.labels(self.model_name).inc()
                body_or_none = await self._read_body(scope, receive)
                if body_or_none is None:
                    record_error(self.model_name, "payload_too_large")
                    await _json_response(send, 413, f"request body over the limit of {self.max_bytes} bytes "
                                                    f"(MEDENS_SERVE_MAX_BYTES)")
                    return
                try:
                    scope, body_or_none = inline_binary_bytes(scope, body_or_none)
                except ValueError as e:
                    record_error(self.model_name, "binary_request")
                    await _json_response(send, 400, str(e))
                    return
                receive = _replay(body_or_none)

            async def counting_send(message: dict) -> None:
                if message["type"] == "http.response.start" and message["status"] >= 400 and not holder["counted"]:
                    holder["counted"] = True
                    status = int(message["status"])
                    record_error(self.model_name, STATUS_REASONS.get(status, f"http_{status}"))
                await send(message)

            try:
                await self.app(scope, receive, counting_send)
            except Exception:
                # an unhandled error: Starlette's outermost middleware answers 500 past this one
                if not holder["counted"]:
                    record_error(self.model_name, "internal")
                raise
        finally:
            ERROR_COUNTED.reset(token)

    async def _read_body(self, scope: dict, receive: Any) -> bytes | None:
        """The whole body, or None once it is over the limit (declared or streamed)."""
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                with contextlib.suppress(ValueError):
                    if int(value) > self.max_bytes:
                        return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def inline_binary_bytes(scope: dict, body: bytes) -> tuple[dict, bytes]:
    """A v2 binary-extension request (``Inference-Header-Content-Length``) with its ``BYTES``
    inputs' binary data (each element a little-endian uint32 length, then that many bytes: an
    encoded image file) moved into the JSON header as base64 ``data``, which KServe's decoder and
    :func:`medens.serving.inputs.decode_v2_input` take as the same files sent base64; other binary
    inputs stay binary. KServe's own decoder turns binary ``BYTES`` into UTF-8 text (a 500 for an
    image). Other requests pass unchanged; a malformed header or binary part raises ``ValueError``
    naming the problem (a 400)."""
    headers = dict(scope.get("headers", []))
    length = headers.get(b"inference-header-content-length")
    if length is None:
        return scope, body
    try:
        head_len = int(length)
        head = json.loads(body[:head_len])
    except ValueError:
        return scope, body  # KServe answers malformed headers itself
    inputs = head.get("inputs") if isinstance(head, dict) else None
    if not isinstance(inputs, list) or not all(isinstance(i, dict) and {"name", "shape", "datatype"} <= set(i)
                                               for i in inputs):
        # KServe's binary decoder would fail on these with a 500
        raise ValueError("malformed binary request: the JSON header must be {\"inputs\": [{\"name\", \"shape\", "
                         "\"datatype\", \"parameters\": {\"binary_data_size\": N}}, ...]}")
    if not any(_binary_size(i) is not None and str(i["datatype"]).upper() == "BYTES" for i in inputs):
        return scope, body
    offset, kept = head_len, []
    for i in inputs:
        size = _binary_size(i)
        if size is None:
            continue
        if size < 0 or offset + size > len(body):
            raise ValueError(f"input {i['name']!r}: binary_data_size {size} does not fit the "
                             f"{len(body) - offset} bytes of binary data left in the body")
        part, offset = body[offset:offset + size], offset + size
        if str(i["datatype"]).upper() == "BYTES":
            elements = bytes_elements(part, f"input {i['name']!r}")
            i["data"] = [base64.b64encode(e).decode("ascii") for e in elements]
            i["parameters"] = {k: v for k, v in i["parameters"].items() if k != "binary_data_size"}
        else:
            kept.append(part)
    new_head = json.dumps(head).encode()
    new_body = new_head + b"".join(kept) + body[offset:]
    replaced = {b"inference-header-content-length": str(len(new_head)).encode(),
                b"content-length": str(len(new_body)).encode()}
    new_headers = [(k, replaced.get(k, v)) for k, v in scope.get("headers", [])]
    return {**scope, "headers": new_headers}, new_body


def _binary_size(inp: dict) -> int | None:
    params = inp.get("parameters")
    if not isinstance(params, dict) or "binary_data_size" not in params:
        return None
    size = params["binary_data_size"]
    if not isinstance(size, int) or isinstance(size, bool):
        raise ValueError(f"input {inp.get('name')!r}: binary_data_size must be an integer, got {size!r}")
    return size


def _replay(body: bytes) -> Any:
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


async def _json_response(send: Any, status: int, error: str) -> None:
    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def default_model_name(model_dir: str) -> str:
    """The served name when none is given: the experiment that produced the artifact, else its name."""
    from pathlib import Path

    from medens.ensemble.artifact import ENSEMBLE_MANIFEST

    p = Path(model_dir) / ENSEMBLE_MANIFEST
    if p.is_file():
        manifest = json.loads(p.read_text())
        name = (manifest.get("evaluation") or {}).get("experiment") or manifest.get("name")
        if name:
            return re.sub(r"[^a-z0-9-]+", "-", str(name).lower()).strip("-") or "medens"
    return "medens"


def build_model(model_dir: str, *, name: str | None = None, settings: ServingSettings | None = None,
                device: str = "cpu", endpoint: str | None = None, backend: str = "auto",
                threads: int | None = None) -> Any:
    """An :class:`~medens.serving.model.EnsembleModel`, loaded (raises if any member fails), its
    members on ``backend`` (auto, onnx or torch) whatever the protocol."""
    import_kserve()
    from medens.serving.model import EnsembleModel
    from medens.serving.predictor import fetch_artifact

    local = str(fetch_artifact(model_dir, endpoint=endpoint))
    model = EnsembleModel(name or default_model_name(local), local, settings=settings, device=device,
                          backend=backend, threads=threads)
    model.load()
    return model


def serve(model_dir: str, *, name: str | None = None, http_port: int = 8080, grpc_port: int = 8081,
          settings: ServingSettings | None = None, device: str = "cpu", endpoint: str | None = None,
          backend: str = "auto", threads: int | None = None) -> None:
    """Load the ensemble and serve it until interrupted (blocking); gRPC v2 on ``grpc_port`` (0: off)."""
    settings = settings or ServingSettings.from_env()
    ms = import_kserve()
    model = build_model(model_dir, name=name, settings=settings, device=device, endpoint=endpoint, backend=backend,
                        threads=threads)
    ms.app.add_middleware(RequestGuard, max_bytes=settings.max_bytes, model_name=model.name)
    without_kserve_timing()
    server = ms.ModelServer(http_port=http_port, enable_grpc=False, workers=1, enable_latency_logging=False)
    grpc_note = ""
    if grpc_port:
        from medens.serving.grpc_server import EnsembleGRPCServer

        # KServe's ModelServer starts its own gRPC server only with KServe's interceptor and limits:
        # ours joins the servers it gathers, and its stop() stops it
        server._grpc_server = EnsembleGRPCServer(grpc_port, server.dataplane, server.model_repository_extension,
                                                 model_name=model.name, max_bytes=settings.max_bytes,
                                                 grace_period=server.grace_period)
        server.servers.append(server._grpc_server.start(server.max_threads))
        grpc_note = f"; gRPC v2 (inference.GRPCInferenceService/ModelInfer) on 0.0.0.0:{grpc_port}"
    n = len(model.predictor.member_ids)
    print(f"serving {model.name!r} ({model.predictor.describe()['method']}, {n} member{'s' * (n != 1)}, "
          f"{model.predictor.backend} backend, {model.batcher.workers} forward{'s' * (model.batcher.workers != 1)} "
          f"at once) on "
          f"http://0.0.0.0:{http_port}: POST /v1/models/{model.name}:predict, /v2/models/{model.name}/infer, "
          f"GET /metrics{grpc_note}", flush=True)
    server.start([model])
