"""Deployment: roll the chart's KServe InferenceService over to the newly registered version."""

from kfp import dsl

from components._image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def deploy(name: str, namespace: str, version: str, storage_uri: str = "") -> str:
    """Promote ``version`` on the InferenceService ``namespace/name`` that the Helm chart owns.

    The chart (charts/medens) is the one owner of the InferenceService; this step changes the
    model version only (a JSON patch of one field, see :mod:`medens.serving.deploy`) and fails
    when the chart is not installed.

    Args:
        name: the registered model name (the chart's ``model.name``, the InferenceService's name).
        namespace: its namespace (the pipeline's service account needs get/patch on inferenceservices there).
        version: the registered version, already the champion in the registry.
        storage_uri: its artifact (``s3://.../<name>/versions/<version>``), used when the
            predictor is pinned to a version instead of following the champion pointer.

    Returns:
        ``rolled out`` or ``repointed``.
    """
    from medens.serving.deploy import promote

    out = promote(name, namespace, version=version, uri=storage_uri)
    print(f"InferenceService {namespace}/{out['name']} {out['action']} to version {version}: {out['patch']}")
    return out["action"]
