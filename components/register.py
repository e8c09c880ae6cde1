"""Registration: publish the best system to the ArtifactStore and make it the champion."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Input, Model

from components._image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def register(spec: str, best: Input[Model], store_uri: str = "", store_endpoint: str = "", model_name: str = "",
             version: str = "", run_id: str = "") -> NamedTuple("Registered", [("uri", str), ("name", str),
                                                                               ("version", str)]):
    """Publish ``best`` as ``<name>/versions/<version>`` and point ``<name>/champion`` at it.

    Args:
        spec: the experiment spec as YAML text.
        best: the ensemble artifact to publish.
        store_uri: a local directory or ``s3://bucket/prefix`` (default: the spec's ``store.uri``).
        store_endpoint: S3 endpoint (default: the spec's, then ``MINIO_ENDPOINT``).
        model_name: the registered name (default: the spec's name).
        version: the version (default: ``run_id``).
        run_id: the pipeline run's id (the pipelines pass ``dsl.PIPELINE_JOB_ID_PLACEHOLDER``).

    Returns:
        ``uri`` (what KServe's storageUri takes), ``name`` and ``version``.
    """
    from collections import namedtuple

    from medens.stages import register_artifact, spec_from_text

    s = spec_from_text(spec)
    out = register_artifact(best.path, store_uri or s.store.uri, model_name or s.name, version=version or run_id,
                            endpoint=store_endpoint or s.store.endpoint)
    print(f"registered {out['name']} version {out['version']}: {out['uri']}")
    return namedtuple("Registered", ["uri", "name", "version"])(out["uri"], out["name"], out["version"])
