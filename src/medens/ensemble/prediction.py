"""Prediction-level ensembles of classifiers (docs/methods.md section 5.1; docs/architecture.md section 3.3).

Every ensemble combines the saved class probabilities of its members and is fitted on
VALIDATION predictions only: ``fit(val_probs, y_val)`` takes the members' validation
probabilities and the validation labels and nothing else, so test predictions can never leak
into weights, selections or stacking coefficients.

Methods (registry ``ENSEMBLES``):

- ``vote``: majority vote over member argmax labels; ties go to the member-mean probability
  (Rajaraman et al., PLoS ONE 16(12) e0261307, 2021, study 1).
- ``mean``: mean of member probabilities (study 1).
- ``weighted``: weights >= 0 summing to 1 minimising validation log-loss, SLSQP from the
  uniform start plus seeded Dirichlet starts (study 1's weighted averaging).
- ``greedy``: ensemble selection with replacement (Caruana, Niculescu-Mizil, Crew, Ksikes,
  "Ensemble selection from libraries of models", ICML 2004).
- ``stacking``: a regularised multinomial logistic regression on concatenated member
  probabilities (Wolpert, "Stacked generalization", Neural Networks 5(2), 1992), cross-fitted
  on validation so its validation score is out-of-fold.

A fitted ensemble is fully described by ``to_dict()``: plain JSON (method, member ids, options,
weights or coefficients as lists, validation scores). ``PredictionEnsemble.from_dict`` rebuilds it
and ``predict_proba`` then needs numpy only, so a server can load ``ensemble.json`` without
scikit-learn, scipy or pickles.

Example::

    ens = fit_ensemble("weighted", {"ce": val_ce, "focal": val_focal})   # dict of Predictions
    probs = ens.predict_proba({"ce": test_ce.probs, "focal": test_focal.probs})
    json.dump(ens.to_dict(), open("ensemble.json", "w"))
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from medens.ensemble._members import MemberEnsemble
from medens.ensemble.selection import (
    HIGHER_IS_BETTER,
    LOG_EPS,
    METRICS,
    check_aligned,
    is_better,
    metric_score,
)
from medens.registry import Registry, check_options, unknown_name_message

if TYPE_CHECKING:
    from typing import Self

    from medens.training.predictions import Predictions

__all__ = [
    "ENSEMBLES",
    "FORMAT",
    "TIE_EPSILON",
    "GreedyEnsemble",
    "MeanEnsemble",
    "PredictionEnsemble",
    "StackingEnsemble",
    "VoteEnsemble",
    "WeightedEnsemble",
    "build_ensemble",
    "ensemble_options",
    "fit_ensemble",
    "softmax",
]

FORMAT = "medens.prediction_ensemble/1"
"""Value of ``to_dict()["format"]``; ``from_dict`` refuses anything else."""

TIE_EPSILON = 1e-6
"""Mass moved onto the tie-broken winner by ``vote`` so that argmax of its output is the vote."""

VALIDATION_METRICS = ("log_loss", "accuracy", "mcc", "balanced_accuracy", "macro_f1")

ProbsInput = Mapping[str, np.ndarray] | Sequence[np.ndarray]

ENSEMBLES: Registry[PredictionEnsemble] = Registry("ensemble")


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(N, K)`` scores, numerically stable."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")


class PredictionEnsemble(MemberEnsemble):
    """Base class: member bookkeeping, input checks, fit/predict and JSON (de)serialisation.

    Subclasses set ``method``, list their constructor options in ``option_names``, and implement
    ``_fit(P, y)``, ``_predict_proba(P)``, ``_params()`` and ``_load_params(params)``, where ``P``
    is the ``(M, N, K)`` float64 stack of member probabilities in ``member_ids`` order.

    Args:
        member_ids: member ids in the order ``predict_proba`` expects them in a list. ``None``:
            taken from the keys of the dict given to ``fit`` (or ``m0, m1, ...`` for a list).

    Attributes:
        member_ids: ids of the members, in order.
        n_classes: K, set by ``fit``.
        class_names: optional class names (set by ``fit_ensemble`` from the ``Predictions``).
        validation_: scores of the ensemble on the validation set it was fitted on
            (in-sample for every method except ``stacking``, whose scores are out-of-fold).
    """

    method: ClassVar[str] = ""
    option_names: ClassVar[tuple[str, ...]] = ()


    # -- public API -------------------------------------------------------------------------


    def fit(self, val_probs: ProbsInput, y_val: np.ndarray) -> Self:
        """Fit on validation predictions only.

        Args:
            val_probs: member validation probabilities, each ``(N, K)``: a dict id -> array (members
                taken in ``member_ids`` order, or dict order when ``member_ids`` is None; extra ids
                are ignored) or a list in ``member_ids`` order.
            y_val: validation labels ``(N,)``, integers in ``[0, K)``.

        Returns:
            self, fitted.

        Raises:
            ValueError: inconsistent shapes, non-finite probabilities, bad labels or missing members.
        """
        P = self._stack(val_probs, fitting=True)
        y = self._check_labels(y_val, P.shape[1], P.shape[2])
        self.n_classes = int(P.shape[2])
        self._fit(P, y)
        self.fitted = True
        self.validation_ = self._validation(P, y)
        return self

    def predict_proba(self, probs: ProbsInput) -> np.ndarray:
        """Ensemble probabilities ``(N, K)`` float64 from member probabilities (dict or list in member order)."""
        self._check_fitted()
        return self._predict_proba(self._stack(probs, fitting=False))

    def predict(self, probs: ProbsInput) -> np.ndarray:
        """Ensemble labels ``(N,)``: argmax of ``predict_proba`` (for ``vote`` this is the tie-broken vote)."""
        return np.argmax(self.predict_proba(probs), axis=1)

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to predict, as JSON-ready builtins (no numpy, no pickles)."""
        self._check_fitted()
        return {
            "format": FORMAT,
            "kind": "prediction",
            "method": self.method,
            "member_ids": list(self.member_ids or []),
            "n_classes": self.n_classes,
            "class_names": None if self.class_names is None else list(self.class_names),
            "options": self.options,
            "params": self._params(),
            "validation": self.validation_,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PredictionEnsemble:
        """Rebuild a fitted ensemble from ``to_dict()`` output (e.g. read from ``ensemble.json``).

        Called on the base class it dispatches on ``d["method"]``; on a subclass the method must match.
        """
        if d.get("format") != FORMAT:
            raise ValueError(f"not a prediction ensemble description: format {d.get('format')!r}, expected {FORMAT!r}")
        method = d.get("method")
        if method not in ENSEMBLES:
            raise ValueError(unknown_name_message("ensemble", str(method), ENSEMBLES.names()))
        klass = ENSEMBLES.get(method)
        if cls is not PredictionEnsemble and klass is not cls:
            raise ValueError(f"{cls.__name__}.from_dict got method {method!r}")
        ens = klass(member_ids=d["member_ids"], **dict(d.get("options") or {}))
        ens.n_classes = int(d["n_classes"])
        ens.class_names = None if d.get("class_names") is None else list(d["class_names"])
        ens._load_params(d["params"])
        ens.validation_ = dict(d.get("validation") or {})
        ens.fitted = True
        return ens

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}(members={self.member_ids}{', ' + opts if opts else ''})"

    # -- hooks -----------------------------------------------------------------------------

    def _fit(self, P: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def _predict_proba(self, P: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load_params(self, params: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def _validation_probs(self, P: np.ndarray) -> tuple[np.ndarray, bool]:
        """Probabilities the validation scores are computed from, and whether they are in-sample."""
        return self._predict_proba(P), True

    # -- helpers ---------------------------------------------------------------------------

    def _validation(self, P: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        probs, in_sample = self._validation_probs(P)
        scores: dict[str, Any] = {m: metric_score(y, probs, metric=m) for m in VALIDATION_METRICS}
        scores["n"] = int(len(y))
        scores["in_sample"] = in_sample
        return scores

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(val_probs, y_val) first")

    def _stack(self, probs: ProbsInput, *, fitting: bool) -> np.ndarray:
        if isinstance(probs, Mapping):
            if self.member_ids is None:
                if not fitting:
                    raise RuntimeError("member_ids are unknown")
                self.member_ids = [str(k) for k in probs]
            missing = [m for m in self.member_ids if m not in probs]
            if missing:
                raise ValueError(
                    f"missing member(s) {missing} in the probabilities given; expected ids {self.member_ids}, "
                    f"got {list(probs)}"
                )
            arrays = [probs[m] for m in self.member_ids]
        else:
            arrays = list(probs)
            if self.member_ids is None:
                if not fitting:
                    raise RuntimeError("member_ids are unknown")
                self.member_ids = [f"m{i}" for i in range(len(arrays))]
            if len(arrays) != len(self.member_ids):
                raise ValueError(
                    f"got {len(arrays)} member probability arrays for {len(self.member_ids)} members "
                    f"{self.member_ids}"
                )
        if not arrays:
            raise ValueError("an ensemble needs at least one member")
        ids = self.member_ids
        shape0 = np.shape(arrays[0])
        for mid, a in zip(ids, arrays):
            if np.ndim(a) != 2:
                raise ValueError(f"member {mid!r}: probabilities must be (N, K), got shape {np.shape(a)}")
            if np.shape(a) != shape0:
                raise ValueError(f"member {mid!r}: probabilities of shape {np.shape(a)}, {ids[0]!r} has {shape0}")
        if not fitting and shape0[1] != self.n_classes:
            raise ValueError(f"the ensemble was fitted on {self.n_classes} classes, got probabilities with {shape0[1]}")
        P = np.stack([np.asarray(a, dtype=np.float64) for a in arrays])
        if not np.all(np.isfinite(P)):
            bad = [mid for mid, p in zip(ids, P) if not np.all(np.isfinite(p))]
            raise ValueError(f"non-finite probabilities from member(s) {bad}")
        return P

    @staticmethod
    def _check_labels(y: np.ndarray, n: int, k: int) -> np.ndarray:
        y = np.asarray(y)
        if y.shape != (n,):
            raise ValueError(f"y_val must have shape ({n},) to match the probabilities, got {y.shape}")
        yi = y.astype(np.int64)
        if not np.array_equal(yi, y) or (n and (yi.min() < 0 or yi.max() >= k)):
            raise ValueError(f"y_val must hold integer labels in [0, {k}), got values {np.unique(y)[:10].tolist()}")
        return yi


class _WeightedAverage(PredictionEnsemble):
    """Shared prediction rule: ``sum_m w_m p_m`` with stored weights."""

    weights: np.ndarray

    def _predict_proba(self, P: np.ndarray) -> np.ndarray:
        return np.tensordot(self.weights, P, axes=1)

    def _params(self) -> dict[str, Any]:
        return {"weights": self.weights.tolist()}

    def _load_params(self, params: Mapping[str, Any]) -> None:
        w = np.asarray(params["weights"], dtype=np.float64)
        if w.shape != (len(self.member_ids or []),):
            raise ValueError(f"{len(w)} weights for {len(self.member_ids or [])} members")
        self.weights = w


@ENSEMBLES.register("vote")
class VoteEnsemble(PredictionEnsemble):
    """Majority vote over member argmax labels (Rajaraman et al., PLoS ONE 2021, study 1).

    Each member votes for its argmax class (a member's own exact tie goes to its lowest class
    index, as ``np.argmax``). TIE RULE: among the classes with the most votes, the one with the
    highest member-mean probability wins; if the mean probabilities are also tied (within 1e-12),
    the lowest class index wins.

    ``predict_proba`` returns the vote fractions ``v`` (votes / M) shrunk towards the winner:
    ``(1 - TIE_EPSILON) * v + TIE_EPSILON * onehot(winner)``, so rows still sum to 1 and
    ``argmax(predict_proba) == predict`` is exactly the tie-broken vote.
    """

    method = "vote"
    tie_rule = (
        "most votes; among tied classes the highest member-mean probability (within 1e-12); "
        "then the lowest class index"
    )

    def _fit(self, P: np.ndarray, y: np.ndarray) -> None:
        return None  # nothing to learn

    def votes(self, probs: ProbsInput) -> np.ndarray:
        """Vote counts ``(N, K)`` (integers) of the members."""
        self._check_fitted()
        return _vote_counts(self._stack(probs, fitting=False))

    def _predict_proba(self, P: np.ndarray) -> np.ndarray:
        counts = _vote_counts(P)
        mean = P.mean(axis=0)
        tied = counts == counts.max(axis=1, keepdims=True)
        score = np.where(tied, mean, -np.inf)
        candidates = tied & (score >= score.max(axis=1, keepdims=True) - 1e-12)
        winner = np.argmax(candidates, axis=1)  # first True: lowest class index
        out = (1.0 - TIE_EPSILON) * counts / P.shape[0]
        out[np.arange(len(out)), winner] += TIE_EPSILON
        return out

    def _params(self) -> dict[str, Any]:
        return {"tie_rule": self.tie_rule, "tie_epsilon": TIE_EPSILON}

    def _load_params(self, params: Mapping[str, Any]) -> None:
        return None


def _vote_counts(P: np.ndarray) -> np.ndarray:
    labels = np.argmax(P, axis=2)  # (M, N)
    return (labels[:, :, None] == np.arange(P.shape[2])).sum(axis=0).astype(np.float64)


@ENSEMBLES.register("mean")
class MeanEnsemble(_WeightedAverage):
    """Unweighted mean of member probabilities (Rajaraman et al., PLoS ONE 2021, study 1)."""

    method = "mean"

    def _fit(self, P: np.ndarray, y: np.ndarray) -> None:
        self.weights = np.full(P.shape[0], 1.0 / P.shape[0])

    def _predict_proba(self, P: np.ndarray) -> np.ndarray:
        return P.mean(axis=0)


@ENSEMBLES.register("mean_la")
class LogitAdjustedMeanEnsemble(_WeightedAverage):
    """Mean of member probabilities with post-hoc logit adjustment for the class priors
    (Menon et al., ICLR 2021): ``softmax(log mean_m p_m - tau log pi)``.

    ``pi`` is the class frequency of the validation labels (+1 smoothing; the splits are
    stratified, so these are the training priors) and ``tau`` is chosen on the validation
    predictions it is fitted on, from 0 to 2 in steps of 0.1, by ``metric`` (default macro-F1;
    ``tau = 0`` is the plain mean). Like every prediction-level ensemble it is selected on
    cross-fitted validation predictions, so choosing ``tau`` on validation does not bias selection.
    """

    method = "mean_la"
    option_names = ("metric",)

    def __init__(self, member_ids: Sequence[str] | None = None, metric: str = "macro_f1") -> None:
        super().__init__(member_ids)
        self.metric = metric

    def _fit(self, P: np.ndarray, y: np.ndarray) -> None:
        from medens.ensemble.calibration import LogitAdjustment

        self.weights = np.full(P.shape[0], 1.0 / P.shape[0])
        priors = np.bincount(y, minlength=P.shape[2]) + 1.0
        self.adjustment = LogitAdjustment(priors, metric=self.metric).fit(P.mean(axis=0), y)

    def _predict_proba(self, P: np.ndarray) -> np.ndarray:
        return self.adjustment.transform(P.mean(axis=0))

    def _params(self) -> dict[str, Any]:
        return {"weights": self.weights.tolist(), "logit_adjustment": self.adjustment.to_dict()}

    def _load_params(self, params: Mapping[str, Any]) -> None:
        from medens.ensemble.calibration import LogitAdjustment

        super()._load_params(params)
        self.adjustment = LogitAdjustment.from_dict(params["logit_adjustment"])


@ENSEMBLES.register("weighted")
class WeightedEnsemble(_WeightedAverage):
    """Weighted mean ``sum_m w_m p_m`` with ``w >= 0``, ``sum w = 1`` minimising validation log-loss.

    Study 1's weighted averaging (Rajaraman et al., PLoS ONE 2021). The objective
    ``-mean_i log(sum_m w_m p_m[i, y_i])`` is convex in ``w``; it is minimised with SLSQP
    (``scipy.optimize.minimize``, analytic gradient) from the uniform start and ``n_starts``
    Dirichlet(1) starts drawn with ``seed``. The best result is kept, compared also with the
    uniform weights and every single member (simplex vertices), so the validation log-loss is never
    worse than the mean ensemble or any member. Weights are clipped at 0 and renormalised.

    Args:
        member_ids: see ``PredictionEnsemble``.
        n_starts: number of random Dirichlet starts besides the uniform one.
        seed: seed of the random starts.
    """

    method = "weighted"
    option_names = ("n_starts", "seed")

    def __init__(self, member_ids: Sequence[str] | None = None, n_starts: int = 8, seed: int = 0) -> None:
        super().__init__(member_ids)
        if int(n_starts) < 0:
            raise ValueError(f"n_starts must be >= 0, got {n_starts}")
        self.n_starts = int(n_starts)
        self.seed = int(seed)

    def _fit(self, P: np.ndarray, y: np.ndarray) -> None:
        from scipy.optimize import minimize

        m, n, _ = P.shape
        T = P[:, np.arange(n), y].T  # (N, M): each member's probability of the true class

        def loss(w: np.ndarray) -> float:
            return float(-np.mean(np.log(np.clip(T @ w, LOG_EPS, None))))

        def grad(w: np.ndarray) -> np.ndarray:
            q = T @ w
            live = q > LOG_EPS  # clipped samples have zero gradient
            return -(T[live] / q[live, None]).sum(axis=0) / n

        uniform = np.full(m, 1.0 / m)
        candidates = [uniform, *np.eye(m)]
        if m > 1:
            rng = np.random.default_rng(self.seed)
            starts = [uniform, *rng.dirichlet(np.ones(m), size=self.n_starts)]
            constraint = {"type": "eq", "fun": lambda w: np.sum(w) - 1.0, "jac": lambda w: np.ones_like(w)}
            for start in starts:
                res = minimize(loss, start, jac=grad, method="SLSQP", bounds=[(0.0, 1.0)] * m,
                               constraints=[constraint], options={"maxiter": 500, "ftol": 1e-12})
                candidates.append(_to_simplex(res.x))
        losses = [loss(w) for w in candidates]
        best = int(np.argmin(losses))  # first minimum: uniform wins exact ties
        self.weights = candidates[best]
        self.search_ = {"n_candidates": len(candidates), "best_log_loss": losses[best]}


def _to_simplex(w: np.ndarray) -> np.ndarray:
    w = np.clip(np.asarray(w, dtype=np.float64), 0.0, None)
    s = w.sum()
    return w / s if s > 0 else np.full(len(w), 1.0 / len(w))


@ENSEMBLES.register("greedy")
class GreedyEnsemble(_WeightedAverage):
    """Ensemble selection with replacement (Caruana et al., ICML 2004).

    Start from the ``init_size`` best single members (Caruana's sorted initialisation; 0 = empty
    start), then for ``n_iter`` iterations add (with replacement) the member whose addition gives
    the best validation ``metric`` of the averaged probabilities (ties: lowest member index). The
    selection of the best-scoring iteration (earliest on ties) is kept; the weights are selection
    counts / total selections.

    Args:
        member_ids: see ``PredictionEnsemble``.
        metric: validation metric (``log_loss`` default, or ``mcc``, ``accuracy``, ``macro_f1``,
            ``balanced_accuracy``); log-loss is smooth, label metrics plateau quickly.
        n_iter: number of greedy additions.
        init_size: number of best single members to start from (0 <= init_size <= M).
    """

    method = "greedy"
    option_names = ("metric", "n_iter", "init_size")

    def __init__(self, member_ids: Sequence[str] | None = None, metric: str = "log_loss", n_iter: int = 50,
                 init_size: int = 0) -> None:
        super().__init__(member_ids)
        if metric not in METRICS:
            raise ValueError(unknown_name_message("metric", metric, list(METRICS)))
        if int(n_iter) < 1:
            raise ValueError(f"n_iter must be >= 1, got {n_iter}")
        if int(init_size) < 0:
            raise ValueError(f"init_size must be >= 0, got {init_size}")
        self.metric = metric
        self.n_iter = int(n_iter)
        self.init_size = int(init_size)

    def _fit(self, P: np.ndarray, y: np.ndarray) -> None:
        m = P.shape[0]
        if self.init_size > m:
            raise ValueError(f"init_size ({self.init_size}) is larger than the number of members ({m})")
        counts = np.zeros(m, dtype=np.int64)
        total = np.zeros(P.shape[1:])
        single = [metric_score(y, p, metric=self.metric) for p in P]
        sign = -1.0 if HIGHER_IS_BETTER[self.metric] else 1.0
        for idx in sorted(range(m), key=lambda i: (sign * single[i], i))[: self.init_size]:
            counts[idx] += 1
            total += P[idx]
        best_score: float | None = None
        best_counts = counts.copy()
        if self.init_size:
            best_score = metric_score(y, total / counts.sum(), metric=self.metric)
        history: list[float] = []
        for _ in range(self.n_iter):
            k = counts.sum() + 1
            scores = [metric_score(y, (total + P[i]) / k, metric=self.metric) for i in range(m)]
            pick = 0
            for i in range(1, m):
                if is_better(scores[i], scores[pick], metric=self.metric):
                    pick = i
            counts[pick] += 1
            total += P[pick]
            history.append(scores[pick])
            if best_score is None or is_better(scores[pick], best_score, metric=self.metric):
                best_score, best_counts = scores[pick], counts.copy()
        self.counts = best_counts
        self.weights = best_counts / best_counts.sum()
        self.history = history
        self.best_score = float(best_score)  # type: ignore[arg-type]

    def _params(self) -> dict[str, Any]:
        return {
            "weights": self.weights.tolist(),
            "counts": self.counts.tolist(),
            "history": [float(s) for s in self.history],
            "best_score": self.best_score,
        }

    def _load_params(self, params: Mapping[str, Any]) -> None:
        super()._load_params(params)
        self.counts = np.asarray(params.get("counts", []), dtype=np.int64)
        self.history = list(params.get("history", []))
        self.best_score = params.get("best_score")


@ENSEMBLES.register("stacking")
class StackingEnsemble(PredictionEnsemble):
    """Stacked generalisation with a multinomial logistic regression (Wolpert, Neural Networks 1992).

    Features: the members' probabilities concatenated member-major,
    ``x = [p_0[0..K-1], p_1[0..K-1], ...]`` (``features="proba"``, default, as docs/methods.md section 5.1
    and study 1), or their logs clipped at ``LOG_EPS`` (``features="log_proba"``, which lets the
    stacker express a weighted geometric mean). The meta-model is scikit-learn's
    ``LogisticRegression`` (L2, inverse strength ``C``, lbfgs, multinomial).

    Cross-fitting: the validation set is split by ``StratifiedKFold(cv, shuffle=True,
    random_state=seed)`` (``cv`` reduced to the smallest class count when needed); each fold is
    predicted by a model fitted on the other folds and these out-of-fold probabilities
    (``oof_proba_``) give the stacker's validation scores, so they are honest. The final model is
    then fitted on all validation data; its ``coef`` (K x M K) and ``intercept`` (K) are stored and
    ``predict_proba`` is ``softmax(x @ coef.T + intercept)`` in numpy (a binary sklearn model,
    coef 1 x F, is stored as rows ``[0, coef]`` which gives the same sigmoid).

    Args:
        member_ids: see ``PredictionEnsemble``.
        C: inverse L2 regularisation strength.
        cv: number of cross-fitting folds (>= 2).
        features: ``"proba"`` or ``"log_proba"``.
        seed: seed of the fold split.
        max_iter: lbfgs iterations.
    """

    method = "stacking"
    option_names = ("C", "cv", "features", "seed", "max_iter")

    def __init__(self, member_ids: Sequence[str] | None = None, C: float = 1.0, cv: int = 5,  # noqa: N803
                 features: str = "proba", seed: int = 0, max_iter: int = 1000) -> None:
        super().__init__(member_ids)
        if not float(C) > 0:
            raise ValueError(f"C must be > 0, got {C}")
        if int(cv) < 2:
            raise ValueError(f"cv must be >= 2, got {cv}")
        _check_choice("features", features, ("proba", "log_proba"))
        self.C = float(C)
        self.cv = int(cv)
        self.features = features
        self.seed = int(seed)
        self.max_iter = int(max_iter)

    def _features(self, P: np.ndarray) -> np.ndarray:
        X = np.log(np.clip(P, LOG_EPS, 1.0)) if self.features == "log_proba" else P
        return X.transpose(1, 0, 2).reshape(P.shape[1], -1)

    def _model(self) -> Any:
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=self.C, max_iter=self.max_iter)

    def _coefs(self, model: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        if not np.array_equal(model.classes_, np.arange(k)):
            raise ValueError(f"the stacker saw classes {model.classes_.tolist()}, expected 0..{k - 1}")
        coef = np.asarray(model.coef_, dtype=np.float64)
        intercept = np.asarray(model.intercept_, dtype=np.float64)
        if k == 2 and coef.shape[0] == 1:
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.concatenate([[0.0], intercept])
        return coef, intercept

    def _fit(self, P: np.ndarray, y: np.ndarray) -> None:
        from sklearn.model_selection import StratifiedKFold

        k = P.shape[2]
        class_counts = np.bincount(y, minlength=k)
        if class_counts.min() < 2:
            raise ValueError(
                f"stacking is cross-fitted and needs at least 2 validation samples of every class; "
                f"class counts {class_counts.tolist()}"
            )
        X = self._features(P)
        n_splits = int(min(self.cv, class_counts.min()))
        oof = np.zeros((len(y), k))
        folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=self.seed)
        for train, held in folds.split(X, y):
            coef, intercept = self._coefs(self._model().fit(X[train], y[train]), k)
            oof[held] = softmax(X[held] @ coef.T + intercept)
        self.oof_proba_ = oof
        self.n_splits_ = n_splits
        self.model_ = self._model().fit(X, y)
        self.coef, self.intercept = self._coefs(self.model_, k)

    def _validation_probs(self, P: np.ndarray) -> tuple[np.ndarray, bool]:
        return self.oof_proba_, False

    def _validation(self, P: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        scores = super()._validation(P, y)
        scores["cv_folds"] = self.n_splits_
        return scores

    def _predict_proba(self, P: np.ndarray) -> np.ndarray:
        return softmax(self._features(P) @ self.coef.T + self.intercept)

    def _params(self) -> dict[str, Any]:
        return {
            "coef": self.coef.tolist(),
            "intercept": self.intercept.tolist(),
            "feature_layout": "member-major concatenation of " + self.features,
        }

    def _load_params(self, params: Mapping[str, Any]) -> None:
        m, k = len(self.member_ids or []), self.n_classes or 0
        self.coef = np.asarray(params["coef"], dtype=np.float64)
        self.intercept = np.asarray(params["intercept"], dtype=np.float64)
        if self.coef.shape != (k, m * k) or self.intercept.shape != (k,):
            raise ValueError(
                f"stacking coef {self.coef.shape} / intercept {self.intercept.shape} do not fit "
                f"{m} members x {k} classes"
            )


def ensemble_options(method: str) -> dict[str, Any]:
    """Options of ensemble ``method`` with their defaults (``member_ids`` excluded)."""
    factory = ENSEMBLES.get(method)
    return {
        p.name: p.default
        for p in inspect.signature(factory).parameters.values()
        if p.name != "member_ids"
    }


def build_ensemble(method: str, **options: Any) -> PredictionEnsemble:
    """An unfitted ensemble ``method`` (``vote``, ``mean``, ``weighted``, ``greedy``, ``stacking``).

    Raises:
        ValueError: unknown method or option, with close matches.
    """
    check_options(method, options, [*ensemble_options(method), "member_ids"])
    return ENSEMBLES.build(method, **options)


def fit_ensemble(method: str, val: Mapping[str, Predictions], **options: Any) -> PredictionEnsemble:
    """Build ensemble ``method`` and fit it on the members' validation ``Predictions``.

    Args:
        method: registry name.
        val: member id -> validation ``Predictions`` (same ids and labels for every member).
            ``options["member_ids"]`` may pick a subset (e.g. ``top_k``); otherwise all, in dict order.
        **options: the method's options (see ``ensemble_options``).

    Raises:
        ValueError: misaligned members (named), unknown method or option.
    """
    check_aligned(val, target="labels")
    ens = build_ensemble(method, **options)
    first = next(iter(val.values()))
    ens.fit({mid: p.probs for mid, p in val.items()}, first.labels)
    ens.class_names = None if first.class_names is None else list(first.class_names)
    return ens

