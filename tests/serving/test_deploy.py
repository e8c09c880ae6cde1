"""A promotion changes the model version and nothing else on the InferenceService the chart owns.

The chart is rendered by the real Helm engine; the promotion goes through the real Kubernetes
client over HTTP to a loopback API server that applies what it receives with a real RFC 6902
implementation (``jsonpatch``) and refuses any other content type."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import helm_python
import jsonpatch
import pytest
import yaml

from medens.serving.deploy import VERSION_ANNOTATION, InferenceServices, promote, promotion_patch

ROOT = Path(__file__).resolve().parents[2]
PATH = "/apis/serving.kserve.io/v1beta1/namespaces/ml/inferenceservices/rbc-demo"


def rendered_isvc(values: dict | None = None) -> dict:
    chart = helm_python.Chart.load(str(ROOT / "charts" / "medens"))
    try:
        out = chart.render(values or {}, name="rel", namespace="ml")
    finally:
        chart.close()
    (isvc,) = [d for path, t in out.items() if path.endswith(".yaml")
               for d in yaml.safe_load_all(t) if d and d["kind"] == "InferenceService"]
    return isvc


class FakeKubeAPI:
    """Holds InferenceServices by path; GET returns one, PATCH applies an RFC 6902 patch."""

    def __init__(self, objects: dict[str, dict]):
        self.objects = objects
        self.calls: list[tuple[str, str, str, object]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                api.calls.append(("GET", self.path, "", None))
                if self.path not in api.objects:
                    return self._send(404, {"kind": "Status", "reason": "NotFound", "code": 404})
                self._send(200, api.objects[self.path])

            def do_PATCH(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                ctype = self.headers["Content-Type"]
                api.calls.append(("PATCH", self.path, ctype, body))
                if ctype != "application/json-patch+json":
                    return self._send(415, {"kind": "Status", "reason": "UnsupportedMediaType", "code": 415})
                try:
                    api.objects[self.path] = jsonpatch.apply_patch(api.objects[self.path], body)
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                    return self._send(422, {"kind": "Status", "reason": "Invalid", "message": str(e), "code": 422})
                self._send(200, api.objects[self.path])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def client(self) -> InferenceServices:
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        return InferenceServices(client.ApiClient(cfg))


def _changed_paths(before, after, prefix="") -> list[str]:
    """JSON pointers of every leaf that differs (a map that appears counts by its leaves)."""
    if isinstance(before, dict) or isinstance(after, dict):
        before, after = before or {}, after or {}
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for k in sorted(set(before) | set(after)):
            out += _changed_paths(before.get(k), after.get(k), f"{prefix}/{k}")
        return out
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [p for i, (b, a) in enumerate(zip(before, after)) for p in _changed_paths(b, a, f"{prefix}/{i}")]
    return [] if before == after else [prefix]


@pytest.mark.parametrize("values", [{}, {"predictor": {"gpu": 1, "minReplicas": 2, "maxReplicas": 4}},
                                    {"deploymentMode": "Serverless"}], ids=["defaults", "gpu", "serverless"])
def test_a_promotion_changes_only_the_model_version_of_the_charts_inference_service(values):
    isvc = rendered_isvc(values)
    with FakeKubeAPI({PATH: copy.deepcopy(isvc)}) as api:
        out = promote("rbc-demo", "ml", version="run-2", uri="s3://medens/models/rbc-demo/versions/run-2",
                      client=api.client())
        first = copy.deepcopy(api.objects[PATH])
        promote("rbc-demo", "ml", version="run-3", client=api.client())  # and the next one
    assert out["action"] == "rolled out"
    assert [(c[0], c[2]) for c in api.calls] == [("GET", ""), ("PATCH", "application/json-patch+json")] * 2
    # the champion pointer already names the new version; the pod annotation rolls the pods over
    assert _changed_paths(isvc, first) == [f"/spec/predictor/annotations/{VERSION_ANNOTATION}"]
    assert first["spec"]["predictor"]["annotations"][VERSION_ANNOTATION] == "run-2"
    assert _changed_paths(isvc, api.objects[PATH]) == [f"/spec/predictor/annotations/{VERSION_ANNOTATION}"]
    assert api.objects[PATH]["spec"]["predictor"]["annotations"][VERSION_ANNOTATION] == "run-3"
    # everything the chart set survives: container, security, probes, mounts, resources
    assert api.objects[PATH]["spec"]["predictor"]["containers"] == isvc["spec"]["predictor"]["containers"]


def test_a_predictor_pinned_to_a_version_gets_only_its_storage_uri_replaced():
    pinned = "s3://medens/models/rbc-demo/versions/run-1"
    isvc = rendered_isvc({"model": {"storageUri": pinned}})
    with FakeKubeAPI({PATH: copy.deepcopy(isvc)}) as api:
        out = promote("rbc-demo", "ml", version="run-2", uri="s3://medens/models/rbc-demo/versions/run-2",
                      client=api.client())
    assert out["action"] == "repointed" and out["patch"][0]["op"] == "test"
    env_path = out["patch"][1]["path"]
    assert _changed_paths(isvc, api.objects[PATH]) == [env_path]
    assert jsonpatch.JsonPointer(env_path).resolve(api.objects[PATH]) == "s3://medens/models/rbc-demo/versions/run-2"
    # the test operation guards against a concurrent change: replayed on the changed object, the
    # same patch is refused (422) and nothing is applied
    from kubernetes.client.exceptions import ApiException

    with FakeKubeAPI({PATH: copy.deepcopy(api.objects[PATH])}) as api2:
        with pytest.raises(ApiException) as err:
            api2.client().json_patch("ml", "rbc-demo", out["patch"])
        assert err.value.status == 422
        assert api2.objects[PATH] == api.objects[PATH]


def test_without_the_chart_the_promotion_fails_and_writes_nothing():
    with FakeKubeAPI({}) as api:
        with pytest.raises(RuntimeError, match=r"ml/rbc-demo does not exist: install the medens chart"):
            promote("rbc-demo", "ml", version="run-2", client=api.client())
    assert [c[0] for c in api.calls] == ["GET"]


def test_another_models_service_and_bad_arguments_are_refused():
    isvc = rendered_isvc({"model": {"storageUri": "s3://medens/models/other/champion"}})
    with pytest.raises(ValueError, match="neither rbc-demo's champion pointer"):
        promotion_patch(isvc, name="rbc-demo", version="v2", uri="")
    with pytest.raises(ValueError, match="needs the registered version"):
        promotion_patch(rendered_isvc(), name="rbc-demo", version="", uri="")
    with pytest.raises(ValueError, match="has no storage URI"):
        promotion_patch({"spec": {"predictor": {"containers": [{"name": "x"}]}}}, name="a", version="v", uri="")
    # a predictor without annotations gets the whole map added
    bare = {"spec": {"predictor": {"containers": [{"name": "kserve-container", "env": [
        {"name": "STORAGE_URI", "value": "s3://b/m/a/champion"}]}]}}}
    assert jsonpatch.apply_patch(bare, promotion_patch(bare, name="a", version="v9", uri=""))[
        "spec"]["predictor"]["annotations"] == {VERSION_ANNOTATION: "v9"}


def test_serving_package_is_import_light():
    code = "import sys, medens.serving; print('kserve' in sys.modules, 'kfp' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "False"]
