"""Post-hoc decision rules: temperature scaling and logit adjustment, on planted predictions."""

import numpy as np
import pytest

from medens.ensemble.calibration import LogitAdjustment, TemperatureScaling, nll


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def planted(n=2000, k=3, seed=0, scale=1.0):
    """Labels drawn from a calibrated model's probabilities, then the logits scaled by ``scale``
    (> 1: over-confident by exactly that factor, so the right temperature is ``scale``)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, k))
    p = softmax(z)
    y = np.array([rng.choice(k, p=row) for row in p])
    return softmax(z * scale), y


def test_temperature_recovers_a_planted_over_confidence_and_keeps_every_decision():
    probs, y = planted(scale=4.0)
    ts = TemperatureScaling().fit(probs, y)
    assert ts.temperature == pytest.approx(4.0, rel=0.15)
    out = ts.transform(probs)
    assert nll(out, y) < nll(probs, y) - 0.2
    assert ts.validation_["nll_after"] == pytest.approx(nll(out, y), abs=1e-9)
    np.testing.assert_array_equal(out.argmax(1), probs.argmax(1))  # never changes the argmax
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-12)


def test_temperature_of_a_calibrated_model_stays_near_one_and_round_trips():
    probs, y = planted(scale=1.0, seed=1)
    ts = TemperatureScaling().fit(probs, y)
    assert ts.temperature == pytest.approx(1.0, abs=0.15)
    back = TemperatureScaling.from_dict(ts.to_dict())
    np.testing.assert_array_equal(back.transform(probs), ts.transform(probs))
    # T = 1 is the identity, by hand
    np.testing.assert_allclose(TemperatureScaling().transform(probs), probs, atol=1e-12)


def test_logit_adjustment_with_tau_zero_is_the_identity():
    probs, _ = planted(seed=2)
    la = LogitAdjustment([0.8, 0.15, 0.05])
    np.testing.assert_allclose(la.transform(probs, 0.0), probs, atol=1e-15)
    # tau = 1 by hand: p_k / pi_k renormalised
    pi = np.array([0.8, 0.15, 0.05])
    by_hand = probs / pi
    np.testing.assert_allclose(la.transform(probs, 1.0), by_hand / by_hand.sum(1, keepdims=True), atol=1e-12)


def test_logit_adjustment_rescues_the_minority_classes_of_a_prior_biased_model():
    """A model that learned the training prior (80/15/5) on top of good evidence: argmax favours
    the majority; tau fitted on validation raises balanced accuracy, and 0 stays a choice."""
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(3)
    pi = np.array([0.8, 0.15, 0.05])
    n = 3000
    y = rng.choice(3, size=n, p=[1 / 3] * 3)
    evidence = rng.normal(0, 1, (n, 3)) + 1.2 * np.eye(3)[y]
    probs = softmax(evidence + np.log(pi))  # the prior-shifted posterior
    la = LogitAdjustment(pi).fit(probs, y)
    before = balanced_accuracy_score(y, probs.argmax(1))
    after = balanced_accuracy_score(y, la.transform(probs).argmax(1))
    assert la.tau >= 0.7 and after > before + 0.1
    assert la.validation_["after"] == pytest.approx(after) and la.validation_["before"] == pytest.approx(before)
    back = LogitAdjustment.from_dict(la.to_dict())
    np.testing.assert_array_equal(back.transform(probs), la.transform(probs))


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="must include 0"):
        LogitAdjustment([0.5, 0.5], taus=[0.5, 1.0])
    with pytest.raises(ValueError, match="positive numbers"):
        LogitAdjustment([1.0, 0.0])
    with pytest.raises(ValueError, match=r"\(N, K\) with K >= 2"):
        TemperatureScaling().fit(np.ones(4), np.zeros(4, int))
    with pytest.raises(ValueError, match=r"labels must be 3 integers in \[0, 2\)"):
        TemperatureScaling().fit(np.full((3, 2), 0.5), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="2 classes in the probabilities, 3 priors"):
        LogitAdjustment([1, 1, 1]).transform(np.full((2, 2), 0.5), 1.0)
    with pytest.raises(ValueError, match="higher-is-better"):
        LogitAdjustment([1, 1], metric="log_loss").fit(np.full((2, 2), 0.5), np.array([0, 1]))


def test_inverse_transform_recovers_the_unscaled_probabilities_from_the_served_float32_ones():
    """The evaluation's "before temperature" probabilities: softmax(T log q) of the scaled q, as the
    artifact serves them (torch, float32), equals the unscaled probabilities to float32 precision."""
    import torch

    from medens.models.artifact import apply_temperature

    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.full(4, 0.3), size=200)  # many small probabilities
    for t in (0.4, 1.0, 2.7):
        served = apply_temperature(torch.from_numpy(p.astype(np.float32)), t).numpy()
        ts = TemperatureScaling.from_dict({"temperature": t})
        np.testing.assert_allclose(ts.inverse_transform(served), p, atol=2e-6)
        np.testing.assert_allclose(ts.inverse_transform(ts.transform(p)), np.clip(p, 1e-12, None) / np.clip(p, 1e-12, None).sum(1, keepdims=True), atol=1e-12)
