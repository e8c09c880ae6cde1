"""Shared machinery of the loss library: validation, target conversion, reduction, class weights.

Conventions (docs/architecture.md section 7.1, MONAI's loss contract):

* Every loss is an ``nn.Module`` called as ``loss(logits, target)``; ``reduction`` is one of
  ``"mean"``, ``"sum"``, ``"none"``.
* Bad input raises ``ValueError`` (never ``assert``); shape mismatches print both shapes.
* ``forward`` never changes a setting; state changes only in ``set_epoch``.
* Computation is done in float32 with autocast disabled, so bf16/fp16 autocast is safe.
* One logit (K = 1) means a binary sigmoid output. It is handled exactly by the two-class
  softmax over ``[0, z]``: ``softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)]``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REDUCTIONS = ("mean", "sum", "none")

# ---------------------------------------------------------------------------------------------
# loss metadata (for the registry table)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossInfo:
    """What the table says about a registered loss.

    Attributes:
        name: registry name.
        task: ``"classification"`` or ``"segmentation"``.
        formula: the formula in plain text (the notation of docs/methods.md section 1).
        source: the paper or implementation the loss comes from.
        needs_counts: given the effective parameters (defaults updated with the user's), does the
            loss need the training split's ``class_counts``?
        counts_note: how the table describes that need ("yes", "no", "if weight='balanced'").
    """

    name: str
    task: str
    formula: str
    source: str
    needs_counts: Callable[[dict[str, Any]], bool] = field(default=lambda params: False)
    counts_note: str = "no"


def attach_info(factory: Callable[..., Any], info: LossInfo) -> Callable[..., Any]:
    """Store ``info`` on ``factory`` (read back by the table and by ``build``)."""
    factory.loss_info = info  # type: ignore[attr-defined]
    return factory


def loss_registrar(registry: Any, task: str) -> Callable[..., Callable[[Callable[..., Any]], Callable[..., Any]]]:
    """The ``_register(name, formula, source, needs=None, note="no")`` decorator of one task's registry."""

    def register(
        name: str,
        formula: str,
        source: str,
        needs: Callable[[dict[str, Any]], bool] | None = None,
        note: str = "no",
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            attach_info(factory, LossInfo(name, task, formula, source, needs or (lambda params: False), note))
            return registry.register(name)(factory)

        return decorator

    return register


# ---------------------------------------------------------------------------------------------
# validation of settings
# ---------------------------------------------------------------------------------------------


def check_reduction(reduction: str) -> str:
    """Return ``reduction`` if it is ``"mean"``, ``"sum"`` or ``"none"``; else raise ValueError."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of 'mean', 'sum', 'none', got {reduction!r}")
    return reduction


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a float after checking that it is a finite number in the given range.

    Raises:
        ValueError: naming the setting, e.g. ``gamma must be >= 0, got -1.0``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, Tensor) and value.numel() == 1:
            value = value.item()
        else:
            raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {value:g}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high:g}, got {value:g}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``; else raise ValueError listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def as_vector(name: str, value: Any) -> Tensor:
    """Convert a per-class sequence (list, tuple, array, tensor) to a 1-D float32 tensor.

    Raises:
        ValueError: if it is not 1-D, is empty, or has a negative or non-finite entry.
    """
    try:
        vec = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name} must be a number or a sequence of numbers, got {value!r}") from e
    if vec.dim() != 1 or vec.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {tuple(vec.shape)}")
    if not torch.isfinite(vec).all():
        raise ValueError(f"{name} must be finite, got {vec.tolist()}")
    if (vec < 0).any():
        raise ValueError(f"{name} must be non-negative, got {vec.tolist()}")
    return vec.float()


def as_scalar_or_vector(name: str, value: Any) -> float | Tensor:
    """A non-negative scalar (returned as float) or a per-class vector (returned as a tensor)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return check_number(name, value, low=0.0)
    if isinstance(value, Tensor) and value.dim() == 0:
        return check_number(name, value.item(), low=0.0)
    return as_vector(name, value)


def check_length(name: str, vec: Tensor | None, num_classes: int, binary: bool) -> None:
    """Raise ValueError if per-class ``vec`` does not have one entry per class."""
    if vec is None or vec.numel() == num_classes:
        return
    what = "2 entries (classes 0 and 1) for a one-logit binary output" if binary else (
        f"{num_classes} entries, one per class"
    )
    raise ValueError(f"{name} has {vec.numel()} entries but must have {what}")


# ---------------------------------------------------------------------------------------------
# class counts and the weights derived from them
# ---------------------------------------------------------------------------------------------


def as_counts(class_counts: Any, loss: str) -> Tensor:
    """Validate ``class_counts`` (per-class counts of the training split) as a float64 vector.

    Raises:
        ValueError: if missing, not 1-D, or if any count is not positive (weights would be infinite).
    """
    if class_counts is None:
        raise ValueError(
            f"{loss} loss needs class_counts (per-class counts of the training split); "
            "pass class_counts=[n_0, n_1, ...]"
        )
    if isinstance(class_counts, dict):
        raise ValueError(f"class_counts must be a sequence ordered by class index, got a dict: {class_counts!r}")
    try:
        counts = torch.as_tensor(class_counts, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"class_counts must be a sequence of numbers, got {class_counts!r}") from e
    if counts.dim() != 1 or counts.numel() < 2:
        raise ValueError(f"class_counts must be a 1-D sequence with at least 2 classes, got {class_counts!r}")
    if not torch.isfinite(counts).all() or (counts <= 0).any():
        raise ValueError(
            f"{loss} loss needs every class count to be positive (a class absent from the training "
            f"split has an infinite weight), got class_counts={counts.tolist()}"
        )
    return counts


def balanced_class_weights(class_counts: Any) -> Tensor:
    """"Balanced" class weights ``w_k = N / (K n_k)`` (scikit-learn's ``class_weight='balanced'``).

    Args:
        class_counts: per-class counts ``n_k`` of the training split.

    Returns:
        A float32 tensor of K weights.
    """
    counts = as_counts(class_counts, "balanced weighting")
    return (counts.sum() / (counts.numel() * counts)).float()


def effective_number_weights(class_counts: Any, beta: float) -> Tensor:
    """Class-balanced weights of Cui et al. (CVPR 2019), ``(1 - beta) / (1 - beta^{n_k})``.

    The weights are rescaled to sum to K. ``beta = 0`` gives equal weights (all ones).

    Args:
        class_counts: per-class counts ``n_k`` of the training split.
        beta: hyper-parameter in [0, 1).
    """
    beta = check_number("beta", beta, low=0.0, high=1.0, high_open=True)
    counts = as_counts(class_counts, "class-balanced weighting")
    effective = 1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts)
    weights = (1.0 - beta) / effective
    return (weights / weights.sum() * counts.numel()).float()


def frequency_weights(class_counts: Any) -> Tensor:
    """Label-frequency weights of Wong et al. (MICCAI 2018), ``w_k = (sum_j f_j / f_k)^0.5``."""
    counts = as_counts(class_counts, "exp_log frequency weighting")
    return torch.sqrt(counts.sum() / counts).float()


def resolve_weight(
    name: str, value: Any, class_counts: Any, loss: str, derived: str = "balanced"
) -> Tensor | None:
    """Turn a weight setting into a per-class tensor or ``None``.

    Args:
        name: the option name (for messages).
        value: ``None`` (no weighting), the string ``derived`` (computed from ``class_counts``)
            or an explicit per-class sequence.
        class_counts: per-class counts of the training split (needed for ``derived``).
        loss: the loss name (for messages).
        derived: the accepted string, ``"balanced"`` or ``"frequency"``.
    """
    if value is None:
        return None
    if isinstance(value, str):
        if value != derived:
            raise ValueError(f"{name} must be None, {derived!r} or a per-class sequence, got {value!r}")
        if class_counts is None:
            raise ValueError(
                f"{loss} loss needs class_counts (per-class counts of the training split) for "
                f"{name}={derived!r}; pass class_counts=[n_0, n_1, ...] or an explicit {name}"
            )
        if derived == "frequency":
            return frequency_weights(class_counts)
        return balanced_class_weights(class_counts)
    return as_vector(name, value)


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------


def _shape(x: Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def _as_tensor(target: Any, device: torch.device) -> Tensor:
    if not isinstance(target, Tensor):
        try:
            target = torch.as_tensor(target)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"target must be a tensor, got {type(target).__name__}") from e
    return target.to(device)


def _indices_to_one_hot(indices: Tensor, num_classes: int, binary: bool) -> Tensor:
    """Check class indices and return a one-hot float tensor with the class axis at dim 1."""
    if indices.is_floating_point():
        if not torch.isfinite(indices).all() or (indices != indices.round()).any():
            raise ValueError("class-index targets must hold integers (or pass one-hot targets)")
    elif indices.dtype == torch.bool:
        indices = indices.long()
    elif indices.is_complex():
        raise ValueError(f"target must be real, got dtype {indices.dtype}")
    indices = indices.long()
    bad = (indices < 0) | (indices >= num_classes)
    if bad.any():
        values = torch.unique(indices[bad])[:10].tolist()
        what = " (one logit = binary sigmoid output, labels 0 or 1)" if binary else ""
        raise ValueError(f"target labels must be in [0, {num_classes}){what}; got out-of-range values {values}")
    return F.one_hot(indices, num_classes).movedim(-1, 1).float()


def _check_probabilities(target: Tensor, what: str) -> Tensor:
    target = target.float()
    if not torch.isfinite(target).all() or (target < 0).any() or (target > 1).any():
        raise ValueError(f"{what} target values must lie in [0, 1]")
    return target


@dataclass
class Batch:
    """Validated, float32 inputs of a loss.

    Attributes:
        logits: float32 logits, B x K' (x spatial), K' = max(K, 2) (one logit z becomes [0, z]).
        logp: log-probabilities, same shape.
        y: one-hot (or soft) targets, same shape as ``logp``.
        binary: True when the model gave one logit (sigmoid output).
    """

    logits: Tensor
    logp: Tensor
    y: Tensor
    binary: bool

    @property
    def p(self) -> Tensor:
        """Probabilities ``exp(logp)``."""
        return self.logp.exp()

    @property
    def num_classes(self) -> int:
        """K' (2 for a one-logit binary output)."""
        return self.logp.shape[1]

    @property
    def labels(self) -> Tensor:
        """Class index of each sample/pixel (argmax of the target)."""
        return self.y.argmax(1)


def _expand_binary(logits: Tensor) -> Tensor:
    # softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)], so one-logit outputs reuse the softmax code.
    return torch.cat([torch.zeros_like(logits), logits], dim=1)


def classification_batch(logits: Tensor, target: Any) -> Batch:
    """Validate classification inputs.

    Args:
        logits: B x K (K = 1: one sigmoid logit).
        target: class indices (B,) (also (B, 1) when K > 1), or one-hot/soft targets B x K
            (for K = 1: the probability of the positive class, (B,) float or (B, 1)).

    Raises:
        ValueError: wrong shapes (both printed), labels outside [0, K).
    """
    if not isinstance(logits, Tensor):
        raise ValueError(f"logits must be a tensor, got {type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[1] < 1:
        raise ValueError(f"classification logits must have shape (B, K), got {_shape(logits)}")
    target = _as_tensor(target, logits.device)
    b, k = logits.shape
    binary = k == 1
    logits = logits.float()
    if binary:
        logits = _expand_binary(logits)
    kk = logits.shape[1]
    shape = _shape(target)
    if shape == (b, k) and (k > 1 or target.is_floating_point()):
        if binary:  # probability of the positive class
            t = _check_probabilities(target[:, 0], "binary")
            y = torch.stack([1.0 - t, t], dim=1)
        else:
            y = _check_probabilities(target, "one-hot")
    elif shape == (b,) and binary and target.is_floating_point():
        t = _check_probabilities(target, "binary")
        y = torch.stack([1.0 - t, t], dim=1)
    elif shape in ((b,), (b, 1)):
        y = _indices_to_one_hot(target.reshape(b), kk, binary)
    else:
        raise ValueError(
            f"target shape {shape} does not match logits shape {(b, k)}: expected class indices "
            f"({b},) or one-hot ({b}, {k})"
        )
    return Batch(logits=logits, logp=F.log_softmax(logits, dim=1), y=y, binary=binary)


def segmentation_batch(logits: Tensor, target: Any) -> Batch:
    """Validate segmentation inputs.

    Args:
        logits: B x K x H x W or B x K x H x W x D (K = 1: one sigmoid channel).
        target: class indices (B, H, W[, D]) or (B, 1, H, W[, D]), or one-hot/soft B x K x H x W[, D];
            for K = 1 a binary (or soft, in [0, 1]) mask (B, H, W[, D]) or (B, 1, H, W[, D]).

    Raises:
        ValueError: wrong shapes (both printed), labels outside [0, K).
    """
    if not isinstance(logits, Tensor):
        raise ValueError(f"logits must be a tensor, got {type(logits).__name__}")
    if logits.dim() not in (4, 5) or logits.shape[1] < 1:
        raise ValueError(
            f"segmentation logits must have shape (B, K, H, W) or (B, K, H, W, D), got {_shape(logits)}"
        )
    target = _as_tensor(target, logits.device)
    logits_shape = _shape(logits)
    b, k = logits.shape[:2]
    spatial = tuple(logits.shape[2:])
    binary = k == 1
    logits = logits.float()
    if binary:
        logits = _expand_binary(logits)
    kk = logits.shape[1]
    shape = _shape(target)
    if binary and shape in ((b, *spatial), (b, 1, *spatial)):
        t = target.reshape(b, *spatial)
        if not t.is_floating_point():
            y = _indices_to_one_hot(t, 2, binary=True)
        else:
            t = _check_probabilities(t, "binary")
            y = torch.stack([1.0 - t, t], dim=1)
    elif shape == (b, k, *spatial):
        y = _check_probabilities(target, "one-hot")
    elif shape in ((b, *spatial), (b, 1, *spatial)):
        y = _indices_to_one_hot(target.reshape(b, *spatial), kk, binary)
    else:
        raise ValueError(
            f"target shape {shape} does not match logits shape {logits_shape}: "
            f"expected class indices {(b, *spatial)} or {(b, 1, *spatial)}, or one-hot {(b, k, *spatial)}"
        )
    return Batch(logits=logits, logp=F.log_softmax(logits, dim=1), y=y, binary=binary)


# ---------------------------------------------------------------------------------------------
# numerics and reduction
# ---------------------------------------------------------------------------------------------


def safe_pow(x: Tensor, exponent: float) -> Tensor:
    """``x ** exponent`` for ``x >= 0`` with a finite (zero) gradient at ``x = 0`` when exponent < 1.

    ``x ** 0.75`` has an infinite derivative at 0, which turns into NaN through the chain rule
    (logits of magnitude 1e4 give probabilities of exactly 0 or 1).
    """
    if exponent == 0:
        return torch.ones_like(x)
    if exponent >= 1:
        return x.clamp_min(0).pow(exponent)
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).pow(exponent), torch.zeros_like(x))


