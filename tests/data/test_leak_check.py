"""The same image in two splits (issue 22, item 7): byte-identical files or images in train, val and
test are refused by default, naming them; ``data.allow_duplicates`` allows them; the dataset info
and the report say what the check found."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medens.config import parse_spec
from medens.data import build_dataset
from medens.data.duplicates import check_duplicates, duplicate_notes
from medens.data.types import Split


def write_png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.full((12, 12), value % 256, np.uint8)
    a[0, 0] = value // 256
    Image.fromarray(a).save(path)


def spec(path, **data):
    return parse_spec({"name": "t", "task": "classification", "models": ["m"], "losses": ["l"],
                       "data": {"source": "image_folder", "path": str(path), "image_size": 12, "channels": 1, **data}})


def split_folder(root, copies=()):
    """train/ and test/ with classes a, b; every file distinct, then ``copies`` (src, dst) made."""
    v = 0
    for split, n in (("train", 10), ("test", 4)):
        for cls in ("a", "b"):
            for i in range(n):
                write_png(root / split / cls / f"{split}-{cls}{i}.png", v)  # ids must differ across splits
                v += 1
    for src, dst in copies:
        (root / dst).parent.mkdir(parents=True, exist_ok=True)
        (root / dst).write_bytes((root / src).read_bytes())


def test_a_file_copied_from_train_into_test_is_refused_naming_both(tmp_path):
    split_folder(tmp_path / "f", copies=[("train/a/train-a3.png", "test/a/copy_of_a3.png"),
                                         ("train/b/train-b1.png", "test/b/IMG_0001.png")])
    with pytest.raises(ValueError) as e:
        build_dataset(spec(tmp_path / "f"))
    msg = str(e.value)
    assert "the same image in two splits: 2 image(s) are byte-identical in more than one split (sha256 of every file)" in msg
    assert "a/train-a3.png (train) = a/copy_of_a3.png (test)" in msg and "b/train-b1.png (" in msg and "b/IMG_0001.png (test)" in msg
    assert "set data.allow_duplicates: true" in msg
    data = build_dataset(spec(tmp_path / "f", allow_duplicates=True))
    d = data.info["duplicates"]
    assert d["across_splits"] == 2 and d["allowed"] is True and len(d["examples"]) == 2
    assert duplicate_notes(data.info) == ["Duplicate check (sha256 of every file): 2 image(s) are byte-identical in "
                                          "more than one split, allowed by data.allow_duplicates (test figures may "
                                          "be optimistic)."]


def test_copies_inside_one_split_are_no_leak(tmp_path):
    split_folder(tmp_path / "f", copies=[("test/a/test-a0.png", "test/a/again.png")])
    data = build_dataset(spec(tmp_path / "f"))
    assert data.info["duplicates"] == {"checked": "sha256 of every file", "across_splits": 0,
                                       "within_splits": {"train": 0, "val": 0, "test": 1}, "allowed": False}
    assert duplicate_notes(data.info) == ["Duplicate check (sha256 of every file): no image is in two splits; "
                                          "1 extra copies inside a split (not a leak)."]


def test_a_pool_split_by_medens_is_checked_too(tmp_path):
    for i in range(20):
        write_png(tmp_path / "p" / ("a" if i % 2 else "b") / f"{i}.png", i)
    for k in range(6):  # the same image six times: at least two splits get a copy
        write_png(tmp_path / "p" / "a" / f"dup{k}.png", 999)
    with pytest.raises(ValueError, match=r"1 image\(s\) are byte-identical in more than one split"):
        build_dataset(spec(tmp_path / "p"))


def test_in_memory_sources_hash_each_image(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for s, n in (("train", 30), ("val", 10), ("test", 10)):
        arrays[f"{s}_images"] = rng.integers(0, 256, (n, 12, 12), dtype=np.uint8)
        arrays[f"{s}_labels"] = (np.arange(n) % 2).reshape(-1, 1)
    path = tmp_path / "x.npz"
    np.savez(path, **arrays)
    base = {"name": "t", "task": "classification", "models": ["m"], "losses": ["l"],
            "data": {"source": "medmnist", "path": str(path), "image_size": 12, "channels": 1}}
    assert build_dataset(parse_spec(base)).info["duplicates"]["checked"] == "sha256 of every image's pixels"
    arrays["test_images"][4] = arrays["train_images"][7]
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"1 image\(s\) .*: train-000007 \(train\) = test-000004 \(test\)"):
        build_dataset(parse_spec(base))
    base["data"]["allow_duplicates"] = True
    assert build_dataset(parse_spec(base)).info["duplicates"]["across_splits"] == 1


def test_check_duplicates_names_the_first_five_and_counts_the_rest():
    ids = {s: [f"{s}{i}" for i in range(8)] for s in ("train", "test")}
    splits = {s: Split(images=np.zeros((8, 2, 2, 1), np.uint8), labels=np.zeros(8, np.int64), ids=v)
              for s, v in ids.items()}
    hashes = {f"{s}{i}": f"h{i}" for s in ("train", "test") for i in range(8)}
    with pytest.raises(ValueError) as e:
        check_duplicates(splits, hashes, "x", allow=False, where="here")
    msg = str(e.value)
    assert msg.startswith("invalid data in here (1 problem):\n  the same image in two splits: 8 image(s)")
    assert "train4 (train) = test4 (test); and 3 more." in msg and "train5" not in msg


def test_synthetic_cells_have_no_duplicates():
    data = build_dataset(parse_spec({"name": "t", "models": ["m"], "losses": ["l"],
                                     "data": {"source": "synthetic_cells", "image_size": 16,
                                              "synthetic": {"counts": {"codocyte": 20, "hypochromia": 20,
                                                                       "normal": 40}}}}))
    assert data.info["duplicates"]["across_splits"] == 0
