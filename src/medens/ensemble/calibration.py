"""Post-hoc decision rules fitted on validation predictions: temperature scaling and logit adjustment.

Both act on a system's probabilities through their logarithms (a softmax's logits up to a constant
per sample, which neither rule depends on), are fitted on validation predictions only (docs/methods.md
section 10) and serialise to JSON so an artifact can carry them.

- :class:`TemperatureScaling` (Guo et al., ICML 2017): ``softmax(log p / T)`` with the one scalar
  ``T`` that minimises the validation negative log-likelihood. It never changes the argmax, so it
  changes calibration (served confidences) and not decisions.
- :class:`LogitAdjustment` (Menon et al., ICLR 2021, post-hoc variant): ``softmax(log p - tau log pi)``
  with ``pi`` the training class priors, which moves decisions towards rare classes;
  ``tau = 0`` is the identity and ``tau = 1`` the balanced-error Bayes rule for a calibrated
  model. ``tau`` is chosen on validation from a grid by a metric that sees the minority classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medens.training.calibration import TemperatureScaling, _labels, _log_probs, _softmax, nll

__all__ = ["DEFAULT_TAUS", "LogitAdjustment", "TemperatureScaling", "nll"]

DEFAULT_TAUS = tuple(np.round(np.arange(0.0, 2.01, 0.1), 2).tolist())


class LogitAdjustment:
    """Post-hoc logit adjustment for class imbalance (Menon et al. 2021), ``tau`` chosen on validation.

    Args:
        priors: training class frequencies (any positive numbers; normalised).
        taus: the candidate values of ``tau`` (``0`` must be among them: no adjustment is a choice).
        metric: the validation metric that picks ``tau`` (a name of
            :data:`medens.ensemble.selection.METRICS`, higher is better); ties go to the smallest ``tau``.
    """

    def __init__(self, priors: Sequence[float], taus: Sequence[float] = DEFAULT_TAUS,
                 metric: str = "balanced_accuracy") -> None:
        pi = np.asarray(priors, dtype=np.float64)
        if pi.ndim != 1 or len(pi) < 2 or np.any(~np.isfinite(pi)) or np.any(pi <= 0):
            raise ValueError(f"priors must be two or more positive numbers, got {list(priors)}")
        if 0.0 not in [float(t) for t in taus]:
            raise ValueError("taus must include 0 (leaving the decision rule as it is)")
        self.priors = pi / pi.sum()
        self.taus = [float(t) for t in taus]
        self.metric = metric
        self.tau = 0.0
        self.validation_: dict[str, Any] = {}

    def transform(self, probs: np.ndarray, tau: float | None = None) -> np.ndarray:
        t = self.tau if tau is None else float(tau)
        logp = _log_probs(probs)
        if logp.shape[1] != len(self.priors):
            raise ValueError(f"{logp.shape[1]} classes in the probabilities, {len(self.priors)} priors")
        if t == 0.0:
            return np.asarray(probs, dtype=np.float64) / np.asarray(probs, dtype=np.float64).sum(1, keepdims=True)
        return _softmax(logp - t * np.log(self.priors))

    def fit(self, probs: np.ndarray, labels: Any) -> LogitAdjustment:
        from medens.ensemble.selection import METRICS

        if self.metric not in METRICS or self.metric == "log_loss":
            raise ValueError(f"metric {self.metric!r} must be a higher-is-better name of {sorted(METRICS)}")
        y = _labels(labels, len(probs), len(self.priors))
        scores = {t: float(METRICS[self.metric](y, self.transform(probs, t))) for t in self.taus}
        best = max(scores.values())
        self.tau = min(t for t, s in scores.items() if s >= best - 1e-12)
        self.validation_ = {"metric": self.metric, "scores": {str(t): s for t, s in scores.items()},
                            "before": scores[0.0], "after": scores[self.tau]}
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"method": "logit_adjustment", "tau": self.tau, "priors": self.priors.tolist(), "metric": self.metric,
                "validation": self.validation_}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LogitAdjustment:
        out = cls(d["priors"], metric=d.get("metric", "balanced_accuracy"))
        out.tau = float(d["tau"])
        out.validation_ = dict(d.get("validation") or {})
        return out
