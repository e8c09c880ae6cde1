"""KServe deployment: the InferenceService manifest and create-or-patch with a recording fake client."""

import subprocess
import sys

import pytest

from medens.serving.deploy import CONTAINER_NAME, MODEL_MOUNT, deploy, inference_service

URI = "s3://medens/models/rbc-demo/versions/run-1"


def test_manifest_custom_predictor_with_storage_uri():
    m = inference_service("rbc-demo", "team-a", URI, image="registry.example/medens:1", service_account="medens-sa")
    assert m["apiVersion"] == "serving.kserve.io/v1beta1"
    assert m["kind"] == "InferenceService"
    assert m["metadata"]["name"] == "rbc-demo" and m["metadata"]["namespace"] == "team-a"
    pred = m["spec"]["predictor"]
    assert pred["serviceAccountName"] == "medens-sa"
    assert pred["minReplicas"] == 1
    (c,) = pred["containers"]
    # KServe injects the storage initializer for a custom predictor whose container is named
    # kserve-container and carries STORAGE_URI; the artifact is mounted at /mnt/models
    assert c["name"] == CONTAINER_NAME == "kserve-container"
    assert c["env"] == [{"name": "STORAGE_URI", "value": URI}]
    assert c["image"] == "registry.example/medens:1"
    # torch threads = the whole-CPU limit (2 by default): torch in a pod sees the node's cores
    assert [c["command"][0], *c["args"]] == ["medens", "serve", "--model-dir", MODEL_MOUNT,
                                                  "--model-name", m["metadata"]["name"], "--http-port", "8080",
                                                  "--threads", "2"]
    assert MODEL_MOUNT == "/mnt/models"
    assert c["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    assert c["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
    assert "nvidia.com/gpu" not in c["resources"]["limits"]


def test_manifest_gpu_and_custom_resources():
    m = inference_service("seg", "ns", URI, image="i", gpu=1, port=9000, min_replicas=0,
                          resources={"requests": {"cpu": "2", "memory": "8Gi"}}, annotations={"a": "b"})
    c = m["spec"]["predictor"]["containers"][0]
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert c["resources"]["requests"] == {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"}
    # no whole-CPU limit here: no --threads; a GPU: --device cuda
    assert c["args"][-4:] == ["--http-port", "9000", "--device", "cuda"]
    assert m["spec"]["predictor"]["minReplicas"] == 0
    assert m["metadata"]["annotations"] == {"a": "b", "serving.kserve.io/enable-prometheus-scraping": "true",
                                            "prometheus.kserve.io/port": "9000", "prometheus.kserve.io/path": "/metrics"}
    assert "serviceAccountName" not in m["spec"]["predictor"]


@pytest.mark.parametrize("kwargs,message", [
    ({"storage_uri": ""}, "storage_uri is empty"),
    ({"name": ""}, "needs a name"),
    ({"gpu": -1}, "gpu must be >= 0"),
])
def test_manifest_errors(kwargs, message):
    args = {"name": "x", "namespace": "ns", "storage_uri": URI, "image": "i", **kwargs}
    with pytest.raises(ValueError, match=message):
        inference_service(**args)


class RecordingClient:
    """Records calls the way ``kserve.KServeClient`` is called; ``existing`` decides ``get``."""

    def __init__(self, existing=False, get_error=None):
        self.calls = []
        self.existing = existing
        self.get_error = get_error

    def get(self, name, namespace=None):
        self.calls.append(("get", name, namespace))
        if self.get_error is not None:
            raise self.get_error
        if not self.existing:
            # what KServeClient.get raises for a missing InferenceService
            raise RuntimeError("Exception when calling CustomObjectsApi->get_namespaced_custom_object: "
                               "(404)\nReason: Not Found\n")
        return {"metadata": {"name": name, "namespace": namespace}}

    def create(self, isvc, namespace=None):
        self.calls.append(("create", isvc, namespace))
        return {}

    def patch(self, name, isvc, namespace=None):
        self.calls.append(("patch", name, isvc, namespace))
        return {}


def _manifest(isvc):
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(isvc)


def test_deploy_creates_when_missing():
    client = RecordingClient(existing=False)
    out = deploy("rbc-demo", "team-a", URI, client=client, image="medens:0.1.0", service_account="sa")
    assert [c[0] for c in client.calls] == ["get", "create"]
    assert client.calls[0] == ("get", "rbc-demo", "team-a")
    _, isvc, ns = client.calls[1]
    assert ns == "team-a"
    assert isvc.api_version == "serving.kserve.io/v1beta1"  # what KServeClient.create reads
    assert _manifest(isvc) == inference_service("rbc-demo", "team-a", URI, image="medens:0.1.0", service_account="sa")
    assert out["action"] == "created" and out["storage_uri"] == URI
    assert out["manifest"]["spec"]["predictor"]["containers"][0]["env"][0]["value"] == URI


def test_deploy_patches_when_present():
    client = RecordingClient(existing=True)
    new_uri = URI.replace("run-1", "run-2")
    out = deploy("rbc-demo", "team-a", new_uri, client=client, image="medens:0.1.0")
    assert [c[0] for c in client.calls] == ["get", "patch"]
    _, name, isvc, ns = client.calls[1]
    assert (name, ns) == ("rbc-demo", "team-a")
    assert _manifest(isvc)["spec"]["predictor"]["containers"][0]["env"] == [{"name": "STORAGE_URI", "value": new_uri}]
    assert out["action"] == "patched"


def test_deploy_other_errors_propagate():
    client = RecordingClient(get_error=RuntimeError("(403)\nReason: Forbidden"))
    with pytest.raises(RuntimeError, match="(?s)cannot read InferenceService team-a/rbc-demo.*Forbidden"):
        deploy("rbc-demo", "team-a", URI, client=client, image="i")
    assert [c[0] for c in client.calls] == ["get"]


def test_serving_package_is_import_light():
    code = "import sys, medens.serving; print('kserve' in sys.modules, 'kfp' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "False"]
