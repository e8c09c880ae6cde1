"""Sources on small data the tests write in each source's own format."""

import numpy as np
import pytest
from PIL import Image

from medens.config import parse_spec
from medens.data import build_dataset
from medens.data.sources import csv_manifest, image_folder, kermany, kermany_class, medmnist, seg_folder


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def spec(source, path, task="classification", **data):
    return parse_spec({
        "name": "t", "task": task, "models": ["m"], "losses": ["l"],
        "data": {"source": source, "path": str(path), **data},
    })


def write_medmnist(path, rgb=False, n=(40, 10, 12), size=28, k=4, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, m in zip(("train", "val", "test"), n):
        shape = (m, size, size, 3) if rgb else (m, size, size)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(m) % k).reshape(-1, 1).astype(np.uint8)
    np.savez(path, **arrays)
    return arrays


def test_medmnist_npz_loads_its_own_splits(tmp_path):
    arrays = write_medmnist(tmp_path / "bloodmnist.npz", rgb=True)
    pool = medmnist(str(tmp_path / "bloodmnist.npz"), size=28, channels=3)
    assert set(pool.parts) == {"train", "val", "test"}
    assert pool.class_names == ["0", "1", "2", "3"]
    tr = pool.parts["train"]
    assert tr.images.shape == (40, 28, 28, 3) and tr.images.dtype == np.uint8
    assert np.array_equal(tr.images, arrays["train_images"])
    assert np.array_equal(tr.labels, arrays["train_labels"].ravel())
    # through the whole data stage, with grey conversion and resize to 32 px
    data = build_dataset(spec("medmnist", tmp_path, image_size=32, channels=1,
                              class_names=["a", "b", "c", "d"]))
    assert data.train.images.shape == (40, 32, 32, 1)
    assert len(data.val) == 10 and len(data.test) == 12
    assert data.class_counts("train") == [10, 10, 10, 10]


def test_medmnist_missing_file_says_where_to_put_it(tmp_path):
    with pytest.raises(ValueError) as e:
        medmnist(str(tmp_path / "pathmnist.npz"), size=28, channels=3)
    msg = str(e.value)
    assert "pathmnist.npz does not exist" in msg and "not downloaded at run time" in msg
    assert "set data.path" in msg
    with pytest.raises(ValueError, match="data.path is required for source 'medmnist'"):
        medmnist(None, size=28, channels=3)


def test_medmnist_wrong_arrays(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="not a MedMNIST file: missing arrays train_images"):
        medmnist(str(tmp_path / "x.npz"), size=28, channels=1)


