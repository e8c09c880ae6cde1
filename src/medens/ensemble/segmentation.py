"""Segmentation ensembles of probability maps (docs/methods.md section 5.4; study 3).

Members give per-pixel class probabilities ``(N, K, H, W)`` (K = 2: background, lesion). Like the
classification ensembles, every method is fitted on VALIDATION predictions only:
``fit(val_probs, masks_val)``. Methods (registry ``SEG_ENSEMBLES``):

- ``weighted``: weighted mean of the probability maps, weights searched on validation Dice.
  Study 3 (Roshan, Tanha, Zarrin, Babaei, Nikkhah, Jafari, Computers in Biology and Medicine
  2024, doi 10.1016/j.compbiomed.2024.108305) combines a main U-Net and a sampling-method U-Net as
  ``1.01 x main + 1.0 x sampling``; normalised, ``(0.5025, 0.4975)``. That point is always one
  of the candidates for two members (put the main member first), and its Dice is reported.
- ``majority``: pixel-wise majority of the member masks (argmax of each member).
- ``intersection``: a pixel is foreground only when every member says so.

``predict_proba`` always returns ``(N, K, H, W)`` float32 maps whose argmax over K is the
ensemble mask (``predict``): the weighted mean of probabilities for ``weighted``, vote fractions
for ``majority`` and a unanimity-scaled vote fraction for ``intersection`` (see each class).

Dice (used for the search and the reported validation scores) is :func:`medens.metrics.dice`, the
one definition the engine's epoch monitor and the evaluation report also use: per image and per
foreground class ``2 |A n B| / (|A| + |B|)``, 1 when both masks are empty, averaged over
foreground classes and images.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from medens import metrics as metric_defs
from medens.ensemble._members import MemberEnsemble
from medens.ensemble.selection import check_aligned
from medens.registry import Registry, check_options, unknown_name_message

if TYPE_CHECKING:
    from typing import Self

    from medens.training.predictions import Predictions

__all__ = [
    "SEG_ENSEMBLES",
    "SEG_FORMAT",
    "STUDY3_WEIGHTS",
    "IntersectionSegEnsemble",
    "MajoritySegEnsemble",
    "SegmentationEnsemble",
    "WeightedSegEnsemble",
    "build_seg_ensemble",
    "fit_seg_ensemble",
    "seg_ensemble_options",
    "simplex_grid",
    "study3_weights",
]

SEG_FORMAT = "medens.segmentation_ensemble/1"
"""Value of ``to_dict()["format"]``; ``from_dict`` refuses anything else."""

STUDY3_WEIGHTS = (1.01, 1.0)
"""Roshan et al. 2024: ``1.01 x main + 1.0 x sampling`` probabilities (main member first)."""

TIE_EPSILON = 1e-6

SEG_ENSEMBLES: Registry[SegmentationEnsemble] = Registry("segmentation ensemble")

MapsInput = Mapping[str, np.ndarray] | Sequence[np.ndarray]


def study3_weights() -> list[float]:
    """Study 3's weights normalised to sum 1: ``[1.01 / 2.01, 1 / 2.01]`` = ``[0.50249, 0.49751]``."""
    total = sum(STUDY3_WEIGHTS)
    return [w / total for w in STUDY3_WEIGHTS]


def simplex_grid(n_members: int, resolution: int) -> np.ndarray:
    """All weight vectors with entries ``j / resolution`` summing to 1, ``(C(r + M - 1, M - 1), M)``.

    For two members: ``[[0, 1], [0.01, 0.99], ..., [1, 0]]`` with ``resolution=100`` (lexicographic in the first weight, ascending).
    """
    m, r = int(n_members), int(resolution)
    rows = []
    for bars in itertools.combinations(range(r + m - 1), m - 1):
        edges = np.array([-1, *bars, r + m - 1])
        rows.append(np.diff(edges) - 1)
    return np.asarray(rows, dtype=np.float64) / r


