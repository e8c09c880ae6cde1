"""A real ``medens serve`` process on 127.0.0.1 for the serving tests and the benchmark."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | dict | None = None, headers: dict | None = None,
         timeout: float = 60.0) -> tuple[int, dict | str, dict]:
    """(status, parsed JSON or text, headers) without raising on 4xx/5xx."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    hdrs = {"content-type": "application/json"} if isinstance(body, dict) else {}
    hdrs.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw, h = r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        status, raw, h = e.code, e.read(), dict(e.headers)
    except urllib.error.URLError as e:
        if not isinstance(e.reason, BrokenPipeError | ConnectionResetError) or not data:
            raise
        # the server answered (413) and closed before the whole body was sent, as it may:
        # read the answer it wrote instead of failing on the write
        status, raw, h = _answer_before_body(url, method, data, hdrs, timeout)
    try:
        return status, json.loads(raw), h
    except ValueError:
        return status, raw.decode(errors="replace"), h


def _answer_before_body(url: str, method: str, data: bytes, headers: dict, timeout: float) -> tuple[int, bytes, dict]:
    import http.client
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.putrequest(method, u.path + (f"?{u.query}" if u.query else ""))
        for k, v in {**headers, "content-length": str(len(data))}.items():
            conn.putheader(k, v)
        conn.endheaders()
        try:
            conn.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = conn.getresponse()
        return r.status, r.read(), dict(r.headers)
    finally:
        conn.close()


def stop_process(proc: subprocess.Popen | None, timeout: float) -> None:
    """Terminate ``proc`` (kill it after ``timeout`` seconds) if it still runs."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ServerProcess:
    """``medens serve --model-dir DIR`` in a subprocess; ``url`` once ready, ``stop()`` ends it;
    gRPC on ``grpc_target`` (a free port of its own, never the default 8081)."""

    def __init__(self, model_dir: str | Path, name: str = "tiny", *, env: dict | None = None,
                 extra_args: list[str] | None = None, log: str | Path | None = None) -> None:
        self.port = free_port()
        self.name = name
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_port = free_port()
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        cmd = [sys.executable, "-m", "medens.cli", "serve", "--model-dir", str(model_dir), "--model-name", name,
               "--http-port", str(self.port), "--grpc-port", str(self.grpc_port), *(extra_args or [])]
        environ = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), **(env or {})}
        self.log_path = Path(log) if log else None
        out = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=environ)

    def wait_ready(self, timeout: float = 120.0) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text()[-3000:] if self.log_path else ""
                raise RuntimeError(f"medens serve exited with {self.proc.returncode}:\n{tail}")
            try:
                status, body, _ = http("GET", f"{self.url}/v1/models/{self.name}", timeout=2)
                if status == 200 and body.get("ready"):
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"medens serve not ready after {timeout} s")

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        stop_process(self.proc, 20)

    def __enter__(self) -> ServerProcess:
        return self.wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_files(ensemble_dir, name: str, files: list, log) -> np.ndarray:
    """Start the endpoint on ``ensemble_dir``, send ``files``' bytes as one v2 BYTES input, and
    return the served probabilities ``(len(files), K)`` (asserts a 200)."""
    import base64

    with ServerProcess(ensemble_dir, name, log=log) as server:
        body = {"inputs": [{"name": "image", "shape": [len(files)], "datatype": "BYTES",
                            "data": [base64.b64encode(f.read_bytes()).decode() for f in files]}]}
        status, out, _ = http("POST", f"{server.url}/v2/models/{name}/infer", body)
    assert status == 200, out
    probs = next(o for o in out["outputs"] if o["name"] == "probabilities")
    return np.asarray(probs["data"]).reshape(probs["shape"])
