"""A fake Kubeflow Pipelines API server: the v2beta1 REST endpoints that kfp 2.17's ``kfp.Client``
calls for experiments and recurring runs, on 127.0.0.1, recording every call.

It answers as the real API server does (field names from ``kfp_server_api``'s models: snake_case,
except ``recurringRuns`` in the list response; ``max_concurrency`` as a string, an int64 in
JSON; errors as ``google.rpc.Status`` with the HTTP status of the gRPC code), so the real client,
not a stand-in for it, is what a test drives:

- ``GET  /apis/v2beta1/healthz`` (never needs a token, like the real one)
- ``POST /apis/v2beta1/experiments``, ``GET /apis/v2beta1/experiments[/{id}]`` (``filter``,
  ``namespace``, ``page_size``, ``page_token``)
- ``POST /apis/v2beta1/recurringruns``, ``GET /apis/v2beta1/recurringruns[/{id}]``
  (``experiment_id``, ``namespace``, ``filter``, paging), ``DELETE /apis/v2beta1/recurringruns/{id}``

With a token every other call needs ``Authorization: Bearer <token>`` (401 otherwise); with
``allowed_namespaces`` a call about another namespace gets 403; in multi-user mode experiments need
a namespace and listings must name a namespace or an experiment (400), and a recurring run takes
its experiment's namespace. Filters are the JSON ``Filter`` the client sends (``operation`` as the
enum's number or name; ``stringValue`` or ``string_value``).

In pytest::

    with FakeKfpApi(token="t0k3n") as api:
        kfp.Client(host=api.url, ...)
        api.calls, api.recurring_runs

As a process (for a container smoke test over host networking)::

    python -m tests.fakes.kfp_api --port 8888 --record /tmp/kfp.json [--token T | --token-file F]
        [--single-user] [--allow-namespace NS ...] [--port-file F]

prints ``fake KFP API listening on http://127.0.0.1:PORT`` once it accepts connections and rewrites
the record file (``{"calls": [...], "experiments": [...], "recurring_runs": [...]}``) after every
call; SIGTERM or SIGINT stop it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import uuid
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

PREFIX = "/apis/v2beta1"
# google.rpc.Code -> HTTP status, as grpc-gateway maps them
GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 405: 12, 409: 6, 500: 13}
FILTER_OPERATIONS = {"EQUALS": 1, "NOT_EQUALS": 2, "GREATER_THAN": 3, "GREATER_THAN_EQUALS": 5, "LESS_THAN": 6,
                     "LESS_THAN_EQUALS": 7, "IN": 8, "IS_SUBSTRING": 9}
DEFAULT_PAGE_SIZE = 20


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _predicate_value(p: dict) -> Any:
    for key in ("stringValue", "string_value", "intValue", "int_value", "longValue", "long_value"):
        if key in p:
            return p[key]
    raise ApiError(400, f"Invalid input error: predicate {p!r} has no supported value")


def _matches(item: dict, filter_text: str | None, keys: set[str]) -> bool:
    if not filter_text:
        return True
    try:
        predicates = json.loads(filter_text).get("predicates") or []
    except (ValueError, AttributeError):
        raise ApiError(400, f"Invalid input error: failed to parse filter {filter_text!r}") from None
    for p in predicates:
        op = p.get("operation")
        op = FILTER_OPERATIONS.get(op, op) if isinstance(op, str) else op
        key = p.get("key")
        if key not in keys:
            raise ApiError(400, f"Invalid input error: filter key {key!r} is not supported")
        value, have = _predicate_value(p), item.get(key)
        if op == FILTER_OPERATIONS["EQUALS"]:
            ok = str(have) == str(value)
        elif op == FILTER_OPERATIONS["NOT_EQUALS"]:
            ok = str(have) != str(value)
        elif op == FILTER_OPERATIONS["IS_SUBSTRING"]:
            ok = str(value) in str(have or "")
        else:
            raise ApiError(400, f"Invalid input error: filter operation {p.get('operation')!r} is not supported here")
        if not ok:
            return False
    return True


def _page(items: list[dict], query: dict[str, str], field: str) -> dict:
    size = int(query.get("page_size") or 0) or DEFAULT_PAGE_SIZE
    start = int(query.get("page_token") or 0)
    out: dict[str, Any] = {"total_size": len(items)}
    if items[start:start + size]:
        out[field] = items[start:start + size]
    if start + size < len(items):
        out["next_page_token"] = str(start + size)
    return out


class FakeKfpApi:
    """The fake server; ``start()``/``stop()`` or a ``with`` block. State is plain dicts, in memory."""

    def __init__(self, *, token: str | None = None, multi_user: bool = True,
                 allowed_namespaces: set[str] | None = None, record: str | os.PathLike | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.token, self.multi_user = token, multi_user
        self.allowed_namespaces = set(allowed_namespaces) if allowed_namespaces is not None else None
        self.record = Path(record) if record else None
        self.calls: list[dict] = []
        self.experiments: dict[str, dict] = {}
        self.recurring_runs: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeKfpApi:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-kfp-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeKfpApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ views for tests

    def runs_named(self, display_name: str) -> list[dict]:
        return [r for r in self.recurring_runs.values() if r["display_name"] == display_name]

    def snapshot(self) -> dict:
        with self._lock:
            return json.loads(json.dumps({"calls": self.calls, "experiments": list(self.experiments.values()),
                                          "recurring_runs": list(self.recurring_runs.values())}))

    def _write_record(self) -> None:
        if self.record:
            tmp = self.record.with_name(self.record.name + ".tmp")
            tmp.write_text(json.dumps(self.snapshot(), indent=1))
            os.replace(tmp, self.record)

    # ------------------------------------------------------------------ the API

    def _check_namespace(self, namespace: str | None) -> None:
        if self.allowed_namespaces is not None and namespace not in self.allowed_namespaces:
            raise ApiError(403, f"PermissionDenied: the caller is not authorized to access namespace {namespace!r}")

    def _experiment(self, experiment_id: str) -> dict:
        if experiment_id not in self.experiments:
            raise ApiError(404, f"NotFound: experiment {experiment_id!r} not found")
        return self.experiments[experiment_id]

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, dict]:
        """One call -> (HTTP status, JSON body). Runs under the lock."""
        if not path.startswith(PREFIX + "/"):
            raise ApiError(404, "Not Found")
        parts = path[len(PREFIX) + 1:].split("/")
        resource, ident = parts[0], unquote(parts[1]) if len(parts) > 1 else None
        if len(parts) > 2 or ":" in (ident or ""):
            raise ApiError(404, "Not Found")
        if resource == "healthz" and method == "GET" and ident is None:
            return 200, {"multi_user": self.multi_user, "pipeline_store": "database"}
        if resource == "experiments":
            if method == "POST" and ident is None:
                return 200, self._create_experiment(body or {})
            if method == "GET" and ident is None:
                return 200, self._list_experiments(query)
            if method == "GET":
                exp = self._experiment(ident)
                self._check_namespace(exp.get("namespace"))
                return 200, exp
        if resource == "recurringruns":
            if method == "POST" and ident is None:
                return 200, self._create_recurring_run(body or {})
            if method == "GET" and ident is None:
                return 200, self._list_recurring_runs(query)
            if ident is not None and ident not in self.recurring_runs:
                raise ApiError(404, f"NotFound: recurring run {ident!r} not found")
            if method == "GET" and ident:
                self._check_namespace(self.recurring_runs[ident].get("namespace"))
                return 200, self.recurring_runs[ident]
            if method == "DELETE" and ident:
                self._check_namespace(self.recurring_runs[ident].get("namespace"))
                del self.recurring_runs[ident]
                return 200, {}
        raise ApiError(404 if method in ("GET", "POST", "DELETE") else 405, "Not Found")

    def _create_experiment(self, body: dict) -> dict:
        name, namespace = body.get("display_name") or "", body.get("namespace") or ""
        if not name:
            raise ApiError(400, "Invalid input error: experiment display_name is empty")
        if self.multi_user and not namespace:
            raise ApiError(400, "Invalid input error: in multi-user mode an experiment needs a namespace")
        self._check_namespace(namespace or None)
        if any(e["display_name"] == name and e.get("namespace", "") == namespace for e in self.experiments.values()):
            raise ApiError(409, f"AlreadyExists: experiment {name!r} already exists in namespace {namespace!r}")
        exp = {"experiment_id": str(uuid.uuid4()), "display_name": name, "description": body.get("description") or "",
               "created_at": _now(), "namespace": namespace, "storage_state": "AVAILABLE"}
        self.experiments[exp["experiment_id"]] = exp
        return exp

    def _list_experiments(self, query: dict[str, str]) -> dict:
        namespace = query.get("namespace", "")
        if self.multi_user and not namespace:
            raise ApiError(400, "Invalid input error: in multi-user mode, listing experiments must filter by namespace")
        self._check_namespace(namespace or None)
        items = [e for e in self.experiments.values() if (not namespace or e["namespace"] == namespace)
                 and _matches(e, query.get("filter"), {"display_name", "experiment_id", "namespace"})]
        return _page(items, query, "experiments")

    def _create_recurring_run(self, body: dict) -> dict:
        exp = self._experiment(body.get("experiment_id") or "")
        namespace = exp["namespace"]
        self._check_namespace(namespace or None)
        if not body.get("display_name"):
            raise ApiError(400, "Invalid input error: the recurring run's display_name is empty")
        if not body.get("pipeline_spec") and not body.get("pipeline_version_reference"):
            raise ApiError(400, "Invalid input error: neither pipeline_spec nor pipeline_version_reference is given")
        trigger = body.get("trigger") or {}
        cron = (trigger.get("cron_schedule") or {}).get("cron")
        if cron is not None and len(cron.split()) != 6:
            raise ApiError(400, f"Invalid input error: cron {cron!r} must have 6 fields (seconds first)")
        if cron is None and not (trigger.get("periodic_schedule") or {}).get("interval_second"):
            raise ApiError(400, "Invalid input error: the trigger needs a cron or a periodic schedule")
        concurrency = int(body.get("max_concurrency") or 1)
        if not 1 <= concurrency <= 10:
            raise ApiError(400, f"Invalid input error: max_concurrency must be in [1, 10], got {concurrency}")
        mode = body.get("mode") or "ENABLE"
        now = _now()
        run = {"recurring_run_id": str(uuid.uuid4()), "display_name": body["display_name"],
               "description": body.get("description") or "", "pipeline_spec": body.get("pipeline_spec"),
               "runtime_config": body.get("runtime_config") or {}, "service_account": body.get("service_account") or "",
               "max_concurrency": str(concurrency), "trigger": trigger, "mode": mode, "created_at": now,
               "updated_at": now, "status": "ENABLED" if mode == "ENABLE" else "DISABLED",
               "no_catchup": bool(body.get("no_catchup")), "namespace": namespace,
               "experiment_id": exp["experiment_id"]}
        if body.get("pipeline_version_reference"):
            run["pipeline_version_reference"] = body["pipeline_version_reference"]
        self.recurring_runs[run["recurring_run_id"]] = run
        return run

    def _list_recurring_runs(self, query: dict[str, str]) -> dict:
        experiment_id, namespace = query.get("experiment_id", ""), query.get("namespace", "")
        if experiment_id:
            namespace = self._experiment(experiment_id)["namespace"]
        elif self.multi_user and not namespace:
            raise ApiError(400, "Invalid input error: in multi-user mode, listing recurring runs must filter by "
                                "namespace or experiment")
        self._check_namespace(namespace or None)
        items = [r for r in self.recurring_runs.values()
                 if (not experiment_id or r["experiment_id"] == experiment_id)
                 and (not namespace or r["namespace"] == namespace)
                 and _matches(r, query.get("filter"), {"display_name", "recurring_run_id", "experiment_id"})]
        return _page(items, query, "recurringRuns")

    # ------------------------------------------------------------------ HTTP

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet: the record is the log
                pass

            def _serve(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                auth = self.headers.get("Authorization")
                call: dict[str, Any] = {"method": self.command, "path": url.path, "query": query,
                                        "body": None, "authorization": auth}
                try:
                    try:
                        call["body"] = json.loads(raw) if raw else None
                    except ValueError:
                        raise ApiError(400, "Invalid input error: the body is not JSON") from None
                    public = url.path == f"{PREFIX}/healthz"
                    if api.token is not None and not public and auth != f"Bearer {api.token}":
                        raise ApiError(401, "Unauthenticated: no valid bearer token in the Authorization header"
                                       if auth else "Unauthenticated: the request has no Authorization header")
                    with api._lock:
                        status, payload = api.handle(self.command, url.path, query, call["body"])
                except ApiError as e:
                    status = e.status
                    payload = {"error": e.message, "code": GRPC_CODES.get(e.status, 2), "message": e.message,
                               "details": []}
                call["status"] = status
                with api._lock:
                    api.calls.append(call)
                api._write_record()
                data = json.dumps(payload).encode()
                self.send_response(status, HTTPStatus(status).phrase)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

        return Handler


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fakes.kfp_api", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: a free one, printed)")
    p.add_argument("--record", help="JSON file rewritten after every call with the calls and the state")
    p.add_argument("--port-file", help="write the port here once listening")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--token", help="require 'Authorization: Bearer TOKEN' (401 otherwise)")
    g.add_argument("--token-file", help="like --token, the token read from this file")
    p.add_argument("--single-user", action="store_true", help="single-user mode (default: multi-user)")
    p.add_argument("--allow-namespace", action="append", help="only these namespaces (403 otherwise); repeatable")
    args = p.parse_args(argv)
    token = Path(args.token_file).read_text().strip() if args.token_file else args.token
    api = FakeKfpApi(token=token, multi_user=not args.single_user, record=args.record, host=args.host, port=args.port,
                     allowed_namespaces=set(args.allow_namespace) if args.allow_namespace else None)
    api._write_record()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    api.start()
    if args.port_file:
        Path(args.port_file).write_text(str(api._server.server_address[1]))
    print(f"fake KFP API listening on {api.url}", flush=True)
    while not stop.wait(0.5):
        pass
    api.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
