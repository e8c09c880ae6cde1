"""Bad data: one ValueError listing every problem with file names or indices."""

import numpy as np
import pytest
from PIL import Image

from medens.config import parse_spec
from medens.data import build_dataset
from medens.data.validate import check_arrays


def spec(source, path, **data):
    return parse_spec({"name": "t", "models": ["m"], "losses": ["l"],
                       "data": {"source": source, "path": str(path), **data}})


def test_check_arrays_lists_every_problem():
    images = np.zeros((4, 8, 8, 1), np.float32)
    images[1, 0, 0, 0] = np.nan
    images[3, 2, 2, 0] = np.inf
    problems = check_arrays(images, ids=["a", "b", "b", "d"], labels=np.array([0, 1, 5, 0]),
                            class_names=["x", "y"], split="train")
    assert "train: NaN or inf pixels in 2 image(s): b, d" in problems
    assert "train: duplicate ids: b" in problems
    assert "train: label(s) outside the 2 classes [0, 2) at b (values [5])" in problems
    assert len(problems) == 3


def test_mask_shape_mismatch_and_empty_class():
    images = np.zeros((2, 8, 8, 1), np.uint8)
    problems = check_arrays(images, masks=np.zeros((2, 8, 9), np.uint8), class_names=["bg", "les"])
    assert problems == ["masks shape (2, 8, 9) does not match images (2, 8, 8)"]
    problems = check_arrays(images, labels=np.array([0, 0]), class_names=["x", "y"], require_all_classes=True)
    assert problems == ["class 'y' has no samples"]


def test_folder_with_several_problems_reports_all_at_once(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "a" / "ok.png")
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "b" / "ok.png")
    with pytest.raises(ValueError) as e:
        build_dataset(spec("image_folder", tmp_path, image_size=16, channels=1))
    msg = str(e.value)
    assert "(2 problems)" in msg
    assert "unreadable file" in msg and "broken.png" in msg
    assert "class 'c' has no images" in msg


def test_nan_pixels_and_out_of_range_labels_in_medmnist(tmp_path):
    arrays = {}
    for s, n in (("train", 6), ("val", 3), ("test", 3)):
        img = np.random.default_rng(0).random((n, 8, 8)).astype(np.float32)
        arrays[f"{s}_images"] = img
        arrays[f"{s}_labels"] = (np.arange(n) % 2).reshape(-1, 1)
    arrays["train_images"][2, 1, 1] = np.nan
    arrays["test_labels"][0, 0] = 7
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(ValueError) as e:
        build_dataset(spec("medmnist", tmp_path / "d.npz", image_size=8, channels=1, class_names=["x", "y"]))
    msg = str(e.value)
    assert "train: NaN or inf pixels in 1 image(s): train-000002" in msg
    assert "test: label(s) outside the 2 classes [0, 2) at test-000000 (values [7])" in msg


def test_duplicate_ids_from_manifest(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "y.png")
    (tmp_path / "m.csv").write_text("path,label\nx.png,a\nx.png,a\ny.png,b\n")
    with pytest.raises(ValueError, match="all: duplicate ids: x.png"):
        build_dataset(spec("csv", tmp_path / "m.csv", image_size=8, channels=1))
