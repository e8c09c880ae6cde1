"""The synthetic generators draw the same data as before they were split into named steps.

Tests and benchmarks rely on the exact images of ``make_cells``, ``make_smears`` and
``make_segmentation`` for a seed, so their random draws must stay the same and in the same order.
The constants below were computed with the code as it was before the split (``synthetic.py`` at
commit 1f360bb), and the split code reproduces them.

What is pinned exactly is what depends only on the random draws and exact arithmetic: labels,
metadata and ground truth (floats to 9 significant digits) and the segmentation masks, as a
digest. Images go through float32 ``exp``/``sin``, whose last bit may differ between CPUs' SIMD
code paths, and can then round a pixel one level differently; so each image is pinned by its
pixel sum, within 2 levels. One extra draw before the images' noise, which shifts the noise by a
pixel or two, already moves most sums by 5-40 levels.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from medens.data.synthetic import make_cells, make_segmentation, make_smears

SUM_TOLERANCE = 2


def _rounded(x: object) -> object:
    if isinstance(x, np.ndarray):
        return _rounded(x.tolist())
    if isinstance(x, float):
        return float(f"{x:.9g}")
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_rounded(v) for v in x]
    return x


def digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(_rounded(list(parts)), sort_keys=True).encode()).hexdigest()[:16]


def image_sums(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).sum(1, dtype=np.int64)


def assert_sums(images: np.ndarray, pinned: list[int]) -> None:
    sums = image_sums(images)
    assert sums.shape == (len(pinned),)
    assert np.all(np.abs(sums - np.asarray(pinned)) <= SUM_TOLERANCE), (sums.tolist(), pinned)


def test_make_cells_pinned():
    images, labels, meta = make_cells({"codocyte": 5, "hypochromia": 4, "normal": 6}, size=24, seed=3, chunk=4)
    assert digest(labels, meta) == "0aa46c5af6b32f72"
    assert_sums(images, [344720, 308697, 301712, 283680, 304583, 319094, 278416, 296317, 304858, 291787, 342095,
                         351011, 342009, 312476, 326301])


def test_make_smears_pinned():
    images, truth = make_smears(2, size=64, cell_radius=6.0, class_fractions=[1, 1, 1], seed=5)
    assert digest(truth) == "05a3b018d053a608"  # field 2's cells follow every draw of field 1
    assert_sums(images, [2347052, 2565014])


def test_make_segmentation_pinned():
    images, masks = make_segmentation(4, size=48, seed=9, lesion_probs=(0.1, 0.2, 0.3, 0.4))
    assert digest(masks) == "8cca4c0b06de0bd6"
    assert_sums(images, [232742, 230867, 227509, 200877])
