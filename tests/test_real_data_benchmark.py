"""The pieces of ``benchmarks/real_data.py`` that can fail: the elpv image folder, HOG features and
the goal logic, and the sets of ``benchmarks/real_datasets.py``. No training; the full benchmark is run by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tests._scripts import load_script

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def rd():
    return load_script(BENCHMARKS / "real_data.py", "real_data_benchmark")


@pytest.fixture(scope="module")
def ds(rd):
    """``benchmarks/real_datasets.py``, the sets ``real_data.py`` builds (imported by it)."""
    return sys.modules["real_datasets"]


def test_elpv_to_image_folder(ds, tmp_path):
    from PIL import Image

    # fails (never skips) without the package, with the install hint in the message
    images, probs, types = ds.load_elpv()
    assert images.shape == (2624, 300, 300) and images.dtype == np.uint8
    labels = ds.class_index(probs)
    assert np.bincount(labels, minlength=4).tolist() == [1508, 295, 106, 715]
    assert set(types) == {"mono", "poly"}

    pick = np.concatenate([np.flatnonzero(labels == k)[:2] for k in range(4)])
    written = ds.write_image_folder(images[pick], labels[pick], tmp_path / "elpv",
                                    names=[f"cell{i + 1:04d}" for i in pick])
    assert written == {"p000": 2, "p033": 2, "p067": 2, "p100": 2}
    assert sorted(p.name for p in (tmp_path / "elpv").iterdir()) == ["p000", "p033", "p067", "p100"]
    for k, cls in enumerate(ds.CLASS_NAMES):
        files = sorted((tmp_path / "elpv" / cls).glob("*.png"))
        assert [f.stem for f in files] == [f"cell{i + 1:04d}" for i in pick[labels[pick] == k]]
        for f, i in zip(files, pick[labels[pick] == k]):
            with Image.open(f) as im:
                assert im.mode == "L" and im.size == (300, 300)
                np.testing.assert_array_equal(np.asarray(im), images[i])  # lossless, original resolution


def test_missing_package_names_the_install(ds, monkeypatch):
    monkeypatch.setitem(sys.modules, "elpv_dataset", None)
    monkeypatch.setitem(sys.modules, "elpv_dataset.utils", None)
    with pytest.raises(RuntimeError, match=r"make venv.*pip install -e '\.\[bench\]'"):
        ds.load_elpv()


def test_class_index_refuses_other_probabilities(ds):
    assert ds.class_index(np.array([0.0, 1 / 3, 2 / 3, 1.0])).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="0, 1/3, 2/3 or 1"):
        ds.class_index(np.array([0.5]))


def test_hog_features_at_64_px(rd):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(3, 64, 64, 1), dtype=np.uint8)
    f = rd.hog_features(x)
    # 8x8 cells of 8 px, 7x7 blocks of 2x2 cells, 9 orientations
    assert f.shape == (3, 7 * 7 * 2 * 2 * 9)
    np.testing.assert_allclose(rd.hog_features(x[:, :, :, 0]), f)
    assert np.isfinite(f).all()


def test_stratified_subset_keeps_every_class(rd, ds):
    labels = np.repeat(np.arange(4), [1508, 295, 106, 715])
    keep = ds.stratified_subset(labels, rd.QUICK_IMAGES)
    assert len(keep) == rd.QUICK_IMAGES and np.all(np.diff(keep) > 0)
    assert np.bincount(labels[keep], minlength=4).min() >= 10


def _planted(n: int, accuracy: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and one-hot-ish probabilities right on about ``accuracy`` of the samples."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), n // 4)
    pred = np.where(rng.random(y.size) < accuracy, y, (y + rng.integers(1, 4, y.size)) % 4)
    probs = np.full((y.size, 4), 0.1)
    probs[np.arange(y.size), pred] = 0.7
    return y, probs


def test_goals_clear_win(rd):
    y, strong = _planted(400, 0.9, seed=1)
    _, weak = _planted(400, 0.5, seed=2)
    _, weaker = _planted(400, 0.4, seed=3)
    comparisons = {b: rd.compare(y, strong, p, 300) for b, p in
                   (("hog_svm", weak), ("hog_svm_balanced", weaker), ("plain_resnet18", weak))}
    hog_mcc = {"hog_svm": 0.35, "hog_svm_balanced": 0.2}
    goals = rd.judge_goals(comparisons, hog_mcc, "plain_resnet18")
    assert goals["beats_hog_svm"]["met"] is True
    assert goals["beats_hog_svm"]["baseline"] == "hog_svm"  # the better variant by test MCC
    assert goals["beats_hog_svm"]["mcc"]["diff"] > 0.3 and goals["beats_hog_svm"]["mcc"]["p_value"] < 0.05
    assert goals["not_worse_than_plain_recipe"]["met"] is True


def test_goals_equal_systems_do_not_beat(rd):
    y, probs = _planted(400, 0.7, seed=1)
    comparisons = {b: rd.compare(y, probs, probs.copy(), 300) for b in ("hog_svm", "hog_svm_balanced", "plain_resnet18")}
    goals = rd.judge_goals(comparisons, {"hog_svm": 0.6, "hog_svm_balanced": 0.6}, "plain_resnet18")
    assert goals["beats_hog_svm"]["met"] is False
    assert goals["beats_hog_svm"]["mcc"]["diff"] == 0 and goals["beats_hog_svm"]["mcc"]["p_value"] == 1.0
    assert goals["not_worse_than_plain_recipe"]["met"] is True  # a CI ending at 0 is not worse


def test_goals_better_baseline_variant_is_the_one_to_beat(rd):
    y, medens = _planted(400, 0.7, seed=1)
    _, weak = _planted(400, 0.4, seed=2)
    _, strong = _planted(400, 0.95, seed=3)
    comparisons = {"hog_svm": rd.compare(y, medens, weak, 300), "hog_svm_balanced": rd.compare(y, medens, strong, 300),
                   "plain_resnet18": rd.compare(y, medens, strong, 300)}
    goals = rd.judge_goals(comparisons, {"hog_svm": 0.2, "hog_svm_balanced": 0.93}, "plain_resnet18")
    assert goals["beats_hog_svm"]["baseline"] == "hog_svm_balanced"
    assert goals["beats_hog_svm"]["met"] is False
    assert goals["not_worse_than_plain_recipe"]["met"] is False
    assert goals["not_worse_than_plain_recipe"]["high"] < 0


def test_table_marks_systems_chosen_on_test(rd):
    ci = {"point": 0.5, "low": 0.4, "high": 0.6}
    text = rd.table({"medens_selected": {"selectable": True, "seconds": 12.0, "metrics": dict.fromkeys(rd.CI_METRICS, ci)},
                     "medens_best_on_test": {"selectable": False, "seconds": None,
                                             "metrics": dict.fromkeys(rd.CI_METRICS, ci)}})
    assert "medens_best_on_test *" in text and "0.500 [0.400, 0.600]" in text


def test_long_tailed_digits(ds, tmp_path):
    images, labels = ds.long_tailed_digits(32)
    counts = np.bincount(labels, minlength=10)
    # 170 * 0.1 ** (c / 9), rounded: 170 down to 17 (the ratio 10)
    assert counts.tolist() == [round(170 * 0.1 ** (c / 9)) for c in range(10)]
    assert counts[0] == 170 and counts[9] == 17 and images.shape == (len(labels), 32, 32) and images.dtype == np.uint8
    from sklearn.datasets import load_digits

    d = load_digits()
    # each image is one real scan (16 grey levels -> 0..255), bilinearly upsampled by 4
    import torch

    zeros = torch.tensor(d.images[d.target == 0], dtype=torch.float32)[:, None]
    up = torch.nn.functional.interpolate(zeros, size=32, mode="bilinear")[:, 0].numpy() / 16 * 255
    diffs = np.abs(up - images[labels == 0][0]).max(axis=(1, 2))
    assert np.sum(diffs <= 0.5) == 1 and np.sort(diffs)[1] > 10
    written = ds.write_image_folder(images[:20], labels[:20], tmp_path / "digits", class_names=ds.DIGIT_CLASSES)
    assert sum(written.values()) == 20 and sorted(p.name for p in (tmp_path / "digits").iterdir()) == list("0123456789")


def test_small_long_tailed_digits(ds):
    parts = ds.small_long_tailed_digits(32)
    counts = {s: np.bincount(y, minlength=5).tolist() for s, (_, y) in parts.items()}
    assert counts == {"train": [138, 30, 12, 6, 3], "val": [15, 8, 3, 2, 1], "test": [25] * 5}
    from sklearn.datasets import load_digits

    d = load_digits()
    flat = {s: images.reshape(len(images), -1) for s, (images, _) in parts.items()}
    # every image is one real scan; no scan is in two splits (digits 0-4 have no duplicate scans)
    scans = ds._digit_images(d.images[d.target < 5], 32).reshape(-1, 32 * 32)
    index = {row.tobytes(): i for i, row in enumerate(scans)}
    assert len(index) == len(scans)
    found = {s: [index[row.tobytes()] for row in rows] for s, rows in flat.items()}
    assert all(len(set(v)) == len(v) for v in found.values())
    assert not (set(found["train"]) & set(found["val"]) or set(found["train"]) & set(found["test"])
                or set(found["val"]) & set(found["test"]))
    for s, (_, y) in parts.items():
        assert (d.target[d.target < 5][found[s]] == y).all()
    # the seed draws other images, the same counts
    other = ds.small_long_tailed_digits(32, seed=1)
    assert np.bincount(other["train"][1]).tolist() == [138, 30, 12, 6, 3]
    assert not np.array_equal(other["test"][0], parts["test"][0])


def _write_idx(path, array, type_byte=0x08):
    import gzip

    header = bytes([0, 0, type_byte, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def test_read_idx_reads_the_mnist_format_and_names_bad_files(ds, tmp_path):
    # the header by hand: zero, zero, type 0x08, three dimensions (2, 3, 4), then 24 bytes
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a-idx3-ubyte.gz", a)
    raw = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4]) + bytes(range(24))
    (tmp_path / "b-idx3-ubyte").write_bytes(raw)  # uncompressed
    for name in ("a-idx3-ubyte.gz", "b-idx3-ubyte"):
        out = ds.read_idx(tmp_path / name)
        assert out.shape == (2, 3, 4) and out.dtype == np.uint8 and out[1, 2, 3] == 23
    (tmp_path / "short").write_bytes(raw[:-1])
    with pytest.raises(ValueError, match=r"short: header says \(2, 3, 4\) \(24 bytes\) but 23 bytes follow"):
        ds.read_idx(tmp_path / "short")
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(ValueError, match="png: not an IDX file"):
        ds.read_idx(tmp_path / "png")
    _write_idx(tmp_path / "floats.gz", a, type_byte=0x0D)
    with pytest.raises(ValueError, match="type 0x0d"):
        ds.read_idx(tmp_path / "floats.gz")


def _planted_fashion(root, per_label_train=700, per_label_test=400):
    """Fashion-MNIST's four files with planted images: every pixel of an image holds its index mod
    256 in the first row and its label everywhere else, so a drawn image tells where it came from."""
    root.mkdir()
    for split, n in (("train", per_label_train), ("test", per_label_test)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), n)
        np.random.default_rng(1).shuffle(labels)
        images = np.repeat(labels[:, None, None], 28, axis=1).repeat(28, axis=2)
        images[:, 0, 0] = np.arange(len(labels)) % 256
        images[:, 0, 1] = np.arange(len(labels)) // 256
        img, lab = rd_files()[split]
        _write_idx(root / img, images)
        _write_idx(root / lab, labels)


def rd_files():
    return {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
            "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def test_long_tailed_fashion(ds, tmp_path):
    assert ds.FASHION_FILES == rd_files()
    counts = ds.fashion_counts()
    # round(500 * 50 ** (-c / 9)): 500 for label 0, 10 for label 9 (50:1); val a quarter, at least 2
    assert counts["train"] == [500, 324, 210, 136, 88, 57, 37, 24, 15, 10]
    assert counts["val"] == [125, 81, 52, 34, 22, 14, 9, 6, 4, 2]
    assert counts["test"] == [300] * 10
    _planted_fashion(tmp_path / "fm")
    parts = ds.long_tailed_fashion(tmp_path / "fm", seed=3)
    origin = {}
    for split, (images, labels) in parts.items():
        assert images.shape == (sum(counts[split]), 28, 28) and images.dtype == np.uint8
        assert np.bincount(labels, minlength=10).tolist() == counts[split]
        assert (images[:, 5, 5] == labels).all()  # each image keeps its own label
        origin[split] = set((images[:, 0, 0].astype(int) + 256 * images[:, 0, 1].astype(int)).tolist())
        assert len(origin[split]) == len(labels)  # no image twice
    assert not origin["train"] & origin["val"]  # both from the official training set, disjoint
    again = ds.long_tailed_fashion(tmp_path / "fm", seed=3)
    other = ds.long_tailed_fashion(tmp_path / "fm", seed=4)
    assert all((again[s][0] == parts[s][0]).all() for s in parts)
    assert not (other["train"][0] == parts["train"][0]).all()


def test_missing_fashion_files_name_the_debian_package(ds, tmp_path):
    with pytest.raises(RuntimeError, match=r"no train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz in .*"
                                           r"apt-get install dataset-fashion-mnist"):
        ds.load_fashion_mnist(tmp_path)


def test_via_init_runs_the_spec_medens_init_writes_with_only_the_seed_changed(rd, ds, tmp_path):
    """``--via-init``: the spec is what ``medens init --size`` writes for the benchmark's image folder,
    loaded as written: the recipe's fields, the folder's channels and split folders; only the seed differs."""
    from medens.config import load_spec

    presplit = ds.small_long_tailed_digits(16, seed=0)
    for s in ("train", "val", "test"):
        imgs, labels = presplit[s]
        ds.write_image_folder(imgs, labels, tmp_path / "digits" / s, names=[f"{s}{i:04d}" for i in range(len(labels))],
                              class_names=ds.DIGIT_CLASSES[:5])
    spec, text = rd.spec_via_init(tmp_path / "digits", tmp_path / "init.yaml", 32, quick=False, seed=7)
    written = load_spec(str(tmp_path / "init.yaml"))
    assert text == (tmp_path / "init.yaml").read_text() and "recipe: imbalanced-2d" in text
    assert spec.seed == 7 and written.seed != 7
    assert spec.model_copy(update={"seed": written.seed}).to_dict() == written.to_dict()
    assert spec.data.image_size == 32 and spec.data.channels == 1 and spec.data.path == str(tmp_path / "digits")
    assert spec.training.optimizer == "adamw" and spec.training.ema_decay == 0.99  # the recipe, expanded


def test_split_folders_hold_the_benchmarks_own_split(rd, ds, tmp_path):
    """``--split-folders``: the image folder moved into train/, val/, test/ exactly as the benchmark's
    data stage splits it; init's spec on that folder reads the same test images."""
    from medens.data.types import SplitData
    from medens.stages import prepare_data

    images, labels = ds.long_tailed_digits(16)  # 170 down to 17 a class
    folder = tmp_path / "digits"
    ds.write_image_folder(images, labels, folder, names=[f"d{i:04d}" for i in range(len(labels))],
                          class_names=ds.DIGIT_CLASSES)
    bench = rd.build_spec(rd.default_spec(), folder, 16, quick=True, flips="none", seed=3)
    prepare_data(bench, tmp_path / "bench-data")
    expected = SplitData.load(tmp_path / "bench-data")
    written, test_ids = rd.split_into_folders(folder, tmp_path / "split", bench, tmp_path)
    assert not folder.exists() and not (tmp_path / "split-probe").exists()
    assert sorted(test_ids) == sorted(expected.test.ids)
    for s in ("train", "val", "test"):
        on_disk = sorted(f"{p.parent.name}/{p.name}" for p in (tmp_path / "split" / s).glob("*/*.png"))
        assert on_disk == sorted(expected.split(s).ids)
        assert sum(written[s].values()) == len(expected.split(s).ids)
    spec, _ = rd.spec_via_init(tmp_path / "split", tmp_path / "init.yaml", 16, quick=True, seed=3)
    prepare_data(spec, tmp_path / "init-data")
    assert sorted(SplitData.load(tmp_path / "init-data").test.ids) == sorted(expected.test.ids)
