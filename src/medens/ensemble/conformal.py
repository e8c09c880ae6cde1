"""Split conformal prediction sets for classification: class-conditional (Mondrian) or marginal,
with APS or RAPS conformity scores (docs/methods.md, "Conformal prediction sets").

The rule, for a calibration sample of ``n`` scores and a coverage level ``1 - alpha``: the
threshold is the ``k = ceil((n + 1)(1 - alpha))``-th smallest calibration score (the ``k / n``
empirical quantile); a test image's set holds every class whose score is at most the threshold.
For exchangeable calibration and test images this covers the true class with probability at
least ``1 - alpha``. Mondrian (class-conditional) conformal applies the rule per class, to the
calibration images of that class, so the guarantee holds for every class separately, minority
classes included; marginal conformal applies it once to all images, and holds only on average
over classes. When ``k > n`` (fewer than ``1 / alpha - 1`` calibration images of a class) the
threshold is infinite: that class is in every set (``null`` in ``conformal.json``).

Scores (Romano et al. 2020, APS; Angelopoulos et al. 2021, RAPS), deterministic (the
non-randomised variants: a served set must not change between two identical requests; they
cover at least as often as the randomised ones):

- ``aps``: the total probability of the classes ranked at or above the class (by descending
  probability, ties by class index);
- ``raps``: ``aps + lam * max(0, rank - k_reg)`` (rank 1-based), which penalises long tails of
  unlikely classes; ``lam`` and ``k_reg`` are fixed beforehand (not tuned on the calibration data).

A set is never empty: a set the thresholds leave empty holds the top class (this can only raise
coverage). The arithmetic is small numpy on purpose: the libraries were checked (crepes works on
precomputed scores and does Mondrian, but answers p-values from the stored calibration scores
rather than thresholds an artifact can carry; MAPIE needs an sklearn estimator and its 1.x has no
Mondrian classifier; puncc requires numpy < 2; TorchCP pulls transformers, torch_geometric and
torchsort), and the tests check these sets against crepes' Mondrian p-value sets.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

CONFORMAL_FILE = "conformal.json"
DEFAULT_LEVELS = (0.90, 0.95)
SCORES = ("aps", "raps")
METHODS = ("mondrian", "marginal")
#: RAPS defaults (fixed, not tuned on calibration data): a penalty of 0.01 per class past the first
RAPS_PARAMS: dict[str, Any] = {"lam": 0.01, "k_reg": 1}
#: scores are rounded to this many decimals (ties stay ties whatever the float noise of the sums)
SCORE_DECIMALS = 10


def level_key(level: float) -> str:
    """A coverage level as ``conformal.json`` writes it: ``0.9`` -> ``"0.9"``."""
    return f"{float(level):g}"


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"a coverage level must be in (0, 1), got {level}")
    return level


def conformity_scores(probs: np.ndarray, score: str = "aps", *, lam: float = 0.01, k_reg: int = 1) -> np.ndarray:
    """The conformity score of every class for every image: ``(N, K)`` probabilities -> ``(N, K)``.

    Raises:
        ValueError: for an unknown score, a negative ``lam`` or ``k_reg``, or probabilities that
            are not a finite non-negative ``(N, K)`` array.
    """
    if score not in SCORES:
        raise ValueError(f"unknown conformity score {score!r}; choose one of {', '.join(SCORES)}")
    if lam < 0 or k_reg < 0:
        raise ValueError(f"RAPS needs lam >= 0 and k_reg >= 0, got lam={lam}, k_reg={k_reg}")
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2 or not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"probabilities must be a finite non-negative (N, K) array with K >= 2, got shape {p.shape}")
    p = p / np.maximum(p.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)  # float32 files sum to 1 +- 1e-7
    order = np.argsort(-p, axis=1, kind="stable")  # descending, ties by class index
    cum = np.cumsum(np.take_along_axis(p, order, axis=1), axis=1)
    rank = np.empty_like(order)  # 0-based rank of each class
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(p.shape[1]), p.shape), axis=1)
    s = np.take_along_axis(cum, rank, axis=1)
    if score == "raps":
        s = s + lam * np.maximum(0, rank + 1 - k_reg)
    # rounded, so that float noise does not break ties: the last class's APS score is 1 for every image
    return np.round(s, SCORE_DECIMALS)


def finite_sample_rank(n: int, level: float) -> int:
    """``ceil((n + 1) * level)``, computed exactly (``level`` read as the decimal it prints as)."""
    return math.ceil((n + 1) * Fraction(repr(_check_level(level))))


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The split-conformal threshold of calibration ``scores`` at coverage ``level``: the
    ``ceil((n + 1) * level)``-th smallest score, ``inf`` when that rank exceeds ``n`` (or ``n == 0``)."""
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    k = finite_sample_rank(len(s), level)
    return math.inf if k > len(s) else float(s[k - 1])


