"""A dataset artifact as a manifest plus a cache in object storage (medens.data.remote), against a
real S3-protocol server on loopback (moto): rows are fetched on demand, each once, and training
from the manifest gives the very model training from the files gives."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from medens.data.remote import RemoteArray, publish_arrays
from medens.data.types import SplitData


def small_cells() -> SplitData:
    """180 synthetic cells, 32 px, split 60/20/20 (as the training tests' fixture)."""
    from medens.data.splits import stratified_split
    from medens.data.synthetic import make_cells
    from medens.data.types import Split

    images, labels, _ = make_cells([30, 30, 120], size=32, seed=0)
    whole = Split(images=images, labels=labels.astype(np.int64), ids=[f"c{i}" for i in range(len(labels))])
    tr, va, te = stratified_split(whole.labels, (0.6, 0.2, 0.2), seed=0)
    return SplitData("classification", ["codocyte", "hypochromia", "normal"], whole.subset(tr), whole.subset(va),
                     whole.subset(te))


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    # moto accepts any credentials; these are placeholders, not secrets
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-access")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    return f"s3://medens-cache-{time.time_ns()}/runs"


def test_published_arrays_become_references_and_rows_come_on_demand(tmp_path, bucket, s3_endpoint):
    data = small_cells()
    data.save(tmp_path / "ds")
    local = SplitData.load(tmp_path / "ds")
    keys = publish_arrays(tmp_path / "ds", bucket, endpoint=s3_endpoint)
    assert len(keys) == 3 and all(k.startswith("cache/") and k.endswith(".npy") for k in keys)
    files = sorted(p.name for p in (tmp_path / "ds").iterdir())
    assert not [f for f in files if f.endswith(".npy")]  # the directory is a manifest now
    assert {"train.images.ref.json", "val.images.ref.json", "test.images.ref.json"} <= set(files)
    text = "".join((tmp_path / "ds" / f).read_text() for f in files if f.endswith(".ref.json"))
    assert "test-secret" not in text and "test-access" not in text  # no credentials in the artifact
    remote = SplitData.load(tmp_path / "ds")
    train = remote.train.images
    assert isinstance(train, RemoteArray) and train.shape == local.train.images.shape
    assert train.remote_reads == 0  # opening reads the header only
    np.testing.assert_array_equal(train[[5, 6, 7, 40]], local.train.images[[5, 6, 7, 40]])
    assert train.remote_reads == 2  # rows 5-7 in one range request, row 40 in another
    np.testing.assert_array_equal(train[[6, 40]], local.train.images[[6, 40]])
    assert train.remote_reads == 2  # already local: no request
    view = train.take([40, 41, 3])
    np.testing.assert_array_equal(np.asarray(view), local.train.images[[40, 41, 3]])
    assert train.remote_reads == 4  # the view shares the cache: rows 41 and 3 only
    assert remote.train.ids == local.train.ids and remote.class_counts() == local.class_counts()
    # loading the dataset again in the same process shares the cache: nothing fetched is lost
    again = SplitData.load(tmp_path / "ds").train.images
    np.testing.assert_array_equal(train[[5, 40, 41]], local.train.images[[5, 40, 41]])
    np.testing.assert_array_equal(again[[3, 6]], local.train.images[[3, 6]])
    assert again.remote_reads == train.remote_reads == 4
    # publishing the same arrays again uploads nothing new: the keys are content addresses
    data.save(tmp_path / "again")
    assert publish_arrays(tmp_path / "again", bucket, endpoint=s3_endpoint) == keys


def test_training_from_the_manifest_gives_the_same_model(tmp_path, bucket, s3_endpoint):
    from medens.config import TrainingSpec
    from medens.training import fit

    data = small_cells()
    data.save(tmp_path / "ds")
    publish_arrays(tmp_path / "ds", bucket, endpoint=s3_endpoint)
    remote = SplitData.load(tmp_path / "ds")
    spec = TrainingSpec(epochs=2, min_steps=0, batch_size=16, patience=None, plateau_patience=None, augment="flips")
    fit("compact_cnn", "ce", data, spec, tmp_path / "a", seed=1, progress=False, normalize="zscore")
    fit("compact_cnn", "ce", remote, spec, tmp_path / "b", seed=1, progress=False, normalize="zscore")
    assert (tmp_path / "a" / "weights.pt").read_bytes() == (tmp_path / "b" / "weights.pt").read_bytes()
    # every training row was fetched once; later epochs and passes read the local copy
    cache = remote.train.images._cache
    assert cache.have.all() and cache.remote_reads <= 2 * len(remote.train)


def test_a_changed_cache_object_and_a_local_store_are_refused(tmp_path, bucket, s3_endpoint):
    small_cells().save(tmp_path / "ds")
    with pytest.raises(ValueError, match="needs an s3:// store"):
        publish_arrays(tmp_path / "ds", str(tmp_path / "store"))
    publish_arrays(tmp_path / "ds", bucket, endpoint=s3_endpoint)
    ref_path = tmp_path / "ds" / "val.images.ref.json"
    ref = json.loads(ref_path.read_text())
    ref_path.write_text(json.dumps({**ref, "bytes": ref["bytes"] + 1}))
    with pytest.raises(ValueError, match=r"bytes, the manifest says .* \(changed or truncated"):
        SplitData.load(tmp_path / "ds")


def test_the_data_stage_writes_a_manifest_for_an_s3_store(tmp_path, bucket, s3_endpoint):
    from medens.config import parse_spec
    from medens.stages import prepare_data

    spec = parse_spec({"name": "c", "models": ["compact_cnn"], "losses": ["ce"],
                       "data": {"source": "synthetic_cells", "image_size": 24,
                                "synthetic": {"counts": {"normal": 20, "codocyte": 10, "hypochromia": 10}}},
                       "store": {"uri": bucket, "endpoint": s3_endpoint}})
    prepare_data(spec, tmp_path / "ds", cache_uri=spec.store.uri, endpoint=s3_endpoint)
    size = sum(p.stat().st_size for p in (tmp_path / "ds").iterdir())
    remote = SplitData.load(tmp_path / "ds")
    assert isinstance(remote.test.images, RemoteArray)
    assert size < remote.train.images.nbytes  # the artifact is smaller than one split's pixels
