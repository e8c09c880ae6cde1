"""Segmentation ensembles: planted weight search, study 3's point, hand-computed 3x3 masks."""

import inspect
import json

import numpy as np
import pytest

from medens.ensemble.segmentation import (
    SEG_ENSEMBLES,
    SEG_FORMAT,
    STUDY3_WEIGHTS,
    IntersectionSegEnsemble,
    MajoritySegEnsemble,
    SegmentationEnsemble,
    WeightedSegEnsemble,
    build_seg_ensemble,
    fit_seg_ensemble,
    simplex_grid,
    study3_weights,
)
from medens.metrics import dice
from medens.training.predictions import Predictions


def discs(n, size, rng):
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, size, size), np.int64)
    for i in range(n):
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        r = rng.integers(size // 8, size // 4)
        out[i] = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return out


def maps(fg):
    """(N, H, W) foreground probabilities -> (N, 2, H, W) float16 maps, as members save them."""
    fg = np.clip(fg, 0, 1)
    return np.stack([1 - fg, fg], axis=1).astype(np.float16)


def from_masks(*masks):
    """Soft maps whose argmax is each given mask (foreground 0.8 inside, 0.3 outside)."""
    return [maps(np.where(np.asarray(m)[None] == 1, 0.8, 0.3)) for m in masks]


@pytest.fixture(scope="module")
def planted():
    """Two unbiased noisy members, noise s.d. 0.1 and 0.2: the inverse-variance optimum puts 0.8 on A."""
    rng = np.random.default_rng(0)
    masks = discs(16, 64, rng)
    signal = 0.5 + 0.1 * (2 * masks - 1)
    a = maps(signal + rng.normal(0, 0.1, masks.shape))
    b = maps(signal + rng.normal(0, 0.2, masks.shape))
    return {"main": a, "sampling": b}, masks


def test_dice_by_hand():
    t = np.array([[[1, 1, 0], [0, 0, 0], [0, 0, 0]], [[0] * 3] * 3])
    p = np.array([[[1, 0, 0], [1, 0, 0], [0, 0, 0]], [[0] * 3] * 3])
    np.testing.assert_allclose(dice(t, p, n_classes=2), [[0.5], [1.0]])  # 2*1/(2+2); empty/empty = 1
    assert dice(t, p, n_classes=2).mean() == pytest.approx(0.75)


def test_simplex_grid():
    g = simplex_grid(2, 100)
    assert g.shape == (101, 2) and g[0].tolist() == [0.0, 1.0] and g[-1].tolist() == [1.0, 0.0]
    assert np.allclose(g[:, 0], np.arange(101) / 100)
    g3 = simplex_grid(3, 10)
    assert g3.shape == (66, 3) and np.allclose(g3.sum(axis=1), 1) and (g3 >= 0).all()


def test_weighted_finds_planted_inverse_variance_weight(planted):
    val, masks = planted
    ens = WeightedSegEnsemble().fit(val, masks)
    assert abs(ens.weights[0] - 0.8) <= 0.05  # observed 0.78
    assert ens.weights.sum() == pytest.approx(1.0)
    v = ens.validation_
    assert v["n_candidates"] == 102
    assert v["dice"] > v["members"]["main"] + 0.03  # observed 0.530 vs 0.476
    assert v["dice"] > v["study3"]["dice"] + 0.05  # observed 0.436 at (0.5025, 0.4975)
    # study 3's point: evaluated, reported, and equal to argmax(1.01 main + 1.0 sampling) by hand
    assert v["study3"]["raw_weights"] == [1.01, 1.0]
    assert v["study3"]["weights"] == pytest.approx([0.50249, 0.49751], abs=1e-5)
    by_hand = np.argmax(1.01 * val["main"].astype(np.float64) + 1.0 * val["sampling"], axis=1)
    assert v["study3"]["dice"] == pytest.approx(dice(masks, by_hand, n_classes=2).mean(), abs=1e-12)
    # the chosen weight is the best of the searched grid, and predict reproduces its Dice: one
    # computation (WeightedSegEnsemble.weighted_mean) behind all three, so equal to the last bit
    assert v["dice"] == ens.search_["dice"].max()
    assert dice(masks, ens.predict(val), n_classes=2).mean() == v["dice"]
    assert np.array_equal(ens.predict(val), np.argmax(WeightedSegEnsemble.weighted_mean(
        np.stack([val["main"], val["sampling"]]).astype(np.float32), ens.weights), axis=1))


def test_weighted_prefers_true_member_over_shifted_one():
    rng = np.random.default_rng(1)
    masks = discs(12, 48, rng)
    true_noisy = maps(0.5 + 0.2 * (2 * masks - 1) + rng.normal(0, 0.2, masks.shape))
    shifted = maps(0.05 + 0.9 * np.roll(masks, 8, axis=2))
    ens = WeightedSegEnsemble().fit({"shifted": shifted, "true": true_noisy}, masks)
    v = ens.validation_
    assert ens.weights[1] > 0.5
    assert v["dice"] >= max(v["members"].values())
    assert v["dice"] >= v["uniform_dice"]


def test_weighted_three_members_and_random_search_are_deterministic(planted):
    val, masks = planted
    rng = np.random.default_rng(7)
    noise = maps(rng.random(masks.shape))
    three = {**val, "noise": noise}
    grid = WeightedSegEnsemble().fit(three, masks)
    assert grid.validation_["n_candidates"] == 66 and "study3" not in grid.validation_
    assert grid.weights[2] <= 0.1 and grid.weights[0] > grid.weights[1]
    rand1 = WeightedSegEnsemble(max_candidates=50, seed=3).fit(three, masks)
    rand2 = WeightedSegEnsemble(max_candidates=50, seed=3).fit(three, masks)
    assert "Dirichlet" in rand1.validation_["search"] and rand1.validation_["n_candidates"] == 54
    np.testing.assert_array_equal(rand1.weights, rand2.weights)
    extra = WeightedSegEnsemble(resolution=2, extra_weights=[[8, 2]]).fit(val, masks)
    assert extra.weights.tolist() == [0.8, 0.2]  # the grid has only 0, 0.5, 1; the extra point wins


def test_majority_and_intersection_on_3x3():
    m1 = [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    m2 = [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    m3 = [[1, 1, 1], [0, 0, 0], [0, 0, 1]]
    three = from_masks(m1, m2, m3)
    y = np.zeros((1, 3, 3), int)
    maj = MajoritySegEnsemble().fit(three, y)
    np.testing.assert_array_equal(maj.predict(three)[0], [[1, 1, 0], [0, 1, 0], [0, 0, 1]])
    frac = maj.predict_proba(three)[0, 1]
    np.testing.assert_allclose(frac, [[1, 2 / 3, 1 / 3], [1 / 3, 2 / 3, 0], [0, 0, 2 / 3]], atol=2e-6)
    inter = IntersectionSegEnsemble().fit(three, y)
    np.testing.assert_array_equal(inter.predict(three)[0], [[1, 0, 0], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_allclose(inter.predict_proba(three)[0, 1], [[1, 1 / 3, 1 / 6], [1 / 6, 1 / 3, 0], [0, 0, 1 / 3]],
                               atol=1e-6)
    # two members: ties go to background by default (majority == intersection), union with tie="foreground"
    two = from_masks(m1, m2)
    bg = MajoritySegEnsemble().fit(two, y).predict(two)[0]
    fg = MajoritySegEnsemble(tie="foreground").fit(two, y).predict(two)[0]
    np.testing.assert_array_equal(bg, [[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(bg, IntersectionSegEnsemble().fit(two, y).predict(two)[0])
    np.testing.assert_array_equal(fg, [[1, 1, 0], [1, 1, 0], [0, 0, 1]])
    assert "ties go to the background" in MajoritySegEnsemble().fit(two, y).to_dict()["params"]["tie_rule"]


def test_intersection_three_classes():
    def onehot(c):
        p = np.full((1, 3, 1, 1), 0.1, np.float32)
        p[0, c] = 0.8
        return p

    votes = [onehot(1), onehot(1), onehot(2)]
    assert IntersectionSegEnsemble().fit(votes, np.zeros((1, 1, 1), int)).predict(votes).item() == 0
    assert MajoritySegEnsemble().fit(votes, np.zeros((1, 1, 1), int)).predict(votes).item() == 1
    unanimous = [onehot(2)] * 3
    assert IntersectionSegEnsemble().fit(unanimous, np.zeros((1, 1, 1), int)).predict(unanimous).item() == 2


@pytest.mark.parametrize("method", ["weighted", "majority", "intersection"])
def test_seg_json_round_trip(method, planted):
    val, masks = planted
    ens = build_seg_ensemble(method).fit(val, masks)
    d = json.loads(json.dumps(ens.to_dict(), allow_nan=False))
    assert d["format"] == SEG_FORMAT and d["method"] == method
    back = SegmentationEnsemble.from_dict(d)
    assert type(back) is type(ens)
    out = back.predict_proba(val)
    assert out.shape == (16, 2, 64, 64) and out.dtype == np.float32
    np.testing.assert_array_equal(out, ens.predict_proba(val))
    np.testing.assert_array_equal(back.predict(val), np.argmax(out, axis=1))


def test_fit_seg_ensemble_from_predictions_and_errors(planted):
    val, masks = planted
    ids = [f"img{i}" for i in range(16)]
    preds = {m: Predictions(probs=p, ids=ids, masks=masks) for m, p in val.items()}
    ens = fit_seg_ensemble("weighted", preds)
    assert ens.member_ids == ["main", "sampling"]
    assert list(inspect.signature(WeightedSegEnsemble.fit).parameters) == ["self", "val_probs", "masks_val"]
    other = masks.copy()
    other[0, 0, 0] = 1 - other[0, 0, 0]
    with pytest.raises(ValueError, match="member 'sampling' has masks that differ from those of 'main'"):
        fit_seg_ensemble("majority", {**preds, "sampling": Predictions(probs=val["sampling"], ids=ids, masks=other)})
    with pytest.raises(ValueError, match=r"unknown majority option 'ties'; did you mean 'tie'"):
        build_seg_ensemble("majority", ties="foreground")
    with pytest.raises(ValueError, match=r"masks_val must have shape \(16, 64, 64\)"):
        WeightedSegEnsemble().fit(val, masks[:, :32])
    with pytest.raises(ValueError, match=r"probability maps must be \(N, K, H, W\)"):
        MajoritySegEnsemble().fit([masks], masks)
    assert SEG_ENSEMBLES.names() == ["intersection", "majority", "weighted"]
    assert STUDY3_WEIGHTS == (1.01, 1.0) and sum(study3_weights()) == pytest.approx(1.0)
