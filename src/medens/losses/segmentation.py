"""Segmentation losses (docs/methods.md section 3.3), 2D and 3D.

Every loss is an ``nn.Module`` called as ``loss(logits, target)``:

* ``logits``: ``B x K x H x W`` or ``B x K x H x W x D``. ``K = 1`` is a binary output with a
  sigmoid: ``ce`` is then binary cross-entropy, ``focal`` the sigmoid focal loss, and the
  overlap losses (Dice, Tversky, ...) are computed on the sigmoid foreground channel
  (MONAI's ``sigmoid=True``). For ``K > 1`` probabilities are the softmax over channels.
* ``target``: class indices ``(B, H, W[, D])`` or ``(B, 1, H, W[, D])``, or one-hot ``B x K x ...``;
  for ``K = 1`` a binary (or soft, values in [0, 1]) mask ``(B, [1,] H, W[, D])``.
* ``reduction``: each loss is first reduced over classes and pixels within an image, giving one
  value per image; ``"none"`` returns these ``(B,)``, ``"mean"`` their mean, ``"sum"`` their sum.

Overlap losses (dice, generalized_dice, tversky, focal_tversky and the dice part of dice_ce and
dice_focal) follow MONAI's defaults: per image and class (``batch=False``), background included,
``smooth_nr = smooth_dr = 1e-5``, then averaged over classes. Their ``"mean"`` equals the
corresponding MONAI loss with ``reduction="mean"``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from medens.losses._common import (
    BaseLoss,
    Batch,
    as_scalar_or_vector,
    check_choice,
    check_length,
    check_number,
    class_view,
    cross_entropy_terms,
    focal_terms,
    loss_registrar,
    no_autocast,
    reduce,
    resolve_weight,
    safe_pow,
    segmentation_batch,
    weight_on,
)
from medens.registry import Registry

__all__ = [
    "SEG_LOSSES",
    "DiceCELoss",
    "DiceFocalLoss",
    "DiceLoss",
    "ExpLogLoss",
    "ExponentialLoss",
    "FocalTverskyLoss",
    "GeneralizedDiceLoss",
    "PixelCrossEntropyLoss",
    "PixelFocalLoss",
    "SegmentationLoss",
    "TverskyLoss",
]

SEG_LOSSES: Registry[BaseLoss] = Registry("segmentation loss")
"""Segmentation losses by name."""


def _spatial(x: Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.dim()))


def _overlap_channels(batch: Batch, include_background: bool = True) -> tuple[Tensor, Tensor]:
    """Probabilities and targets of the channels the overlap losses score."""
    p, y = batch.p, batch.y
    if batch.binary or not include_background:
        # one-logit output: the given channel is the foreground; else drop background channel 0
        return p[:, 1:], y[:, 1:]
    return p, y


def _soft_dice_per_class(p: Tensor, y: Tensor, smooth_nr: float, smooth_dr: float) -> Tensor:
    """``1 - (2 TP + s_nr) / (sum p + sum y + s_dr)`` per image and class (B, K)."""
    dims = _spatial(p)
    intersection = (p * y).sum(dims)
    denominator = p.sum(dims) + y.sum(dims)
    return 1.0 - (2.0 * intersection + smooth_nr) / (denominator + smooth_dr)


def _tversky_index(p: Tensor, y: Tensor, alpha: float, beta: float, smooth_nr: float, smooth_dr: float) -> Tensor:
    """``TI = (TP + s_nr) / (TP + alpha FN + beta FP + s_dr)`` per image and class (B, K)."""
    dims = _spatial(p)
    tp = (p * y).sum(dims)
    fn = ((1.0 - p) * y).sum(dims)
    fp = (p * (1.0 - y)).sum(dims)
    return (tp + smooth_nr) / (tp + alpha * fn + beta * fp + smooth_dr)


def _pixel_mean(x: Tensor) -> Tensor:
    """Mean over everything but the batch axis (B,)."""
    return x.flatten(1).mean(1)


class SegmentationLoss(BaseLoss):
    """Base class: validates ``(logits, target)``, computes one value per image, reduces."""

    def class_vectors(self) -> dict[str, Tensor | None]:
        """Per-class settings whose length must equal the number of classes."""
        return {}

    def compute(self, batch: Batch) -> Tensor:
        """The loss of each image (B,)."""
        raise NotImplementedError

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            logits: ``B x K x H x W[ x D]`` raw scores.
            target: class indices ``(B, [1,] H, W[, D])`` or one-hot ``B x K x H x W[ x D]``.

        Returns:
            A scalar, or ``(B,)`` for ``reduction="none"``.

        Raises:
            ValueError: on mismatched shapes, labels outside [0, K) or per-class settings of the
                wrong length.
        """
        if not isinstance(logits, Tensor):
            raise ValueError(f"logits must be a tensor, got {type(logits).__name__}")
        with no_autocast(logits.device):
            batch = segmentation_batch(logits, target)
            for name, vec in self.class_vectors().items():
                check_length(name, vec, batch.num_classes, batch.binary)
            return reduce(self.compute(batch), self.reduction)


