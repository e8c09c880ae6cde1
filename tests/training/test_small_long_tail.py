"""A small long-tailed set of real images: no class collapse when training length follows optimiser steps.

The images are scikit-learn's bundled handwritten digits (real 8x8 scans, upsampled to 32 px):
five classes with 138, 30, 12, 6 and 4 training images (190 in all; six optimiser steps an epoch
at batch 32), a validation split of 15/10/4/2/2 (disjoint from the rest) and a balanced test split of 25 per class.
"""

import math

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import balanced_accuracy_score

from medens.config import TrainingSpec
from medens.data.types import Split, SplitData
from medens.training import fit, predict_split

TRAIN = {0: 138, 1: 30, 2: 12, 3: 6, 4: 4}


def long_tailed_digits() -> SplitData:
    d = load_digits()
    rng = np.random.default_rng(0)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for c, n in TRAIN.items():
        idx = rng.permutation(np.flatnonzero(d.target == c))
        parts["train"] += list(idx[:n])
        parts["val"] += list(idx[n:min(n + max(2, n // 3), len(idx) - 25)])  # never into the test images
        parts["test"] += list(idx[-25:])

    def split(ix):
        ix = np.asarray(ix)
        x = torch.nn.functional.interpolate(torch.tensor(d.images[ix], dtype=torch.float32)[:, None], size=32,
                                            mode="bilinear")
        images = (x / 16 * 255).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return Split(images=images, labels=d.target[ix].astype(np.int64), ids=[f"digit{i}" for i in ix])

    return SplitData("classification", [str(c) for c in TRAIN], split(parts["train"]), split(parts["val"]),
                     split(parts["test"]))


def test_no_member_collapses_on_a_small_long_tailed_set(tmp_path):
    data = long_tailed_digits()
    assert np.bincount(data.train.labels).tolist() == list(TRAIN.values()) and min(TRAIN.values()) < 10
    ids = [set(data.split(s).ids) for s in ("train", "val", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])  # validation never sees a test image
    spec = TrainingSpec(batch_size=32, min_steps=300, patience=10, monitor="balanced_accuracy",
                        class_weights="balanced", optimizer="adamw", weight_decay=0.05, schedule="cosine",
                        warmup_epochs=1, plateau_patience=None)
    res = fit("compact_cnn", "ce", data, spec, tmp_path / "m", seed=0, progress=False)
    steps = math.ceil(len(data.train) / 32)
    # 300 optimiser steps at least: 50 epochs of 6 steps where `epochs` (20) alone would give 120
    assert len(res.history) >= math.ceil(300 / steps) > spec.epochs
    pred = predict_split(res.path, data.test).probs.argmax(1)
    assert sorted(set(pred.tolist())) == [0, 1, 2, 3, 4]  # every class, the 4-image one included, is predicted
    assert balanced_accuracy_score(data.test.labels, pred) > 0.75  # chance is 0.20; measured 0.92 here
