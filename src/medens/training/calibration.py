"""Temperature scaling (Guo et al., ICML 2017), fitted on validation predictions.

``softmax(log p / T)`` with the one scalar ``T`` that minimises the validation negative
log-likelihood. It acts on probabilities through their logarithms (a softmax's logits up to a
constant per sample), never changes the argmax (so it changes calibration, i.e. served
confidences, and not decisions) and serialises to JSON so an artifact can carry it. The training
engine fits it on each member's validation predictions (``training.calibrate``);
:mod:`medens.ensemble.calibration` adds logit adjustment on top.
"""

from __future__ import annotations

from typing import Any

import numpy as np

EPS = 1e-12


def _log_probs(probs: np.ndarray, floor: float = EPS) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be (N, K) with K >= 2, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("probabilities must be finite and non-negative")
    return np.log(np.clip(p, floor, None))


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

    def inverse_transform(self, probs: np.ndarray) -> np.ndarray:
        """The probabilities before scaling, ``softmax(T log q)`` of scaled ones ``q`` (the evaluation's
        "before temperature" probabilities). The logarithm's floor is 1e-300, not 1e-12: with ``T < 1``
        a scaled probability ``~ p^(1/T)`` falls far below 1e-12 and still carries ``p``."""
        return _softmax(_log_probs(probs, floor=1e-300) * self.temperature)

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
