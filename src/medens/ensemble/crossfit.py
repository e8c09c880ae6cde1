"""Cross-fitted (out-of-fold) validation predictions of an ensemble-building procedure.

Prediction-level ensembles are fitted on the validation split, so their validation score is
optimistic and cannot choose among systems. Cross-fitting gives every validation image a
prediction from an ensemble that never saw it: the validation split is cut into folds; for each
fold the *whole procedure* (member ranking for ``top_k``, then fitting the method) runs on the
other folds and predicts the held-out one (Chernozhukov et al., Econometrics Journal 2018,
"cross-fitting"; the out-of-fold scoring nnU-Net uses to pick its configuration). The selection
score of an ensemble is the metric of these out-of-fold predictions.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np

from medens.training.predictions import Predictions

DEFAULT_FOLDS = 5


def crossfit_folds(n: int, labels: np.ndarray | None = None, *, n_folds: int = DEFAULT_FOLDS,
                   seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(fit_idx, held_idx)`` pairs covering ``range(n)`` once with held-out indices.

    Stratified by ``labels`` when given (a class with fewer images than folds is spread as far
    as it goes), otherwise plain shuffled folds; ``min(n_folds, n)`` folds.

    Raises:
        ValueError: fewer than two samples, or ``n_folds < 2``.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    if n_folds < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {n_folds}")
    if n < 2:
        raise ValueError(f"cross-fitting needs at least 2 validation samples, got {n}")
    k = min(int(n_folds), int(n))
    idx = np.zeros(n)
    if labels is None:
        return list(KFold(n_splits=k, shuffle=True, random_state=seed).split(idx))
    y = np.asarray(labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the least populated class has only m members"
        if np.bincount(y).max() < k:
            return list(KFold(n_splits=k, shuffle=True, random_state=seed).split(idx))
        return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(idx, y))


def _subset(p: Predictions, idx: np.ndarray) -> Predictions:
    return Predictions(probs=p.probs[idx], ids=[p.ids[i] for i in idx],
                       labels=None if p.labels is None else p.labels[idx],
                       masks=None if p.masks is None else p.masks[idx], class_names=p.class_names)


def crossfit_predictions(method: str, val: Mapping[str, Predictions], *, top_k: int | None = None,
                         rank_metric: str = "mcc", n_folds: int = DEFAULT_FOLDS, seed: int = 0) -> np.ndarray:
    """Out-of-fold validation probabilities of ensemble ``method`` built from ``val``'s members.

    Classification: in each fold the members are ranked on the fitting folds by ``rank_metric``
    and the best ``top_k`` (all when ``None``) are combined, as the ensemble stage does on the
    whole validation split. Segmentation (``masks`` present): every member, in ``val``'s order.

    Returns:
        float32 probabilities aligned with ``val``'s samples, ``(N, K)`` or ``(N, K, H, W)``.

    Raises:
        ValueError: when the method cannot be fitted on some fold (its message says why), or
            when the validation split is too small to cross-fit.
    """
    from medens.ensemble.prediction import fit_ensemble
    from medens.ensemble.segmentation import fit_seg_ensemble
    from medens.ensemble.selection import rank_members

    first = next(iter(val.values()))
    seg = first.masks is not None
    n = len(first.ids)
    out: np.ndarray | None = None
    for fit_idx, held_idx in crossfit_folds(n, None if seg else first.labels, n_folds=n_folds, seed=seed):
        part = {m: _subset(p, fit_idx) for m, p in val.items()}
        if seg:
            ids = list(val)
            ens = fit_seg_ensemble(method, part)
        else:
            ranked = [m for m, _ in rank_members(part, metric=rank_metric)]
            ids = ranked[: top_k or len(ranked)]
            ens = fit_ensemble(method, {m: part[m] for m in ids}, member_ids=ids)
        held = ens.predict_proba([val[m].probs[held_idx].astype(np.float32 if seg else np.float64) for m in ids])
        if out is None:
            out = np.zeros((n, *held.shape[1:]), dtype=np.float32)
        out[held_idx] = held
    assert out is not None
    return out
