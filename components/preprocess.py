"""Data stage: build the train/val/test splits of the spec and the training grid."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components._image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def preprocess(spec: str, dataset: Output[Dataset], data_uri: str = "", store_endpoint: str = "",
               source_fingerprint: str = "") -> list:
    """Write the ``SplitData`` directory of ``spec`` to ``dataset`` and return the training grid.

    Args:
        spec: the experiment spec as YAML text (``ExperimentSpec.to_yaml()``).
        dataset: the dataset directory (train/val/test .npz, dataset.json, spec.yaml; the image and
            mask arrays themselves, or with an ``s3://`` store their references into its cache).
        data_uri: new data replacing ``data.path`` (a folder or ``s3://bucket/prefix``), for retraining.
        store_endpoint: S3 endpoint for ``data_uri`` (default: the spec's, then ``MINIO_ENDPOINT``).
        source_fingerprint: the fingerprint of the data source from the ``fingerprint`` task. It is
            part of this task's cache key, so a cached dataset is reused only for the same data;
            data that changed since is refused.

    Returns:
        One JSON string per member to train (``medens.stages.training_grid``).
    """
    from medens.stages import prepare_data, spec_from_text, training_grid

    s = spec_from_text(spec)
    # with an S3 store (the cluster) the arrays go to its cache once: the artifact is a manifest
    cache = s.store.uri if s.store.uri.startswith("s3://") else ""
    summary = prepare_data(s, dataset.path, data_uri=data_uri, endpoint=store_endpoint or s.store.endpoint,
                           expected_fingerprint=source_fingerprint, cache_uri=cache)
    dataset.metadata.update({"task": summary["task"], "class_names": summary["class_names"],
                             "n": {k: v["n"] for k, v in summary["splits"].items()},
                             "source_fingerprint": summary["source"]["sha256"]})
    print(f"{s.name}: " + ", ".join(f"{k} {v['n']}" for k, v in summary["splits"].items()))
    return [m.model_dump_json() for m in training_grid(s)]
