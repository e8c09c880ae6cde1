import numpy as np
import pytest

from medens.data.synthetic import make_cells
from medens.data.types import Split, SplitData


def small_cells(n_per_class=(30, 30, 120), size=32, seed=0, k_test=True) -> SplitData:
    """A small, imbalanced, deterministic cell dataset split 60/20/20."""
    from medens.data.splits import stratified_split

    images, labels, _ = make_cells(list(n_per_class), size=size, seed=seed)
    ids = [f"c{i}" for i in range(len(labels))]
    whole = Split(images=images, labels=labels.astype(np.int64), ids=ids)
    tr, va, te = stratified_split(whole.labels, (0.6, 0.2, 0.2), seed=seed)
    return SplitData("classification", ["codocyte", "hypochromia", "normal"], whole.subset(tr), whole.subset(va),
                     whole.subset(te))


@pytest.fixture(scope="session")
def cells32() -> SplitData:
    return small_cells()


@pytest.fixture
def make_cells_data():
    return small_cells
