"""Segmentation losses: hand-computed values, limit cases, references (MONAI, torchvision)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medens import losses

torch.set_num_threads(1)

LN = math.log
S = 1e-5  # default smooth_nr = smooth_dr

# One image, K = 2, H = 1, W = 2. Channel 0 holds [0, ln 3], channel 1 [ln 3, 0]:
#   pixel 1: z = [0, ln 3] -> p = [0.25, 0.75]
#   pixel 2: z = [ln 3, 0] -> p = [0.75, 0.25]
# Both pixels are foreground (label 1), so the background class is absent from the image.
LOGITS = torch.tensor([[[[0.0, LN(3.0)]], [[LN(3.0), 0.0]]]])
TARGET = torch.tensor([[[1, 1]]])  # (B, H, W)
P0 = [0.25, 0.75]  # background probability per pixel
P1 = [0.75, 0.25]  # foreground probability per pixel


def build(name: str, class_counts=None, **params) -> torch.nn.Module:
    return losses.build(name, class_counts=class_counts, task="segmentation", **params)


def value(name: str, class_counts=None, logits=LOGITS, target=TARGET, **params) -> float:
    return build(name, class_counts, **params)(logits, target).item()


def test_example_probabilities():
    p = torch.softmax(LOGITS, 1)[0, :, 0]
    torch.testing.assert_close(p, torch.tensor([P0, P1]))


def test_dice_by_hand():
    # class 0: I = 0, sum p = 1, sum y = 0 -> 1 - s / (1 + s)
    # class 1: I = 0.75 + 0.25 = 1, sum p = 1, sum y = 2 -> 1 - (2 + s) / (3 + s)
    d0, d1 = 1 - S / (1 + S), 1 - (2 + S) / (3 + S)
    assert value("dice") == pytest.approx((d0 + d1) / 2, rel=1e-6)
    assert value("dice", include_background=False) == pytest.approx(d1, rel=1e-6)
    # index target with a channel axis and one-hot target give the same value
    assert value("dice", target=TARGET[:, None]) == pytest.approx((d0 + d1) / 2, rel=1e-6)
    one_hot = F.one_hot(TARGET, 2).permute(0, 3, 1, 2)
    assert value("dice", target=one_hot) == pytest.approx((d0 + d1) / 2, rel=1e-6)


def test_generalized_dice_by_hand():
    # w_1 = 1 / 2^2 = 1/4; class 0 is absent (w = inf) and gets the largest finite weight, 1/4
    # numerator 2 (0 w0 + 1 w1) + s = 0.5 + s; denominator (1 w0 + 3 w1) + s = 1 + s
    assert value("generalized_dice") == pytest.approx(1 - (0.5 + S) / (1 + S), rel=1e-6)
    # uniform weights: 1 - (2 (0 + 1) + s) / ((1 + 3) + s)
    assert value("generalized_dice", w_type="uniform") == pytest.approx(1 - (2 + S) / (4 + S), rel=1e-6)


def test_ce_and_focal_by_hand():
    # foreground probabilities 0.75 and 0.25: CE = mean(-ln 0.75, -ln 0.25)
    ce = (LN(4 / 3) + LN(4)) / 2
    assert value("ce") == pytest.approx(ce, rel=1e-6)
    assert value("bce") == pytest.approx(ce, rel=1e-6)
    # focal gamma 2: mean(0.25^2 ln(4/3), 0.75^2 ln 4)
    focal = (0.0625 * LN(4 / 3) + 0.5625 * LN(4)) / 2
    assert value("focal") == pytest.approx(focal, rel=1e-6)
    assert value("focal", alpha=[0.0, 2.0]) == pytest.approx(2 * focal, rel=1e-6)
    d0, d1 = 1 - S / (1 + S), 1 - (2 + S) / (3 + S)
    assert value("dice_ce") == pytest.approx((d0 + d1) / 2 + ce, rel=1e-6)
    assert value("dice_ce", lambda_dice=0.5, lambda_ce=2.0) == pytest.approx((d0 + d1) / 4 + 2 * ce, rel=1e-6)
    assert value("dice_focal") == pytest.approx((d0 + d1) / 2 + focal, rel=1e-6)


def test_tversky_by_hand():
    # class 0: TP = 0, FN = 0, FP = 0.25 + 0.75 = 1 -> TI = s / (0.3 + s)
    # class 1: TP = 1, FN = 0.25 + 0.75 = 1, FP = 0 -> TI = (1 + s) / (1 + 0.7 + s)
    t0, t1 = S / (0.3 + S), (1 + S) / (1.7 + S)
    assert value("tversky") == pytest.approx(((1 - t0) + (1 - t1)) / 2, rel=1e-6)
    expected = ((1 - t0) ** 0.75 + (1 - t1) ** 0.75) / 2
    assert value("focal_tversky") == pytest.approx(expected, rel=1e-6)


def test_exponential_by_hand():
    # class 0 (y = 0): 0.8 exp(0) + exp(-(1 - p)) for p = 0.25, 0.75
    # class 1 (y = 1): 0.8 exp(-p) + exp(0)       for p = 0.75, 0.25
    terms = [0.8 + math.exp(-0.75), 0.8 + math.exp(-0.25), 0.8 * math.exp(-0.75) + 1, 0.8 * math.exp(-0.25) + 1]
    assert value("exponential") == pytest.approx(sum(terms) / 4, rel=1e-6)


def test_exp_log_by_hand():
    # smooth 1: Dice_0 = (0 + 1) / (0 + 1 + 1) = 1/2, Dice_1 = (2 + 1) / (2 + 1 + 1) = 3/4
    dice_term = ((-LN(0.5)) ** 0.3 + (-LN(0.75)) ** 0.3) / 2
    # cross term: both pixels are label 1 with p = 0.75, 0.25
    cross = ((-LN(0.75)) ** 0.3 + (-LN(0.25)) ** 0.3) / 2
    assert value("exp_log", weight=None) == pytest.approx(0.8 * dice_term + 0.2 * cross, rel=1e-6)
    # label frequencies [3, 1]: w = (4/3)^0.5, (4/1)^0.5 = 2 -> label 1 pixels weighted by 2
    assert value("exp_log", [3, 1]) == pytest.approx(0.8 * dice_term + 0.2 * 2 * cross, rel=1e-6)


def test_binary_one_channel_by_hand():
    # K = 1: z = [ln 3, -ln 3] -> sigmoid = [0.75, 0.25]; target [1, 0]
    z = torch.tensor([[[[LN(3.0), -LN(3.0)]]]])
    t = torch.tensor([[[1, 0]]])
    # BCE: -ln 0.75 for both pixels
    assert value("ce", logits=z, target=t) == pytest.approx(LN(4 / 3), rel=1e-6)
    # dice on the foreground channel: I = 0.75, sum p = 1, sum y = 1
    assert value("dice", logits=z, target=t) == pytest.approx(1 - (1.5 + S) / (2 + S), rel=1e-6)
    # sigmoid focal gamma 2: (1 - 0.75)^2 ln(4/3) for both pixels
    assert value("focal", logits=z, target=t[:, None].float()) == pytest.approx(0.0625 * LN(4 / 3), rel=1e-6)
    # exponential on the single channel: y = 1, p = 0.75 and y = 0, p = 0.25
    expected = (0.8 * math.exp(-0.75) + 1 + 0.8 + math.exp(-0.75)) / 2
    assert value("exponential", logits=z, target=t) == pytest.approx(expected, rel=1e-6)


def test_3d_equals_2d_with_a_depth_of_one():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 5, 4, generator=g)
    t = torch.randint(0, 3, (2, 5, 4), generator=g)
    for name in losses.names("segmentation"):
        loss = build(name, [50, 20, 10])
        torch.testing.assert_close(loss(z[..., None], t[..., None]), loss(z, t), msg=name)


def test_reductions_are_over_images():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 3, 4, 4, generator=g)
    t = torch.randint(0, 3, (3, 4, 4), generator=g)
    for name in losses.names("segmentation"):
        none = build(name, [5, 5, 5], reduction="none")(z, t)
        assert none.shape == (3,)
        torch.testing.assert_close(build(name, [5, 5, 5])(z, t), none.mean(), msg=name)
        torch.testing.assert_close(build(name, [5, 5, 5], reduction="sum")(z, t), none.sum(), msg=name)
        for i in range(3):
            torch.testing.assert_close(build(name, [5, 5, 5])(z[i : i + 1], t[i : i + 1]), none[i], msg=name)


# ---------------------------------------------------------------------------------------------
# limit cases
# ---------------------------------------------------------------------------------------------


def test_limit_cases():
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        z = torch.randn(2, 3, 6, 6, generator=g) * 3
        t = torch.randint(0, 3, (2, 6, 6), generator=g)
        ce = build("ce")(z, t)
        torch.testing.assert_close(build("focal", gamma=0.0, alpha=1.0)(z, t), ce)
        # TI(0.5, 0.5) = (TP + s) / (TP + (FN + FP) / 2 + s) = (2 TP + 2 s) / (sum p + sum y + 2 s)
        tv = build("tversky", alpha=0.5, beta=0.5, smooth_nr=S, smooth_dr=S)(z, t)
        torch.testing.assert_close(tv, build("dice", smooth_nr=2 * S, smooth_dr=2 * S)(z, t))
        tv0 = build("tversky", alpha=0.5, beta=0.5, smooth_nr=0.0, smooth_dr=0.0)(z, t)
        torch.testing.assert_close(tv0, build("dice", smooth_nr=0.0, smooth_dr=0.0)(z, t))
        # focal Tversky with gamma 1 is Tversky
        torch.testing.assert_close(build("focal_tversky", gamma=1.0)(z, t), build("tversky")(z, t))
        dice = build("dice")(z, t)
        torch.testing.assert_close(build("dice_ce", lambda_ce=0.0)(z, t), dice)
        torch.testing.assert_close(build("dice_focal", gamma=0.0, lambda_dice=0.0)(z, t), ce)


# ---------------------------------------------------------------------------------------------
# references, 100 random batches each
# ---------------------------------------------------------------------------------------------


def _random_problem(g: torch.Generator, k: int | None = None):
    b = int(torch.randint(1, 4, (1,), generator=g))
    if k is None:
        k = int(torch.randint(1, 5, (1,), generator=g))
    if bool(torch.rand(1, generator=g) < 0.5):
        spatial = tuple(int(s) for s in torch.randint(3, 9, (2,), generator=g))
    else:
        spatial = tuple(int(s) for s in torch.randint(2, 6, (3,), generator=g))
    z = torch.randn(b, k, *spatial, generator=g) * float(torch.rand(1, generator=g) * 6)
    # draw labels from a subset of the classes so some are absent from some images
    present = int(torch.randint(1, max(k, 2) + 1, (1,), generator=g))
    t = torch.randint(0, present, (b, 1, *spatial), generator=g)
    return z, t


def test_dice_family_against_monai():
    from monai.losses import DiceCELoss, DiceLoss, GeneralizedDiceLoss, TverskyLoss

    g = torch.Generator().manual_seed(3)
    for _ in range(100):
        z, t = _random_problem(g)
        k = z.shape[1]
        act = {"sigmoid": True} if k == 1 else {"softmax": True, "to_onehot_y": True}
        ib = bool(torch.rand(1, generator=g) < 0.5) or k == 1
        tf = t.float()

        ref = DiceLoss(include_background=ib, **act)(z, tf)
        torch.testing.assert_close(build("dice", include_background=ib)(z, t), ref, rtol=1e-5, atol=1e-5)

        ref = GeneralizedDiceLoss(include_background=ib, **act)(z, tf)
        torch.testing.assert_close(build("generalized_dice", include_background=ib)(z, t), ref, rtol=1e-5, atol=1e-5)

        a, b = float(torch.rand(1, generator=g)), float(torch.rand(1, generator=g))
        ref = TverskyLoss(include_background=ib, alpha=b, beta=a, **act)(z, tf)
        got = build("tversky", alpha=a, beta=b, include_background=ib)(z, t)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)

        ref = DiceCELoss(include_background=ib, **act)(z, tf)
        torch.testing.assert_close(build("dice_ce", include_background=ib)(z, t), ref, rtol=1e-5, atol=1e-5)


def test_focal_against_monai_and_torchvision():
    from monai.losses import FocalLoss
    from torchvision.ops import sigmoid_focal_loss

    g = torch.Generator().manual_seed(4)
    for _ in range(100):
        z, t = _random_problem(g)
        k = z.shape[1]
        gamma = float(torch.rand(1, generator=g) * 4)
        if k == 1:
            tf = t.float()
            a = float(torch.rand(1, generator=g))
            ref = sigmoid_focal_loss(z, tf, alpha=a, gamma=gamma, reduction="mean")
            got = build("focal", gamma=gamma, alpha=[1 - a, a])(z, t)
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
            ref = sigmoid_focal_loss(z, tf, alpha=-1, gamma=gamma, reduction="mean")
            torch.testing.assert_close(build("focal", gamma=gamma)(z, t), ref, rtol=1e-5, atol=1e-5)
            ref = FocalLoss(use_softmax=False, gamma=gamma)(z, tf)
            torch.testing.assert_close(build("focal", gamma=gamma)(z, t), ref, rtol=1e-5, atol=1e-5)
        else:
            w = torch.rand(k, generator=g) * 2
            # MONAI's mean runs over B x K x pixels; ours sums the classes of each pixel
            ref = FocalLoss(use_softmax=True, to_onehot_y=True, gamma=gamma, alpha=w)(z, t)
            got = build("focal", gamma=gamma, alpha=w.tolist())(z, t)
            torch.testing.assert_close(got, ref * k, rtol=1e-5, atol=1e-5)


def test_ce_against_torch():
    g = torch.Generator().manual_seed(5)
    for _ in range(100):
        z, t = _random_problem(g)
        if z.shape[1] == 1:
            ref = F.binary_cross_entropy_with_logits(z, t.float())
        else:
            ref = F.cross_entropy(z, t[:, 0])
        torch.testing.assert_close(build("ce")(z, t), ref, rtol=1e-5, atol=1e-5)
