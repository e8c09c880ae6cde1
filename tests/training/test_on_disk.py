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
    spec = TrainingSpec(epochs=2, batch_size=16, patience=None, plateau_patience=None, augment="flips")
    a = fit("compact_cnn", "ce", small, spec, tmp_path / "a", seed=1, progress=False, normalize="zscore")
    b = fit("compact_cnn", "ce", lazy, spec, tmp_path / "b", seed=1, progress=False, normalize="zscore")
    assert (tmp_path / "a" / "weights.pt").read_bytes() == (tmp_path / "b" / "weights.pt").read_bytes()
    assert a.val_metrics == b.val_metrics
    # saving a dataset whose images are on disk copies them in chunks
    lazy.save(tmp_path / "copy")
    np.testing.assert_array_equal(np.load(tmp_path / "copy" / "train.images.npy"), cells32.train.images)
