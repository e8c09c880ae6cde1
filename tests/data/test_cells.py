"""Cell extraction from smears (study 2, Algorithm 1) scored against synthetic ground truth."""

import numpy as np
import pytest

from medens.data.cells import estimate_cell_radius, extract_cells, match_detections
from medens.data.synthetic import make_smears


@pytest.fixture(scope="module")
def smears():
    return make_smears(10, size=256, cell_radius=12.0, seed=21)


def _score(smears, **kwargs):
    images, truth = smears
    n_true = n_det = n_matched = 0
    crops = []
    for img, cells in zip(images, truth, strict=True):
        c, det = extract_cells(img, **kwargs)
        assert len(c) == len(det)
        m = match_detections(det, cells, max_center_error=0.2)
        n_true += m["n_true"]
        n_det += m["n_detected"]
        n_matched += m["n_matched"]
        crops.append(c)
    return n_matched / n_true, (n_det - n_matched) / n_det, crops


def test_extraction_finds_cells_with_few_false_detections(smears):
    recall, fdr, crops = _score(smears, target_size=48)
    assert recall >= 0.95, recall
    assert fdr <= 0.05, fdr
    c = crops[0]
    assert c.dtype == np.uint8 and c.shape[1:] == (48, 48, 3)


def test_extraction_with_known_radius_and_grey_float_input(smears):
    images, truth = smears
    crops, det = extract_cells(images[0].mean(axis=2) / 255.0, target_size=64, expected_radius=12.0)
    m = match_detections(det, truth[0])
    assert m["recall"] >= 0.95 and m["false_detection_rate"] <= 0.05
    assert crops.shape == (len(det), 64, 64, 3)
    assert m["mean_center_error"] < 0.1 and m["mean_radius_error"] < 0.1


def test_estimate_cell_radius(smears):
    images, truth = smears
    for img, cells in zip(images[:3], truth[:3], strict=True):
        true_r = np.median([c["radius"] for c in cells])
        assert abs(estimate_cell_radius(img) - true_r) < 0.1 * true_r
    assert estimate_cell_radius(np.full((64, 64, 3), 230, np.uint8)) is None


def test_crops_are_centred_and_zero_padded(smears):
    images, truth = smears
    crops, det = extract_cells(images[1], target_size=48, expected_radius=12.0)
    m = match_detections(det, truth[1])
    # pad="zero": the cell's bounding square (side 0.8 * 48 = 38) centred in a zero frame.
    assert np.all(crops[:, :4] == 0) and np.all(crops[:, -4:] == 0)
    assert np.all(crops[:, :, :4] == 0) and np.all(crops[:, :, -4:] == 0)
    # The crop centre is stained (green absorbed), its inner frame mostly plasma or cell.
    assert np.all(crops[:, 5:43, 5:43].reshape(len(crops), -1).min(axis=1) > 0)
    # Crop content matches the smear: the rim of the matched cell is darker than the plasma.
    d_i, t_j = m["matches"][0]
    g = crops[d_i, :, :, 1].astype(float)
    assert g[24, 24 + 15] < np.percentile(images[1][:, :, 1], 95) - 30
    ctx, _ = extract_cells(images[1], target_size=48, expected_radius=12.0, pad="context")
    interior = [i for i, d in enumerate(det) if min(d["center"]) > 20 and max(d["center"]) < 235]
    assert interior and np.all(ctx[interior, :2].reshape(len(interior), -1).min(axis=1) > 0)


def test_extraction_empty_field():
    crops, det = extract_cells(np.full((96, 96, 3), 235, np.uint8))
    assert crops.shape == (0, 48, 48, 3) and det == []


@pytest.mark.parametrize(
    ("smear", "kwargs", "message"),
    [
        (np.zeros((32, 32, 4), np.uint8), {}, "shape"),
        (np.zeros(32, np.uint8), {}, "shape"),
        (np.zeros((32, 32, 3), np.int16), {}, "uint8 or float"),
        (np.full((32, 32, 3), 2.0), {}, r"\[0, 1\]"),
        (np.full((32, 32, 3), np.nan), {}, "NaN"),
        ([[0, 1]], {}, "numpy array"),
        (np.zeros((4, 4, 3), np.uint8), {}, "too small"),
        (np.zeros((32, 32, 3), np.uint8), {"target_size": 4}, "target_size"),
        (np.zeros((32, 32, 3), np.uint8), {"cell_fraction": 1.5}, "cell_fraction"),
        (np.zeros((32, 32, 3), np.uint8), {"expected_radius": -3.0}, "expected_radius"),
        (np.zeros((32, 32, 3), np.uint8), {"pad": "reflect"}, "pad"),
    ],
)
def test_extract_cells_bad_input(smear, kwargs, message):
    with pytest.raises(ValueError, match=message):
        extract_cells(smear, **kwargs)


def test_match_detections():
    truth = [{"center": (10.0, 10.0), "radius": 10.0}, {"center": (40.0, 10.0), "radius": 10.0}]
    m = match_detections([{"center": (11.0, 10.0)}, {"center": (40.0, 11.5)}], truth)
    assert m["recall"] == 1.0 and m["false_detection_rate"] == 0.0 and sorted(m["matches"]) == [(0, 0), (1, 1)]
    assert m["mean_center_error"] == pytest.approx((0.1 + 0.15) / 2)
    # Too far (2.5 px = 0.25 r) is no match; a duplicate is a false detection.
    m = match_detections([{"center": (12.5, 10.0)}, {"center": (40.0, 10.0)}, {"center": (41.0, 10.0)}], truth)
    assert m["recall"] == 0.5 and m["false_detection_rate"] == pytest.approx(2 / 3)
    assert m["matches"] == [(1, 1)] and m["n_matched"] == 1
    # Optimal, not greedy: the closest pair (detection 0, truth 0) would leave detection 1 unmatched.
    truth = [{"center": (0.0, 0.0), "radius": 10.0}, {"center": (0.0, 3.0), "radius": 10.0}]
    m = match_detections([{"center": (0.0, 1.4)}, {"center": (0.0, -1.5)}], truth)
    assert sorted(m["matches"]) == [(0, 1), (1, 0)]
    assert match_detections([], truth)["recall"] == 0.0
    assert match_detections([{"center": (0.0, 0.0)}], [])["false_detection_rate"] == 1.0
    with pytest.raises(ValueError, match="max_center_error"):
        match_detections([], truth, max_center_error=0)
    with pytest.raises(ValueError, match="radius"):
        match_detections([], [{"center": (0.0, 0.0)}])