def test_image_folder_any_size_resized(tmp_path):
    rng = np.random.default_rng(0)
    for c, n in (("benign", 5), ("malignant", 3)):
        for i in range(n):
            h, w = rng.integers(20, 90, 2)
            write_png(tmp_path / c / f"{i}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    write_png(tmp_path / "benign" / "grey.jpg", rng.integers(0, 256, (50, 40), dtype=np.uint8))
    pool = image_folder(str(tmp_path), size=32, channels=3)
    assert pool.class_names == ["benign", "malignant"]
    part = pool.parts["all"]
    assert part.images.shape == (9, 32, 32, 3)
    assert part.labels.tolist() == [0] * 6 + [1] * 3
    assert "benign/grey.jpg" in part.ids


def make_kermany(root, n_normal=6, n_bact=8, n_virus=5, n_test=(3, 3, 3)):
    rng = np.random.default_rng(1)

    def img():
        return rng.integers(0, 256, (40, 50), dtype=np.uint8)

    for i in range(n_normal):
        write_png(root / "train" / "NORMAL" / f"IM-{i:04d}-0001.jpeg", img())
    for i in range(n_bact):
        write_png(root / "train" / "PNEUMONIA" / f"person{i}_bacteria_{i + 10}.jpeg", img())
    for i in range(n_virus):
        write_png(root / "train" / "PNEUMONIA" / f"person{i}_virus_{i + 20}.jpeg", img())
    write_png(root / "val" / "NORMAL" / "NORMAL2-IM-1427-0001.jpeg", img())
    tn, tb, tv = n_test
    for i in range(tn):
        write_png(root / "test" / "NORMAL" / f"IM-{i:04d}.jpeg", img())
    for i in range(tb):
        write_png(root / "test" / "PNEUMONIA" / f"person{i}_bacteria_{i}.jpeg", img())
    for i in range(tv):
        write_png(root / "test" / "PNEUMONIA" / f"person{i}_virus_{i}.jpeg", img())


def test_kermany_three_class_derivation(tmp_path):
    make_kermany(tmp_path)
    assert kermany_class(tmp_path / "train/PNEUMONIA/person1_bacteria_2.jpeg") == "bacterial"
    assert kermany_class(tmp_path / "train/PNEUMONIA/person1_virus_2.jpeg") == "viral"
    assert kermany_class(tmp_path / "train/NORMAL/IM-1.jpeg") == "normal"
    pool = kermany(str(tmp_path), size=24, channels=1)
    assert pool.class_names == ["bacterial", "normal", "viral"]
    # train holds train/ plus val/ (6 + 1 normal)
    assert np.bincount(pool.parts["train"].labels).tolist() == [8, 7, 5]
    assert np.bincount(pool.parts["test"].labels).tolist() == [3, 3, 3]
    data = build_dataset(spec("kermany", tmp_path, image_size=24, channels=1,
                              split={"train": 0.8, "val": 0.2, "test": 0.0}))
    assert len(data.train) + len(data.val) == 20 and len(data.test) == 9
    assert data.train.images.shape[1:] == (24, 24, 1)


def test_kermany_bad_file_name_is_reported(tmp_path):
    make_kermany(tmp_path)
    write_png(tmp_path / "train" / "PNEUMONIA" / "person9_fungal_1.jpeg", np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="person9_fungal_1.jpeg: PNEUMONIA file name has neither"):
        kermany(str(tmp_path), size=24, channels=1)


def test_seg_folder_pairs(tmp_path):
    rng = np.random.default_rng(2)
    for i in range(6):
        write_png(tmp_path / "images" / f"s{i}.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
        m = np.zeros((40, 40), np.uint8)
        m[10:20, 10:20] = 255
        write_png(tmp_path / "masks" / f"s{i}.png", m)
    pool = seg_folder(str(tmp_path), size=20, channels=1)
    part = pool.parts["all"]
    assert part.images.shape == (6, 20, 20, 1) and part.masks.shape == (6, 20, 20)
    assert set(np.unique(part.masks).tolist()) == {0, 1}
    assert part.masks[0].sum() == 25  # 10x10 of 40x40 -> 5x5 of 20x20
    write_png(tmp_path / "images" / "orphan.png", np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="image orphan.png has no mask"):
        seg_folder(str(tmp_path), size=20, channels=1)


def test_csv_manifests(tmp_path):
    rng = np.random.default_rng(3)
    rows = ["path,label,split"]
    for i in range(12):
        write_png(tmp_path / "img" / f"{i}.png", rng.integers(0, 256, (16, 16), dtype=np.uint8))
        rows.append(f"img/{i}.png,{'cat' if i % 3 else 'dog'},{['train', 'train', 'val', 'test'][i % 4]}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    pool = csv_manifest(str(tmp_path / "m.csv"), size=16, channels=1)
    assert pool.class_names == ["cat", "dog"]
    assert {k: len(v) for k, v in pool.parts.items()} == {"train": 6, "val": 3, "test": 3}
    # segmentation manifest
    seg_rows = ["image,mask"]
    for i in range(4):
        m = np.zeros((16, 16), np.uint8)
        m[:4, :4] = 1
        write_png(tmp_path / "mask" / f"{i}.png", m)
        seg_rows.append(f"img/{i}.png,mask/{i}.png")
    (tmp_path / "s.csv").write_text("\n".join(seg_rows) + "\n")
    seg = csv_manifest(str(tmp_path / "s.csv"), size=16, channels=1)
    assert seg.parts["all"].masks.sum() == 4 * 16
    (tmp_path / "bad.csv").write_text("file,y\na,1\n")
    with pytest.raises(ValueError, match="columns must include path,label or image,mask; found file, y"):
        csv_manifest(str(tmp_path / "bad.csv"), size=16, channels=1)
