import math

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from medens.data import (
    balanced_class_weights,
    effective_number_weights,
    imbalance_ratio,
    lesion_crop_box,
    lesion_crops,
    oversample,
    resample_to_ratio,
    sample_weights,
    target_counts,
    undersample_indices,
    weighted_sampler,
)

STUDY2 = [345, 356, 2691]  # codocyte, hypochromia, normal (Pasupa et al.)

# Table 2 of study 2, derived by hand:
#  minority kept, majority = round((345 + 356) * f_maj / (2 f_min)):
#   25:25:50   701 * 50/50 = 701        rho 701/345  = 2.03
#   20:20:60   701 * 60/40 = 1051.5 ->1052          = 3.05
#   15:15:70   701 * 70/30 = 1635.67->1636          = 4.74
#  the original counts are already 10:10:80 within a percentage point (rho 2691/345 = 7.80)
#  majority kept, minority = round(2691 * f_min / f_maj):
#   7.5:7.5:85  2691 * 7.5/85 = 237.44 -> 237      rho 11.35
#   5:5:90      2691 * 5/90   = 149.5  -> 150      rho 17.94
#   2.5:2.5:95  2691 * 2.5/95 = 70.82  -> 71       rho 37.90
TABLE2 = [
    ((25, 25, 50), [345, 356, 701], 2.03),
    ((20, 20, 60), [345, 356, 1052], 3.05),
    ((15, 15, 70), [345, 356, 1636], 4.74),
    ((10, 10, 80), [345, 356, 2691], 7.80),
    ((7.5, 7.5, 85), [237, 237, 2691], 11.35),
    ((5, 5, 90), [150, 150, 2691], 17.94),
    ((2.5, 2.5, 95), [71, 71, 2691], 37.90),
]


def study2_labels():
    return np.repeat(np.arange(3), STUDY2)


@pytest.mark.parametrize("fractions,expected,rho", TABLE2)
def test_resample_to_ratio_reproduces_study2_table2(fractions, expected, rho):
    y = study2_labels()
    assert target_counts(STUDY2, fractions) == expected
    kept = resample_to_ratio(y, fractions, seed=3)
    assert np.bincount(y[kept], minlength=3).tolist() == expected
    assert round(imbalance_ratio(y[kept]), 2) == rho
    assert np.all(np.diff(kept) > 0)  # sorted, unique


def test_resample_is_seeded():
    y = np.random.default_rng(0).permutation(study2_labels())
    a = resample_to_ratio(y, (5, 5, 90), seed=1)
    b = resample_to_ratio(y, (5, 5, 90), seed=1)
    c = resample_to_ratio(y, (5, 5, 90), seed=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_resample_errors():
    y = study2_labels()
    with pytest.raises(ValueError, match="labels have 3 classes but 2 fractions"):
        resample_to_ratio(y, (1, 1))
    with pytest.raises(ValueError, match="fractions must be positive"):
        target_counts([1, 2], [0, 1])


def test_imbalance_ratio():
    assert imbalance_ratio([0, 0, 0, 1]) == 3.0
    assert imbalance_ratio([0, 1, 2]) == 1.0
    assert math.isinf(imbalance_ratio([0, 0], num_classes=2))
    with pytest.raises(ValueError, match="one-dimensional"):
        imbalance_ratio(np.zeros((2, 2), int))


def test_balanced_weights_match_sklearn():
    y = study2_labels()
    ref = compute_class_weight("balanced", classes=np.arange(3), y=y)
    assert np.allclose(balanced_class_weights(STUDY2), ref)
    # hand: N / (K n_k) = 3392 / (3 * 345) = 3.2773
    assert balanced_class_weights(STUDY2)[0] == pytest.approx(3392 / 1035)


def test_effective_number_weights():
    assert np.allclose(effective_number_weights(STUDY2, beta=0.0), 1.0)
    w = effective_number_weights([10, 100], beta=0.9)
    raw = np.array([0.1 / (1 - 0.9**10), 0.1 / (1 - 0.9**100)])
    assert np.allclose(w, raw * 2 / raw.sum())
    assert w.sum() == pytest.approx(2.0)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\)"):
        effective_number_weights([1, 2], beta=1.0)


def test_undersample_and_oversample():
    y = np.array([0] * 10 + [1] * 3 + [2] * 5)
    idx = undersample_indices(y, seed=0)
    assert np.bincount(y[idx]).tolist() == [3, 3, 3]
    images = np.random.default_rng(0).integers(0, 255, (18, 16, 16, 3), dtype=np.uint8)
    out, labels, src = oversample(images, y, seed=0)
    assert np.bincount(labels).tolist() == [10, 10, 10]
    assert np.array_equal(out[:18], images)  # originals kept untouched, first
    assert np.array_equal(labels, y[src])
    copies = out[18:]
    assert not any(np.array_equal(c, images[s]) for c, s in zip(copies, src[18:]))  # augmented


def test_weighted_sampler_balances_classes():
    y = np.array([0] * 900 + [1] * 100)
    assert sample_weights(y)[0] == pytest.approx(1 / 900)
    drawn = np.array(list(weighted_sampler(y, seed=0, num_samples=4000)))
    frac1 = (y[drawn] == 1).mean()
    assert 0.45 < frac1 < 0.55


def test_lesion_crop_box_rules():
    m = np.zeros((100, 100), np.uint8)
    assert lesion_crop_box(m) is None  # no lesion
    m[40:50, 40:50] = 1
    assert lesion_crop_box(m) == (20, 70, 20, 70)  # 20 px margin fits
    m2 = np.zeros((100, 100), np.uint8)
    m2[15:25, 40:50] = 1
    assert lesion_crop_box(m2) == (5, 35, 30, 60)  # 20 leaves the image, 10 fits
    m3 = np.zeros((100, 100), np.uint8)
    m3[2:12, 40:50] = 1
    assert lesion_crop_box(m3) == (2, 12, 40, 50)  # no margin fits
    big = np.zeros((10, 10), np.uint8)
    big[:, :3] = 1  # background/lesion = 70/30 < 3
    assert lesion_crop_box(big) is None


def test_lesion_crops_resizes_and_skips():
    images = np.zeros((2, 100, 100, 1), np.uint8)
    masks = np.zeros((2, 100, 100), np.uint8)
    masks[0, 40:50, 40:50] = 1
    ci, cm, ids = lesion_crops(images, masks, size=32, ids=["a", "b"])
    assert ci.shape == (1, 32, 32, 1) and cm.shape == (1, 32, 32) and ids == ["a:crop"]
    # 10 px lesion in a 50 px crop -> about 1/5 of the side
    assert 0.02 < cm.mean() < 0.08