def one_minus_p(logp: Tensor) -> Tensor:
    """``1 - exp(logp)``, accurate when p is close to 1."""
    return -torch.expm1(logp)


def reduce(loss: Tensor, reduction: str, normaliser: Tensor | None = None) -> Tensor:
    """Reduce per-sample losses (B,) to a scalar (or keep them for ``"none"``).

    With ``normaliser`` (per-sample weights, B), ``"mean"`` is ``sum(loss) / sum(normaliser)``,
    PyTorch's convention for class-weighted cross-entropy.
    """
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if normaliser is not None:
        return loss.sum() / normaliser.sum()
    return loss.mean()


class BaseLoss(nn.Module):
    """Common base: ``reduction`` handling, float32 computation, and the ``set_epoch`` hook."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)

    def set_epoch(self, epoch: int) -> None:
        """Called by the training engine at the start of each epoch (0-based). No-op by default."""

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


def no_autocast(device: torch.device) -> Any:
    """A context that disables autocast on ``device`` (losses compute in float32)."""
    return torch.autocast(device_type=device.type, enabled=False)


def weight_on(vec: Tensor | None, like: Tensor) -> Tensor | None:
    """Move a per-class vector to the device and dtype of ``like``."""
    return None if vec is None else vec.to(device=like.device, dtype=like.dtype)


def class_view(vec: Tensor, ndim: int) -> Tensor:
    """Reshape a per-class vector (K,) to broadcast along dim 1 of an ``ndim``-d tensor."""
    return vec.view(1, -1, *([1] * (ndim - 2)))


def smooth_targets(y: Tensor, eps: float) -> Tensor:
    """Label smoothing along the class axis (dim 1): ``y (1 - eps) + eps / K``."""
    if eps == 0:
        return y
    return y * (1.0 - eps) + eps / y.shape[1]


def cross_entropy_terms(logp: Tensor, q: Tensor, weight: Tensor | None = None) -> Tensor:
    """``-sum_k w_k q_k log p_k`` summed over the class axis (dim 1)."""
    terms = q * logp
    if weight is not None:
        terms = terms * class_view(weight.to(logp), logp.dim())
    return -terms.sum(1)


def focal_terms(logp: Tensor, q: Tensor, gamma: float, alpha: float | Tensor = 1.0) -> Tensor:
    """``-sum_k alpha_k q_k (1 - p_k)^gamma log p_k`` over the class axis (Lin et al., ICCV 2017)."""
    terms = q * safe_pow(one_minus_p(logp), gamma) * logp
    if isinstance(alpha, Tensor):
        terms = terms * class_view(alpha.to(logp), logp.dim())
    elif alpha != 1.0:
        terms = terms * alpha
    return -terms.sum(1)


def entropy(logp: Tensor) -> Tensor:
    """Shannon entropy ``-sum_k p_k log p_k`` over the class axis (finite where p_k = 0)."""
    return -(logp.exp() * logp).sum(1)


def vector(name: str, value: Any) -> Tensor:
    """A per-class vector (a scalar is refused where a vector is required)."""
    vec = as_scalar_or_vector(name, value)
    if not isinstance(vec, Tensor):
        raise ValueError(f"{name} must be a per-class sequence, got {value!r}")
    return vec