class SegmentationEnsemble(MemberEnsemble):
    """Base class: member bookkeeping, checks, fit/predict and JSON (de)serialisation.

    Args:
        member_ids: member ids in the order ``predict_proba`` expects them in a list. ``None``:
            from the keys of the dict given to ``fit`` (or ``m0, m1, ...`` for a list).

    Attributes:
        validation_: Dice of the ensemble and of every member on the validation set it was fitted on.
    """

    method: ClassVar[str] = ""
    option_names: ClassVar[tuple[str, ...]] = ()



    def fit(self, val_probs: MapsInput, masks_val: np.ndarray) -> Self:
        """Fit on validation probability maps only.

        Args:
            val_probs: member validation maps ``(N, K, H, W)``: a dict id -> array (in
                ``member_ids`` order, or dict order when ``member_ids`` is None) or a list.
            masks_val: validation masks ``(N, H, W)``, integers in ``[0, K)``.

        Returns:
            self, fitted.
        """
        P = self._stack(val_probs, fitting=True)
        masks = self._check_masks(masks_val, P.shape)
        self.n_classes = int(P.shape[2])
        self._fit(P, masks)
        self.fitted = True
        k = self.n_classes
        self.validation_ = {
            "dice": float(metric_defs.dice(masks, np.argmax(self._predict_proba(P), axis=1), n_classes=k).mean()),
            "members": {mid: float(metric_defs.dice(masks, np.argmax(p, axis=1), n_classes=k).mean()) for mid, p in zip(self.member_ids, P)},
            "n": int(len(masks)),
            **self._extra_validation(),
        }
        return self

    def predict_proba(self, probs: MapsInput) -> np.ndarray:
        """Ensemble maps ``(N, K, H, W)`` float32 whose argmax over K is the ensemble mask."""
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(val_probs, masks_val) first")
        return self._predict_proba(self._stack(probs, fitting=False))

    def predict(self, probs: MapsInput) -> np.ndarray:
        """Ensemble masks ``(N, H, W)`` int64: argmax of ``predict_proba`` over classes."""
        return np.argmax(self.predict_proba(probs), axis=1)

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to predict, as JSON-ready builtins."""
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted")
        return {
            "format": SEG_FORMAT,
            "kind": "segmentation",
            "method": self.method,
            "member_ids": list(self.member_ids or []),
            "n_classes": self.n_classes,
            "class_names": None if self.class_names is None else list(self.class_names),
            "options": self.options,
            "params": self._params(),
            "validation": self.validation_,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SegmentationEnsemble:
        """Rebuild a fitted ensemble from ``to_dict()`` output (dispatches on ``d["method"]``)."""
        if d.get("format") != SEG_FORMAT:
            raise ValueError(f"not a segmentation ensemble description: format {d.get('format')!r}, "
                             f"expected {SEG_FORMAT!r}")
        method = d.get("method")
        if method not in SEG_ENSEMBLES:
            raise ValueError(unknown_name_message("segmentation ensemble", str(method), SEG_ENSEMBLES.names()))
        klass = SEG_ENSEMBLES.get(method)
        if cls is not SegmentationEnsemble and klass is not cls:
            raise ValueError(f"{cls.__name__}.from_dict got method {method!r}")
        ens = klass(member_ids=d["member_ids"], **dict(d.get("options") or {}))
        ens.n_classes = int(d["n_classes"])
        ens.class_names = None if d.get("class_names") is None else list(d["class_names"])
        ens._load_params(d["params"])
        ens.validation_ = dict(d.get("validation") or {})
        ens.fitted = True
        return ens

    # -- hooks -----------------------------------------------------------------------------

    def _fit(self, P: np.ndarray, masks: np.ndarray) -> None:
        return None

    def _predict_proba(self, P: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        return {}

    def _load_params(self, params: Mapping[str, Any]) -> None:
        return None

    def _extra_validation(self) -> dict[str, Any]:
        return {}

    # -- helpers ---------------------------------------------------------------------------

    def _stack(self, probs: MapsInput, *, fitting: bool) -> np.ndarray:
        if isinstance(probs, Mapping):
            if self.member_ids is None:
                if not fitting:
                    raise RuntimeError("member_ids are unknown")
                self.member_ids = [str(k) for k in probs]
            missing = [m for m in self.member_ids if m not in probs]
            if missing:
                raise ValueError(f"missing member(s) {missing}; expected ids {self.member_ids}, got {list(probs)}")
            arrays = [probs[m] for m in self.member_ids]
        else:
            arrays = list(probs)
            if self.member_ids is None:
                if not fitting:
                    raise RuntimeError("member_ids are unknown")
                self.member_ids = [f"m{i}" for i in range(len(arrays))]
            if len(arrays) != len(self.member_ids):
                raise ValueError(f"got {len(arrays)} member maps for {len(self.member_ids)} members {self.member_ids}")
        if not arrays:
            raise ValueError("an ensemble needs at least one member")
        shape0 = np.shape(arrays[0])
        for mid, a in zip(self.member_ids, arrays):
            if np.ndim(a) != 4:
                raise ValueError(f"member {mid!r}: probability maps must be (N, K, H, W), got shape {np.shape(a)}")
            if np.shape(a) != shape0:
                raise ValueError(f"member {mid!r}: maps of shape {np.shape(a)}, {self.member_ids[0]!r} has {shape0}")
        if shape0[1] < 2:
            raise ValueError(f"probability maps need K >= 2 channels (background first), got shape {shape0}")
        if not fitting and shape0[1] != self.n_classes:
            raise ValueError(f"the ensemble was fitted on {self.n_classes} classes, got maps with {shape0[1]}")
        P = np.stack([np.asarray(a, dtype=np.float32) for a in arrays])
        if not np.all(np.isfinite(P)):
            raise ValueError("non-finite probability maps")
        return P

    @staticmethod
    def _check_masks(masks: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        masks = np.asarray(masks)
        expected = (shape[1], *shape[3:])
        if masks.shape != expected:
            raise ValueError(f"masks_val must have shape {expected} to match the maps {shape[1:]}, got {masks.shape}")
        mi = masks.astype(np.int64)
        if not np.array_equal(mi, masks) or (mi.size and (mi.min() < 0 or mi.max() >= shape[2])):
            raise ValueError(f"masks_val must hold integer classes in [0, {shape[2]})")
        return mi


def _vote_fractions(P: np.ndarray) -> np.ndarray:
    labels = np.argmax(P, axis=2)  # (M, N, H, W)
    k = P.shape[2]
    counts = np.stack([(labels == c).sum(axis=0) for c in range(k)], axis=1)  # (N, K, H, W)
    return counts.astype(np.float32) / P.shape[0]


@SEG_ENSEMBLES.register("weighted")
class WeightedSegEnsemble(SegmentationEnsemble):
    """Weighted mean of probability maps, weights searched on validation Dice (study 3, Roshan et al. 2024).

    Search (deterministic): the simplex grid with step ``1 / resolution`` (``resolution`` default
    100 for two members, i.e. ``w_0`` in 0, 0.01, ..., 1, and 10 for more members) when it has at
    most ``max_candidates`` points, otherwise ``max_candidates`` Dirichlet(1) points drawn with
    ``seed`` plus the uniform weights and every single member. Also evaluated: study 3's
    ``(1.01, 1.0)`` normalised (two members, main first; ``include_study3``) and any
    ``extra_weights``. The best validation Dice wins; ties (within 1e-12) go to the candidate
    closest to uniform weights, then to the earliest.

    Args:
        member_ids: see ``SegmentationEnsemble``.
        resolution: grid resolution (None: 100 for two members, 10 otherwise).
        max_candidates: largest grid searched exhaustively.
        seed: seed of the random search.
        include_study3: evaluate study 3's weights (two members only).
        extra_weights: more weight vectors (non-negative; normalised) to evaluate.

    Attributes:
        weights: the chosen weights (sum 1).
        search_: ``{"weights": (C, M), "dice": (C,)}`` of every evaluated candidate.
    """

    method = "weighted"
    option_names = ("resolution", "max_candidates", "seed", "include_study3", "extra_weights")

    def __init__(self, member_ids: Sequence[str] | None = None, resolution: int | None = None,
                 max_candidates: int = 2000, seed: int = 0, include_study3: bool = True,
                 extra_weights: Sequence[Sequence[float]] | None = None) -> None:
        super().__init__(member_ids)
        if resolution is not None and int(resolution) < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        if int(max_candidates) < 1:
            raise ValueError(f"max_candidates must be >= 1, got {max_candidates}")
        self.resolution = None if resolution is None else int(resolution)
        self.max_candidates = int(max_candidates)
        self.seed = int(seed)
        self.include_study3 = bool(include_study3)
        self.extra_weights = None if extra_weights is None else [[float(x) for x in w] for w in extra_weights]

    def candidates(self, n_members: int) -> tuple[np.ndarray, str]:
        """The weight vectors searched for ``n_members`` members and a description of the search."""
        m = int(n_members)
        rows: list[np.ndarray] = []
        if m == 1:
            rows.append(np.ones((1, 1)))
            how = "single member"
        else:
            r = self.resolution or (100 if m == 2 else 10)
            size = math.comb(r + m - 1, m - 1)
            if size <= self.max_candidates:
                rows.append(simplex_grid(m, r))
                how = f"simplex grid, step 1/{r} ({size} points)"
            else:
                rng = np.random.default_rng(self.seed)
                rows += [np.full((1, m), 1.0 / m), np.eye(m), rng.dirichlet(np.ones(m), size=self.max_candidates)]
                how = f"Dirichlet random search, {self.max_candidates} points (seed {self.seed}) + uniform + vertices"
        if m == 2 and self.include_study3:
            rows.append(np.asarray([study3_weights()]))
            how += " + study 3 (1.01, 1.0)"
        for w in self.extra_weights or []:
            w = np.asarray(w, dtype=np.float64)
            if w.shape != (m,) or np.any(w < 0) or not w.sum() > 0:
                raise ValueError(f"extra weights {w.tolist()} must be {m} non-negative numbers with a positive sum")
            rows.append((w / w.sum())[None])
        return np.concatenate(rows), how

    @staticmethod
    def weighted_mean(P: np.ndarray, w: np.ndarray) -> np.ndarray:
        """``sum_m w_m P_m`` in float32, added member by member in a fixed order.

        The one computation behind the search, ``validation_``, ``predict_proba`` and ``predict``:
        element-wise IEEE float32 arithmetic (no BLAS reduction whose order depends on the library
        or the threads), so the Dice reported for the chosen weights is exactly the Dice of what
        ``predict`` returns.
        """
        w32 = np.asarray(w, dtype=np.float32)
        out = w32[0] * P[0].astype(np.float32)
        for wm, pm in zip(w32[1:], P[1:]):
            out += wm * pm.astype(np.float32, copy=False)
        return out

    def _fit(self, P: np.ndarray, masks: np.ndarray) -> None:
        m, _, k = P.shape[:3]
        cands, how = self.candidates(m)
        dice = np.array([metric_defs.dice(masks, np.argmax(self.weighted_mean(P, w), axis=1), n_classes=k).mean()
                         for w in cands])
        tied = np.flatnonzero(dice >= dice.max() - 1e-12)
        spread = np.linalg.norm(cands[tied] - 1.0 / m, axis=1)
        best = int(tied[np.argmin(spread)])
        self.weights = cands[best]
        self.search_ = {"weights": cands, "dice": dice, "how": how}
        self._search_summary = {
            "search": how,
            "n_candidates": len(cands),
            "best_weights": self.weights.tolist(),
            "best_search_dice": float(dice[best]),
            "uniform_dice": float(metric_defs.dice(masks, np.argmax(P.mean(axis=0), axis=1), n_classes=k).mean()),
        }
        if m == 2 and self.include_study3:
            w3 = np.asarray(study3_weights())
            idx = int(np.flatnonzero(np.all(cands == w3, axis=1))[0])
            self._search_summary["study3"] = {"raw_weights": list(STUDY3_WEIGHTS), "weights": w3.tolist(),
                                              "dice": float(dice[idx])}

    def _extra_validation(self) -> dict[str, Any]:
        return dict(self._search_summary)

    def _predict_proba(self, P: np.ndarray) -> np.ndarray:
        return self.weighted_mean(P, self.weights)

    def _params(self) -> dict[str, Any]:
        return {"weights": self.weights.tolist()}

    def _load_params(self, params: Mapping[str, Any]) -> None:
        w = np.asarray(params["weights"], dtype=np.float64)
        if w.shape != (len(self.member_ids or []),):
            raise ValueError(f"{len(w)} weights for {len(self.member_ids or [])} members")
        self.weights = w


@SEG_ENSEMBLES.register("majority")
class MajoritySegEnsemble(SegmentationEnsemble):
    """Pixel-wise majority vote of the member masks (each member's argmax; docs/methods.md section 5.4).

    TIE RULE (``tie``): with ``"background"`` (default) a tied pixel takes the lowest tied class
    index, so for K = 2 a pixel is foreground only with a strict majority (two members: majority
    equals intersection); with ``"foreground"`` it takes the highest tied index (K = 2, two members:
    union). ``predict_proba`` returns the vote fractions ``v`` shrunk towards the winner,
    ``(1 - 1e-6) v + 1e-6 onehot(winner)``, so its argmax is exactly the majority mask.
    """

    method = "majority"
    option_names = ("tie",)

    def __init__(self, member_ids: Sequence[str] | None = None, tie: str = "background") -> None:
        super().__init__(member_ids)
        if tie not in ("background", "foreground"):
            raise ValueError(f"tie must be 'background' or 'foreground', got {tie!r}")
        self.tie = tie

    def _predict_proba(self, P: np.ndarray) -> np.ndarray:
        frac = _vote_fractions(P)
        tied = frac == frac.max(axis=1, keepdims=True)
        if self.tie == "background":
            winner = np.argmax(tied, axis=1)
        else:
            winner = frac.shape[1] - 1 - np.argmax(tied[:, ::-1], axis=1)
        onehot = winner[:, None] == np.arange(frac.shape[1])[None, :, None, None]
        return (1.0 - TIE_EPSILON) * frac + TIE_EPSILON * onehot.astype(np.float32)

    def _params(self) -> dict[str, Any]:
        return {"tie_rule": f"most member votes per pixel; ties go to the {self.tie}"
                            f" ({'lowest' if self.tie == 'background' else 'highest'} tied class index)",
                "tie_epsilon": TIE_EPSILON}


@SEG_ENSEMBLES.register("intersection")
class IntersectionSegEnsemble(SegmentationEnsemble):
    """Intersection of the member masks: a pixel gets foreground class ``c`` only when every member says ``c``.

    ``predict_proba``: for a foreground class ``c`` the vote fraction ``f_c`` when it is 1
    (unanimous) and ``f_c / 2`` (< 0.5) otherwise; background gets the rest (>= 0.5 unless a
    foreground class is unanimous). Its argmax is exactly the intersection mask and the map still
    grows with the number of foreground votes.
    """

    method = "intersection"

    def _predict_proba(self, P: np.ndarray) -> np.ndarray:
        frac = _vote_fractions(P)
        fg = frac[:, 1:]
        fg = np.where(fg >= 1.0, fg, fg / 2)
        return np.concatenate([1.0 - fg.sum(axis=1, keepdims=True), fg], axis=1)

    def _params(self) -> dict[str, Any]:
        return {"rule": "foreground class c only where every member's argmax is c"}


def seg_ensemble_options(method: str) -> dict[str, Any]:
    """Options of segmentation ensemble ``method`` with their defaults (``member_ids`` excluded)."""
    import inspect

    factory = SEG_ENSEMBLES.get(method)
    return {p.name: p.default for p in inspect.signature(factory).parameters.values() if p.name != "member_ids"}


def build_seg_ensemble(method: str, **options: Any) -> SegmentationEnsemble:
    """An unfitted segmentation ensemble (``weighted``, ``majority``, ``intersection``)."""
    check_options(method, options, [*seg_ensemble_options(method), "member_ids"])
    return SEG_ENSEMBLES.build(method, **options)


def fit_seg_ensemble(method: str, val: Mapping[str, Predictions], **options: Any) -> SegmentationEnsemble:
    """Build segmentation ensemble ``method`` and fit it on the members' validation ``Predictions``.

    ``val`` maps member id -> ``Predictions`` with ``probs`` (N, K, H, W) and ``masks``; every
    member must share ids and masks. For study 3 put the main member first (or pass
    ``member_ids=[main, sampling]``).
    """
    check_aligned(val, target="masks")
    ens = build_seg_ensemble(method, **options)
    first = next(iter(val.values()))
    ens.fit({mid: p.probs for mid, p in val.items()}, first.masks)
    ens.class_names = None if first.class_names is None else list(first.class_names)
    return ens
