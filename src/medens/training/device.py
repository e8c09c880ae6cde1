"""Device and precision choices of the training engine, kept apart so they can be unit-tested
on a machine without a GPU (the CUDA branches are pure selection logic)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    """How a run computes: device, autocast dtype (or None), grad scaler, memory format."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    use_scaler: bool
    channels_last: bool
    pin_memory: bool
    num_workers: int

    def describe(self) -> str:
        amp = "off" if self.autocast_dtype is None else str(self.autocast_dtype).removeprefix("torch.")
        return (f"device={self.device} amp={amp} scaler={self.use_scaler} channels_last={self.channels_last} "
                f"workers={self.num_workers}")


def select_device(requested: str = "auto", *, cuda_available: bool | None = None) -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    has_cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if requested == "auto":
        return torch.device("cuda" if has_cuda else "cpu")
    if requested == "cuda" and not has_cuda:
        raise ValueError("training.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if requested not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {requested!r}; expected auto, cpu or cuda")
    return torch.device(requested)


def select_precision(
    device: torch.device,
    *,
    amp: bool | str = True,
    bf16_supported: bool | None = None,
    spatial_dims: int = 2,
    num_workers: int | None = None,
) -> Precision:
    """How a run computes on ``device`` for the spec's ``training.amp``.

    - ``amp=True`` (the default): mixed precision on CUDA, bf16 where supported (no scaler
      needed: bf16 has float32's exponent range), else fp16 with a grad scaler (fp16's small
      range underflows small gradients unless the loss is scaled). On CPU: float32.
    - ``amp="bf16"``: bf16 autocast on any device, CPU included, without loss scaling; on a
      CUDA device without bf16 a ``ValueError``.
    - ``amp=False``: float32 everywhere.

    ``True`` keeps CPU runs in float32 on purpose: bf16 autocast on CPU is slower than float32
    on many CPUs and changes the numbers of every existing CPU run (the default spec and the
    recipes say ``amp: true``). ``"bf16"`` runs the same autocast code path of the engine on
    CPU, which is how it is tested without a GPU.

    CUDA also gets channels_last for 2D convolutions, pinned memory and DataLoader workers;
    CPU contiguous memory and no workers (in-memory arrays)."""
    if amp not in (True, False, "bf16"):
        raise ValueError(f"training.amp must be true, false or 'bf16', got {amp!r}")
    if device.type != "cuda":
        dtype = torch.bfloat16 if amp == "bf16" else None
        return Precision(device, dtype, False, False, False, 0 if num_workers is None else num_workers)
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    if amp == "bf16" and not bf16_supported:
        raise ValueError("training.amp is 'bf16' but this CUDA device has no bf16; use true (fp16 with a grad "
                         "scaler) or false")
    dtype = (torch.bfloat16 if bf16_supported else torch.float16) if amp else None
    return Precision(
        device=device,
        autocast_dtype=dtype,
        use_scaler=dtype == torch.float16,
        channels_last=spatial_dims == 2,
        pin_memory=True,
        num_workers=4 if num_workers is None else num_workers,
    )
