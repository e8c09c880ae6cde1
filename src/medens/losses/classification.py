"""Classification losses (docs/methods.md section 3.1).

Every loss is an ``nn.Module`` called as ``loss(logits, target)``:

* ``logits``: ``B x K`` (``K = 1``: one sigmoid logit, handled exactly as the softmax over ``[0, z]``).
* ``target``: class indices ``(B,)`` or one-hot (or soft) ``B x K``.
* ``reduction``: ``"none"`` gives one value per sample ``(B,)``; ``"sum"`` their sum; ``"mean"`` their
  mean, except that losses with PyTorch-style class ``weight`` (``ce``, ``weighted_ce``,
  ``label_smoothing_ce`` and ``ldam`` after its re-weighting epoch) divide by the summed weights
  of the samples' classes, exactly as ``torch.nn.CrossEntropyLoss`` does.

Notation: ``p = softmax(z)``, ``y`` one-hot targets, ``n_k`` training count of class k, ``N = sum n_k``.
Losses that need class frequencies take them from ``class_counts`` (the training split's), never
from the batch.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from medens.losses._common import (
    BaseLoss,
    Batch,
    as_counts,
    as_scalar_or_vector,
    check_choice,
    check_length,
    check_number,
    classification_batch,
    cross_entropy_terms,
    effective_number_weights,
    entropy,
    focal_terms,
    loss_registrar,
    no_autocast,
    reduce,
    resolve_weight,
    smooth_targets,
    vector,
    weight_on,
)
from medens.registry import Registry

__all__ = [
    "LOSSES",
    "ClassBalancedLoss",
    "ClassificationLoss",
    "CrossEntropyLoss",
    "DCALoss",
    "EntropyRegularizedCELoss",
    "FocalLoss",
    "HingeLoss",
    "KLDivergenceLoss",
    "LDAMLoss",
    "MarginLoss",
    "NegativeEntropyCELoss",
]

LOSSES: Registry[BaseLoss] = Registry("loss")
"""Classification losses by name."""


# ---------------------------------------------------------------------------------------------
# building blocks (per-sample values, B)
# ---------------------------------------------------------------------------------------------


def _hinge(p: Tensor, y: Tensor, margin: float) -> Tensor:
    """Categorical hinge ``max(0, margin + max_k (1 - y_k) p_k - sum_k y_k p_k)`` per sample."""
    pos = (y * p).sum(1)
    neg = ((1.0 - y) * p).max(1).values
    return torch.relu(margin + neg - pos)


# ---------------------------------------------------------------------------------------------
# modules
# ---------------------------------------------------------------------------------------------


class ClassificationLoss(BaseLoss):
    """Base class: validates ``(logits, target)``, computes per-sample values, reduces.

    Subclasses implement ``compute(batch) -> (per_sample, normaliser_or_None)`` and list their
    per-class vectors in ``class_vectors()`` so their length is checked against K.
    """

    def class_vectors(self) -> dict[str, Tensor | None]:
        """Per-class settings whose length must equal the number of classes."""
        return {}

    def compute(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """Per-sample loss (B,) and, for weighted means, per-sample normalising weights (B,)."""
        raise NotImplementedError

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            logits: ``B x K`` raw scores.
            target: class indices ``(B,)`` or one-hot/soft targets ``B x K``.

        Returns:
            A scalar, or ``(B,)`` for ``reduction="none"``.

        Raises:
            ValueError: on mismatched shapes, labels outside [0, K) or per-class settings of the
                wrong length.
        """
        if not isinstance(logits, Tensor):
            raise ValueError(f"logits must be a tensor, got {type(logits).__name__}")
        with no_autocast(logits.device):
            batch = classification_batch(logits, target)
            for name, vec in self.class_vectors().items():
                check_length(name, vec, batch.num_classes, batch.binary)
            loss, normaliser = self.compute(batch)
            return reduce(loss, self.reduction, normaliser)


