"""A real Prometheus server on 127.0.0.1 that scrapes a ``medens serve`` process, for the tests.

The Debian/Ubuntu package ``prometheus`` provides ``prometheus`` and ``promtool`` (``make test``
installs it as root). :class:`PrometheusServer` writes a ``prometheus.yml`` into a work directory,
checks it with ``promtool check config``, runs ``prometheus`` on a free loopback port with its TSDB
in that directory, waits for ``/-/ready`` and always ends the process on exit. Queries go through
the HTTP API (``/api/v1/query``) with urllib.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _server import free_port, stop_process

INSTALL_HINT = ("the 'prometheus' package (prometheus and promtool binaries) is not installed; install it with "
                "'sudo apt-get install -y prometheus', or run 'make test' as root (it installs SYSTEM_PACKAGES)")


class PrometheusMissing(RuntimeError):
    """``prometheus`` or ``promtool`` is not on PATH (nor in /usr/bin)."""


def find_binaries() -> tuple[str, str]:
    """Paths of ``prometheus`` and ``promtool``; raises :class:`PrometheusMissing` with how to install them."""
    found = []
    for name in ("prometheus", "promtool"):
        path = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/local/bin:/usr/sbin")
        if path is None:
            raise PrometheusMissing(f"{name} not found: {INSTALL_HINT}")
        found.append(path)
    return found[0], found[1]


def write_config(workdir: Path, job: str, target: str, scrape_interval: str = "1s") -> Path:
    """A ``prometheus.yml`` scraping ``target`` (``host:port``) at ``/metrics`` as job ``job``."""
    # JSON is YAML: no YAML dependency, and every value quoted exactly
    config = {
        "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                   "evaluation_interval": scrape_interval},
        "scrape_configs": [{"job_name": job, "metrics_path": "/metrics", "scheme": "http",
                            "static_configs": [{"targets": [target]}]}],
    }
    path = workdir / "prometheus.yml"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


class PrometheusServer:
    """``prometheus`` scraping one target every ``scrape_interval``; a context manager."""

    def __init__(self, workdir: str | Path, target: str, job: str = "medens", scrape_interval: str = "1s") -> None:
        self.prometheus, self.promtool = find_binaries()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.job = job
        self.target = target
        self.config = write_config(self.workdir, job, target, scrape_interval)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / "prometheus.log"
        self.proc: subprocess.Popen | None = None

    def check_config(self) -> subprocess.CompletedProcess:
        """``promtool check config`` of the written file (the caller asserts it passed)."""
        return subprocess.run([self.promtool, "check", "config", str(self.config)], capture_output=True, text=True,
                              timeout=60)

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        tsdb = self.workdir / "tsdb"
        tsdb.mkdir(exist_ok=True)
        cmd = [self.prometheus, f"--config.file={self.config}", f"--storage.tsdb.path={tsdb}",
               f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"prometheus not ready after {timeout} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc, 15)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ HTTP API
    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` now: ``[{"metric": {labels}, "value": [ts, "text"]}, ...]``."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"query {expr!r} failed with HTTP {e.code}: {e.read()[:500]!r}") from e
        if body.get("status") != "success":
            raise RuntimeError(f"query {expr!r} failed: {body}")
        if body["data"]["resultType"] != "vector":
            raise RuntimeError(f"query {expr!r} returned a {body['data']['resultType']}, not a vector")
        return body["data"]["result"]

    def values(self, expr: str, by: str | None = None) -> dict[Any, float]:
        """``{label value of by (or None): float}`` of an instant query."""
        out = {}
        for series in self.query(expr):
            key = series["metric"].get(by) if by else None
            if key in out:
                raise RuntimeError(f"query {expr!r}: more than one series for {by}={key!r}: add an aggregation")
            out[key] = float(series["value"][1])
        return out

    def scalar(self, expr: str) -> float | None:
        """The one value of ``expr`` (None when the vector is empty)."""
        v = self.values(expr)
        return v.get(None)

    def wait_for(self, check: Callable[[], tuple[bool, Any]], timeout: float = 30.0,
                 interval: float = 0.25) -> Any:
        """Poll ``check() -> (done, observed)`` until done; return observed, or raise with the last one."""
        deadline = time.monotonic() + timeout
        while True:
            done, observed = check()
            if done:
                return observed
            if time.monotonic() > deadline:
                raise AssertionError(f"not reached within {timeout} s; last observed: {observed!r}\n"
                                     f"prometheus log:\n{self.log_tail()}")
            time.sleep(interval)
