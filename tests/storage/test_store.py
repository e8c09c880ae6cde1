"""ArtifactStore against a local directory and a real S3-protocol server on loopback (moto)."""

import io
import json
import time

import pytest

from medens.storage import STORE_MANIFEST, ArtifactStore, LocalStore, S3Store


def make_artifact(root, extra=b""):
    (root / "members" / "a").mkdir(parents=True)
    (root / "ensemble.json").write_text(json.dumps({"method": "mean"}))
    (root / "members" / "a" / "weights.pt").write_bytes(b"\x00\x01weights" + extra)
    return root


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    # moto accepts any credentials; these are placeholders, not secrets
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-access")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    bucket = f"medens-{time.time_ns()}"
    return ArtifactStore.from_uri(f"s3://{bucket}/experiments", endpoint=s3_endpoint)


def test_from_uri():
    assert isinstance(ArtifactStore.from_uri("/tmp/x"), LocalStore)
    with pytest.raises(ValueError, match="has no bucket"):
        ArtifactStore.from_uri("s3://")


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_publish_list_download_round_trip(kind, tmp_path, request):
    store = LocalStore(tmp_path / "store") if kind == "local" else request.getfixturevalue("s3")
    src = make_artifact(tmp_path / "src")
    uri = store.publish(src, "rbc-demo/ensemble-1")
    assert uri.endswith("rbc-demo/ensemble-1")
    assert store.list() == ["rbc-demo/ensemble-1"]
    assert store.list("rbc-demo/") == ["rbc-demo/ensemble-1"] and store.list("other") == []
    assert store.exists("rbc-demo/ensemble-1") and not store.exists("rbc-demo/nope")
    out = store.download("rbc-demo/ensemble-1", tmp_path / "dl")
    assert (out / "members" / "a" / "weights.pt").read_bytes() == b"\x00\x01weights"
    manifest = json.loads((out / STORE_MANIFEST).read_text())
    assert set(manifest["files"]) == {"ensemble.json", "members/a/weights.pt"}
    # republishing replaces the artifact as a whole
    src2 = make_artifact(tmp_path / "src2", extra=b"v2")
    store.publish(src2, "rbc-demo/ensemble-1")
    out = store.download("rbc-demo/ensemble-1", tmp_path / "dl")
    assert (out / "members" / "a" / "weights.pt").read_bytes().endswith(b"v2")


def test_local_corruption_refused_and_destination_untouched(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.publish(make_artifact(tmp_path / "src"), "e1")
    (tmp_path / "store" / "e1" / "members" / "a" / "weights.pt").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="members/a/weights.pt does not match its sha256"):
        store.download("e1", tmp_path / "dl")
    assert not (tmp_path / "dl").exists()


def test_s3_corrupted_object_refused(s3, tmp_path):
    s3.publish(make_artifact(tmp_path / "src"), "e1")
    data = b"not the published bytes"
    s3.client.put_object(s3.bucket, "experiments/e1/members/a/weights.pt", io.BytesIO(data), len(data))
    with pytest.raises(ValueError, match="refusing artifact e1: members/a/weights.pt does not match its sha256"):
        s3.download("e1", tmp_path / "dl")


def test_manifest_written_last_so_partial_uploads_are_invisible(s3, tmp_path):
    src = make_artifact(tmp_path / "src")
    s3.client.fput_object(s3.bucket, "experiments/half/ensemble.json", str(src / "ensemble.json"))
    assert s3.list() == []
    with pytest.raises(FileNotFoundError, match="no published artifact 'half'"):
        s3.download("half", tmp_path / "dl")


def test_unreachable_endpoint_is_reported_after_retries(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    t0 = time.monotonic()
    with pytest.raises(ConnectionError) as e:
        S3Store("bucket", endpoint="http://127.0.0.1:1", retries=3, backoff=0.05, timeout=1.0)
    msg = str(e.value)
    assert "cannot reach S3 endpoint 127.0.0.1:1 to check bucket after 3 attempts" in msg
    assert "s3cr3t-value" not in msg and "s3cr3t-value" not in repr(e.value.__cause__)
    assert time.monotonic() - t0 >= 0.05 + 0.1  # it did back off between attempts


def test_missing_endpoint_says_how_to_set_it(monkeypatch):
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with pytest.raises(ValueError, match="set MINIO_ENDPOINT"):
        S3Store("bucket")


def test_bad_names_and_sources(tmp_path):
    store = LocalStore(tmp_path / "store")
    with pytest.raises(ValueError, match="invalid artifact name '../x'"):
        store.publish(make_artifact(tmp_path / "src"), "../x")
    with pytest.raises(ValueError, match="not a directory"):
        store.publish(tmp_path / "nope", "x")


def test_s3_data_prefix_for_retraining(s3, tmp_path):
    for i in range(3):
        f = tmp_path / f"img{i}.png"
        f.write_bytes(bytes([i]) * 10)
        s3.put_file(f, f"incoming/2026-11/img{i}.png")
    got = s3.sync_down("incoming/2026-11", tmp_path / "new")
    assert sorted(p.name for p in got) == ["img0.png", "img1.png", "img2.png"]
    assert (tmp_path / "new" / "img2.png").read_bytes() == bytes([2]) * 10
