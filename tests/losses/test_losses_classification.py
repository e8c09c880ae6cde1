"""Classification losses: hand-computed values, limit cases, references (torch, MONAI)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medens import losses

torch.set_num_threads(1)

LN = math.log

# Two samples with probabilities that are easy to write down:
#   A: z = ln[1, 2, 5] -> p = [1/8, 2/8, 5/8] = [0.125, 0.25, 0.625], label 2 (predicted 2: correct)
#   B: z = ln[1, 1, 2] -> p = [1/4, 1/4, 2/4] = [0.25, 0.25, 0.5],    label 0 (predicted 2: wrong)
LOGITS = torch.log(torch.tensor([[1.0, 2.0, 5.0], [1.0, 1.0, 2.0]]))
TARGET = torch.tensor([2, 0])
PA = [0.125, 0.25, 0.625]
PB = [0.25, 0.25, 0.5]


def build(name: str, class_counts=None, **params) -> torch.nn.Module:
    return losses.build(name, class_counts=class_counts, **params)


def value(name: str, class_counts=None, logits=LOGITS, target=TARGET, **params) -> float:
    return build(name, class_counts, **params)(logits, target).item()


def entropy(p: list[float]) -> float:
    return -sum(q * LN(q) for q in p)


# ---------------------------------------------------------------------------------------------
# hand-computed values
# ---------------------------------------------------------------------------------------------


def test_ce_by_hand():
    # A: -ln 0.625 = ln 1.6; B: -ln 0.25 = ln 4
    assert value("ce") == pytest.approx((LN(1.6) + LN(4)) / 2, rel=1e-6)
    assert value("ce", reduction="sum") == pytest.approx(LN(1.6) + LN(4), rel=1e-6)
    none = build("ce", reduction="none")(LOGITS, TARGET)
    assert none.tolist() == pytest.approx([LN(1.6), LN(4)], rel=1e-6)


def test_weighted_ce_by_hand():
    # counts [2, 1, 1]: N = 4, K = 3, w = N / (K n) = [2/3, 4/3, 4/3]
    # sum = w_2 ln 1.6 + w_0 ln 4; mean divides by w_2 + w_0 = 2 (torch's convention)
    total = 4 / 3 * LN(1.6) + 2 / 3 * LN(4)
    assert value("weighted_ce", [2, 1, 1]) == pytest.approx(total / 2, rel=1e-6)
    assert value("weighted_ce", [2, 1, 1], reduction="sum") == pytest.approx(total, rel=1e-6)
    # explicit weights
    assert value("weighted_ce", weight=[1.0, 0.0, 3.0]) == pytest.approx((3 * LN(1.6) + LN(4)) / 4, rel=1e-6)


def test_focal_by_hand():
    # gamma 2: A (1 - 0.625)^2 ln 1.6 = 0.140625 ln 1.6; B (1 - 0.25)^2 ln 4 = 0.5625 ln 4
    a, b = 0.140625 * LN(1.6), 0.5625 * LN(4)
    assert value("focal") == pytest.approx((a + b) / 2, rel=1e-6)
    # alpha vector [0.25, 1, 2]: A is class 2 (x2), B is class 0 (x0.25)
    assert value("focal", alpha=[0.25, 1.0, 2.0]) == pytest.approx((2 * a + 0.25 * b) / 2, rel=1e-6)
    # scalar alpha multiplies every class; gamma 1
    a1, b1 = 0.375 * LN(1.6), 0.75 * LN(4)
    assert value("focal", gamma=1.0, alpha=1.5) == pytest.approx(1.5 * (a1 + b1) / 2, rel=1e-6)


def test_class_balanced_by_hand():
    # counts [1, 2, 3], beta 0.5: (1 - b) / (1 - b^n) = 0.5/0.5, 0.5/0.75, 0.5/0.875 = 1, 2/3, 4/7
    # sum 47/21, rescaled to sum K=3: x 63/47 -> [63/47, 42/47, 36/47]; plain mean over samples
    expected = (36 / 47 * LN(1.6) + 63 / 47 * LN(4)) / 2
    assert value("class_balanced", [1, 2, 3], beta=0.5) == pytest.approx(expected, rel=1e-6)
    focal = (36 / 47 * 0.140625 * LN(1.6) + 63 / 47 * 0.5625 * LN(4)) / 2
    assert value("class_balanced", [1, 2, 3], beta=0.5, base="focal") == pytest.approx(focal, rel=1e-6)


def test_ldam_by_hand():
    # counts [1, 16, 81]: n^(-1/4) = [1, 1/2, 1/3]; scaled so the max is 0.5: m = [0.5, 0.25, 1/6]
    # s = 1: A: z' = [0, ln 2, ln 5 - 1/6] -> CE = ln(1 + 2 + 5 e^(-1/6)) - (ln 5 - 1/6)
    #        B: z' = [0 - 0.5, 0, ln 2]   -> CE = ln(e^(-0.5) + 1 + 2) + 0.5
    a = LN(3 + 5 * math.exp(-1 / 6)) - (LN(5) - 1 / 6)
    b = LN(math.exp(-0.5) + 3) + 0.5
    assert value("ldam", [1, 16, 81], s=1.0) == pytest.approx((a + b) / 2, rel=1e-6)
    # s = 2 doubles the shifted logits: A: z' = [0, 2 ln 2, 2 ln 5 - 1/3]
    a2 = LN(1 + 4 + 25 * math.exp(-1 / 3)) - (2 * LN(5) - 1 / 3)
    b2 = LN(math.exp(-1.0) + 1 + 4) + 1.0
    assert value("ldam", [1, 16, 81], s=2.0) == pytest.approx((a2 + b2) / 2, rel=1e-6)


def test_margin_by_hand():
    # A (label 2): (0.9 - 0.625)^2 + 0.5 [(0.125 - 0.1)^2 + (0.25 - 0.1)^2]
    #            = 0.075625 + 0.5 (0.000625 + 0.0225) = 0.0871875
    # B (label 0): (0.9 - 0.25)^2 + 0.5 [(0.25 - 0.1)^2 + (0.5 - 0.1)^2]
    #            = 0.4225 + 0.5 (0.0225 + 0.16) = 0.51375
    a, b = 0.0871875, 0.51375
    assert value("margin", weight=None) == pytest.approx((a + b) / 2, rel=1e-6)
    # balanced from counts [2, 1, 1]: w = [2/3, 4/3, 4/3]; each sample times its class weight
    assert value("margin", [2, 1, 1]) == pytest.approx((4 / 3 * a + 2 / 3 * b) / 2, rel=1e-6)


def test_hinge_by_hand():
    # A: 1 + max(0.125, 0.25) - 0.625 = 0.625; B: 1 + max(0.25, 0.5) - 0.25 = 1.25
    assert value("hinge") == pytest.approx((0.625 + 1.25) / 2, rel=1e-6)
    assert value("hinge", margin=0.1) == pytest.approx((0.0 + 0.35) / 2, rel=1e-6)


def test_label_smoothing_by_hand():
    # eps 0.2, K 3: q = 0.8 y + 0.2 / 3 -> A: [1/15, 1/15, 13/15], B: [13/15, 1/15, 1/15]
    qa, qb = [1 / 15, 1 / 15, 13 / 15], [13 / 15, 1 / 15, 1 / 15]
    ce_a = -sum(q * LN(p) for q, p in zip(qa, PA))
    ce_b = -sum(q * LN(p) for q, p in zip(qb, PB))
    assert value("label_smoothing_ce") == pytest.approx((ce_a + ce_b) / 2, rel=1e-6)
    fo_a = -sum(q * (1 - p) ** 2 * LN(p) for q, p in zip(qa, PA))
    fo_b = -sum(q * (1 - p) ** 2 * LN(p) for q, p in zip(qb, PB))
    assert value("label_smoothing_focal") == pytest.approx((fo_a + fo_b) / 2, rel=1e-6)


def test_kl_by_hand():
    # soft target [0.5, 0.5, 0] against A: 0.5 ln(0.5 / 0.125) + 0.5 ln(0.5 / 0.25) + 0 = 0.5 ln 4 + 0.5 ln 2
    soft = torch.tensor([[0.5, 0.5, 0.0]])
    assert value("kl", logits=LOGITS[:1], target=soft) == pytest.approx(0.5 * LN(4) + 0.5 * LN(2), rel=1e-6)
    assert value("kl") == pytest.approx((LN(1.6) + LN(4)) / 2, rel=1e-6)


def test_entropy_terms_by_hand():
    ha, hb = entropy(PA), entropy(PB)
    # entropy_regularized_ce: CE + beta mean_{i,k}(-p log p) = CE + 2.0 * H / 3 per sample
    expected = (LN(1.6) + 2 * ha / 3 + LN(4) + 2 * hb / 3) / 2
    assert value("entropy_regularized_ce") == pytest.approx(expected, rel=1e-6)
    # negative_entropy_ce: CE - 0.001 H
    expected = (LN(1.6) - 0.001 * ha + LN(4) - 0.001 * hb) / 2
    assert value("negative_entropy_ce") == pytest.approx(expected, rel=1e-6)


def test_dca_by_hand():
    # confidences 0.625 and 0.5 -> mean 0.5625; A correct, B wrong -> accuracy 0.5; DCA = 0.0625
    dca = 0.0625
    ce = (LN(1.6) + LN(4)) / 2
    assert value("dca_ce") == pytest.approx(ce + dca, rel=1e-6)
    assert value("dca_kl") == pytest.approx(ce + dca, rel=1e-6)
    assert value("dca_ce", beta=4.0) == pytest.approx(ce + 0.25, rel=1e-6)
    assert value("dca_focal") == pytest.approx((0.140625 * LN(1.6) + 0.5625 * LN(4)) / 2 + dca, rel=1e-6)
    assert value("dca_hinge") == pytest.approx((0.625 + 1.25) / 2 + dca, rel=1e-6)
    neg = (LN(1.6) - 0.001 * entropy(PA) + LN(4) - 0.001 * entropy(PB)) / 2
    assert value("dca_negative_entropy") == pytest.approx(neg + dca, rel=1e-6)
    # "none" adds the batch term to every sample; their mean is the "mean" output
    none = build("dca_ce", reduction="none")(LOGITS, TARGET)
    assert none.tolist() == pytest.approx([LN(1.6) + dca, LN(4) + dca], rel=1e-6)
    assert value("dca_ce", reduction="sum") == pytest.approx(2 * (ce + dca), rel=1e-6)


def test_one_logit_is_binary_sigmoid():
    # K = 1: softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)], so ce is BCE with logits
    z = torch.tensor([[LN(3.0)], [-LN(3.0)], [0.7]])
    t = torch.tensor([1, 1, 0])
    ref = F.binary_cross_entropy_with_logits(z[:, 0], t.float())
    assert value("ce", logits=z, target=t) == pytest.approx(ref.item(), rel=1e-6)
    assert value("ce", logits=z, target=t.float()[:, None]) == pytest.approx(ref.item(), rel=1e-6)
    # sigmoid(ln 3) = 0.75: focal gamma 2 on the first sample = 0.25^2 ln(4/3)
    one = build("focal", reduction="none")(z[:1], t[:1])
    assert one.item() == pytest.approx(0.0625 * LN(4 / 3), rel=1e-6)


def test_one_hot_equals_indices():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, generator=g)
    t = torch.randint(0, 4, (6,), generator=g)
    oh = F.one_hot(t, 4).float()
    counts = [5, 3, 9, 2]
    for name in losses.names():
        loss = build(name, counts)
        assert loss(z, oh).item() == pytest.approx(loss(z, t).item(), rel=1e-6, abs=1e-7), name


# ---------------------------------------------------------------------------------------------
# limit cases
# ---------------------------------------------------------------------------------------------


def _random_batch(seed: int, b: int = 7, k: int = 4, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g) * scale, torch.randint(0, k, (b,), generator=g)


@pytest.mark.parametrize("seed", range(5))
def test_limit_cases(seed):
    z, t = _random_batch(seed)
    counts = [30, 5, 12, 1]
    ce = build("ce", reduction="none")(z, t)

    def same(name, **params):
        out = build(name, counts, reduction="none", **params)(z, t)
        torch.testing.assert_close(out, ce, rtol=1e-5, atol=1e-6, msg=name)

    same("focal", gamma=0.0, alpha=1.0)
    same("class_balanced", beta=0.0)
    same("label_smoothing_ce", eps=0.0)
    same("ldam", max_m=0.0, s=1.0)
    same("kl")
    same("entropy_regularized_ce", beta=0.0)
    same("negative_entropy_ce", beta=0.0)
    same("weighted_ce", weight=None)
    # class_balanced with a focal base and beta 0 is focal; label smoothing eps 0 of focal is focal
    focal = build("focal", reduction="none")(z, t)
    torch.testing.assert_close(build("class_balanced", counts, beta=0.0, base="focal", reduction="none")(z, t), focal)
    torch.testing.assert_close(build("label_smoothing_focal", eps=0.0, reduction="none")(z, t), focal)


@pytest.mark.parametrize(
    ("dca", "base", "params"),
    [
        ("dca_ce", "ce", {}),
        ("dca_kl", "kl", {}),
        ("dca_focal", "focal", {"gamma": 1.5, "alpha": [1.0, 2.0, 0.5, 1.0]}),
        ("dca_hinge", "hinge", {"margin": 0.5}),
        ("dca_negative_entropy", "negative_entropy_ce", {}),
    ],
)
def test_dca_beta_zero_is_base(dca, base, params):
    z, t = _random_batch(3)
    base_params = dict(params)
    dca_params = dict(params)
    if base == "negative_entropy_ce":
        base_params["beta"] = 0.01
        dca_params["entropy_beta"] = 0.01
    for reduction in ("mean", "sum", "none"):
        expected = build(base, reduction=reduction, **base_params)(z, t)
        got = build(dca, beta=0.0, reduction=reduction, **dca_params)(z, t)
        torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------------------------------------
# references, 100 random batches each
# ---------------------------------------------------------------------------------------------


def _random_problem(g: torch.Generator):
    b = int(torch.randint(1, 17, (1,), generator=g))
    k = int(torch.randint(2, 7, (1,), generator=g))
    z = torch.randn(b, k, generator=g) * float(torch.rand(1, generator=g) * 10)
    t = torch.randint(0, k, (b,), generator=g)
    w = torch.rand(k, generator=g) * 2 + 0.05
    eps = float(torch.rand(1, generator=g))
    return z, t, w, eps


def test_cross_entropy_against_torch():
    g = torch.Generator().manual_seed(1)
    for _ in range(100):
        z, t, w, eps = _random_problem(g)
        for reduction in ("mean", "sum", "none"):
            ref = F.cross_entropy(z, t, reduction=reduction)
            torch.testing.assert_close(build("ce", reduction=reduction)(z, t), ref, rtol=1e-5, atol=1e-5)
            ref = F.cross_entropy(z, t, weight=w, reduction=reduction)
            got = build("weighted_ce", weight=w.tolist(), reduction=reduction)(z, t)
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
            ref = F.cross_entropy(z, t, label_smoothing=eps, reduction=reduction)
            got = build("label_smoothing_ce", eps=eps, reduction=reduction)(z, t)
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
            ref = F.cross_entropy(z, t, weight=w, label_smoothing=eps, reduction=reduction)
            got = build("label_smoothing_ce", eps=eps, weight=w, reduction=reduction)(z, t)
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_balanced_weights_against_torch():
    counts = [2538, 1349, 1345]
    w = torch.tensor([sum(counts) / (3 * n) for n in counts])
    g = torch.Generator().manual_seed(2)
    for _ in range(100):
        z = torch.randn(16, 3, generator=g) * 4
        t = torch.randint(0, 3, (16,), generator=g)
        got = build("weighted_ce", counts)(z, t)
        torch.testing.assert_close(got, F.cross_entropy(z, t, weight=w), rtol=1e-5, atol=1e-5)


def test_focal_against_monai():
    from monai.losses import FocalLoss

    g = torch.Generator().manual_seed(3)
    for _ in range(100):
        z, t, w, _ = _random_problem(g)
        gamma = float(torch.rand(1, generator=g) * 4)
        # MONAI's "none" keeps B x K; its per-class terms summed over K are ours
        ref = FocalLoss(use_softmax=True, to_onehot_y=True, gamma=gamma, alpha=w, reduction="none")(z, t[:, None])
        got = build("focal", gamma=gamma, alpha=w.tolist(), reduction="none")(z, t)
        torch.testing.assert_close(got, ref.sum(1), rtol=1e-5, atol=1e-5)
        ref = FocalLoss(use_softmax=True, to_onehot_y=True, gamma=gamma, reduction="mean")(z, t[:, None])
        got = build("focal", gamma=gamma)(z, t)
        # MONAI's mean runs over B x K elements, ours over B samples
        torch.testing.assert_close(got, ref * z.shape[1], rtol=1e-5, atol=1e-5)


def test_ldam_and_class_balanced_against_reference_formulas():
    g = torch.Generator().manual_seed(4)
    for _ in range(100):
        z, t, _, _ = _random_problem(g)
        k = z.shape[1]
        counts = (torch.rand(k, generator=g) * 1000 + 1).round()
        # LDAM (Cao et al. reference code): m = n^(-1/4) scaled to max 0.5, CE(30 (z - m_y e_y))
        m = counts.pow(-0.25)
        m = m * (0.5 / m.max())
        ref = F.cross_entropy(30 * (z - F.one_hot(t, k) * m), t)
        torch.testing.assert_close(build("ldam", counts.tolist())(z, t), ref, rtol=1e-5, atol=1e-5)
        # class-balanced (Cui et al.): w = (1 - b) / (1 - b^n), normalised to sum K, plain mean
        beta = 0.999
        w = (1 - beta) / (1 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts.double()))
        w = (w / w.sum() * k).float()
        ref = (F.cross_entropy(z, t, reduction="none") * w[t]).mean()
        got = build("class_balanced", counts.tolist(), beta=beta)(z, t)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_ldam_deferred_reweighting():
    counts = [100, 10, 1]
    z, t = _random_batch(5, b=9, k=3)
    loss = build("ldam", counts, drw_epoch=2)
    plain = build("ldam", counts)
    m = torch.tensor(counts, dtype=torch.float32).pow(-0.25)
    m = m * (0.5 / m.max())
    shifted = 30 * (z - F.one_hot(t, 3) * m)
    w = losses.effective_number_weights(counts, 0.9999)
    for epoch in range(4):
        loss.set_epoch(epoch)
        before = loss.epoch
        out = loss(z, t)
        assert loss.epoch == before  # forward never changes state
        if epoch < 2:
            assert not loss.reweighting
            torch.testing.assert_close(out, plain(z, t))
        else:
            assert loss.reweighting
            torch.testing.assert_close(out, F.cross_entropy(shifted, t, weight=w), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="epoch must be a non-negative integer"):
        loss.set_epoch(-1)
