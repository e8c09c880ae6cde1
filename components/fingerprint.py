"""Fingerprint stage: what is at the data source now (never cached), the data stage's cache key."""

from kfp import dsl

from components._image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def fingerprint(spec: str, data_uri: str = "", store_endpoint: str = "") -> str:
    """The sha256 fingerprint of the data the ``preprocess`` task would read now.

    Args:
        spec: the experiment spec as YAML text.
        data_uri: new data replacing ``data.path`` (a folder or ``s3://bucket/prefix``).
        store_endpoint: S3 endpoint for ``data_uri`` (default: the spec's, then ``MINIO_ENDPOINT``).

    Returns:
        The fingerprint (``medens.stages.source_fingerprint``: S3 object names, sizes and ETags;
        folder file names, sizes and sha256; a generated source's description).
    """
    from medens.stages import source_fingerprint, spec_from_text

    s = spec_from_text(spec)
    fp = source_fingerprint(s, data_uri, endpoint=store_endpoint or s.store.endpoint)
    print(f"data source {fp['uri'] or fp['kind']}: {fp['n_files']} files, fingerprint {fp['sha256'][:12]}")
    return fp["sha256"]
