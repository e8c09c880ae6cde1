"""The training recipe's options: cosine warm-up schedule, one-cycle, gradient clipping, weight EMA,
a minimum number of optimiser steps; each against hand-computed values."""

import math

import pytest
import torch
from torch import nn

from medens.config import TrainingSpec
from medens.models.artifact import load_artifact
from medens.training import fit
from medens.training.engine import seed_everything
from medens.training.optim import cosine_warmup_factor, ema_model


def test_cosine_warmup_factor_by_hand():
    f = [cosine_warmup_factor(s, total_steps=10, warmup_steps=2) for s in range(11)]
    assert f[0] == 0.5 and f[1] == 1.0  # linear warm-up over 2 steps
    assert f[2] == 1.0 and f[6] == pytest.approx(0.5) and f[10] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(f[1:], f[2:]))  # decays monotonically after the warm-up
    assert cosine_warmup_factor(10, 10, 0, min_ratio=0.1) == pytest.approx(0.1)
    assert cosine_warmup_factor(4, 8, 0, min_ratio=0.2) == pytest.approx(0.2 + 0.8 * 0.5)


def test_ema_weights_equal_the_hand_computed_average():
    net = nn.Linear(2, 1, bias=False)
    ema = ema_model(net, decay=0.9)
    seen = []
    for w in ([1.0, 2.0], [3.0, -1.0], [0.0, 5.0]):
        with torch.no_grad():
            net.weight.copy_(torch.tensor([w]))
        ema.update_parameters(net)
        seen.append(torch.tensor(w))
    # torch copies the first weights, then ema <- 0.9 ema + 0.1 w
    expected = 0.9 * (0.9 * seen[0] + 0.1 * seen[1]) + 0.1 * seen[2]
    torch.testing.assert_close(ema.module.weight.detach()[0], expected)


def _spec(**kw):
    base = {"epochs": 3, "min_steps": 0, "batch_size": 32, "lr": 3e-3, "patience": None, "plateau_patience": None,
            "augment": False}
    return TrainingSpec(**{**base, **kw})


def test_cosine_schedule_steps_per_optimiser_step(cells32, tmp_path):
    spec = _spec(optimizer="adamw", weight_decay=0.05, schedule="cosine", warmup_epochs=0.5, min_lr_ratio=0.1)
    res = fit("compact_cnn", "ce", cells32, spec, tmp_path / "m", seed=0, progress=False)
    spe = load_artifact(res.path).manifest["steps_per_epoch"]
    total, warm = 3 * spe, round(0.5 * spe)
    for row in res.history:  # the lr after epoch e's last step
        assert row["lr"] == pytest.approx(3e-3 * cosine_warmup_factor(row["epoch"] * spe, total, warm, 0.1))
    assert res.history[-1]["lr"] == pytest.approx(3e-4)


def test_onecycle_ends_near_zero(cells32, tmp_path):
    res = fit("compact_cnn", "ce", cells32, _spec(epochs=2, schedule="onecycle"), tmp_path / "m", seed=0,
              progress=False)
    assert res.history[-1]["lr"] < 1e-5 < max(r["lr"] for r in res.history)


def test_gradient_clipping_bounds_every_sgd_step(cells32, tmp_path):
    """Plain SGD with lr 0.1 and clip 1e-4: no parameter moves more than steps x 0.1 x 1e-4 in norm."""
    from medens.models import build

    spec = _spec(epochs=1, optimizer="sgd", momentum=0.0, lr=0.1, grad_clip=1e-4)
    res = fit("compact_cnn", "ce", cells32, spec, tmp_path / "m", seed=5, progress=False)
    loaded = load_artifact(res.path)
    seed_everything(5)
    init = build("compact_cnn", task="classification", **loaded.manifest["architecture"]["kwargs"])
    after = dict(loaded.model.named_parameters())
    delta = torch.sqrt(sum(((after[n] - p) ** 2).sum() for n, p in init.named_parameters()))
    steps = loaded.manifest["steps_per_epoch"]
    assert 0 < delta <= steps * 0.1 * 1e-4 * (1 + 1e-4)


def test_min_steps_lengthens_training_on_a_small_dataset(cells32, tmp_path):
    spec = _spec(epochs=1, batch_size=64, min_steps=7, patience=1)
    res = fit("compact_cnn", "ce", cells32, spec, tmp_path / "m", seed=0, progress=False)
    spe = load_artifact(res.path).manifest["steps_per_epoch"]
    assert spe == math.ceil(len(cells32.train) / 64)
    assert len(res.history) == math.ceil(7 / spe)  # more epochs than asked, and no early stop before 7 steps


def test_ema_competes_with_the_raw_weights_and_resumes_bitwise(cells32, tmp_path):
    spec = _spec(epochs=3, ema_decay=0.8, schedule="cosine", warmup_epochs=1, grad_clip=1.0)
    full = fit("compact_cnn", "ce", cells32, spec, tmp_path / "full", seed=3, progress=False)
    assert {r["weights"] for r in full.history} <= {"raw", "ema"} and len(full.history) == 3

    class Crash(Exception):
        pass

    def crash(row):
        if row["epoch"] == 2:
            raise Crash

    with pytest.raises(Crash):
        fit("compact_cnn", "ce", cells32, spec, tmp_path / "resumed", seed=3, progress=False, on_epoch_end=crash)
    resumed = fit("compact_cnn", "ce", cells32, spec, tmp_path / "resumed", seed=3, progress=False, resume=True)
    a = torch.load(full.path / "weights.pt", weights_only=True)
    b = torch.load(resumed.path / "weights.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["val_loss"] for r in full.history] == [r["val_loss"] for r in resumed.history]


def test_a_frozen_encoder_stays_bit_for_bit_unchanged_and_then_fine_tunes(cells32, tmp_path):
    from medens.models import build

    def init_state(seed):
        seed_everything(seed)
        return build("compact_cnn", in_channels=3, num_classes=3).state_dict()

    spec = _spec(epochs=1, optimizer="adamw", weight_decay=0.05, freeze_encoder_epochs=1, augment="flips")
    res = fit("compact_cnn", "ce", cells32, spec, tmp_path / "frozen", seed=2, progress=False)
    after = torch.load(res.path / "weights.pt", weights_only=True)
    before = init_state(2)
    enc = [k for k in before if k.startswith("features.")]
    head = [k for k in before if k.startswith("head.")]
    assert enc and head
    assert all(torch.equal(after[k], before[k]) for k in enc)  # weights and BatchNorm statistics
    assert not all(torch.equal(after[k], before[k]) for k in head)
    assert res.history[0]["encoder_frozen"] is True

    tune = _spec(epochs=2, freeze_encoder_epochs=1, encoder_lr_mult=0.1, schedule="cosine")
    res2 = fit("compact_cnn", "ce", cells32, tune, tmp_path / "tuned", seed=2, progress=False)
    assert [r["encoder_frozen"] for r in res2.history] == [True, False]


def test_encoder_learning_rate_multiplier_and_models_without_an_encoder(cells32):
    from medens.models import build
    from medens.training.optim import parameter_groups

    net = build("compact_cnn", in_channels=3, num_classes=3)
    groups = parameter_groups(net, _spec(encoder_lr_mult=0.1))
    assert [g["lr"] for g in groups] == [pytest.approx(3e-4), 3e-3]
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    assert len(parameter_groups(net, _spec())) == 1
    seg = build("basic_unet", task="segmentation", in_channels=1, num_classes=2)
    with pytest.raises(ValueError, match="need a classification model with an encoder"):
        parameter_groups(seg, _spec(freeze_encoder_epochs=2))
