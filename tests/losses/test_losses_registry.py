"""The loss registries: sweep every loss, error messages, the generated table."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medens import losses
from medens.registry import Registry

torch.set_num_threads(1)

K = 3
COUNTS = [60, 25, 15]
ALL = [("classification", n) for n in losses.names("classification")] + [
    ("segmentation", n) for n in losses.names("segmentation")
]
DOCS = Path(__file__).resolve().parents[2] / "docs" / "losses.md"


def make(task: str, name: str, counts=COUNTS, **params) -> torch.nn.Module:
    return losses.build(name, class_counts=counts, task=task, **params)


def inputs(task: str, b: int = 4, k: int = K, scale: float = 3.0, seed: int = 0, absent: bool = False):
    g = torch.Generator().manual_seed(seed)
    if task == "classification":
        z = torch.randn(b, k, generator=g) * scale
        t = torch.randint(0, k, (b,), generator=g)
    else:
        z = torch.randn(b, k, 5, 4, generator=g) * scale
        t = torch.randint(0, k, (b, 5, 4), generator=g)
    if absent:  # class 2 (of 3) never occurs in the batch
        t = t % 2 if k > 2 else torch.zeros_like(t)
    return z.requires_grad_(True), t


def check_finite(loss: torch.nn.Module, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    value = loss(z, t)
    assert value.dim() == 0 and torch.isfinite(value), value
    value.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    return value


# ---------------------------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------------------------


def test_registries():
    assert isinstance(losses.LOSSES, Registry) and isinstance(losses.SEG_LOSSES, Registry)
    assert set(losses.names("classification")) == {
        "ce", "weighted_ce", "focal", "class_balanced", "ldam", "margin", "hinge", "label_smoothing_ce",
        "label_smoothing_focal", "kl", "entropy_regularized_ce", "negative_entropy_ce", "dca_ce", "dca_kl",
        "dca_focal", "dca_hinge", "dca_negative_entropy",
    }
    assert set(losses.names("segmentation")) == {
        "dice", "generalized_dice", "dice_ce", "dice_focal", "ce", "bce", "focal", "tversky", "focal_tversky",
        "exponential", "exp_log",
    }
    assert losses.names("classification") == losses.LOSSES.names()
    assert losses.names("segmentation") == losses.SEG_LOSSES.names()


@pytest.mark.parametrize(("task", "name"), ALL)
def test_every_loss_has_a_documented_source(task, name):
    loss = make(task, name)
    assert isinstance(loss, torch.nn.Module) and isinstance(loss, losses.BaseLoss)
    assert type(loss).__doc__ and len(type(loss).__doc__) > 40
    row = next(r for r in losses.loss_table(task) if r["name"] == name)
    assert row["formula"] and row["source"]
    assert "reduction" in row["parameters"] and row["parameters"]["reduction"] == "mean"


def test_needs_class_counts():
    needs = {n for n in losses.names("classification") if losses.needs_class_counts(n, "classification")}
    assert needs == {"weighted_ce", "class_balanced", "ldam", "margin"}
    needs = {n for n in losses.names("segmentation") if losses.needs_class_counts(n, "segmentation")}
    assert needs == {"exp_log"}
    assert not losses.needs_class_counts("margin", weight=None)
    assert losses.needs_class_counts("ce", weight="balanced")
    assert not losses.needs_class_counts("exp_log", "segmentation", weight=None)


def test_class_counts_used_are_the_given_ones_not_the_batch():
    z, t = inputs("classification", b=6)
    a = make("classification", "weighted_ce", counts=[1, 1, 1])(z, t)
    b = make("classification", "weighted_ce", counts=[10, 1, 1])(z, t)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a, make("classification", "ce")(z, t))


# ---------------------------------------------------------------------------------------------
# registry sweep
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "name"), ALL)
def test_sweep_large_logits(task, name):
    z, t = inputs(task, scale=1.0)
    z = (torch.sign(z.detach()) * 1e4).requires_grad_(True)
    check_finite(make(task, name), z, t)


@pytest.mark.parametrize(("task", "name"), ALL)
def test_sweep_batch_of_one(task, name):
    z, t = inputs(task, b=1, seed=1)
    check_finite(make(task, name), z, t)


@pytest.mark.parametrize(("task", "name"), ALL)
def test_sweep_absent_class(task, name):
    z, t = inputs(task, seed=2, absent=True)
    check_finite(make(task, name), z, t)


@pytest.mark.parametrize(("task", "name"), ALL)
def test_sweep_bf16_autocast(task, name):
    g = torch.Generator().manual_seed(3)
    layer = torch.nn.Conv2d(2, K, 1) if task == "segmentation" else torch.nn.Linear(2, K)
    x = torch.randn(4, 2, 5, 4, generator=g) if task == "segmentation" else torch.randn(4, 2, generator=g)
    _, t = inputs(task, seed=3)
    loss = make(task, name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = layer(x)
        assert z.dtype == torch.bfloat16
        value = loss(z, t)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    # the float32 value of the same bf16 logits
    torch.testing.assert_close(value, loss(z.detach().float(), t))


@pytest.mark.parametrize(("task", "name"), ALL)
def test_sweep_binary_one_logit(task, name):
    z, t = inputs(task, k=1, seed=4)
    t = t.clone()
    t[0] = 1
    check_finite(make(task, name, counts=[30, 10]), z, t)


@pytest.mark.parametrize(("task", "name"), ALL)
def test_sweep_reductions(task, name):
    z, t = inputs(task, b=5, seed=5)
    z = z.detach()
    none = make(task, name, reduction="none")(z, t)
    assert none.shape == (5,)
    torch.testing.assert_close(make(task, name, reduction="sum")(z, t), none.sum())
    mean = make(task, name)(z, t)
    if name not in ("weighted_ce",):  # weighted CE divides by the summed weights (torch convention)
        torch.testing.assert_close(mean, none.mean())
    with pytest.raises(ValueError, match="reduction must be one of 'mean', 'sum', 'none', got 'avg'"):
        make(task, name, reduction="avg")


@pytest.mark.parametrize("name", [n for n in losses.names("classification") if n.startswith("dca_")])
def test_dca_confidence_term_has_gradient(name):
    # z chosen so that confidence differs from accuracy; the DCA term must move the gradient
    z, t = inputs("classification", b=8, seed=6)
    base_name = {"dca_ce": "ce", "dca_kl": "kl", "dca_focal": "focal", "dca_hinge": "hinge",
                 "dca_negative_entropy": "negative_entropy_ce"}[name]
    difference = make("classification", name)(z, t) - make("classification", base_name)(z, t)
    (grad,) = torch.autograd.grad(difference, z)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 1e-4
    # it is the gradient of beta * |mean max_k p - accuracy|
    p = torch.softmax(z, 1)
    acc = (p.argmax(1) == t).float().mean()
    (expected,) = torch.autograd.grad((p.max(1).values.mean() - acc).abs(), z)
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)


def test_forward_does_not_change_settings():
    z, t = inputs("classification")
    for name in losses.names("classification"):
        loss = make("classification", name)
        before = {k: v for k, v in vars(loss).items() if not k.startswith("_")}
        loss(z, t)
        assert {k: v for k, v in vars(loss).items() if not k.startswith("_")} == before, name


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


def test_shape_mismatch_prints_both_shapes():
    loss = losses.build("ce")
    with pytest.raises(ValueError, match=r"target shape \(5,\) does not match logits shape \(4, 3\)"):
        loss(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target shape \(4, 2\) does not match logits shape \(4, 3\)"):
        loss(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"logits must have shape \(B, K\), got \(4, 3, 2\)"):
        loss(torch.zeros(4, 3, 2), torch.zeros(4, dtype=torch.long))
    seg = losses.build("dice", task="segmentation")
    with pytest.raises(ValueError, match=r"target shape \(2, 4, 5\) does not match logits shape \(2, 3, 4, 4\)"):
        seg(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target shape \(2, 2, 4, 4\) does not match logits shape \(2, 3, 4, 4\)"):
        seg(torch.zeros(2, 3, 4, 4), torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match=r"got \(2, 3, 4\)"):
        seg(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))


def test_label_outside_range():
    with pytest.raises(ValueError, match=r"target labels must be in \[0, 3\); got out-of-range values \[3\]"):
        losses.build("focal")(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"target labels must be in \[0, 3\); got out-of-range values \[-1\]"):
        losses.build("ce")(torch.zeros(2, 3), torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match=r"target labels must be in \[0, 2\)"):
        losses.build("dice", task="segmentation")(torch.zeros(1, 2, 2, 2), torch.full((1, 2, 2), 2))
    with pytest.raises(ValueError, match=r"must hold integers"):
        losses.build("ce")(torch.zeros(2, 3), torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"one-hot target values must lie in \[0, 1\]"):
        losses.build("ce")(torch.zeros(2, 3), torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]]))


def test_alpha_of_wrong_length():
    with pytest.raises(ValueError, match="alpha has 2 entries but must have 3 entries, one per class"):
        losses.build("focal", alpha=[1.0, 2.0])(torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="alpha has 3 entries but must have 2 entries"):
        losses.build("focal", task="segmentation", alpha=[1, 1, 1])(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="weight has 2 entries but must have 3 entries"):
        losses.build("weighted_ce", class_counts=[3, 4])(torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="alpha must be non-negative"):
        losses.build("focal", alpha=[1.0, -2.0])


def test_negative_gamma_and_other_bad_values():
    with pytest.raises(ValueError, match="gamma must be >= 0, got -1"):
        losses.build("focal", gamma=-1.0)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        losses.build("focal", task="segmentation", gamma=-0.5)
    with pytest.raises(ValueError, match="gamma must be > 0"):
        losses.build("focal_tversky", task="segmentation", gamma=0.0)
    with pytest.raises(ValueError, match="beta must be < 1"):
        losses.build("class_balanced", class_counts=[1, 2], beta=1.0)
    with pytest.raises(ValueError, match="eps must be <= 1"):
        losses.build("label_smoothing_ce", eps=1.5)
    with pytest.raises(ValueError, match="base must be one of 'ce', 'focal'"):
        losses.build("class_balanced", class_counts=[1, 2], base="hinge")
    with pytest.raises(ValueError, match="gamma must be a number"):
        losses.build("focal", gamma="2")
    with pytest.raises(ValueError, match="every class count to be positive"):
        losses.build("ldam", class_counts=[10, 0, 3])


@pytest.mark.parametrize(
    ("task", "name"),
    [("classification", "weighted_ce"), ("classification", "class_balanced"), ("classification", "ldam"),
     ("classification", "margin"), ("segmentation", "exp_log")],
)
def test_class_counts_missing(task, name):
    with pytest.raises(ValueError, match=f"{name} loss needs class_counts"):
        losses.build(name, task=task)
    # the factories check too, when called directly
    with pytest.raises(ValueError, match="needs class_counts"):
        losses.registry(task).get(name)()


def test_class_counts_not_needed_with_explicit_weights():
    # the counts are needed only for the default weight="balanced"
    assert losses.needs_class_counts("weighted_ce") and not losses.needs_class_counts("weighted_ce", weight=[1, 2, 3])
    assert losses.needs_class_counts("margin") and not losses.needs_class_counts("margin", weight=None)
    assert losses.needs_class_counts("exp_log", task="segmentation")
    assert not losses.needs_class_counts("exp_log", task="segmentation", weight=None)
    z, t = inputs("classification", b=6)
    # the explicit weights are the ones used: torch's weighted cross-entropy is the reference
    w = torch.tensor([1.0, 2.0, 3.0])
    weighted = losses.build("weighted_ce", weight=w.tolist())
    torch.testing.assert_close(weighted(z, t), torch.nn.functional.cross_entropy(z, t, weight=w))
    assert not torch.allclose(weighted(z, t), torch.nn.functional.cross_entropy(z, t))
    # margin with weight=None is Sabour et al.'s unweighted margin loss, written out here
    p = z.softmax(1)
    y = torch.nn.functional.one_hot(t, K).float()
    by_hand = (y * (0.9 - p).clamp(min=0) ** 2 + 0.5 * (1 - y) * (p - 0.1).clamp(min=0) ** 2).sum(1).mean()
    torch.testing.assert_close(losses.build("margin", weight=None)(z, t), by_hand)
    # exp_log with weight=None weighs every class 1: the same value as explicit unit weights
    zs, ts = inputs("segmentation")
    unit = losses.build("exp_log", task="segmentation", weight=[1.0] * K)(zs, ts)
    torch.testing.assert_close(losses.build("exp_log", task="segmentation", weight=None)(zs, ts), unit)
    assert not torch.allclose(losses.build("exp_log", task="segmentation", weight=[1.0, 5.0, 9.0])(zs, ts), unit)


def test_unknown_option_and_name():
    with pytest.raises(ValueError, match="unknown focal option 'gama'; did you mean 'gamma'?"):
        losses.build("focal", gama=2.0)
    with pytest.raises(ValueError, match="unknown dice option 'smooth'; did you mean"):
        losses.build("dice", task="segmentation", smooth=1.0)
    with pytest.raises(ValueError, match="unknown loss 'focl'; did you mean 'focal'"):
        losses.build("focl")
    with pytest.raises(ValueError, match="unknown segmentation loss 'tverski'; did you mean 'tversky'"):
        losses.build("tverski", task="segmentation")
    with pytest.raises(ValueError, match="task must be one of 'classification', 'segmentation'"):
        losses.build("dice", task="detection")


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------


def test_loss_table_rows():
    rows = losses.loss_table()
    assert len(rows) == len(ALL)
    for row in rows:
        assert set(row) >= {"name", "task", "formula", "parameters", "needs_class_counts", "source"}
    focal = next(r for r in rows if r["name"] == "focal" and r["task"] == "classification")
    assert focal["parameters"] == {"gamma": 2.0, "alpha": 1.0, "reduction": "mean"}
    assert focal["source"].startswith("Lin et al.")
    text = losses.format_table("classification")
    assert "ldam" in text and "drw_epoch=None" in text and "dice" not in text


def test_docs_are_the_generated_table():
    expected = losses.format_table(fmt="markdown")
    assert DOCS.read_text(encoding="utf-8") == expected, "regenerate with: python -m medens.losses docs docs/losses.md"


def test_main_lists_and_writes(tmp_path, capsys):
    from medens.losses.__main__ import main

    assert main(["list", "--task", "segmentation"]) == 0
    assert "focal_tversky" in capsys.readouterr().out
    out = tmp_path / "losses.md"
    assert main(["docs", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == losses.format_table(fmt="markdown")
