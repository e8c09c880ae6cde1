"""Post-hoc decision rules fitted on validation predictions: temperature scaling and logit adjustment.

Both act on a system's probabilities through their logarithms (a softmax's logits up to a constant
per sample, which neither rule depends on), are fitted on validation predictions only (DESIGN
section 2, step 4) and serialise to JSON so an artifact can carry them.

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

EPS = 1e-12
DEFAULT_TAUS = tuple(np.round(np.arange(0.0, 2.01, 0.1), 2).tolist())


def _log_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be (N, K) with K >= 2, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("probabilities must be finite and non-negative")
    return np.log(np.clip(p, EPS, None))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _labels(labels: Any, n: int, k: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or (n and (y.min() < 0 or y.max() >= k)):
        raise ValueError(f"labels must be {n} integers in [0, {k})")
    return y.astype(np.int64)


def nll(probs: np.ndarray, labels: Any) -> float:
    """Mean negative log-likelihood of the true classes."""
    logp = _log_probs(probs)
    y = _labels(labels, len(logp), logp.shape[1])
    return float(-logp[np.arange(len(y)), y].mean())


class TemperatureScaling:
    """One temperature for all classes, fitted by minimising validation NLL (Guo et al. 2017).

    Attributes:
        temperature: the fitted ``T`` (``> 1`` softens an over-confident model).
        validation_: NLL before and after on the validation predictions it was fitted on.
    """

    def __init__(self, bounds: tuple[float, float] = (0.05, 20.0)) -> None:
        lo, hi = bounds
        if not 0 < lo < hi:
            raise ValueError(f"temperature bounds must satisfy 0 < low < high, got {bounds}")
        self.bounds = (float(lo), float(hi))
        self.temperature = 1.0
        self.validation_: dict[str, float] = {}

    def fit(self, probs: np.ndarray, labels: Any) -> TemperatureScaling:
        from scipy.optimize import minimize_scalar

        logp = _log_probs(probs)
        y = _labels(labels, len(logp), logp.shape[1])
        if len(y) == 0:
            raise ValueError("temperature scaling needs at least one validation sample")

        def loss(log_t: float) -> float:
            z = logp / np.exp(log_t)
            z = z - z.max(axis=1, keepdims=True)
            return float(-(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1))).mean())

        res = minimize_scalar(loss, bounds=tuple(np.log(self.bounds)), method="bounded",
                              options={"xatol": 1e-6})
        self.temperature = float(np.exp(res.x))
        self.validation_ = {"nll_before": nll(probs, y), "nll_after": float(res.fun), "n": int(len(y))}
        return self

    def transform(self, probs: np.ndarray) -> np.ndarray:
        return _softmax(_log_probs(probs) / self.temperature)

    def to_dict(self) -> dict[str, Any]:
        return {"method": "temperature", "temperature": self.temperature, "validation": self.validation_}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TemperatureScaling:
        out = cls()
        out.temperature = float(d["temperature"])
        if not out.temperature > 0:
            raise ValueError(f"temperature must be positive, got {out.temperature}")
        out.validation_ = dict(d.get("validation") or {})
        return out


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
