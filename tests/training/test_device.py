import pytest
import torch

from medens.training.device import select_device, select_precision


def test_auto_device_prefers_cuda():
    assert select_device("auto", cuda_available=True).type == "cuda"
    assert select_device("auto", cuda_available=False).type == "cpu"
    assert select_device("cpu", cuda_available=True).type == "cpu"
    with pytest.raises(ValueError, match="training.device is 'cuda' but no CUDA device is available"):
        select_device("cuda", cuda_available=False)


def test_cuda_with_bf16_uses_bf16_without_scaler():
    p = select_precision(torch.device("cuda"), amp=True, bf16_supported=True)
    assert p.autocast_dtype == torch.bfloat16 and not p.use_scaler
    assert p.channels_last and p.pin_memory and p.num_workers == 4


def test_cuda_without_bf16_uses_fp16_with_scaler():
    p = select_precision(torch.device("cuda"), amp=True, bf16_supported=False)
    assert p.autocast_dtype == torch.float16 and p.use_scaler


def test_amp_off_and_3d_and_cpu():
    p = select_precision(torch.device("cuda"), amp=False, bf16_supported=True, spatial_dims=3, num_workers=2)
    assert p.autocast_dtype is None and not p.use_scaler and not p.channels_last and p.num_workers == 2
    c = select_precision(torch.device("cpu"), amp=True)
    assert c.autocast_dtype is None and not c.use_scaler and not c.channels_last
    assert not c.pin_memory and c.num_workers == 0
    assert c.describe() == "device=cpu amp=off scaler=False channels_last=False workers=0"