class _OverlapLoss(SegmentationLoss):
    def __init__(
        self, include_background: bool = True, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, reduction: str = "mean"
    ) -> None:
        super().__init__(reduction)
        if not isinstance(include_background, bool):
            raise ValueError(f"include_background must be True or False, got {include_background!r}")
        self.include_background = include_background
        self.smooth_nr = check_number("smooth_nr", smooth_nr, low=0.0)
        self.smooth_dr = check_number("smooth_dr", smooth_dr, low=0.0)

    def extra_repr(self) -> str:
        return (
            f"include_background={self.include_background}, smooth_nr={self.smooth_nr}, "
            f"smooth_dr={self.smooth_dr}, {super().extra_repr()}"
        )


class DiceLoss(_OverlapLoss):
    """Soft Dice loss (Milletari, Navab, Ahmadi, "V-Net", 3DV 2016), as ``monai.losses.DiceLoss``.

    Per image and class ``1 - (2 sum p y + smooth_nr) / (sum p + sum y + smooth_dr)``, averaged
    over classes.

    Args:
        include_background: score channel 0 too (ignored for one-logit output).
        smooth_nr: added to the numerator.
        smooth_dr: added to the denominator.
        reduction: "mean", "sum" or "none".
    """

    def compute(self, batch: Batch) -> Tensor:
        p, y = _overlap_channels(batch, self.include_background)
        return _soft_dice_per_class(p, y, self.smooth_nr, self.smooth_dr).mean(1)


class GeneralizedDiceLoss(_OverlapLoss):
    """Generalised Dice loss (Sudre, Li, Vercauteren, Ourselin, Cardoso, DLMIA 2017), as
    ``monai.losses.GeneralizedDiceLoss``.

    ``1 - (2 sum_k w_k sum p y + smooth_nr) / (sum_k w_k sum (p + y) + smooth_dr)`` per image with
    ``w_k = 1 / (sum y_k)^2`` (``w_type="square"``), ``1 / sum y_k`` ("simple") or 1 ("uniform"),
    computed from the image's own label map as in the paper; a class absent from the image gets
    the largest weight of the present classes (MONAI's rule).

    Args:
        include_background: score channel 0 too (ignored for one-logit output).
        w_type: "square", "simple" or "uniform".
        smooth_nr: added to the numerator.
        smooth_dr: added to the denominator.
        reduction: "mean", "sum" or "none".
    """

    def __init__(
        self,
        include_background: bool = True,
        w_type: str = "square",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        reduction: str = "mean",
    ) -> None:
        super().__init__(include_background, smooth_nr, smooth_dr, reduction)
        self.w_type = check_choice("w_type", w_type, ("square", "simple", "uniform"))

    def compute(self, batch: Batch) -> Tensor:
        p, y = _overlap_channels(batch, self.include_background)
        dims = _spatial(p)
        intersection = (p * y).sum(dims)
        denominator = p.sum(dims) + y.sum(dims)
        ground = y.sum(dims)
        if self.w_type == "uniform":
            w = torch.ones_like(ground)
        else:
            w = 1.0 / (ground * ground if self.w_type == "square" else ground)
            infinite = torch.isinf(w)
            w = torch.where(infinite, torch.zeros_like(w), w)
            w = w + infinite * w.max(dim=1, keepdim=True).values
        numerator = 2.0 * (intersection * w).sum(1) + self.smooth_nr
        return 1.0 - numerator / ((denominator * w).sum(1) + self.smooth_dr)


class PixelCrossEntropyLoss(SegmentationLoss):
    """Pixel-wise cross-entropy ``-sum_k y_k log p_k`` averaged over pixels; binary cross-entropy
    with logits for one-logit output (``torch.nn.CrossEntropyLoss`` / ``BCEWithLogitsLoss``).

    Args:
        reduction: "mean", "sum" or "none".
    """

    def compute(self, batch: Batch) -> Tensor:
        return _pixel_mean(cross_entropy_terms(batch.logp, batch.y))


