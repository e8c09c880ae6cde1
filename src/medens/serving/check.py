"""``medens probe``: one real prediction against a running endpoint (the chart's ``helm test``).

Standard library only (plus Pillow for the image), so it runs in the serving image without
KServe's client: it waits for ``GET /v1/models/<name>`` to report ``ready``, reads the v2 metadata
``GET /v2/models/<name>`` for the input shape when the server declares one, sends one generated
grey PNG as a v1 request ``{"instances": [{"b64": ...}]}`` (what :func:`medens.serving.inputs.decode_instance`
accepts) and checks that the returned probabilities sum to 1.
"""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.request

DEFAULT_SHAPE = (64, 64, 3)
TOLERANCE = 1e-4


class ProbeError(RuntimeError):
    """The endpoint is not ready or answered a prediction wrongly."""


def _request(method: str, url: str, body: dict | None, timeout: float) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=max(timeout, 0.1)) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")[:300]


def _wait_ready(base: str, model: str, deadline: float, timeout: float) -> None:
    last = "no answer"
    while True:
        left = deadline - time.monotonic()
        try:
            status, body = _request("GET", f"{base}/v1/models/{model}", None, min(left, 10.0))
            if status == 200 and isinstance(body, dict) and body.get("ready") is True:
                return
            last = f"HTTP {status}: {body}"
        except (OSError, urllib.error.URLError) as e:
            last = str(getattr(e, "reason", e))
        left = deadline - time.monotonic()
        if left <= 0:
            raise ProbeError(f"{base}/v1/models/{model} is not ready after {timeout:g} s (last: {last})")
        time.sleep(min(1.0, left))


def input_shape(metadata: object) -> tuple[int, int, int]:
    """(height, width, channels) from KServe v2 model metadata, else :data:`DEFAULT_SHAPE`.

    An image tensor input declares ``[N, H, W, C]`` or ``[N, H, W]``; a ``BYTES`` input or a shape
    with variable (``-1``) image dimensions says nothing, so the default is used."""
    inputs = metadata.get("inputs") if isinstance(metadata, dict) else None
    for inp in inputs or []:
        shape = inp.get("shape") if isinstance(inp, dict) else None
        if not isinstance(shape, list) or str(inp.get("datatype", "")).upper() == "BYTES":
            continue
        dims = [int(d) for d in shape[1:]] if len(shape) in (3, 4) else []
        if dims and all(d > 0 for d in dims):
            return dims[0], dims[1], dims[2] if len(dims) == 3 else 1
    return DEFAULT_SHAPE


def grey_png(height: int, width: int, channels: int) -> bytes:
    """A uniform mid-grey PNG of the given size (1 channel: L, else RGB)."""
    from PIL import Image

    img = Image.new("L" if channels == 1 else "RGB", (width, height), 128 if channels == 1 else (128, 128, 128))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def probe(url: str, model: str, *, timeout: float = 30.0) -> dict:
    """Wait until ``model`` is ready at ``url``, predict one grey image, check the answer.

    Args:
        url: the endpoint's base URL, e.g. ``http://rbc-demo-predictor.ml.svc.cluster.local``.
        model: the served model name.
        timeout: seconds to wait for readiness, and at most for the prediction.

    Returns:
        ``{"url", "model", "shape": [H, W, C], "class_name", "probabilities", "seconds"}``.

    Raises:
        ProbeError: not ready in time, a non-200 answer, or probabilities that do not sum to 1.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    base = url.rstrip("/")
    start = time.monotonic()
    deadline = start + timeout
    _wait_ready(base, model, deadline, timeout)
    try:
        status, meta = _request("GET", f"{base}/v2/models/{model}", None, max(deadline - time.monotonic(), 1.0))
    except OSError:
        status, meta = 0, None
    shape = input_shape(meta if status == 200 else None)
    body = {"instances": [{"b64": base64.b64encode(grey_png(*shape)).decode()}]}
    status, out = _request("POST", f"{base}/v1/models/{model}:predict", body, max(deadline - time.monotonic(), 5.0))
    if status != 200:
        raise ProbeError(f"POST {base}/v1/models/{model}:predict answered HTTP {status}: {out}")
    try:
        row = out["predictions"][0]
        probs = row["probabilities"]
        values = [float(v) for v in (probs.values() if isinstance(probs, dict) else probs)]
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise ProbeError(f"the prediction has no probabilities ({type(e).__name__}: {e}): {str(out)[:300]}") from e
    total = sum(values)
    if not values or abs(total - 1.0) > TOLERANCE:
        raise ProbeError(f"the probabilities sum to {total:.6f}, not 1 (within {TOLERANCE:g}): {values}")
    return {"url": base, "model": model, "shape": list(shape), "class_name": row.get("class_name"),
            "probabilities": values, "seconds": round(time.monotonic() - start, 3)}
