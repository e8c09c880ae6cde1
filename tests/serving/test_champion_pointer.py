"""The chart's default storageUri is a champion pointer (``<store>/<name>/champion``): the server
resolves it to the version it names when it starts, locally and on S3, and follows a promotion."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from medens.ensemble.artifact import load_ensemble
from medens.serving.predictor import EnsemblePredictor, fetch_artifact
from medens.stages.registry import register_artifact

ROOT = Path(__file__).resolve().parents[2]


def _two_versions(ens_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The tiny ensemble registered twice (a retraining's challenger is another copy)."""
    v2 = tmp_path / "v2"
    shutil.copytree(ens_dir, v2)
    return ens_dir, v2


def test_a_local_champion_pointer_serves_its_version_and_follows_a_promotion(tiny_ensemble, tmp_path):
    ens_dir, images = tiny_ensemble
    v1, v2 = _two_versions(ens_dir, tmp_path)
    store = tmp_path / "registry"
    first = register_artifact(v1, str(store), "tiny", version="v1")
    champion_dir = Path(first["champion_uri"])
    assert sorted(p.name for p in champion_dir.iterdir()) == ["STORE_MANIFEST.json", "champion.json"]
    assert fetch_artifact(str(champion_dir)) == store / "tiny" / "versions" / "v1"

    register_artifact(v2, str(store), "tiny", version="v2")  # a promotion: a new pointer, nothing else
    assert fetch_artifact(str(champion_dir)) == store / "tiny" / "versions" / "v2"
    p = EnsemblePredictor.load(champion_dir)
    x = p.prepare(list(images[:4]))
    expected, _ = load_ensemble(v2).predict(x)
    np.testing.assert_allclose(np.stack([r["probs"] for r in p.forward(x)]), expected, atol=1e-12)


def test_the_charts_default_storage_uri_loads_through_fetch_artifact(tiny_ensemble, s3_endpoint, monkeypatch,
                                                                     tmp_path):
    """Register as the pipeline does into the bucket and prefix of the chart's default storageUri, then
    fetch that exact URI the way ``medens serve`` does (MINIO_ENDPOINT and keys from the environment,
    as the chart gives them to the predictor container)."""
    values = yaml.safe_load((ROOT / "charts" / "medens" / "values.yaml").read_text())
    uri = values["model"]["storageUri"]
    name = values["model"]["name"]
    assert uri.startswith("s3://") and uri.endswith(f"/{name}/champion")
    store_uri = uri[: -len(f"/{name}/champion")]
    # moto accepts any credentials; these are placeholders, not secrets
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-access")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("MINIO_ENDPOINT", s3_endpoint)
    ens_dir, images = tiny_ensemble
    version = f"v{time.time_ns()}"
    out = register_artifact(ens_dir, store_uri, name, version=version)
    assert out["champion_uri"] == uri
    local = fetch_artifact(uri, cache=tmp_path / "cache")
    assert local.name == version
    assert (local / "ensemble.json").read_bytes() == (ens_dir / "ensemble.json").read_bytes()

    # what KServe's storage initializer leaves in /mnt/models for that URI: the pointer alone
    mnt = tmp_path / "mnt-models"
    shutil.copytree(fetch_artifact_pointer(uri, tmp_path / "pointer"), mnt)
    served = fetch_artifact(str(mnt), cache=tmp_path / "cache2")
    assert (served / "ensemble.json").read_bytes() == (ens_dir / "ensemble.json").read_bytes()


def fetch_artifact_pointer(uri: str, dest: Path) -> Path:
    from medens.storage import ArtifactStore

    base, _, rest = uri.rpartition("/")
    base, _, name = base.rpartition("/")
    return ArtifactStore.from_uri(base).download(f"{name}/{rest}", dest)


def test_a_pointer_without_an_artifact_is_refused_with_its_path(tmp_path):
    (tmp_path / "champion.json").write_text(json.dumps({"version": "v1", "uri": ""}))
    with pytest.raises(ValueError, match="names no artifact"):
        fetch_artifact(str(tmp_path))
    (tmp_path / "champion.json").write_text(json.dumps({"version": "v1", "uri": str(tmp_path / "gone")}))
    with pytest.raises(ValueError, match="is not an ensemble artifact"):
        fetch_artifact(str(tmp_path))
