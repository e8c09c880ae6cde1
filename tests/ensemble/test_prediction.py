"""Prediction-level ensembles: planted members, tie rules, JSON round trips, no test leakage."""

import inspect
import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from medens.ensemble import prediction as pred
from medens.ensemble.prediction import (
    ENSEMBLES,
    FORMAT,
    TIE_EPSILON,
    GreedyEnsemble,
    PredictionEnsemble,
    StackingEnsemble,
    VoteEnsemble,
    build_ensemble,
    ensemble_options,
    fit_ensemble,
)
from medens.ensemble.segmentation import SEG_ENSEMBLES, fit_seg_ensemble
from medens.ensemble.selection import accuracy, log_loss
from medens.training.predictions import Predictions

METHODS = ["vote", "mean", "mean_la", "weighted", "greedy", "stacking"]


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def complementary_pair(n, seed):
    """A is accurate on classes 0/1 and random on 2; B is accurate on class 2 only."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    z_a, z_b = rng.normal(0, 1, (n, 3)), rng.normal(0, 1, (n, 3))
    a = y != 2
    z_a[a, y[a]] += 3.0
    z_b[y == 2, 2] += 3.0
    return {"A": softmax(z_a), "B": softmax(z_b)}, y


def graded_members(n, seed, k=3):
    """Four members of decreasing quality (signal 3, 2, 1, 0.5) on the same labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    out = {}
    for i, signal in enumerate([3.0, 2.0, 1.0, 0.5]):
        z = rng.normal(0, 1.5, (n, k))
        z[np.arange(n), y] += signal
        out[f"m{i}"] = softmax(z).astype(np.float32)
    return out, y


@pytest.fixture(scope="module")
def pair():
    val, y_val = complementary_pair(600, 0)
    held, y_held = complementary_pair(3000, 1)
    return val, y_val, held, y_held


@pytest.fixture(scope="module")
def graded():
    val, y_val = graded_members(300, 2)
    held, y_held = graded_members(200, 3)
    return val, y_val, held, y_held


# -- the fitting API cannot see test data ------------------------------------------------------


def test_fit_signatures_have_no_test_parameter():
    fits = [cls.fit for cls in (ENSEMBLES.get(m) for m in ENSEMBLES.names())]
    fits += [cls.fit for cls in (SEG_ENSEMBLES.get(m) for m in SEG_ENSEMBLES.names())]
    fits += [PredictionEnsemble.fit, fit_ensemble, fit_seg_ensemble]
    for fn in fits:
        names = list(inspect.signature(fn).parameters)
        assert not [p for p in names if "test" in p.lower()], (fn, names)
    assert list(inspect.signature(PredictionEnsemble.fit).parameters) == ["self", "val_probs", "y_val"]
    for m in METHODS:  # constructors and options neither
        assert not [p for p in ensemble_options(m) if "test" in p.lower()]


def test_registry_and_options():
    assert ENSEMBLES.names() == sorted(METHODS)
    assert ensemble_options("stacking") == {"C": 1.0, "cv": 5, "features": "proba", "seed": 0, "max_iter": 1000}
    assert ensemble_options("greedy") == {"metric": "log_loss", "n_iter": 50, "init_size": 0}
    with pytest.raises(ValueError, match=r"unknown ensemble 'stack'; did you mean 'stacking'\?"):
        build_ensemble("stack")
    with pytest.raises(ValueError, match=r"unknown greedy option 'n_iters'; did you mean 'n_iter'"):
        build_ensemble("greedy", n_iters=5)
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        build_ensemble("greedy", metric="auc")
    with pytest.raises(ValueError, match="features must be one of 'proba', 'log_proba', got 'logits'"):
        build_ensemble("stacking", features="logits")


# -- mean and weighted -------------------------------------------------------------------------


def test_mean_equals_numpy_mean(graded):
    val, y_val, held, _ = graded
    ens = build_ensemble("mean").fit(val, y_val)
    expected = np.mean(np.stack([held[m].astype(np.float64) for m in ["m0", "m1", "m2", "m3"]]), axis=0)
    np.testing.assert_allclose(ens.predict_proba(held), expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ens.predict(held), expected.argmax(axis=1))
    assert ens.to_dict()["params"]["weights"] == [0.25] * 4


def test_weighted_simplex_and_not_worse_than_mean_or_members(graded):
    val, y_val, _, _ = graded
    ens = build_ensemble("weighted").fit(val, y_val)
    w = ens.weights
    assert np.all(w >= 0)
    assert abs(w.sum() - 1) <= 1e-8
    loss = ens.validation_["log_loss"]
    mixed = np.tensordot(w, np.stack(list(val.values())).astype(np.float64), 1)
    assert loss == pytest.approx(-np.mean(np.log(mixed[np.arange(len(y_val)), y_val])), abs=1e-12)
    assert loss <= log_loss(y_val, np.mean(list(val.values()), axis=0)) + 1e-12
    for p in val.values():
        assert loss <= log_loss(y_val, p) + 1e-12
    assert w[0] > w[3]  # the strongest member outweighs the weakest