@dataclass(frozen=True)
class ConformalSets:
    """Calibrated thresholds: per coverage level, one per class (``inf``: the class is always in)."""

    method: str
    score: str
    params: dict[str, Any]
    class_names: list[str]
    thresholds: dict[float, np.ndarray]
    n_per_class: list[int]
    source: str = ""
    default: float = DEFAULT_LEVELS[0]
    note: str = field(default="")

    @property
    def levels(self) -> list[float]:
        return sorted(self.thresholds)

    def level(self, requested: Any = None) -> float:
        """The stored level a request names (``None``: the default); ``ValueError`` naming the stored
        levels for anything else."""
        if requested is None:
            return self.default
        stored = ", ".join(level_key(v) for v in self.levels)
        try:
            value = float(requested)
        except (TypeError, ValueError):
            value = math.nan
        if isinstance(requested, bool) or not math.isfinite(value):
            raise ValueError(f"coverage must be a number among the stored levels {stored}, got {requested!r}")
        for v in self.levels:
            if abs(v - value) < 1e-9:
                return v
        raise ValueError(f"coverage {requested!r} is not stored in this artifact; the stored levels are {stored}")

    def scores(self, probs: np.ndarray) -> np.ndarray:
        return conformity_scores(probs, self.score, **self.params)

    def mask(self, probs: np.ndarray, level: float | None = None) -> np.ndarray:
        """Boolean ``(N, K)``: class ``k`` is in image ``i``'s set (never an empty row)."""
        p = np.asarray(probs, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != len(self.class_names):
            raise ValueError(f"probabilities must be (N, {len(self.class_names)}), got shape {p.shape}")
        m = self.scores(p) <= self.thresholds[self.level(level)][None, :]
        empty = ~m.any(axis=1)
        m[empty, p[empty].argmax(axis=1)] = True
        return m

    def prediction_sets(self, probs: np.ndarray, level: float | None = None) -> list[list[str]]:
        """Each image's set as class names, most probable first."""
        p = np.asarray(probs, dtype=np.float64)
        m = self.mask(p, level)
        order = np.argsort(-p, axis=1, kind="stable")
        return [[self.class_names[k] for k in row_order if row[k]] for row, row_order in zip(m, order)]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "score": self.score, "params": dict(self.params),
                "levels": [float(v) for v in self.levels], "default": float(self.default),
                "class_names": list(self.class_names),
                "thresholds": {level_key(v): [None if not math.isfinite(t) else float(t) for t in self.thresholds[v]]
                               for v in self.levels},
                "n_per_class": {c: int(n) for c, n in zip(self.class_names, self.n_per_class)},
                "source": self.source, "note": self.note,
                "rule": "threshold = the ceil((n+1)*level)-th smallest calibration score (per class for mondrian); "
                        "null = infinite (that rank exceeds n: the class is in every set)"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConformalSets:
        """Rebuild from :meth:`to_dict` (``ValueError`` when it is malformed)."""
        try:
            names = [str(c) for c in d["class_names"]]
            thresholds = {_check_level(float(k)): np.array([math.inf if t is None else float(t) for t in v])
                          for k, v in d["thresholds"].items()}
            out = cls(method=str(d["method"]), score=str(d["score"]), params=dict(d.get("params") or {}),
                      class_names=names, thresholds=thresholds,
                      n_per_class=[int(d["n_per_class"][c]) for c in names], source=str(d.get("source", "")),
                      default=float(d.get("default", DEFAULT_LEVELS[0])), note=str(d.get("note", "")))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed {CONFORMAL_FILE}: {e}") from e
        if out.method not in METHODS or any(len(t) != len(names) for t in thresholds.values()) or \
                out.default not in thresholds:
            raise ValueError(f"malformed {CONFORMAL_FILE}: method {out.method!r}, {len(names)} classes, "
                             f"levels {sorted(thresholds)}, default {out.default}")
        out.scores(np.full((1, len(names)), 1.0 / len(names)))  # the score and its params are valid
        return out

    def write(self, directory: str | os.PathLike) -> Path:
        from medens.storage.atomic import atomic_write_text

        return atomic_write_text(Path(directory) / CONFORMAL_FILE, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def read(cls, path: str | os.PathLike) -> ConformalSets:
        return cls.from_dict(json.loads(Path(path).read_text()))


def calibrate(probs: np.ndarray, labels: np.ndarray, class_names: list[str], *,
              levels: tuple[float, ...] | list[float] = DEFAULT_LEVELS, method: str = "mondrian",
              score: str = "aps", params: dict[str, Any] | None = None, source: str = "",
              note: str = "") -> ConformalSets:
    """Thresholds from calibration probabilities ``(N, K)`` and true labels ``(N,)``.

    ``mondrian``: class ``k``'s threshold from the scores of the calibration images of class
    ``k`` at class ``k``; ``marginal``: one threshold from every image's score at its true class,
    used for every class. The first level is the default.
    """
    if method not in METHODS:
        raise ValueError(f"unknown conformal method {method!r}; choose one of {', '.join(METHODS)}")
    if not levels:
        raise ValueError("give at least one coverage level")
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64).ravel()
    k = len(class_names)
    if p.ndim != 2 or p.shape != (len(y), k):
        raise ValueError(f"calibration probabilities must be ({len(y)}, {k}) for {len(y)} labels and {k} classes, "
                         f"got {p.shape}")
    if len(y) and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"calibration labels must be in [0, {k})")
    params = ({} if score == "aps" else dict(RAPS_PARAMS)) | dict(params or {})
    true = conformity_scores(p, score, **params)[np.arange(len(y)), y] if len(y) else np.zeros(0)
    n = [int(np.sum(y == c)) for c in range(k)]
    thresholds = {}
    for level in dict.fromkeys(_check_level(v) for v in levels):
        if method == "mondrian":
            thresholds[level] = np.array([conformal_quantile(true[y == c], level) for c in range(k)])
        else:
            thresholds[level] = np.full(k, conformal_quantile(true, level))
    return ConformalSets(method=method, score=score, params=params, class_names=list(class_names),
                         thresholds=thresholds, n_per_class=n, source=source, default=_check_level(levels[0]),
                         note=note)


