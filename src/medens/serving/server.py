"""Start the KServe model server for one ensemble artifact (``medens serve``).

One uvicorn worker (counters stay whole), the REST protocols only (v1 and v2 on one port),
``/metrics`` with KServe's and medens' metrics, and a guard in front of every route
(:class:`RequestGuard`) that refuses bodies over the byte limit with 413 before KServe reads
them, and counts every error response by reason.

KServe's ``kserve.model_server`` parses ``sys.argv`` when it is imported; :func:`import_kserve`
imports it with a clean ``argv`` so ``medens serve``'s own flags never reach that parser.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from typing import Any

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
                problem = _binary_bytes_problem(scope, body_or_none)
                if problem:
                    record_error(self.model_name, "binary_request")
                    await _json_response(send, 400, problem)
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


def _binary_bytes_problem(scope: dict, body: bytes) -> str | None:
    """Problems of a v2 binary-extension request that KServe's REST decoder would answer with 500:
    a header without a list of inputs, and ``BYTES`` tensors (it turns them into UTF-8 text, which
    fails for encoded images); refused up front with the way that works."""
    headers = dict(scope.get("headers", []))
    length = headers.get(b"inference-header-content-length")
    if length is None:
        return None
    try:
        head = json.loads(body[: int(length)])
    except ValueError:
        return None  # KServe answers malformed headers itself
    inputs = head.get("inputs") if isinstance(head, dict) else None
    if not isinstance(inputs, list) or not all(isinstance(i, dict) and {"name", "shape", "datatype"} <= set(i)
                                               for i in inputs):
        # KServe's binary decoder would fail on these with a 500
        return ("malformed binary request: the JSON header must be {\"inputs\": [{\"name\", \"shape\", "
                "\"datatype\", \"parameters\": {\"binary_data_size\": N}}, ...]}")
    for i in inputs:
        params = i.get("parameters") if isinstance(i, dict) else None
        if isinstance(params, dict) and str(i.get("datatype", "")).upper() == "BYTES" and "binary_data_size" in params:
            return (f"input {i.get('name')!r}: BYTES with the binary data extension is not supported; send encoded "
                    f"images as base64 strings in 'data' (JSON), or pixel intensities as a binary FP32/UINT8 tensor")
    return None


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


def serve(model_dir: str, *, name: str | None = None, http_port: int = 8080, settings: ServingSettings | None = None,
          device: str = "cpu", endpoint: str | None = None, backend: str = "auto", threads: int | None = None) -> None:
    """Load the ensemble and serve it until interrupted (blocking)."""
    settings = settings or ServingSettings.from_env()
    ms = import_kserve()
    model = build_model(model_dir, name=name, settings=settings, device=device, endpoint=endpoint, backend=backend,
                        threads=threads)
    ms.app.add_middleware(RequestGuard, max_bytes=settings.max_bytes, model_name=model.name)
    server = ms.ModelServer(http_port=http_port, enable_grpc=False, workers=1, enable_latency_logging=False)
    n = len(model.predictor.member_ids)
    print(f"serving {model.name!r} ({model.predictor.describe()['method']}, {n} member{'s' * (n != 1)}, "
          f"{model.predictor.backend} backend) on "
          f"http://0.0.0.0:{http_port}: POST /v1/models/{model.name}:predict, /v2/models/{model.name}/infer, "
          f"GET /metrics", flush=True)
    server.start([model])