def test_weighted_puts_weight_on_informative_member_not_noise():
    rng = np.random.default_rng(2)
    n = 500
    informative = softmax(rng.normal(0, 2, (n, 3)))
    y = np.array([rng.choice(3, p=row) for row in informative])  # calibrated by construction
    noise = rng.dirichlet(np.ones(3), n)
    ens = build_ensemble("weighted").fit({"noise": noise, "informative": informative}, y)
    assert ens.member_ids == ["noise", "informative"]
    assert ens.weights[1] > 0.9
    assert ens.weights[1] > 0.99  # observed 1.0
    assert abs(ens.weights.sum() - 1) <= 1e-8


# -- greedy and stacking beat the best member on a complementary pair --------------------------


def test_greedy_and_stacking_beat_best_member(pair):
    val, y_val, held, y_held = pair
    best_acc = max(accuracy(y_held, p) for p in held.values())  # A: ~0.76
    best_loss = min(log_loss(y_held, p) for p in held.values())  # A: ~0.60
    assert best_acc == pytest.approx(accuracy(y_held, held["A"]))
    greedy = build_ensemble("greedy").fit(val, y_val)
    stacking = build_ensemble("stacking").fit(val, y_val)
    g, s = greedy.predict_proba(held), stacking.predict_proba(held)
    assert accuracy(y_held, g) > best_acc + 0.05  # observed 0.867 vs 0.756
    assert log_loss(y_held, g) < best_loss - 0.03  # observed 0.529 vs 0.596
    assert accuracy(y_held, s) > best_acc + 0.10  # observed 0.933
    assert log_loss(y_held, s) < best_loss - 0.2  # observed 0.201
    assert 0.5 < greedy.weights[0] < 0.8  # both members selected, A more often


def test_greedy_counts_history_and_init(pair):
    val, y_val, _, _ = pair
    ens = GreedyEnsemble(n_iter=20).fit(val, y_val)
    assert len(ens.history) == 20
    assert ens.best_score == pytest.approx(min(ens.history))
    best_it = int(np.argmin(ens.history))  # earliest best iteration is kept
    assert ens.counts.sum() == best_it + 1
    np.testing.assert_allclose(ens.weights, ens.counts / ens.counts.sum())
    assert ens.validation_["log_loss"] == pytest.approx(ens.best_score)
    # first pick from an empty start is the best single member by the metric
    one = GreedyEnsemble(n_iter=1).fit(val, y_val)
    assert one.counts.tolist() == [1, 0]
    init = GreedyEnsemble(n_iter=1, init_size=2).fit(val, y_val)
    assert init.counts.sum() in (2, 3) and init.counts.min() >= 1
    mcc_greedy = GreedyEnsemble(metric="mcc").fit(val, y_val)
    assert mcc_greedy.validation_["mcc"] == pytest.approx(mcc_greedy.best_score)
    with pytest.raises(ValueError, match=r"init_size \(3\) is larger than the number of members \(2\)"):
        GreedyEnsemble(init_size=3).fit(val, y_val)


def test_stacking_numpy_equals_sklearn_and_is_cross_fitted(pair):
    val, y_val, held, _ = pair
    ens = StackingEnsemble(C=0.5, cv=4, seed=3).fit(val, y_val)
    x_held = np.concatenate([held["A"], held["B"]], axis=1)  # member-major layout
    np.testing.assert_allclose(ens.predict_proba(held), ens.model_.predict_proba(x_held), rtol=0, atol=1e-6)
    assert ens.coef.shape == (3, 6) and ens.intercept.shape == (3,)
    # out-of-fold validation predictions, reproduced by hand
    x_val = np.concatenate([val["A"], val["B"]], axis=1)
    oof = np.zeros((len(y_val), 3))
    for tr, te in StratifiedKFold(4, shuffle=True, random_state=3).split(x_val, y_val):
        oof[te] = LogisticRegression(C=0.5, max_iter=1000).fit(x_val[tr], y_val[tr]).predict_proba(x_val[te])
    np.testing.assert_allclose(ens.oof_proba_, oof, atol=1e-6)
    v = ens.validation_
    assert v["in_sample"] is False and v["cv_folds"] == 4
    assert v["log_loss"] == pytest.approx(log_loss(y_val, oof), abs=1e-9)
    assert v["log_loss"] > log_loss(y_val, ens.model_.predict_proba(x_val))  # honest: worse than in-sample


