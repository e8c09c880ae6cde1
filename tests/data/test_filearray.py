"""Image arrays on disk (medens.data.filearray) and datasets that stay on disk when loaded."""

import numpy as np
import pytest

from medens.data.filearray import FileArray, NpyWriter, iter_rows, write_npy
from medens.data.types import Split, SplitData


@pytest.fixture
def stored(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (50, 6, 5, 3), dtype=np.uint8)
    return a, FileArray(write_npy(tmp_path / "a.npy", a, chunk_bytes=7 * 90))  # 7 rows a chunk


def test_rows_read_on_demand_equal_the_array(stored):
    a, f = stored
    assert f.shape == a.shape and f.dtype == a.dtype and len(f) == 50 and f.ndim == 4 and f.nbytes == a.nbytes
    idx = np.array([7, 3, 3, 49, 0, 8, 9, 10])  # unsorted, repeated, contiguous runs
    np.testing.assert_array_equal(f[idx], a[idx])
    np.testing.assert_array_equal(f[5], a[5])
    np.testing.assert_array_equal(f[-1], a[-1])
    np.testing.assert_array_equal(f[10:20:3], a[10:20:3])
    np.testing.assert_array_equal(f[2:4, 1], a[2:4, 1])
    np.testing.assert_array_equal(np.asarray(f), a)
    np.testing.assert_array_equal(np.concatenate(list(iter_rows(f, 7 * 90))), a)
    assert [len(c) for c in iter_rows(f, 7 * 90)] == [7] * 7 + [1]
    with pytest.raises(IndexError):
        f[50]


def test_a_selection_is_a_lazy_view(stored):
    a, f = stored
    view = f.take([9, 1, 30, 2])
    assert isinstance(view, FileArray) and view.shape == (4, 6, 5, 3)
    np.testing.assert_array_equal(np.asarray(view), a[[9, 1, 30, 2]])
    np.testing.assert_array_equal(view.take([3, 0])[:], a[[2, 9]])
    split = Split(images=f, ids=[str(i) for i in range(50)], labels=np.arange(50) % 3)
    sub = split.subset([4, 0])
    assert isinstance(sub.images, FileArray) and sub.ids == ["4", "0"]
    np.testing.assert_array_equal(sub.images[:], a[[4, 0]])


def test_writer_refuses_short_files_and_wrong_rows(tmp_path):
    with pytest.raises(ValueError, match="3 of 4 rows written"):
        with NpyWriter(tmp_path / "w.npy", 4, (2,), np.uint8) as w:
            w.append(np.zeros((3, 2), np.uint8))
    with pytest.raises(ValueError, match=r"rows of shape \(3,\)"):
        NpyWriter(tmp_path / "v.npy", 4, (2,), np.uint8).append(np.zeros((1, 3), np.uint8))
    a = np.arange(12, dtype=np.uint8).reshape(4, 3)
    np.save(tmp_path / "t.npy", a)
    (tmp_path / "t.npy").write_bytes((tmp_path / "t.npy").read_bytes()[:-2])
    with pytest.raises(ValueError, match="truncated"):
        FileArray(tmp_path / "t.npy")


def test_a_large_image_folder_is_read_to_disk_and_saved_in_chunks(tmp_path, monkeypatch):
    from PIL import Image

    from medens.config import parse_spec
    from medens.data import build_dataset

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "f" / cls).mkdir(parents=True)
        for i in range(20):
            Image.fromarray(rng.integers(0, 256, (10, 10), dtype=np.uint8)).save(tmp_path / "f" / cls / f"{i}.png")
    (tmp_path / "f" / "a" / "bad.png").write_bytes(b"nope")
    spec = parse_spec({"name": "t", "models": ["m"], "losses": ["l"],
                       "data": {"source": "image_folder", "path": str(tmp_path / "f"), "image_size": 8,
                                "channels": 1}})
    with pytest.raises(ValueError, match=r"unreadable file .*bad.png"):
        build_dataset(spec)
    (tmp_path / "f" / "a" / "bad.png").unlink()
    in_memory = build_dataset(spec)
    monkeypatch.setenv("MEDENS_LAZY_BYTES", "100")  # everything counts as large
    on_disk = build_dataset(spec)
    for name in ("train", "val", "test"):
        a, b = in_memory.split(name), on_disk.split(name)
        assert isinstance(b.images, FileArray) and isinstance(a.images, np.ndarray)
        assert a.ids == b.ids
        np.testing.assert_array_equal(np.asarray(b.images), a.images)
    on_disk.save(tmp_path / "ds")
    again = SplitData.load(tmp_path / "ds")
    assert isinstance(again.train.images, FileArray)
    np.testing.assert_array_equal(np.asarray(again.test.images), in_memory.test.images)
