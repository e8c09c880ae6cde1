"""Promote a registered ensemble on the InferenceService that the Helm chart owns.

One owner per cluster object: ``charts/medens`` creates the InferenceService (pod settings,
probes, security, resources, GPU, autoscaling); the pipeline never writes one. A promotion
changes the model version and nothing else, with a JSON patch (RFC 6902) of one field:

- the chart's default ``storageUri`` is the champion pointer (``s3://.../<name>/champion``), which
  ``medens serve`` resolves to its version when it starts (:func:`medens.serving.predictor.fetch_artifact`).
  The registry already points at the new version, so a promotion is a rollout: the patch sets
  the predictor's pod annotation ``medens.io/model-version`` to the new version, and KServe rolls
  out new pods (a new Knative revision in Serverless mode) that load it. Helm does not own that
  annotation, so a later ``helm upgrade`` keeps it, and keeps serving the champion.
- a predictor pinned to one version (``.../<name>/versions/<v>``, set by the user in the chart's
  values) gets that one ``STORAGE_URI`` value replaced instead, guarded by a ``test`` operation.

The patch goes through the Kubernetes API as ``application/json-patch+json`` (the Python client
chooses it for a list body), so nothing else in the live object is rewritten, unlike a merge
patch of a whole InferenceService, which replaces the container list.
"""

from __future__ import annotations

from typing import Any

MODEL_MOUNT = "/mnt/models"
CONTAINER_NAME = "kserve-container"
VERSION_ANNOTATION = "medens.io/model-version"
KSERVE = {"group": "serving.kserve.io", "version": "v1beta1", "plural": "inferenceservices"}


def _pointer(path: str) -> str:
    """JSON pointer escaping (RFC 6901) of one key."""
    return path.replace("~", "~0").replace("/", "~1")


def storage_uri_of(isvc: dict[str, Any]) -> tuple[str, str]:
    """``(storage URI, JSON pointer of its value)`` of a live InferenceService's predictor: the
    ``STORAGE_URI`` env of ``kserve-container`` (what the chart renders), or ``spec.predictor.model.storageUri``."""
    pred = (isvc.get("spec") or {}).get("predictor") or {}
    for ci, c in enumerate(pred.get("containers") or []):
        if c.get("name") != CONTAINER_NAME:
            continue
        for ei, env in enumerate(c.get("env") or []):
            if env.get("name") == "STORAGE_URI":
                return str(env.get("value") or ""), f"/spec/predictor/containers/{ci}/env/{ei}/value"
    model = pred.get("model") or {}
    if model.get("storageUri"):
        return str(model["storageUri"]), "/spec/predictor/model/storageUri"
    raise ValueError("the InferenceService has no storage URI (no STORAGE_URI env on kserve-container, "
                     "no spec.predictor.model.storageUri): is it the medens chart's?")


def promotion_patch(isvc: dict[str, Any], *, name: str, version: str, uri: str) -> list[dict[str, Any]]:
    """The JSON patch that promotes ``version`` (registered at ``uri``) on the live ``isvc``.

    Args:
        isvc: the live InferenceService (a dict, as the API returns it).
        name: the registered model name (``<store>/<name>/champion`` is its pointer).
        version: the promoted version.
        uri: the registered artifact, ``<store>/<name>/versions/<version>``.

    Returns:
        RFC 6902 operations: one ``add`` of the version annotation when the predictor follows the
        champion pointer; ``test`` + ``replace`` of the storage URI when it is pinned to a version.
    """
    if not version:
        raise ValueError("a promotion needs the registered version")
    current, path = storage_uri_of(isvc)
    if current.rstrip("/").endswith(f"/{name}/champion"):
        pred = isvc["spec"]["predictor"]
        if isinstance(pred.get("annotations"), dict):
            return [{"op": "add", "path": f"/spec/predictor/annotations/{_pointer(VERSION_ANNOTATION)}",
                     "value": version}]
        return [{"op": "add", "path": "/spec/predictor/annotations", "value": {VERSION_ANNOTATION: version}}]
    if f"/{name}/versions/" not in current:
        raise ValueError(f"the InferenceService serves {current!r}, which is neither {name}'s champion pointer "
                         f"(.../{name}/champion) nor one of its versions (.../{name}/versions/<v>): refusing to "
                         f"change what another model serves")
    if not uri:
        raise ValueError("a predictor pinned to a version needs the new version's URI")
    return [{"op": "test", "path": path, "value": current}, {"op": "replace", "path": path, "value": uri}]


class InferenceServices:
    """Read and JSON-patch InferenceServices through the Kubernetes API.

    The generated ``CustomObjectsApi.patch_namespaced_custom_object`` always sends
    ``application/merge-patch+json``; a JSON patch must be sent as ``application/json-patch+json``,
    so the request goes through the client's ``ApiClient.call_api`` with that content type.
    """

    PATH = "/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}"

    def __init__(self, api_client: Any = None) -> None:
        if api_client is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api_client = client.ApiClient()
        self.api = api_client

    def _call(self, method: str, namespace: str, name: str, body: Any = None,
              content_type: str = "application/json") -> dict[str, Any]:
        return self.api.call_api(
            self.PATH, method, path_params={**KSERVE, "namespace": namespace, "name": name},
            header_params={"Accept": "application/json", "Content-Type": content_type}, body=body,
            response_type="object", auth_settings=["BearerToken"], _return_http_data_only=True)

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call("GET", namespace, name)

    def json_patch(self, namespace: str, name: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        return self._call("PATCH", namespace, name, body=ops, content_type="application/json-patch+json")


def promote(name: str, namespace: str, *, version: str, uri: str = "", isvc_name: str | None = None,
            client: Any = None) -> dict[str, Any]:
    """Roll the chart's InferenceService over to a registered version (see the module docstring).

    Args:
        name: the registered model name.
        namespace: the InferenceService's namespace.
        version: the promoted version (already the champion in the registry).
        uri: its artifact URI (needed only for a predictor pinned to a version).
        isvc_name: the InferenceService (default ``name``: the chart's ``model.name``).
        client: an :class:`InferenceServices` (default: one with in-cluster config inside a pod,
            else ``~/.kube/config``).

    Returns:
        ``{"action": "rolled out" | "repointed", "name", "namespace", "version", "patch"}``.
    """
    isvc_name = isvc_name or name
    client = client or InferenceServices()
    try:
        live = client.get(namespace, isvc_name)
    except Exception as e:  # kubernetes.client.ApiException
        if getattr(e, "status", None) == 404:
            raise RuntimeError(f"InferenceService {namespace}/{isvc_name} does not exist: install the medens chart "
                               f"(charts/medens) first; it owns the InferenceService, a promotion only rolls "
                               f"it over to a new version") from e
        raise RuntimeError(f"cannot read InferenceService {namespace}/{isvc_name}: {e}") from e
    patch = promotion_patch(live, name=name, version=version, uri=uri)
    try:
        client.json_patch(namespace, isvc_name, patch)
    except Exception as e:
        raise RuntimeError(f"cannot patch InferenceService {namespace}/{isvc_name}: {e}") from e
    action = "repointed" if patch[0]["op"] == "test" else "rolled out"
    return {"action": action, "name": isvc_name, "namespace": namespace, "version": version, "patch": patch}