def test_stacking_binary_and_log_features():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 200)
    members = []
    for s in (2.0, 1.0):
        z = rng.normal(0, 1, (200, 2))
        z[np.arange(200), y] += s
        members.append(softmax(z))
    ens = StackingEnsemble(features="log_proba").fit(members, y)
    assert ens.member_ids == ["m0", "m1"]
    x = np.log(np.concatenate(members, axis=1))
    np.testing.assert_allclose(ens.predict_proba(members), ens.model_.predict_proba(x), rtol=0, atol=1e-6)
    assert ens.coef.shape == (2, 4) and ens.coef[0].tolist() == [0.0] * 4


def test_stacking_needs_two_samples_per_class():
    p = np.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"at least 2 validation samples of every class; class counts \[2, 1, 1\]"):
        StackingEnsemble().fit([p, p], np.array([0, 0, 1, 2]))


# -- majority vote tie rule --------------------------------------------------------------------


def _vote(members):
    members = [np.asarray(m, dtype=np.float64) for m in members]
    ens = VoteEnsemble().fit(members, np.zeros(len(members[0]), dtype=int))
    return ens, ens.predict(members), ens.predict_proba(members)


def test_vote_majority_beats_mean_probability():
    weak0 = [[0.40, 0.35, 0.25]]
    strong1 = [[0.0, 1.0, 0.0]]
    _, label, proba = _vote([weak0, weak0, strong1])
    assert label.tolist() == [0]  # mean probability would pick 1
    np.testing.assert_allclose(proba, [[2 / 3, 1 / 3, 0]], atol=2e-6)


def test_vote_ties_follow_the_stated_rule():
    rows = {
        # two-way tie 0 vs 1, mean probs (0.4, 0.5, 0.1) -> 1
        "two_way_mean_1": ([0.6, 0.3, 0.1], [0.2, 0.7, 0.1], None, 1),
        # two-way tie 0 vs 1, mean probs (0.475, 0.425, 0.1) -> 0
        "two_way_mean_0": ([0.6, 0.3, 0.1], [0.35, 0.55, 0.1], None, 0),
        # three-way tie, mean probs (0.2667, 0.3333, 0.4) -> 2 (not the lowest index)
        "three_way": ([0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.2, 0.1, 0.7], 2),
        # three-way tie and equal mean probabilities (1/3 each) -> lowest index 0
        "three_way_mean_tie": ([0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.25, 0.5], 0),
        # tie 1 vs 2 with equal mean probabilities 0.5 -> lowest tied index 1 (class 0 has no votes)
        "mean_tie_lowest": ([0.0, 0.25, 0.75], [0.0, 0.75, 0.25], None, 1),
    }
    for name, (a, b, c, expected) in rows.items():
        members = [[a], [b]] + ([[c]] if c is not None else [])
        ens, label, proba = _vote(members)
        assert label.tolist() == [expected], name
        assert int(np.argmax(proba)) == expected, name
        assert proba.sum() == pytest.approx(1.0)
        votes = ens.votes(members)[0]
        np.testing.assert_allclose(proba[0], (1 - TIE_EPSILON) * votes / len(members) + TIE_EPSILON * np.eye(3)[expected])
    assert "highest member-mean probability" in ens.to_dict()["params"]["tie_rule"]
    assert "lowest class index" in ens.to_dict()["params"]["tie_rule"]


def test_vote_batch_argmax_equals_vote(graded):
    val, y_val, held, _ = graded
    ens = build_ensemble("vote").fit(val, y_val)
    probs = ens.predict_proba(held)
    np.testing.assert_array_equal(np.argmax(probs, axis=1), ens.predict(held))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


# -- serialisation -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_json_round_trip_gives_identical_predictions(method, graded):
    val, y_val, held, _ = graded
    ens = build_ensemble(method).fit(val, y_val)
    d = json.loads(json.dumps(ens.to_dict(), allow_nan=False))
    assert d["format"] == FORMAT and d["method"] == method and d["member_ids"] == ["m0", "m1", "m2", "m3"]
    back = PredictionEnsemble.from_dict(d)
    assert type(back) is type(ens)
    np.testing.assert_array_equal(back.predict_proba(held), ens.predict_proba(held))
    # list input in member order and dict input with an extra member give the same result
    listed = back.predict_proba([held[m] for m in back.member_ids])
    np.testing.assert_array_equal(listed, back.predict_proba({**held, "other": held["m0"]}))
    assert back.validation_ == ens.validation_