class PixelFocalLoss(SegmentationLoss):
    """Pixel-wise focal loss (Lin, Goyal, Girshick, He, Dollar, ICCV 2017)
    ``-sum_k alpha_k y_k (1 - p_k)^gamma log p_k`` averaged over pixels.

    For one-logit output this is the sigmoid focal loss, ``-alpha_t (1 - p_t)^gamma log p_t``;
    ``alpha`` is then a scalar or ``[alpha_negative, alpha_positive]``, so torchvision's
    ``sigmoid_focal_loss(alpha=a)`` is ``alpha=[1 - a, a]`` here.

    Args:
        gamma: focusing parameter >= 0.
        alpha: scalar (multiplies every class) or per-class vector.
        reduction: "mean", "sum" or "none".
    """

    def __init__(self, gamma: float = 2.0, alpha: Any = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.gamma = check_number("gamma", gamma, low=0.0)
        alpha = as_scalar_or_vector("alpha", alpha)
        self.alpha_scalar = alpha if isinstance(alpha, float) else 1.0
        self.register_buffer("alpha", alpha if isinstance(alpha, Tensor) else None, persistent=False)

    def class_vectors(self) -> dict[str, Tensor | None]:
        return {"alpha": self.alpha}

    def compute(self, batch: Batch) -> Tensor:
        alpha = self.alpha_scalar if self.alpha is None else weight_on(self.alpha, batch.logp)
        return _pixel_mean(focal_terms(batch.logp, batch.y, self.gamma, alpha))

    def extra_repr(self) -> str:
        alpha = self.alpha_scalar if self.alpha is None else self.alpha.tolist()
        return f"gamma={self.gamma}, alpha={alpha}, {super().extra_repr()}"


class DiceCELoss(SegmentationLoss):
    """``lambda_dice * Dice + lambda_ce * CE`` (``monai.losses.DiceCELoss``; nnU-Net, Isensee et al.,
    Nature Methods 2021).

    Args:
        include_background: for the Dice part.
        smooth_nr: Dice numerator smoothing.
        smooth_dr: Dice denominator smoothing.
        lambda_dice: weight of the Dice part.
        lambda_ce: weight of the cross-entropy part.
        reduction: "mean", "sum" or "none".
    """

    def __init__(
        self,
        include_background: bool = True,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction)
        self.dice = DiceLoss(include_background, smooth_nr, smooth_dr)
        self.ce = PixelCrossEntropyLoss()
        self.lambda_dice = check_number("lambda_dice", lambda_dice, low=0.0)
        self.lambda_ce = check_number("lambda_ce", lambda_ce, low=0.0)

    def compute(self, batch: Batch) -> Tensor:
        return self.lambda_dice * self.dice.compute(batch) + self.lambda_ce * self.ce.compute(batch)


class DiceFocalLoss(SegmentationLoss):
    """``lambda_dice * Dice + lambda_focal * focal`` (Zhu et al., "AnatomyNet", Medical Physics 2019;
    ``monai.losses.DiceFocalLoss``, whose focal part is our focal divided by K).

    Args:
        include_background: for the Dice part.
        smooth_nr: Dice numerator smoothing.
        smooth_dr: Dice denominator smoothing.
        gamma: focal focusing parameter.
        alpha: focal scalar or per-class weight.
        lambda_dice: weight of the Dice part.
        lambda_focal: weight of the focal part.
        reduction: "mean", "sum" or "none".
    """

    def __init__(
        self,
        include_background: bool = True,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        gamma: float = 2.0,
        alpha: Any = 1.0,
        lambda_dice: float = 1.0,
        lambda_focal: float = 1.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction)
        self.dice = DiceLoss(include_background, smooth_nr, smooth_dr)
        self.focal = PixelFocalLoss(gamma, alpha)
        self.lambda_dice = check_number("lambda_dice", lambda_dice, low=0.0)
        self.lambda_focal = check_number("lambda_focal", lambda_focal, low=0.0)

    def class_vectors(self) -> dict[str, Tensor | None]:
        return self.focal.class_vectors()

    def compute(self, batch: Batch) -> Tensor:
        return self.lambda_dice * self.dice.compute(batch) + self.lambda_focal * self.focal.compute(batch)


class TverskyLoss(_OverlapLoss):
    """Tversky loss (Salehi, Erdogmus, Gholipour, MLMI 2017): ``1 - TI`` per image and class,
    averaged over classes, ``TI = (TP + smooth_nr) / (TP + alpha FN + beta FP + smooth_dr)``.

    Note that ``alpha`` weighs false negatives here (docs/methods.md section 3.3, Abraham and Khan), whereas in
    ``monai.losses.TverskyLoss`` ``alpha`` weighs false positives: ours(alpha=a, beta=b) equals
    MONAI's (alpha=b, beta=a). ``alpha = beta = 0.5`` is the Dice loss (with doubled smoothing).

    Args:
        alpha: weight of false negatives (0.7).
        beta: weight of false positives (0.3).
        include_background: score channel 0 too (ignored for one-logit output).
        smooth_nr: added to the numerator.
        smooth_dr: added to the denominator.
        reduction: "mean", "sum" or "none".
    """

    def __init__(
        self,
        alpha: float = 0.7,
        beta: float = 0.3,
        include_background: bool = True,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        reduction: str = "mean",
    ) -> None:
        super().__init__(include_background, smooth_nr, smooth_dr, reduction)
        self.alpha = check_number("alpha", alpha, low=0.0)
        self.beta = check_number("beta", beta, low=0.0)

    def tversky_index(self, batch: Batch) -> Tensor:
        """TI per image and class (B, K)."""
        p, y = _overlap_channels(batch, self.include_background)
        return _tversky_index(p, y, self.alpha, self.beta, self.smooth_nr, self.smooth_dr)

    def compute(self, batch: Batch) -> Tensor:
        return (1.0 - self.tversky_index(batch)).mean(1)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, {super().extra_repr()}"


class FocalTverskyLoss(TverskyLoss):
    """Focal Tversky loss (Abraham and Khan, "A Novel Focal Tversky Loss Function with Improved
    Attention U-Net for Lesion Segmentation", ISBI 2019, arXiv 2018): ``(1 - TI)^{1/gamma}`` per
    image and class, averaged over classes; ``gamma = 4/3`` (exponent 0.75).

    Args:
        alpha: weight of false negatives (0.7).
        beta: weight of false positives (0.3).
        gamma: focal parameter > 0; the exponent is ``1 / gamma``.
        include_background: score channel 0 too (ignored for one-logit output).
        smooth_nr: added to the numerator.
        smooth_dr: added to the denominator.
        reduction: "mean", "sum" or "none".
    """

    def __init__(
        self,
        alpha: float = 0.7,
        beta: float = 0.3,
        gamma: float = 4.0 / 3.0,
        include_background: bool = True,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        reduction: str = "mean",
    ) -> None:
        super().__init__(alpha, beta, include_background, smooth_nr, smooth_dr, reduction)
        self.gamma = check_number("gamma", gamma, low=0.0, low_open=True)

    def compute(self, batch: Batch) -> Tensor:
        # TI <= 1 up to rounding; safe_pow keeps the gradient finite where 1 - TI = 0
        return safe_pow((1.0 - self.tversky_index(batch)).clamp_min(0.0), 1.0 / self.gamma).mean(1)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, {super().extra_repr()}"


class ExponentialLoss(SegmentationLoss):
    """Exponential loss of seed study 3 (Roshan, Tanha, Zarrin, Babaei, Nikkhah, Jafari, Computers
    in Biology and Medicine 2024, doi 10.1016/j.compbiomed.2024.108305).

    Mean over pixels and classes of ``0.8 exp(-y p) + exp(-(1 - y)(1 - p))`` with p the softmax
    (sigmoid for one-logit output, whose single channel is the only class scored).

    Args:
        reduction: "mean", "sum" or "none".
    """

    def compute(self, batch: Batch) -> Tensor:
        p, y = _overlap_channels(batch, include_background=True)
        return _pixel_mean(0.8 * torch.exp(-y * p) + torch.exp(-(1.0 - y) * (1.0 - p)))


class ExpLogLoss(SegmentationLoss):
    """Exponential logarithmic loss (Wong, Moradi, Tang, Syeda-Mahmood, "3D Segmentation with
    Exponential Logarithmic Loss for Highly Unbalanced Object Sizes", MICCAI 2018).

    ``w_dice mean_k((-ln Dice_k)^gamma_dice) + w_cross mean_x(w_l (-ln p_l)^gamma_cross)`` with
    ``Dice_k = (2 sum y p + smooth) / (sum y + sum p + smooth)`` per image and class, ``l`` the
    label of pixel x and ``w_k = (sum_j f_j / f_k)^0.5`` from the training label frequencies.

    Args:
        weight: per-class weights w_k (K, or 2 for one-logit output), or None (all 1).
        w_dice: weight of the Dice term (0.8).
        w_cross: weight of the cross-entropy term (0.2).
        gamma_dice: exponent of the Dice term (0.3).
        gamma_cross: exponent of the cross-entropy term (0.3).
        smooth: additive smoothing of Dice (1, the paper's pseudocount).
        reduction: "mean", "sum" or "none".
    """

    def __init__(
        self,
        weight: Any = None,
        w_dice: float = 0.8,
        w_cross: float = 0.2,
        gamma_dice: float = 0.3,
        gamma_cross: float = 0.3,
        smooth: float = 1.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction)
        self.w_dice = check_number("w_dice", w_dice, low=0.0)
        self.w_cross = check_number("w_cross", w_cross, low=0.0)
        self.gamma_dice = check_number("gamma_dice", gamma_dice, low=0.0)
        self.gamma_cross = check_number("gamma_cross", gamma_cross, low=0.0)
        self.smooth = check_number("smooth", smooth, low=0.0, low_open=True)
        vec = None if weight is None else as_scalar_or_vector("weight", weight)
        if vec is not None and not isinstance(vec, Tensor):
            raise ValueError(f"weight must be None, 'frequency' or a per-class sequence, got {weight!r}")
        self.register_buffer("weight", vec, persistent=False)

    def class_vectors(self) -> dict[str, Tensor | None]:
        return {"weight": self.weight}

    def compute(self, batch: Batch) -> Tensor:
        p, y = _overlap_channels(batch, include_background=True)
        dims = _spatial(p)
        numerator = 2.0 * (p * y).sum(dims) + self.smooth
        denominator = y.sum(dims) + p.sum(dims) + self.smooth
        neg_log_dice = (torch.log(denominator) - torch.log(numerator)).clamp_min(0.0)
        dice_term = safe_pow(neg_log_dice, self.gamma_dice).mean(1)
        terms = batch.y * safe_pow((-batch.logp).clamp_min(0.0), self.gamma_cross)
        if self.weight is not None:
            terms = terms * class_view(weight_on(self.weight, terms), terms.dim())
        cross_term = _pixel_mean(terms.sum(1))
        return self.w_dice * dice_term + self.w_cross * cross_term

    def extra_repr(self) -> str:
        return (
            f"w_dice={self.w_dice}, w_cross={self.w_cross}, gamma_dice={self.gamma_dice}, "
            f"gamma_cross={self.gamma_cross}, smooth={self.smooth}, weighted={self.weight is not None}, "
            f"{super().extra_repr()}"
        )


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------


_register = loss_registrar(SEG_LOSSES, "segmentation")


_DICE = "1 - (2 sum p y + smooth_nr) / (sum p + sum y + smooth_dr) per image and class"
_MONAI = "; monai.losses."


@_register("dice", _DICE + ", mean over classes", "Milletari et al., 3DV 2016" + _MONAI + "DiceLoss")
def make_dice(
    class_counts: Any = None,
    include_background: bool = True,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    reduction: str = "mean",
) -> DiceLoss:
    """Soft Dice loss."""
    return DiceLoss(include_background, smooth_nr, smooth_dr, reduction)


@_register("generalized_dice",
           "1 - (2 sum_k w_k sum p y + smooth_nr) / (sum_k w_k sum (p + y) + smooth_dr), w_k = 1 / (sum y_k)^2",
           "Sudre et al., DLMIA 2017" + _MONAI + "GeneralizedDiceLoss")
def make_generalized_dice(
    class_counts: Any = None,
    include_background: bool = True,
    w_type: str = "square",
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    reduction: str = "mean",
) -> GeneralizedDiceLoss:
    """Generalised Dice loss (weights from each image's label map, as in the paper)."""
    return GeneralizedDiceLoss(include_background, w_type, smooth_nr, smooth_dr, reduction)


@_register("dice_ce", "lambda_dice Dice + lambda_ce CE", "Isensee et al., Nature Methods 2021" + _MONAI + "DiceCELoss")
def make_dice_ce(
    class_counts: Any = None,
    include_background: bool = True,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    lambda_dice: float = 1.0,
    lambda_ce: float = 1.0,
    reduction: str = "mean",
) -> DiceCELoss:
    """Dice + cross-entropy."""
    return DiceCELoss(include_background, smooth_nr, smooth_dr, lambda_dice, lambda_ce, reduction)


@_register("dice_focal", "lambda_dice Dice + lambda_focal focal(gamma, alpha)",
           "Zhu et al., Medical Physics 2019" + _MONAI + "DiceFocalLoss")
def make_dice_focal(
    class_counts: Any = None,
    include_background: bool = True,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    gamma: float = 2.0,
    alpha: Any = 1.0,
    lambda_dice: float = 1.0,
    lambda_focal: float = 1.0,
    reduction: str = "mean",
) -> DiceFocalLoss:
    """Dice + focal."""
    return DiceFocalLoss(include_background, smooth_nr, smooth_dr, gamma, alpha, lambda_dice, lambda_focal, reduction)


@_register("ce", "mean_x -sum_k y_k log p_k (binary cross-entropy for one channel)",
           "standard; torch.nn.CrossEntropyLoss / BCEWithLogitsLoss")
def make_ce(class_counts: Any = None, reduction: str = "mean") -> PixelCrossEntropyLoss:
    """Pixel-wise cross-entropy (BCE for one channel)."""
    return PixelCrossEntropyLoss(reduction)


@_register("bce", "alias of ce: mean_x -[y log p + (1 - y) log(1 - p)] for one channel",
           "standard; torch.nn.BCEWithLogitsLoss")
def make_bce(class_counts: Any = None, reduction: str = "mean") -> PixelCrossEntropyLoss:
    """Alias of ``ce`` (binary cross-entropy with logits for one-channel output)."""
    return PixelCrossEntropyLoss(reduction)


@_register("focal", "mean_x -sum_k alpha_k y_k (1 - p_k)^gamma log p_k (sigmoid focal for one channel)",
           "Lin et al., ICCV 2017; torchvision.ops.sigmoid_focal_loss")
def make_focal(
    class_counts: Any = None, gamma: float = 2.0, alpha: Any = 1.0, reduction: str = "mean"
) -> PixelFocalLoss:
    """Pixel-wise focal loss."""
    return PixelFocalLoss(gamma, alpha, reduction)


@_register("tversky", "1 - (TP + smooth_nr) / (TP + alpha FN + beta FP + smooth_dr), mean over classes",
           "Salehi et al., MLMI 2017" + _MONAI + "TverskyLoss (alpha and beta swapped)")
def make_tversky(
    class_counts: Any = None,
    alpha: float = 0.7,
    beta: float = 0.3,
    include_background: bool = True,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    reduction: str = "mean",
) -> TverskyLoss:
    """Tversky loss (alpha weighs false negatives)."""
    return TverskyLoss(alpha, beta, include_background, smooth_nr, smooth_dr, reduction)


@_register("focal_tversky", "(1 - TI)^(1/gamma), mean over classes", "Abraham and Khan, ISBI 2019")
def make_focal_tversky(
    class_counts: Any = None,
    alpha: float = 0.7,
    beta: float = 0.3,
    gamma: float = 4.0 / 3.0,
    include_background: bool = True,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    reduction: str = "mean",
) -> FocalTverskyLoss:
    """Focal Tversky loss."""
    return FocalTverskyLoss(alpha, beta, gamma, include_background, smooth_nr, smooth_dr, reduction)


@_register("exponential", "mean_{x,k} [0.8 exp(-y p) + exp(-(1 - y)(1 - p))]",
           "Roshan et al., Comput. Biol. Med. 2024, doi 10.1016/j.compbiomed.2024.108305")
def make_exponential(class_counts: Any = None, reduction: str = "mean") -> ExponentialLoss:
    """Exponential loss of seed study 3."""
    return ExponentialLoss(reduction)


@_register("exp_log",
           "w_dice mean_k((-ln Dice_k)^gamma_dice) + w_cross mean_x(w_l (-ln p_l)^gamma_cross), "
           "w_k = (sum_j f_j / f_k)^0.5",
           "Wong et al., MICCAI 2018", lambda params: params.get("weight") == "frequency", "if weight='frequency'")
def make_exp_log(
    class_counts: Any = None,
    weight: Any = "frequency",
    w_dice: float = 0.8,
    w_cross: float = 0.2,
    gamma_dice: float = 0.3,
    gamma_cross: float = 0.3,
    smooth: float = 1.0,
    reduction: str = "mean",
) -> ExpLogLoss:
    """Exponential logarithmic loss; ``weight="frequency"`` uses the training pixel counts per class."""
    vec = resolve_weight("weight", weight, class_counts, "exp_log", derived="frequency")
    return ExpLogLoss(vec, w_dice, w_cross, gamma_dice, gamma_cross, smooth, reduction)
