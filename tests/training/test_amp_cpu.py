"""Mixed precision without a GPU: the engine's AMP code path (autocast, float32 loss, and the grad
scaler of the fp16 path) runs on CPU, and the precision chosen is recorded in the artifact."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import medens.training.engine as engine
from medens.config import TrainingSpec
from medens.training import fit, predict_split
from medens.training.device import Precision, select_precision


def _spec(**kw):
    base = dict(epochs=2, min_steps=0, batch_size=32, lr=3e-3, patience=None, plateau_patience=None, augment=False,
                device="cpu")
    base.update(kw)
    return TrainingSpec(**base)


# ---------------------------------------------------------------- the choice


@pytest.mark.parametrize("amp, dtype, scaler", [
    ("bf16", torch.bfloat16, False),  # asked for: bf16 autocast on CPU, no loss scaling
    (True, None, False),              # the default keeps CPU runs in float32
    (False, None, False),
])
def test_cpu_precision_choice(amp, dtype, scaler):
    p = select_precision(torch.device("cpu"), amp=amp)
    assert (p.autocast_dtype, p.use_scaler, p.channels_last, p.num_workers) == (dtype, scaler, False, 0)


@pytest.mark.parametrize("amp, bf16, dtype, scaler", [
    (True, False, torch.float16, True),    # fp16 keeps the grad scaler
    (True, True, torch.bfloat16, False),
    ("bf16", True, torch.bfloat16, False),
    (False, True, None, False),
    (False, False, None, False),
])
def test_cuda_precision_choice_without_a_gpu(amp, bf16, dtype, scaler):
    p = select_precision(torch.device("cuda"), amp=amp, bf16_supported=bf16)
    assert (p.autocast_dtype, p.use_scaler) == (dtype, scaler)


def test_bf16_on_a_cuda_device_without_bf16_and_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="training.amp is 'bf16' but this CUDA device has no bf16"):
        select_precision(torch.device("cuda"), amp="bf16", bf16_supported=False)
    with pytest.raises(ValueError, match="training.amp must be true, false or 'bf16', got 'fp16'"):
        select_precision(torch.device("cpu"), amp="fp16")
    with pytest.raises(ValueError, match="amp"):
        TrainingSpec(amp="fp16")


# ---------------------------------------------------------------- training on the AMP path


@pytest.fixture
def spy(monkeypatch):
    """Records every ``torch.autocast`` the engine enters and the dtype of every Conv2d/Linear
    output computed in training mode."""
    seen = {"autocast": [], "train_dtypes": set()}  # autocast: the contexts that cast (not enabled=False)
    real = torch.autocast

    def autocast(*args, **kwargs):
        if kwargs.get("enabled", True):
            seen["autocast"].append(kwargs)
        return real(*args, **kwargs)

    def hook(module, inputs, output):
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.training and torch.is_tensor(output):
            seen["train_dtypes"].add(output.dtype)

    monkeypatch.setattr(torch, "autocast", autocast)
    handle = nn.modules.module.register_module_forward_hook(hook)
    yield seen
    handle.remove()


def test_bf16_autocast_trains_on_cpu_and_the_artifact_loads(cells32, tmp_path, spy):
    res = fit("compact_cnn", "ce", cells32, _spec(amp="bf16"), tmp_path / "m", seed=3, progress=False)

    assert spy["autocast"] and all(kw == {"device_type": "cpu", "dtype": torch.bfloat16} for kw in spy["autocast"])
    assert spy["train_dtypes"] == {torch.bfloat16}  # the forward pass really ran in bf16
    assert len(res.history) == 2
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in res.history)
    assert res.precision == "device=cpu amp=bfloat16 scaler=False channels_last=False workers=0"
    m = json.loads((res.path / "model.json").read_text())
    assert m["precision"] == res.precision and m["training"]["amp"] == "bf16"

    weights = torch.load(res.path / "weights.pt", weights_only=True)
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float32}  # the master weights
    preds = predict_split(res.path, cells32.test, device="cpu")
    assert preds.probs.shape == (len(cells32.test), 3)
    assert np.isfinite(preds.probs).all()
    np.testing.assert_allclose(preds.probs.sum(1), 1.0, atol=1e-5)


def test_amp_true_keeps_cpu_runs_in_float32(cells32, tmp_path, spy):
    res = fit("compact_cnn", "ce", cells32, _spec(epochs=1, amp=True), tmp_path / "m", seed=3, progress=False)
    assert spy["autocast"] == [] and spy["train_dtypes"] == {torch.float32}
    assert res.precision.startswith("device=cpu amp=off scaler=False")


def test_the_fp16_path_scales_the_loss_and_resumes_the_scaler(cells32, tmp_path, spy, monkeypatch):
    """CUDA's choice without bf16 (fp16 with a grad scaler), forced on CPU: the scaler branch of a
    training step runs (scale, unscale before clipping, step, update) and its state is checkpointed."""
    fp16 = Precision(torch.device("cpu"), torch.float16, use_scaler=True, channels_last=False, pin_memory=False,
                     num_workers=0)
    monkeypatch.setattr(engine, "select_precision", lambda device, **kw: fp16)
    scaled = []
    real_scale = torch.amp.GradScaler.scale
    monkeypatch.setattr(torch.amp.GradScaler, "scale",
                        lambda self, outputs: scaled.append(self.get_scale()) or real_scale(self, outputs))

    class Stop(Exception):
        pass

    saved = []

    def stop_after_first(row):
        saved.append(torch.load(tmp_path / "m" / "checkpoint.pt", weights_only=False)["scaler"]["scale"])
        raise Stop

    with pytest.raises(Stop):
        fit("compact_cnn", "ce", cells32, _spec(grad_clip=1.0), tmp_path / "m", seed=3, progress=False,
            on_epoch_end=stop_after_first)
    steps = len(scaled)
    assert steps > 0 and scaled[0] == 65536.0  # GradScaler's initial scale: the loss really was scaled
    res = fit("compact_cnn", "ce", cells32, _spec(grad_clip=1.0), tmp_path / "m", seed=3, progress=False, resume=True)
    assert len(scaled) == 2 * steps and scaled[steps] == saved[0]  # the checkpointed scale, not a fresh one
    assert {kw["dtype"] for kw in spy["autocast"]} == {torch.float16}
    assert all(math.isfinite(r["train_loss"]) for r in res.history)
    assert res.precision == "device=cpu amp=float16 scaler=True channels_last=False workers=0"
