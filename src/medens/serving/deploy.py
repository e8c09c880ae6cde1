"""Deploy a registered ensemble as a KServe InferenceService (serving.kserve.io/v1beta1).

The predictor is a custom container running ``medens serve --model-dir /mnt/models``. Its
``STORAGE_URI`` environment variable names the published ensemble artifact (``s3://...`` in
MinIO): for a custom predictor, KServe's webhook reads ``STORAGE_URI`` from the container named
``kserve-container``, injects the storage-initializer init container that downloads the artifact,
and mounts it read-only at ``/mnt/models`` (kserve ``CustomPredictor.GetStorageUri``,
``constants.DefaultModelLocalMountPath``). S3 credentials for the initializer come from the
service account's secret (``serving.kserve.io/s3-endpoint`` annotations), never from here.

:func:`deploy` creates the InferenceService, or patches it when it exists, through the kserve
SDK's ``KServeClient``; a patch with a new storage URI rolls out a new revision.
"""

from __future__ import annotations

from typing import Any

MODEL_MOUNT = "/mnt/models"
CONTAINER_NAME = "kserve-container"
DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "1", "memory": "2Gi"},
    "limits": {"cpu": "2", "memory": "4Gi"},
}
GPU_RESOURCE = "nvidia.com/gpu"


def _thread_args(resources: dict[str, dict[str, str]]) -> list[str]:
    """``--threads`` from a whole-CPU limit: torch in a pod sees the node's cores, not its limit."""
    cpu = str(resources.get("limits", {}).get("cpu", "")).strip()
    return ["--threads", cpu] if cpu.isdigit() and int(cpu) >= 1 else []


def scrape_annotations(port: int) -> dict[str, str]:
    """KServe's Prometheus annotations: the predictor's ``/metrics`` (KServe's and medens') on its port.
    (They declare the port and path; the cluster's Prometheus must still be configured to scrape them.)"""
    return {"serving.kserve.io/enable-prometheus-scraping": "true", "prometheus.kserve.io/port": str(port),
            "prometheus.kserve.io/path": "/metrics"}


def inference_service_object(name: str, namespace: str, storage_uri: str, *, image: str,
                             service_account: str | None = None, resources: dict[str, dict[str, str]] | None = None,
                             gpu: int = 0, port: int = 8080, min_replicas: int = 1,
                             annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None):
    """The InferenceService as a kserve SDK object (``V1beta1InferenceService``); see :func:`inference_service`."""
    from kserve import V1beta1InferenceService, V1beta1InferenceServiceSpec, V1beta1PredictorSpec, constants
    from kubernetes.client import V1Container, V1ContainerPort, V1EnvVar, V1ObjectMeta, V1ResourceRequirements

    if not name:
        raise ValueError("an InferenceService needs a name")
    if not storage_uri:
        raise ValueError("storage_uri is empty: register the ensemble first")
    if gpu < 0:
        raise ValueError(f"gpu must be >= 0, got {gpu}")
    res = {k: dict(v) for k, v in (resources or DEFAULT_RESOURCES).items()}
    if gpu:
        res.setdefault("limits", {})[GPU_RESOURCE] = str(gpu)
        res.setdefault("requests", {})[GPU_RESOURCE] = str(gpu)
    container = V1Container(
        name=CONTAINER_NAME,
        image=image,
        command=["medens"],
        # the served model name is the InferenceService's: /v1/models/<name>:predict
        args=["serve", "--model-dir", MODEL_MOUNT, "--model-name", name, "--http-port", str(port),
              *_thread_args(res), *(["--device", "cuda"] if gpu else [])],
        env=[V1EnvVar(name="STORAGE_URI", value=storage_uri)],
        ports=[V1ContainerPort(container_port=port, protocol="TCP")],
        resources=V1ResourceRequirements(requests=res.get("requests"), limits=res.get("limits")),
    )
    return V1beta1InferenceService(
        api_version=f"{constants.KSERVE_GROUP}/{constants.KSERVE_V1BETA1_VERSION}",
        kind=constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=V1ObjectMeta(name=name, namespace=namespace, annotations={**scrape_annotations(port), **(annotations or {})},
                              labels={"app.kubernetes.io/part-of": "medens", **(labels or {})}),
        spec=V1beta1InferenceServiceSpec(predictor=V1beta1PredictorSpec(
            containers=[container], service_account_name=service_account, min_replicas=min_replicas)),
    )


def inference_service(name: str, namespace: str, storage_uri: str, *, image: str, service_account: str | None = None,
                      resources: dict[str, dict[str, str]] | None = None, gpu: int = 0, port: int = 8080,
                      min_replicas: int = 1, annotations: dict[str, str] | None = None,
                      labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The InferenceService manifest (a plain dict, as ``kubectl apply`` takes it).

    Args:
        name: InferenceService name (the model's route).
        namespace: Kubernetes namespace.
        storage_uri: the registered ensemble artifact, e.g. ``s3://medens/models/rbc-demo/versions/<run>``.
        image: the medens image that runs ``medens serve``.
        service_account: service account whose secret gives the storage initializer S3 access.
        resources: container ``requests``/``limits`` (default 1 CPU / 2Gi requested).
        gpu: GPUs per replica (``nvidia.com/gpu``), 0 for CPU serving.
        port: HTTP port of ``medens serve``.
        min_replicas: minimum replicas (1 keeps one warm; 0 allows scale to zero).
        annotations, labels: extra metadata.
    """
    from kubernetes.client import ApiClient

    obj = inference_service_object(name, namespace, storage_uri, image=image, service_account=service_account,
                                   resources=resources, gpu=gpu, port=port, min_replicas=min_replicas,
                                   annotations=annotations, labels=labels)
    return ApiClient().sanitize_for_serialization(obj)


def _not_found(err: Exception) -> bool:
    status = getattr(err, "status", None)
    if status == 404:
        return True
    text = str(err)
    return "404" in text or "Not Found" in text or "NotFound" in text


def deploy(name: str, namespace: str, storage_uri: str, *, client: Any = None, **kw: Any) -> dict[str, Any]:
    """Create the InferenceService, or patch it if it exists (get, then patch or create).

    Args:
        name, namespace, storage_uri: see :func:`inference_service`.
        client: a ``kserve.KServeClient`` (default: a new one, in-cluster config inside a pod,
            else ``~/.kube/config``); tests pass a recording fake.
        **kw: the keyword options of :func:`inference_service` (``image`` is required).

    Returns:
        ``{"action": "created" | "patched", "name", "namespace", "storage_uri", "manifest"}``.
    """
    isvc = inference_service_object(name, namespace, storage_uri, **kw)
    if client is None:
        from kserve import KServeClient

        client = KServeClient()
    try:
        client.get(name, namespace=namespace)
        exists = True
    except Exception as e:  # the SDK wraps ApiException in RuntimeError
        if not _not_found(e):
            raise RuntimeError(f"cannot read InferenceService {namespace}/{name}: {e}") from e
        exists = False
    if exists:
        client.patch(name, isvc, namespace=namespace)
        action = "patched"
    else:
        client.create(isvc, namespace=namespace)
        action = "created"
    from kubernetes.client import ApiClient

    return {"action": action, "name": name, "namespace": namespace, "storage_uri": storage_uri,
            "manifest": ApiClient().sanitize_for_serialization(isvc)}
