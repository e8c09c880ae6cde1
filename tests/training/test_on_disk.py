"""Training from a dataset whose images stay on disk gives the very same model."""

import numpy as np

from medens.data.filearray import FileArray
from medens.data.types import SplitData


def test_a_saved_dataset_loads_on_disk_above_the_threshold_and_trains_the_same(cells32, tmp_path, monkeypatch):
    from medens.config import TrainingSpec
    from medens.training import fit

    cells32.save(tmp_path / "ds")
    small = SplitData.load(tmp_path / "ds")
    assert isinstance(small.train.images, np.ndarray)  # 108 small images: in memory
    monkeypatch.setenv("MEDENS_LAZY_BYTES", "1000")
    lazy = SplitData.load(tmp_path / "ds")
    assert isinstance(lazy.train.images, FileArray)
    np.testing.assert_array_equal(np.asarray(lazy.train.images), cells32.train.images)
    spec = TrainingSpec(epochs=2, min_steps=0, batch_size=16, patience=None, plateau_patience=None, augment="flips")
    a = fit("compact_cnn", "ce", small, spec, tmp_path / "a", seed=1, progress=False, normalize="zscore")
    b = fit("compact_cnn", "ce", lazy, spec, tmp_path / "b", seed=1, progress=False, normalize="zscore")
    assert (tmp_path / "a" / "weights.pt").read_bytes() == (tmp_path / "b" / "weights.pt").read_bytes()
    assert a.val_metrics == b.val_metrics
    # saving a dataset whose images are on disk copies them in chunks
    lazy.save(tmp_path / "copy")
    np.testing.assert_array_equal(np.load(tmp_path / "copy" / "train.images.npy"), cells32.train.images)


def _seg_folder(root, n: int = 12, size: int = 32) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        r, c = rng.integers(0, size - 6, 2)
        mask[r:r + 6, c:c + 6] = 255  # saved 0/255, as most releases do
        image = (rng.integers(0, 80, (size, size)) + (mask > 0) * 120).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"s{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"s{i:02d}.png")


def test_segmentation_masks_stay_on_disk_and_train_the_same(tmp_path, monkeypatch):
    from medens.config import TrainingSpec, parse_spec
    from medens.data import build_dataset
    from medens.training import fit
    from medens.training.batches import _targets

    _seg_folder(tmp_path / "seg")
    spec = parse_spec({"name": "s", "task": "segmentation", "models": ["unet"], "losses": ["dice"],
                       "data": {"source": "seg_folder", "path": str(tmp_path / "seg"), "image_size": 32,
                                "channels": 1}})
    in_memory = build_dataset(spec)
    monkeypatch.setenv("MEDENS_LAZY_BYTES", "100")  # every pool and split counts as large
    on_disk = build_dataset(spec)
    for name in ("train", "val", "test"):
        a, b = in_memory.split(name), on_disk.split(name)
        assert isinstance(b.masks, FileArray) and isinstance(a.masks, np.ndarray)
        np.testing.assert_array_equal(np.asarray(b.masks), a.masks)
        assert set(np.unique(a.masks)) == {0, 1}  # 0/255 became 0/1 on disk too
    on_disk.save(tmp_path / "ds")
    assert (tmp_path / "ds" / "train.masks.npy").is_file()
    lazy = SplitData.load(tmp_path / "ds")
    assert isinstance(lazy.train.masks, FileArray)
    assert lazy.class_counts("train") == in_memory.class_counts("train")
    # the loader keeps the stored uint8 masks; only each batch becomes int64
    assert _targets(lazy.train, "segmentation") is lazy.train.masks
    train = TrainingSpec(epochs=2, min_steps=0, batch_size=4, patience=None, plateau_patience=None, augment="flips")
    a = fit("unet", "dice", in_memory, train, tmp_path / "a", seed=1, progress=False)
    b = fit("unet", "dice", lazy, train, tmp_path / "b", seed=1, progress=False)
    assert (tmp_path / "a" / "weights.pt").read_bytes() == (tmp_path / "b" / "weights.pt").read_bytes()
    assert a.val_metrics == b.val_metrics


def test_datasets_with_masks_inside_the_npz_still_load(tmp_path):
    import json

    rng = np.random.default_rng(0)
    for name in ("train", "val", "test"):
        np.savez(tmp_path / f"{name}.npz", images=rng.integers(0, 255, (3, 8, 8, 1), dtype=np.uint8),
                 ids=np.asarray([f"{name}{i}" for i in range(3)]), masks=np.ones((3, 8, 8), np.uint8))
    (tmp_path / "dataset.json").write_text(json.dumps({"task": "segmentation", "class_names": ["bg", "fg"]}))
    old = SplitData.load(tmp_path)
    assert old.train.masks.shape == (3, 8, 8) and old.class_counts("val") == [0, 192]
