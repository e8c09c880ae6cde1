"""Deployment: create or patch the KServe InferenceService that serves the registered ensemble."""

from kfp import dsl

from components._image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def deploy(name: str, namespace: str, storage_uri: str, image: str, service_account: str = "", gpus: int = 0) -> str:
    """Create the InferenceService ``namespace/name`` serving ``storage_uri``, or patch it.

    Args:
        name: InferenceService name.
        namespace: its namespace (the pipeline's service account needs RBAC on inferenceservices there).
        storage_uri: the registered ensemble artifact (``s3://...``), mounted at /mnt/models.
        image: the medens image running ``medens serve``.
        service_account: the service account whose secret gives KServe's storage initializer S3 access.
        gpus: GPUs per serving replica.

    Returns:
        ``created`` or ``patched``.
    """
    from medens.serving.deploy import deploy as deploy_isvc

    out = deploy_isvc(name, namespace, storage_uri, image=image, service_account=service_account or None, gpu=gpus)
    print(f"InferenceService {namespace}/{name} {out['action']}: {storage_uri}")
    return out["action"]
