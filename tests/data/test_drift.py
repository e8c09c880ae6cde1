"""Input drift without a server: the PSI formula by hand, intensity bins, and ``DriftMonitor``'s
per-image weighting, window eviction, gauge and no-reference behaviour."""

from __future__ import annotations

import math
import uuid

import numpy as np
import pytest
from prometheus_client import REGISTRY

from medens.data.drift import BINS, EPS, intensity_counts, intensity_reference, psi
from medens.serving.metrics import DriftMonitor


def _name() -> str:
    """A model label of its own, so the process-wide registry's other children do not interfere."""
    return f"drift-test-{uuid.uuid4().hex[:8]}"


def _gauge(model: str) -> float | None:
    return REGISTRY.get_sample_value("medens_input_drift_psi", {"model": model})


def _images_seen(model: str) -> float | None:
    return REGISTRY.get_sample_value("medens_input_images_total", {"model": model})


def _const(value: int, size: int = 4, channels: int = 1) -> np.ndarray:
    return np.full((size, size, channels), value, dtype=np.uint8)


def _onehot(b: int, bins: int = BINS) -> np.ndarray:
    h = np.zeros(bins)
    h[b] = 1.0
    return h


# ---------------------------------------------------------------------------- psi


def test_psi_of_two_small_histograms_by_hand():
    expected = 0.4 * math.log(1.8) + 0.4 * math.log(5.0)  # (0.9-0.5)ln(0.9/0.5) + (0.1-0.5)ln(0.1/0.5)
    assert expected == pytest.approx(0.878890, abs=1e-6)
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(expected, abs=1e-12)
    # counts are normalised first, and PSI is symmetric in its two histograms
    assert psi([10, 10], [90, 10]) == pytest.approx(expected, abs=1e-12)
    assert psi([0.9, 0.1], [0.5, 0.5]) == pytest.approx(expected, abs=1e-12)


def test_psi_of_identical_histograms_is_zero():
    h = np.array([0.1, 0.2, 0.3, 0.4])
    assert psi(h, h) == 0.0
    assert psi(h, 7 * h) == pytest.approx(0.0, abs=1e-15)
    assert psi([0, 1, 0], [0, 3, 0]) == 0.0  # empty bins on both sides: floored equally


def test_psi_floors_empty_bins_at_eps():
    # actual has nothing in bin 1: a = [1, EPS] after the floor
    by_hand = (1 - 0.5) * math.log(1 / 0.5) + (EPS - 0.5) * math.log(EPS / 0.5)
    assert psi([0.5, 0.5], [1.0, 0.0]) == pytest.approx(by_hand, abs=1e-12)
    assert math.isfinite(psi([1.0, 0.0], [0.0, 1.0]))


def test_psi_rejects_mismatched_or_empty_histograms():
    with pytest.raises(ValueError, match="same bins"):
        psi([0.5, 0.5], [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="same bins"):
        psi(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="empty"):
        psi([0.0, 0.0], [0.5, 0.5])


def test_intensity_counts_pools_channels_into_equal_bins():
    img = np.array([[[0, 7, 8]], [[255, 248, 247]]], dtype=np.uint8)  # (2, 1, 3)
    counts = intensity_counts(img)
    assert counts.sum() == 6
    assert counts[0] == 2 and counts[1] == 1 and counts[30] == 1 and counts[31] == 2
    # the float path (np.histogram) bins exactly as the uint8 fast path
    np.testing.assert_array_equal(intensity_counts(img.astype(np.float32)), counts)
    rng = np.random.default_rng(0)
    many = rng.integers(0, 256, (5, 9, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(intensity_counts(many.astype(np.float64)), intensity_counts(many))
    ref = intensity_reference(many)
    assert ref["bins"] == BINS and ref["pixels"] == many.size
    np.testing.assert_allclose(ref["fractions"], intensity_counts(many) / many.size, atol=1e-8)


# ---------------------------------------------------------------------------- DriftMonitor


def test_monitor_weighs_each_image_equally_and_sets_the_gauge():
    ref = {"bins": BINS, "fractions": (np.ones(BINS) / BINS).tolist()}
    model = _name()
    mon = DriftMonitor(model, ref, window=10)
    small_black = _const(0, size=2)  # 4 pixels, bin 0
    big_white = _const(255, size=20, channels=3)  # 1200 values, bin 31
    value = mon.observe([small_black, big_white])
    mean = (_onehot(0) + _onehot(31)) / 2  # not weighted by pixel count
    assert value == pytest.approx(psi(ref["fractions"], mean), abs=1e-12)
    by_hand = 2 * (0.5 - 1 / 32) * math.log(0.5 * 32) + 30 * (EPS - 1 / 32) * math.log(EPS * 32)
    assert value == pytest.approx(by_hand, abs=1e-12)
    assert mon.value == value
    assert _gauge(model) == pytest.approx(value, abs=1e-15)
    assert _images_seen(model) == 2.0


def test_monitor_window_keeps_only_the_last_images():
    rng = np.random.default_rng(1)
    fractions = rng.random(BINS)
    ref = {"bins": BINS, "fractions": (fractions / fractions.sum()).tolist()}
    a, b, c = _const(0), _const(100), _const(200)  # bins 0, 12 and 25

    mon = DriftMonitor(_name(), ref, window=2)
    mon.observe([a])
    mon.observe([b])
    assert mon.value == pytest.approx(psi(ref["fractions"], (_onehot(0) + _onehot(12)) / 2), abs=1e-12)
    third = mon.observe([c])  # a is evicted
    assert third == pytest.approx(psi(ref["fractions"], (_onehot(12) + _onehot(25)) / 2), abs=1e-12)
    assert third == pytest.approx(DriftMonitor(_name(), ref, window=2).observe([b, c]), abs=1e-12)
    assert third != pytest.approx(DriftMonitor(_name(), ref, window=3).observe([a, b, c]), abs=1e-6)
    # several images in one call evict in order too: only the last two of four count
    mon2 = DriftMonitor(_name(), ref, window=2)
    assert mon2.observe([c, c, a, b]) == pytest.approx(psi(ref["fractions"], _onehot(0) + _onehot(12)), abs=1e-12)


def test_monitor_without_reference_only_counts_images():
    for reference in (None, {}, {"bins": BINS, "fractions": []}):
        model = _name()
        mon = DriftMonitor(model, reference, window=5)
        assert mon.reference is None
        assert mon.observe([_const(0), _const(255)]) is None
        assert mon.observe([_const(9)]) is None
        assert mon.value is None
        assert _images_seen(model) == 3.0
        assert _gauge(model) is None  # the gauge is never set


def test_malformed_reference_or_window_is_refused_at_load():
    with pytest.raises(ValueError, match="drift reference is malformed: bins=16, 32 fractions"):
        DriftMonitor("m", {"bins": 16, "fractions": [1 / 32] * 32})
    with pytest.raises(ValueError, match="drift window must be at least 1"):
        DriftMonitor("m", None, window=0)
