"""Member weights of an ensemble explanation, per combiner: stored weights, votes, the gradient rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medens.ensemble.artifact import LoadedEnsemble
from medens.ensemble.contribution import member_weights
from medens.ensemble.prediction import FORMAT, PredictionEnsemble

P1 = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
P2 = np.array([[0.2, 0.5, 0.3], [0.3, 0.3, 0.4]])


def _combiner(method: str, ids: list[str], params: dict) -> PredictionEnsemble:
    return PredictionEnsemble.from_dict({"format": FORMAT, "kind": "prediction", "method": method, "member_ids": ids,
                                         "n_classes": 3, "class_names": None, "options": {}, "params": params})


def _ensemble(combiner, members: list[str], folds: dict | None = None) -> LoadedEnsemble:
    manifest = {"members": members, **({"fold_members": folds} if folds else {})}
    return LoadedEnsemble(manifest=manifest, members=dict.fromkeys(members), combiner=combiner, path=Path("."))


def test_linear_combiners_use_their_stored_weights():
    ens = _ensemble(_combiner("weighted", ["m1", "m2"], {"weights": [0.75, 0.25]}), ["m1", "m2"])
    w, rule = member_weights(ens, {"m1": P1, "m2": P2}, np.array([0, 2]))
    assert rule == "weights"
    np.testing.assert_allclose(w, [[0.75, 0.25], [0.75, 0.25]])
    w, _ = member_weights(_ensemble(_combiner("weighted", ["m1", "m2"], {"weights": [1.0, 0.0]}), ["m1", "m2"]),
                          {"m1": P1, "m2": P2}, np.array([1, 1]))
    np.testing.assert_array_equal(w, [[1.0, 0.0], [1.0, 0.0]])


def test_a_vote_weighs_the_members_that_voted_for_the_class():
    ens = _ensemble(_combiner("vote", ["m1", "m2"], {}), ["m1", "m2"])
    # image 0: m1 votes 0, m2 votes 1; image 1: m1 votes 1, m2 votes 2
    w, rule = member_weights(ens, {"m1": P1, "m2": P2}, np.array([1, 0]))
    assert rule == "votes"
    np.testing.assert_allclose(w, [[0.0, 1.0], [0.5, 0.5]])  # nobody voted 0 on image 1: uniform


def test_stacking_uses_the_clipped_gradient_of_the_combined_probability():
    rng = np.random.default_rng(0)
    coef, intercept = rng.normal(size=(3, 6)), rng.normal(size=3)
    ens = _ensemble(_combiner("stacking", ["m1", "m2"], {"coef": coef.tolist(), "intercept": intercept.tolist()}),
                    ["m1", "m2"])
    labels = np.array([0, 2])
    w, rule = member_weights(ens, {"m1": P1, "m2": P2}, labels)
    assert rule == "gradient"
    # analytic: P = softmax(coef x + b), dP_c/dx_j = P_c (coef[c, j] - sum_k P_k coef[k, j])
    x = np.concatenate([P1, P2], axis=1)
    z = x @ coef.T + intercept
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = []
    for i, c in enumerate(labels):
        g = [p[i, c] * (coef[c, m * 3 + c] - p[i] @ coef[:, m * 3 + c]) for m in range(2)]
        g = np.clip(g, 0, None)
        expected.append(g / g.sum() if g.sum() > 0 else [0.5, 0.5])
    np.testing.assert_allclose(w, expected, atol=1e-6)


def test_fold_models_share_their_members_weight_and_a_single_model_weighs_one():
    ens = _ensemble(_combiner("vote", ["a", "b"], {}), ["a0", "a1", "b0"], folds={"a": ["a0", "a1"], "b": ["b0"]})
    probs = {"a0": P1, "a1": P1, "b0": P2}
    w, _ = member_weights(ens, probs, np.array([0, 2]))
    # image 0: only a votes 0 -> a0, a1 get 1/2 each; image 1: only b votes 2
    np.testing.assert_allclose(w, [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    w, rule = member_weights(_ensemble(None, ["solo"]), {"solo": P1}, np.array([0, 1]))
    assert rule == "single" and w.tolist() == [[1.0], [1.0]]


@pytest.mark.parametrize("method", ["mean", "greedy"])
def test_other_weighted_averages_are_linear(method):
    params = {"weights": [0.5, 0.5]} if method == "mean" else {"weights": [0.2, 0.8], "counts": [1, 4]}
    ens = _ensemble(_combiner(method, ["m1", "m2"], params), ["m1", "m2"])
    w, rule = member_weights(ens, {"m1": P1, "m2": P2}, np.array([0, 0]))
    assert rule == "weights" and np.allclose(w, [params["weights"]] * 2)