def test_from_dict_errors(graded):
    val, y_val, _, _ = graded
    d = build_ensemble("mean").fit(val, y_val).to_dict()
    with pytest.raises(ValueError, match="not a prediction ensemble description"):
        PredictionEnsemble.from_dict({**d, "format": "x"})
    with pytest.raises(ValueError, match=r"unknown ensemble 'medn'; did you mean 'mean', 'mean_la'\?"):
        PredictionEnsemble.from_dict({**d, "method": "medn"})
    with pytest.raises(ValueError, match="StackingEnsemble.from_dict got method 'mean'"):
        StackingEnsemble.from_dict(d)


# -- input checks and the Predictions convenience ------------------------------------------------


def test_input_errors(graded):
    val, y_val, held, _ = graded
    ens = build_ensemble("mean", member_ids=["m0", "m1"])
    with pytest.raises(RuntimeError, match="not fitted"):
        ens.predict_proba(held)
    with pytest.raises(ValueError, match=r"y_val must have shape \(300,\)"):
        ens.fit(val, y_val[:-1])
    with pytest.raises(ValueError, match=r"y_val must hold integer labels in \[0, 3\)"):
        ens.fit(val, np.full(300, 3))
    ens.fit(val, y_val)
    assert ens.member_ids == ["m0", "m1"]  # picked from the larger dict
    with pytest.raises(ValueError, match=r"missing member\(s\) \['m1'\]"):
        ens.predict_proba({"m0": held["m0"]})
    with pytest.raises(ValueError, match="got 1 member probability arrays for 2 members"):
        ens.predict_proba([held["m0"]])
    with pytest.raises(ValueError, match="fitted on 3 classes, got probabilities with 2"):
        ens.predict_proba([held["m0"][:, :2], held["m1"][:, :2]])
    with pytest.raises(ValueError, match=r"member 'm1': probabilities of shape \(10, 3\)"):
        ens.predict_proba([held["m0"], held["m1"][:10]])
    bad = held["m1"].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"non-finite probabilities from member\(s\) \['m1'\]"):
        ens.predict_proba([held["m0"], bad])


def test_fit_ensemble_from_predictions(graded):
    val, y_val, held, _ = graded
    ids = [f"v{i}" for i in range(len(y_val))]
    preds = {m: Predictions(probs=p, ids=ids, labels=y_val, class_names=["a", "b", "c"]) for m, p in val.items()}
    ens = fit_ensemble("weighted", preds, member_ids=["m2", "m0"])
    assert ens.member_ids == ["m2", "m0"] and ens.class_names == ["a", "b", "c"]
    assert ens.to_dict()["class_names"] == ["a", "b", "c"]
    assert ens.weights[1] > ens.weights[0]
    assert ens.predict_proba(held).shape == (200, 3)
    shuffled = dict(preds, m3=Predictions(probs=val["m3"], ids=ids[::-1], labels=y_val))
    with pytest.raises(ValueError, match="member 'm3' was evaluated on different validation samples than 'm0'"):
        fit_ensemble("mean", shuffled)


def test_module_imports_stay_light():
    src = inspect.getsource(pred)
    head = src.split("class PredictionEnsemble")[0]
    assert "import sklearn" not in head and "from sklearn" not in head and "from scipy" not in head


def prior_biased_members(n, seed, pi=(0.8, 0.15, 0.05)):
    """Two members that learned the training prior on top of their evidence (argmax favours class 0),
    scored on balanced labels drawn with the same prior as their training data."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=list(pi))
    out = {}
    for i in range(2):
        z = rng.normal(0, 1, (n, 3)) + 1.5 * np.eye(3)[y]
        out[f"m{i}"] = softmax(z + np.log(np.asarray(pi)))
    return out, y


def test_logit_adjusted_mean_helps_the_minority_classes_out_of_sample():
    from sklearn.metrics import f1_score

    val, y_val = prior_biased_members(1500, 0)
    held, y_held = prior_biased_members(3000, 1)
    mean = build_ensemble("mean").fit(val, y_val)
    la = build_ensemble("mean_la").fit(val, y_val)
    tau = la.adjustment.tau
    assert 0.3 <= tau <= 2.0
    f1 = {name: f1_score(y_held, e.predict(held), average="macro") for name, e in (("mean", mean), ("la", la))}
    assert f1["la"] > f1["mean"] + 0.03  # out of sample, on data it was not fitted on
    back = PredictionEnsemble.from_dict(la.to_dict())
    np.testing.assert_array_equal(back.predict_proba(held), la.predict_proba(held))
    # tau = 0 is the plain mean, exactly
    la.adjustment.tau = 0.0
    np.testing.assert_allclose(la.predict_proba(held), mean.predict_proba(held), atol=1e-12)
