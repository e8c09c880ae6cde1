"""The data stage: the spec's splits, the fingerprint of their source, and the training grid."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from medens.config import ComponentSpec, ExperimentSpec, parse_spec
from medens.stages.results import GridEntry

SAMPLING_SUFFIX = "__sampling"


def spec_from_text(text: str) -> ExperimentSpec:
    """An :class:`ExperimentSpec` from its YAML (or JSON) text, as the pipelines pass it."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"experiment spec text is not valid YAML: {e}") from e
    return parse_spec(data, source="pipeline parameter spec")


def member_id(model: ComponentSpec, loss: ComponentSpec) -> str:
    return f"{model.key}__{loss.key}"


def training_grid(spec: ExperimentSpec) -> list[GridEntry]:
    """Every member to train, one :class:`~medens.stages.results.GridEntry` each (as JSON
    ``{"id", "model", "loss", "train_on"}``: ``entry.model_dump_json()``).

    Every (model, loss) pair trains on ``train``. With ``data.sampling_method`` (study 3,
    Roshan et al. 2024: a main network on the images and a second one with the same loss on
    lesion-centred crops) every pair also gets a sampling-method member trained on
    ``train_crops``, id suffixed ``__sampling``. This is the one definition of the grid: ``medens
    run``, kfp.local and the cluster pipelines all train exactly these members.
    """
    out = []
    sampling = spec.task == "segmentation" and spec.data.sampling_method
    for model, loss in spec.pairs():
        for train_on in ("train", "train_crops") if sampling else ("train",):
            suffix = SAMPLING_SUFFIX if train_on == "train_crops" else ""
            out.append(GridEntry(id=member_id(model, loss) + suffix, model=model, loss=loss, train_on=train_on))
    return out


def _store(uri: str, endpoint: str | None = None, **options: Any):
    from medens.storage import ArtifactStore

    return ArtifactStore.from_uri(uri, endpoint=endpoint or None, **options)


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"S3 URI {uri!r} has no bucket")
    return bucket, key.strip("/")


def source_fingerprint(spec: ExperimentSpec, data_uri: str = "", *, endpoint: str | None = None) -> dict[str, Any]:
    """The fingerprint of what the data stage would read now (see :mod:`medens.storage.fingerprint`).

    ``data_uri`` (retraining) replaces ``data.path``: an ``s3://bucket/prefix`` is fingerprinted
    by its objects' names, sizes and ETags, a folder or file by names, sizes and sha256; a spec
    without a path (a synthetic source) by its data section and seed.
    """
    from medens.storage.fingerprint import path_fingerprint, value_fingerprint

    source = data_uri or spec.data.path
    if not source:
        return value_fingerprint(f"generated:{spec.data.source}",
                                 {"data": spec.data.model_dump(mode="json"), "seed": spec.seed})
    if source.startswith("s3://"):
        from medens.storage.fingerprint import listing_fingerprint

        bucket, key = _split_s3(source)
        listing = _store(f"s3://{bucket}", endpoint, create_bucket=False).object_listing(key)
        if not listing:
            raise ValueError(f"no objects under {source}")
        return listing_fingerprint("s3", source, listing)
    return path_fingerprint(source)


def prepare_data(spec: ExperimentSpec, out_dir: str | os.PathLike, *, data_uri: str = "",
                 endpoint: str | None = None, expected_fingerprint: str = "", cache_uri: str = "") -> dict[str, Any]:
    """The data stage into ``out_dir`` (a ``SplitData`` directory plus ``spec.yaml``).

    Args:
        spec: the experiment.
        out_dir: the dataset directory to write.
        data_uri: new data for retraining, replacing ``data.path``: a local folder, or
            ``s3://bucket/prefix`` whose objects are downloaded first (MinIO; endpoint and
            credentials from the environment).
        endpoint: S3 endpoint for ``data_uri`` (default ``MINIO_ENDPOINT``).
        expected_fingerprint: the source fingerprint a pipeline computed before this task (its
            cache key); a different one now means the data changed in between, and is refused.
        cache_uri: an ``s3://`` store for the dataset's arrays: they are uploaded there once
            (content-addressed) and ``out_dir`` keeps references (``medens.data.remote``), so the
            dataset artifact every train task receives is a manifest, and each task reads only
            the rows it uses. Empty: the arrays stay in ``out_dir``.

    Returns:
        The dataset summary (class counts per split, imbalance ratio) with ``source`` (the
        fingerprint, also in ``dataset.json`` under ``info.source``).
    """
    from medens.data import build_dataset

    fingerprint = source_fingerprint(spec, data_uri, endpoint=endpoint)
    if expected_fingerprint and fingerprint["sha256"] != expected_fingerprint:
        raise ValueError(f"the data at {fingerprint['uri'] or spec.data.source} changed while the pipeline ran "
                         f"(fingerprint {fingerprint['sha256'][:12]}, expected {expected_fingerprint[:12]}); rerun")
    tmp = None
    try:
        if data_uri:
            path = data_uri
            if data_uri.startswith("s3://"):
                bucket, key = _split_s3(data_uri)
                tmp = tempfile.mkdtemp(prefix="medens-data-")
                if not _store(f"s3://{bucket}", endpoint, create_bucket=False).sync_down(key, tmp):
                    raise ValueError(f"no objects under {data_uri}")
                path = tmp
            spec = spec.model_copy(update={"data": spec.data.model_copy(update={"path": path})})
        data = build_dataset(spec)
        data.info["source"] = fingerprint
        out = data.save(out_dir)
        if cache_uri:
            from medens.data.remote import publish_arrays

            publish_arrays(out, cache_uri, endpoint=endpoint)
        spec.save(out / "spec.yaml")
        return {**data.summary(), "source": fingerprint}
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def lineage(source: dict[str, Any] | None) -> dict[str, Any]:
    """``{"data_fingerprint", "data_source"}`` of a source fingerprint (for artifacts' ``lineage``)."""
    src = source or {}
    return {"data_fingerprint": src.get("sha256"), "data_source": src.get("uri") or src.get("kind")}


def dataset_lineage(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The :func:`lineage` of a dataset directory's source."""
    import json

    return lineage(json.loads((Path(data_dir) / "dataset.json").read_text()).get("info", {}).get("source"))