def coverage_table(sets: ConformalSets, probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Empirical coverage and mean set size, overall and per true class, at every stored level
    (``{level: {"coverage", "mean_set_size", "per_class": {name: {"n", "coverage", "mean_set_size"}}}}``)."""
    y = np.asarray(labels).astype(np.int64).ravel()
    out: dict[str, Any] = {}
    for level in sets.levels:
        m = sets.mask(probs, level)
        covered, size = m[np.arange(len(y)), y], m.sum(axis=1)
        per_class = {}
        for c, name in enumerate(sets.class_names):
            idx = y == c
            per_class[name] = {"n": int(idx.sum()),
                               "coverage": float(covered[idx].mean()) if idx.any() else None,
                               "mean_set_size": float(size[idx].mean()) if idx.any() else None}
        out[level_key(level)] = {"coverage": float(covered.mean()) if len(y) else None,
                                 "mean_set_size": float(size.mean()) if len(y) else None, "per_class": per_class}
    return out


def attach(artifact_dir: str | os.PathLike, sets: ConformalSets) -> Path:
    """Write ``conformal.json`` into an ensemble artifact and rewrite ``ensemble.json`` with its
    summary and the sha256 of every file (``conformal.json`` included)."""
    from medens.ensemble.artifact import ENSEMBLE_MANIFEST
    from medens.storage.atomic import atomic_write_text
    from medens.storage.checksum import checksums

    d = Path(artifact_dir)
    manifest = json.loads((d / ENSEMBLE_MANIFEST).read_text())
    sets.write(d)
    manifest["conformal"] = {"file": CONFORMAL_FILE, "method": sets.method, "score": sets.score,
                             "levels": [float(v) for v in sets.levels], "default": float(sets.default)}
    manifest["files"] = checksums(d, exclude=(ENSEMBLE_MANIFEST,))
    atomic_write_text(d / ENSEMBLE_MANIFEST, json.dumps(manifest, indent=2))
    return d / CONFORMAL_FILE


def load_conformal(artifact_dir: str | os.PathLike, manifest: dict[str, Any]) -> ConformalSets | None:
    """An artifact's conformal sets, ``None`` for an artifact without ``conformal.json`` (older
    ones). A ``conformal.json`` that the manifest's checksums do not list is refused."""
    p = Path(artifact_dir) / CONFORMAL_FILE
    if not p.is_file():
        return None
    if CONFORMAL_FILE not in (manifest.get("files") or {}):
        raise ValueError(f"{p} is not covered by the artifact's checksums (not in ensemble.json 'files')")
    sets = ConformalSets.read(p)
    if sets.class_names != list(manifest.get("class_names", [])):
        raise ValueError(f"{p}: classes {sets.class_names} differ from the artifact's {manifest.get('class_names')}")
    return sets