class CrossEntropyLoss(ClassificationLoss):
    """Cross-entropy with optional class weights and label smoothing.

    ``l_i = -sum_k w_k q_ik log p_ik`` with ``q = y (1 - eps) + eps / K`` (label smoothing,
    Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016).
    With weights, ``mean`` divides by ``sum_i sum_k w_k y_ik`` (the weights of the samples'
    classes), which is exactly ``torch.nn.CrossEntropyLoss(weight, label_smoothing)``.

    Args:
        weight: per-class weights (K,) or None.
        label_smoothing: eps in [0, 1].
        reduction: "mean", "sum" or "none".
    """

    def __init__(self, weight: Any = None, label_smoothing: float = 0.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.label_smoothing = check_number("eps", label_smoothing, low=0.0, high=1.0)
        self.register_buffer("weight", None if weight is None else vector("weight", weight), persistent=False)

    def class_vectors(self) -> dict[str, Tensor | None]:
        return {"weight": self.weight}

    def compute(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        q = smooth_targets(batch.y, self.label_smoothing)
        w = weight_on(self.weight, batch.logp)
        loss = cross_entropy_terms(batch.logp, q, w)
        return loss, None if w is None else (batch.y * w).sum(1)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, weighted={self.weight is not None}, {super().extra_repr()}"


class FocalLoss(ClassificationLoss):
    """Focal loss (Lin, Goyal, Girshick, He, Dollar, "Focal Loss for Dense Object Detection", ICCV 2017).

    ``l_i = -sum_k alpha_k q_ik (1 - p_ik)^gamma log p_ik``, where ``q`` is the (optionally
    label-smoothed) target. ``gamma = 0`` and ``alpha = 1`` is exactly cross-entropy. ``mean`` is
    the plain mean over samples.

    Args:
        gamma: focusing parameter >= 0.
        alpha: a scalar (multiplies every class) or a per-class vector (K,).
        label_smoothing: eps in [0, 1] (``label_smoothing_focal``).
        reduction: "mean", "sum" or "none".
    """

    def __init__(
        self, gamma: float = 2.0, alpha: Any = 1.0, label_smoothing: float = 0.0, reduction: str = "mean"
    ) -> None:
        super().__init__(reduction)
        self.gamma = check_number("gamma", gamma, low=0.0)
        self.label_smoothing = check_number("eps", label_smoothing, low=0.0, high=1.0)
        alpha = as_scalar_or_vector("alpha", alpha)
        self.alpha_scalar = alpha if isinstance(alpha, float) else None
        self.register_buffer("alpha", alpha if isinstance(alpha, Tensor) else None, persistent=False)

    def class_vectors(self) -> dict[str, Tensor | None]:
        return {"alpha": self.alpha}

    def _alpha(self, like: Tensor) -> float | Tensor:
        return self.alpha_scalar if self.alpha is None else weight_on(self.alpha, like)

    def compute(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        q = smooth_targets(batch.y, self.label_smoothing)
        return focal_terms(batch.logp, q, self.gamma, self._alpha(batch.logp)), None

    def extra_repr(self) -> str:
        alpha = self.alpha_scalar if self.alpha is None else self.alpha.tolist()
        return f"gamma={self.gamma}, alpha={alpha}, label_smoothing={self.label_smoothing}, {super().extra_repr()}"


class ClassBalancedLoss(ClassificationLoss):
    """Class-balanced loss (Cui, Jia, Lin, Song, Belongie, "Class-Balanced Loss Based on Effective
    Number of Samples", CVPR 2019).

    ``l_i = w_{y_i} base_i`` with ``w_k = (1 - beta) / (1 - beta^{n_k})`` rescaled to sum to K,
    ``base`` = cross-entropy or focal (softmax, ``alpha = 1``). ``mean`` is the plain mean over
    samples (as in the paper's implementation; the weights sum to K so the scale stays that of
    the base loss). ``beta = 0`` gives equal weights, i.e. the base loss.

    Args:
        weight: the per-class weights (K,), see ``effective_number_weights``.
        base: "ce" or "focal".
        gamma: focusing parameter of the focal base.
        reduction: "mean", "sum" or "none".
    """

    def __init__(self, weight: Tensor, base: str = "ce", gamma: float = 2.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.base = check_choice("base", base, ("ce", "focal"))
        self.gamma = check_number("gamma", gamma, low=0.0)
        self.register_buffer("weight", vector("weight", weight), persistent=False)

    def class_vectors(self) -> dict[str, Tensor | None]:
        return {"class_counts": self.weight}

    def compute(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        if self.base == "ce":
            base = cross_entropy_terms(batch.logp, batch.y)
        else:
            base = focal_terms(batch.logp, batch.y, self.gamma, 1.0)
        sample_weight = (batch.y * weight_on(self.weight, batch.logp)).sum(1)
        return sample_weight * base, None

    def extra_repr(self) -> str:
        return f"base={self.base!r}, gamma={self.gamma}, weight={self.weight.tolist()}, {super().extra_repr()}"


def _is_epoch(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0


class LDAMLoss(ClassificationLoss):
    """Label-distribution-aware margin loss (Cao, Wei, Gaidon, Arechiga, Ma, "Learning Imbalanced
    Datasets with Label-Distribution-Aware Margin Loss", NeurIPS 2019).

    ``l_i = CE(s (z_i - m_{y_i} e_{y_i}), y_i)`` with ``m_k = C / n_k^{1/4}``, C such that
    ``max_k m_k = max_m``. For soft targets the margin is ``sum_k m_k y_k`` per logit.

    Deferred re-weighting (DRW): when ``drw_weight`` is given, it is applied (PyTorch-style
    weighted cross-entropy: ``mean`` divides by the summed weights) from epoch ``drw_epoch`` on.
    The training engine calls ``set_epoch(epoch)`` at the start of every epoch (0-based); the
    state changes only there, never in ``forward``. Before the first ``set_epoch`` call the
    epoch is 0.

    Args:
        margins: per-class margins m_k (K,).
        s: logit scale > 0.
        drw_weight: class weights for the deferred re-weighting (K,), or None (no DRW).
        drw_epoch: first epoch with the weights, or None (no DRW).
        reduction: "mean", "sum" or "none".
    """

    def __init__(
        self,
        margins: Tensor,
        s: float = 30.0,
        drw_weight: Tensor | None = None,
        drw_epoch: int | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction)
        self.s = check_number("s", s, low=0.0, low_open=True)
        self.register_buffer("margins", vector("margins", margins), persistent=False)
        if (drw_weight is None) != (drw_epoch is None):
            raise ValueError("drw_weight and drw_epoch must be given together")
        if drw_epoch is not None and not _is_epoch(drw_epoch):
            raise ValueError(f"drw_epoch must be a non-negative integer or None, got {drw_epoch!r}")
        self.drw_epoch = None if drw_epoch is None else int(drw_epoch)
        self.register_buffer(
            "drw_weight", None if drw_weight is None else vector("drw_weight", drw_weight), persistent=False
        )
        self.epoch = 0

    @property
    def reweighting(self) -> bool:
        """True when the deferred re-weighting is active in the current epoch."""
        return self.drw_epoch is not None and self.epoch >= self.drw_epoch

    def set_epoch(self, epoch: int) -> None:
        """Set the current (0-based) epoch; switches the deferred re-weighting on at ``drw_epoch``."""
        if not _is_epoch(epoch):
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = int(epoch)

    def class_vectors(self) -> dict[str, Tensor | None]:
        return {"class_counts": self.margins, "drw_weight": self.drw_weight}

    def compute(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        m = weight_on(self.margins, batch.logits)
        logp = torch.log_softmax(self.s * (batch.logits - m * batch.y), dim=1)
        w = weight_on(self.drw_weight, logp) if self.reweighting else None
        loss = cross_entropy_terms(logp, batch.y, w)
        return loss, None if w is None else (batch.y * w).sum(1)

    def extra_repr(self) -> str:
        return (
            f"margins={self.margins.tolist()}, s={self.s}, drw_epoch={self.drw_epoch}, epoch={self.epoch}, "
            f"{super().extra_repr()}"
        )


class MarginLoss(ClassificationLoss):
    """Margin loss (Sabour, Frosst, Hinton, "Dynamic Routing Between Capsules", NeurIPS 2017),
    class-weighted as in QuadSNet (IJACSA 12(7), 2021, doi 10.14569/IJACSA.2021.0120770).

    ``l_i = w_{y_i} sum_k [y_k max(0, m+ - p_k)^2 + lambda (1 - y_k) max(0, p_k - m-)^2]`` with
    ``p = softmax(z)``. ``mean`` is the plain mean over samples (Keras ``class_weight``).

    Args:
        m_plus: upper margin m+ (0.9).
        m_minus: lower margin m- (0.1).
        neg_weight: lambda, the down-weighting of absent classes (0.5).
        weight: per-class weights (K,) or None.
        reduction: "mean", "sum" or "none".
    """

    def __init__(
        self,
        m_plus: float = 0.9,
        m_minus: float = 0.1,
        neg_weight: float = 0.5,
        weight: Any = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction)
        self.m_plus = check_number("m_plus", m_plus)
        self.m_minus = check_number("m_minus", m_minus)
        self.neg_weight = check_number("neg_weight", neg_weight, low=0.0)
        self.register_buffer("weight", None if weight is None else vector("weight", weight), persistent=False)

    def class_vectors(self) -> dict[str, Tensor | None]:
        return {"weight": self.weight}

    def compute(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        p, y = batch.p, batch.y
        present = y * torch.relu(self.m_plus - p).pow(2)
        absent = self.neg_weight * (1.0 - y) * torch.relu(p - self.m_minus).pow(2)
        loss = (present + absent).sum(1)
        if self.weight is not None:
            loss = loss * (y * weight_on(self.weight, p)).sum(1)
        return loss, None

    def extra_repr(self) -> str:
        return (
            f"m_plus={self.m_plus}, m_minus={self.m_minus}, neg_weight={self.neg_weight}, "
            f"weighted={self.weight is not None}, {super().extra_repr()}"
        )


class HingeLoss(ClassificationLoss):
    """Categorical hinge on probabilities, ``max(0, margin + max_{k != y} p_k - p_y)`` (Crammer and
    Singer, JMLR 2001; Keras ``categorical_hinge``; trained in Rajaraman et al., PLoS ONE 2021).

    For soft targets: ``max(0, margin + max_k (1 - y_k) p_k - sum_k y_k p_k)`` (Keras).

    Args:
        margin: the margin (1.0).
        reduction: "mean", "sum" or "none".
    """

    def __init__(self, margin: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.margin = check_number("margin", margin, low=0.0)

    def compute(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        return _hinge(batch.p, batch.y, self.margin), None


class KLDivergenceLoss(ClassificationLoss):
    """Kullback-Leibler divergence ``KL(y || p) = sum_k y_k (log y_k - log p_k)`` (0 log 0 = 0).

    Equals cross-entropy for one-hot targets; kept because study 1 (Rajaraman, Zamzmi, Antani,
    PLoS ONE 2021) trains it.
    """

    def compute(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        y = batch.y
        return (torch.xlogy(y, y) - y * batch.logp).sum(1), None


class EntropyRegularizedCELoss(ClassificationLoss):
    """Cross-entropy plus an entropy penalty pushing towards confident outputs (study 1,
    Rajaraman, Zamzmi, Antani, PLoS ONE 2021): ``CE + beta * mean_{i,k}(-p_ik log p_ik)``.

    Per sample: ``CE_i + beta * (1/K) sum_k (-p_ik log p_ik)``.

    Args:
        beta: weight of the entropy term (2.0).
        reduction: "mean", "sum" or "none".
    """

    def __init__(self, beta: float = 2.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.beta = check_number("beta", beta, low=0.0)

    def compute(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        ce = cross_entropy_terms(batch.logp, batch.y)
        return ce + self.beta * entropy(batch.logp) / batch.num_classes, None


class NegativeEntropyCELoss(ClassificationLoss):
    """Confidence penalty (Pereyra, Tucker, Chorowski, Kaiser, Hinton, "Regularizing Neural Networks
    by Penalizing Confident Output Distributions", ICLR workshop 2017): ``CE - beta * H(p)``.

    Args:
        beta: weight of the entropy bonus (0.001).
        reduction: "mean", "sum" or "none".
    """

    def __init__(self, beta: float = 0.001, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.beta = check_number("beta", beta, low=0.0)

    def compute(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        return cross_entropy_terms(batch.logp, batch.y) - self.beta * entropy(batch.logp), None


class DCALoss(ClassificationLoss):
    """Difference between confidence and accuracy (Liang, Zhang, Wang, Jacobs, "Improved Trainable
    Calibration Method for Neural Networks on Medical Imaging Classification", BMVC 2020).

    ``base + beta * |mean_i max_k p_ik - mean_i 1[argmax_k p_ik = y_i]|``. The confidence term is
    differentiable (through ``max_k p_ik``); the accuracy term is a constant. The DCA term is a
    statistic of the batch: ``reduction="none"`` adds it to every sample, so the mean of the
    ``"none"`` output equals the ``"mean"`` output and their sum the ``"sum"`` output.

    Args:
        base: the base classification loss (its own ``reduction`` is ignored).
        beta: weight of the DCA term (1.0); 0 gives the base loss.
        reduction: "mean", "sum" or "none".
    """

    def __init__(self, base: ClassificationLoss, beta: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        if not isinstance(base, ClassificationLoss):
            raise ValueError(f"base must be a classification loss, got {type(base).__name__}")
        self.base = base
        self.beta = check_number("beta", beta, low=0.0)

    def class_vectors(self) -> dict[str, Tensor | None]:
        return self.base.class_vectors()

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def compute(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        loss, normaliser = self.base.compute(batch)
        p = batch.p
        confidence = p.max(1).values.mean()
        accuracy = (p.argmax(1) == batch.labels).float().mean()
        dca = (confidence - accuracy).abs()
        per_sample = 1.0 if normaliser is None else normaliser
        return loss + self.beta * dca * per_sample, normaliser

    def extra_repr(self) -> str:
        return f"beta={self.beta}, {super().extra_repr()}"


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------

_COUNTS_ALWAYS: Callable[[dict[str, Any]], bool] = lambda params: True  # noqa: E731


def _counts_if(option: str, value: str) -> Callable[[dict[str, Any]], bool]:
    return lambda params: params.get(option) == value


_register = loss_registrar(LOSSES, "classification")


_CE_SOURCE = "standard; torch.nn.CrossEntropyLoss"
_LS_SOURCE = "Szegedy et al., CVPR 2016 (label smoothing)"
_STUDY1 = "Rajaraman, Zamzmi, Antani, PLoS ONE 16(12) e0261307, 2021"
_DCA_SOURCE = "Liang, Zhang, Wang, Jacobs, BMVC 2020"
_DCA_TERM = "beta |mean_i max_k p_ik - mean_i 1[argmax_k p_ik = y_i]|"


@_register("ce", "-sum_k w_k y_k log p_k (w = 1 unless weight given)", _CE_SOURCE,
           _counts_if("weight", "balanced"), "if weight='balanced'")
def make_ce(class_counts: Any = None, weight: Any = None, reduction: str = "mean") -> CrossEntropyLoss:
    """Cross-entropy; ``weight`` None, ``"balanced"`` (needs class_counts) or per-class."""
    return CrossEntropyLoss(resolve_weight("weight", weight, class_counts, "ce"), 0.0, reduction)


@_register("weighted_ce", "-sum_k w_k y_k log p_k; balanced w_k = N / (K n_k); mean divides by sum_i w_{y_i}",
           _CE_SOURCE, _counts_if("weight", "balanced"), "if weight='balanced'")
def make_weighted_ce(class_counts: Any = None, weight: Any = "balanced", reduction: str = "mean") -> CrossEntropyLoss:
    """Class-weighted cross-entropy; by default balanced weights ``N / (K n_k)`` from class_counts."""
    return CrossEntropyLoss(resolve_weight("weight", weight, class_counts, "weighted_ce"), 0.0, reduction)


@_register("focal", "-sum_k alpha_k y_k (1 - p_k)^gamma log p_k", "Lin et al., ICCV 2017")
def make_focal(class_counts: Any = None, gamma: float = 2.0, alpha: Any = 1.0, reduction: str = "mean") -> FocalLoss:
    """Focal loss; ``alpha`` a scalar or per-class vector."""
    return FocalLoss(gamma, alpha, 0.0, reduction)


@_register("class_balanced",
           "w_{y} base, w_k = (1 - beta) / (1 - beta^{n_k}) rescaled to sum K; base ce or focal",
           "Cui et al., CVPR 2019", _COUNTS_ALWAYS, "yes")
def make_class_balanced(
    class_counts: Any = None, beta: float = 0.9999, base: str = "ce", gamma: float = 2.0, reduction: str = "mean"
) -> ClassBalancedLoss:
    """Class-balanced (effective number) re-weighting of CE or focal."""
    as_counts(class_counts, "class_balanced")
    return ClassBalancedLoss(effective_number_weights(class_counts, beta), base, gamma, reduction)


@_register("ldam",
           "CE(s (z - m_y e_y), y), m_k = C / n_k^(1/4), max m_k = max_m; class-balanced weights "
           "(beta drw_beta) from epoch drw_epoch",
           "Cao et al., NeurIPS 2019", _COUNTS_ALWAYS, "yes")
def make_ldam(
    class_counts: Any = None,
    max_m: float = 0.5,
    s: float = 30.0,
    drw_epoch: int | None = None,
    drw_beta: float = 0.9999,
    reduction: str = "mean",
) -> LDAMLoss:
    """LDAM with optional deferred re-weighting from epoch ``drw_epoch`` (call ``set_epoch``)."""
    counts = as_counts(class_counts, "ldam")
    max_m = check_number("max_m", max_m, low=0.0)
    margins = counts.pow(-0.25)
    margins = (margins * (max_m / margins.max())).float()
    drw_weight = None if drw_epoch is None else effective_number_weights(counts, drw_beta)
    return LDAMLoss(margins, s, drw_weight, drw_epoch, reduction)


@_register("margin",
           "w_y sum_k [y_k max(0, m_plus - p_k)^2 + neg_weight (1 - y_k) max(0, p_k - m_minus)^2]; "
           "balanced w_k = N / (K n_k)",
           "Sabour et al., NeurIPS 2017; weighted as in QuadSNet, IJACSA 12(7) 2021",
           _counts_if("weight", "balanced"), "if weight='balanced'")
def make_margin(
    class_counts: Any = None,
    m_plus: float = 0.9,
    m_minus: float = 0.1,
    neg_weight: float = 0.5,
    weight: Any = "balanced",
    reduction: str = "mean",
) -> MarginLoss:
    """Capsule margin loss on softmax probabilities, each sample weighted by its class weight."""
    return MarginLoss(m_plus, m_minus, neg_weight, resolve_weight("weight", weight, class_counts, "margin"), reduction)


@_register("hinge", "max(0, margin + max_{k != y} p_k - p_y)", "Crammer and Singer, JMLR 2001; " + _STUDY1)
def make_hinge(class_counts: Any = None, margin: float = 1.0, reduction: str = "mean") -> HingeLoss:
    """Categorical hinge on softmax probabilities."""
    return HingeLoss(margin, reduction)


@_register("label_smoothing_ce", "-sum_k w_k q_k log p_k, q = y (1 - eps) + eps / K", _LS_SOURCE,
           _counts_if("weight", "balanced"), "if weight='balanced'")
def make_label_smoothing_ce(
    class_counts: Any = None, eps: float = 0.2, weight: Any = None, reduction: str = "mean"
) -> CrossEntropyLoss:
    """Cross-entropy on smoothed targets (``torch.nn.CrossEntropyLoss(label_smoothing=eps)``)."""
    return CrossEntropyLoss(resolve_weight("weight", weight, class_counts, "label_smoothing_ce"), eps, reduction)


@_register("label_smoothing_focal", "-sum_k alpha_k q_k (1 - p_k)^gamma log p_k, q = y (1 - eps) + eps / K",
           "Lin et al., ICCV 2017; " + _LS_SOURCE)
def make_label_smoothing_focal(
    class_counts: Any = None, eps: float = 0.2, gamma: float = 2.0, alpha: Any = 1.0, reduction: str = "mean"
) -> FocalLoss:
    """Focal loss on smoothed targets."""
    return FocalLoss(gamma, alpha, eps, reduction)


@_register("kl", "KL(y || p) = sum_k y_k (log y_k - log p_k)", _STUDY1)
def make_kl(class_counts: Any = None, reduction: str = "mean") -> KLDivergenceLoss:
    """KL divergence between targets and predictions (CE for one-hot targets)."""
    return KLDivergenceLoss(reduction)


@_register("entropy_regularized_ce", "CE + beta mean_{i,k}(-p_ik log p_ik)", _STUDY1)
def make_entropy_regularized_ce(
    class_counts: Any = None, beta: float = 2.0, reduction: str = "mean"
) -> EntropyRegularizedCELoss:
    """Cross-entropy plus the mean per-class entropy term."""
    return EntropyRegularizedCELoss(beta, reduction)


@_register("negative_entropy_ce", "CE - beta H(p), H(p) = -sum_k p_k log p_k", "Pereyra et al., ICLR workshop 2017")
def make_negative_entropy_ce(
    class_counts: Any = None, beta: float = 0.001, reduction: str = "mean"
) -> NegativeEntropyCELoss:
    """Confidence penalty."""
    return NegativeEntropyCELoss(beta, reduction)


@_register("dca_ce", "CE + " + _DCA_TERM, _DCA_SOURCE)
def make_dca_ce(class_counts: Any = None, beta: float = 1.0, reduction: str = "mean") -> DCALoss:
    """Calibrated cross-entropy (CE + DCA)."""
    return DCALoss(CrossEntropyLoss(), beta, reduction)


@_register("dca_kl", "KL(y || p) + " + _DCA_TERM, _DCA_SOURCE)
def make_dca_kl(class_counts: Any = None, beta: float = 1.0, reduction: str = "mean") -> DCALoss:
    """KL divergence + DCA."""
    return DCALoss(KLDivergenceLoss(), beta, reduction)


@_register("dca_focal", "focal(gamma, alpha) + " + _DCA_TERM, _DCA_SOURCE)
def make_dca_focal(
    class_counts: Any = None, beta: float = 1.0, gamma: float = 2.0, alpha: Any = 1.0, reduction: str = "mean"
) -> DCALoss:
    """Focal loss + DCA."""
    return DCALoss(FocalLoss(gamma, alpha), beta, reduction)


@_register("dca_hinge", "hinge(margin) + " + _DCA_TERM, _DCA_SOURCE)
def make_dca_hinge(
    class_counts: Any = None, beta: float = 1.0, margin: float = 1.0, reduction: str = "mean"
) -> DCALoss:
    """Categorical hinge + DCA."""
    return DCALoss(HingeLoss(margin), beta, reduction)


@_register("dca_negative_entropy", "CE - entropy_beta H(p) + " + _DCA_TERM, _DCA_SOURCE)
def make_dca_negative_entropy(
    class_counts: Any = None, beta: float = 1.0, entropy_beta: float = 0.001, reduction: str = "mean"
) -> DCALoss:
    """Confidence penalty + DCA; ``entropy_beta`` is the ``beta`` of ``negative_entropy_ce``."""
    return DCALoss(NegativeEntropyCELoss(entropy_beta), beta, reduction)
