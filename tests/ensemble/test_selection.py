"""Member ranking and top-k on validation metrics with known values."""

import numpy as np
import pytest
from sklearn import metrics as skm

from medens.ensemble.selection import (
    METRICS,
    accuracy,
    balanced_accuracy,
    check_aligned,
    log_loss,
    macro_f1,
    mcc,
    metric_score,
    rank_members,
    top_k,
)
from medens.training.predictions import Predictions

Y = np.array([0] * 10 + [1] * 10)
IDS = [f"s{i}" for i in range(20)]


def onehot_probs(pred, confidence=0.9):
    p = np.full((len(pred), 2), 1 - confidence)
    p[np.arange(len(pred)), pred] = confidence
    return p


def member(pred, labels=Y, ids=IDS, confidence=0.9):
    return Predictions(probs=onehot_probs(np.asarray(pred), confidence), ids=list(ids), labels=labels)


def two_errors():
    pred = Y.copy()
    pred[0], pred[10] = 1, 0  # one FP and one FN: MCC (81 - 1) / 100 = 0.8
    return pred


@pytest.fixture()
def members():
    return {
        "z_perfect": member(Y),  # MCC 1
        "m_two_errors": member(two_errors()),  # MCC 0.8
        "b_two_errors": member(two_errors(), confidence=0.6),  # MCC 0.8, worse log-loss
        "c_constant": member(np.zeros(20, dtype=int)),  # MCC 0 (undefined -> 0)
    }


def test_metrics_match_hand_values_and_sklearn():
    p = onehot_probs(two_errors())
    assert mcc(Y, p) == pytest.approx(0.8)
    assert accuracy(Y, p) == pytest.approx(0.9)
    assert mcc(Y, onehot_probs(np.zeros(20, dtype=int))) == 0.0
    assert log_loss(Y, p) == pytest.approx(-(18 * np.log(0.9) + 2 * np.log(0.1)) / 20)
    rng = np.random.default_rng(0)
    for k in (2, 3, 5):
        y = rng.integers(0, k, 200)
        probs = rng.dirichlet(np.ones(k), 200)
        probs[np.arange(200), y] += rng.random(200) * 0.5
        probs /= probs.sum(axis=1, keepdims=True)
        pred = probs.argmax(axis=1)
        assert mcc(y, probs) == pytest.approx(skm.matthews_corrcoef(y, pred), abs=1e-12)
        assert macro_f1(y, probs) == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-12)
        assert balanced_accuracy(y, probs) == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-12)
        assert accuracy(y, probs) == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
        assert log_loss(y, probs) == pytest.approx(skm.log_loss(y, probs, labels=list(range(k))), abs=1e-9)
    with pytest.raises(ValueError, match=r"unknown metric 'mmc'; did you mean 'mcc'\?"):
        metric_score(Y, p, metric="mmc")


def test_rank_by_mcc_with_id_tie_break(members):
    ranked = rank_members(members)
    assert [m for m, _ in ranked] == ["z_perfect", "b_two_errors", "m_two_errors", "c_constant"]
    assert [s for _, s in ranked] == pytest.approx([1.0, 0.8, 0.8, 0.0])
    assert top_k(members, 3) == ["z_perfect", "b_two_errors", "m_two_errors"]
    assert top_k(members, 1, metric="accuracy") == ["z_perfect"]


def test_rank_by_log_loss_lower_is_better(members):
    ranked = rank_members(members, metric="log_loss")
    # confident 2-error member: (18 ln 0.9 + 2 ln 0.1) / 20 = 0.325; the 0.6-confident one: 0.552
    assert [m for m, _ in ranked] == ["z_perfect", "m_two_errors", "b_two_errors", "c_constant"]
    assert ranked[1][1] == pytest.approx(-(18 * np.log(0.9) + 2 * np.log(0.1)) / 20)
    assert ranked[0][1] < ranked[1][1] < ranked[2][1] < ranked[3][1]


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_every_metric_ranks_the_perfect_member_first(members, metric):
    assert rank_members(members, metric=metric)[0][0] == "z_perfect"


def test_top_k_bounds(members):
    for k in (0, 5, -1):
        with pytest.raises(ValueError, match=rf"k must be an integer between 1 and the number of members \(4\), got {k}"):
            top_k(members, k)
    with pytest.raises(ValueError, match="got 2.0"):
        top_k(members, 2.0)
    assert len(top_k(members, 4)) == 4


def test_members_must_share_ids_and_labels(members):
    with pytest.raises(ValueError, match="member 'late' was evaluated on different validation samples than 'z_perfect'"):
        rank_members({**members, "late": member(Y, ids=IDS[::-1])})
    other = Y.copy()
    other[3] = 1
    with pytest.raises(ValueError, match="member 'relabelled' has labels that differ from those of 'z_perfect'"):
        rank_members({**members, "relabelled": member(Y, labels=other)})
    with pytest.raises(ValueError, match="member 'unlabelled' has no labels"):
        top_k({**members, "unlabelled": Predictions(probs=onehot_probs(Y), ids=IDS)}, 2)
    with pytest.raises(ValueError, match="no members given"):
        rank_members({})
    with pytest.raises(ValueError, match=r"member 'three' has probabilities of shape \(20, 3\)"):
        check_aligned({**members, "three": Predictions(probs=np.full((20, 3), 1 / 3), ids=IDS, labels=Y)})
