"""How much each member counts in the ensemble's probability of one class: the weights of an
ensemble explanation (the members' Grad-CAM maps are summed with them).

The rule depends on the combiner (recorded as ``weighting`` in every explanation):

- ``weights``: linear combiners (``mean``, ``mean_la``, ``weighted``, ``greedy``; the weighted
  average of a cross-validated system too): their stored member weights, the same for every image.
  (``mean_la``'s logit adjustment acts on the averaged probabilities, after the members are mixed.)
- ``votes``: ``vote``: the members whose own label is the explained class, equally (the members that
  made the decision); uniform when none voted for it.
- ``gradient``: any other combiner (``stacking``): per image, the sensitivity of the ensemble's
  probability of class c to each member's probability of c, ``d P_c / d p_m,c`` (central finite
  differences of the combiner, step ``STEP``), clipped at 0 (a member that pulls the class down
  does not explain it); uniform for an image whose every sensitivity is <= 0.
- ``single``: one model (no combiner): weight 1.

Fold models of a member (``fold_members``) share their member's weight equally, as the member is
their mean. Rows are normalised to sum 1.
"""

from __future__ import annotations

import numpy as np

from medens.ensemble.artifact import LoadedEnsemble

STEP = 1e-4


def member_weights(ensemble: LoadedEnsemble, member_probs: dict[str, np.ndarray], labels: np.ndarray
                   ) -> tuple[np.ndarray, str]:
    """``(N, M)`` weights over ``ensemble.members`` (loaded models, in order) for each image's class
    ``labels[i]``, and the rule's name (see the module docstring)."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    ids = list(ensemble.members)
    folds = ensemble.manifest.get("fold_members") or {mid: [mid] for mid in ids}
    combiner = ensemble.combiner
    if combiner is None:
        combined = np.ones((n, len(folds)))
        rule = "single"
    else:
        inputs = [np.mean([member_probs[f] for f in folds[mid]], axis=0) for mid in combiner.member_ids]
        combined, rule = _combiner_weights(combiner, inputs, labels)
    out = np.zeros((n, len(ids)))
    for j, mid in enumerate(folds if combiner is None else combiner.member_ids):
        for f in folds[mid]:
            out[:, ids.index(f)] += combined[:, j] / len(folds[mid])
    return out / out.sum(axis=1, keepdims=True), rule


def _combiner_weights(combiner, inputs: list[np.ndarray], labels: np.ndarray) -> tuple[np.ndarray, str]:
    n, m = len(labels), len(inputs)
    rows = np.arange(n)
    weights = getattr(combiner, "weights", None)
    if weights is not None and combiner.method != "vote":
        w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
        return np.tile(w if w.sum() > 0 else np.ones(m), (n, 1)), "weights"
    if combiner.method == "vote":
        voted = np.stack([p.argmax(1) == labels for p in inputs], axis=1).astype(np.float64)
        voted[voted.sum(1) == 0] = 1.0
        return voted, "votes"
    grad = np.zeros((n, m))
    for j in range(m):
        up = [p.copy() for p in inputs]
        down = [p.copy() for p in inputs]
        up[j][rows, labels] += STEP
        down[j][rows, labels] -= STEP
        grad[:, j] = (combiner.predict_proba(up)[rows, labels] - combiner.predict_proba(down)[rows, labels]) / (2 * STEP)
    grad = np.clip(grad, 0.0, None)
    grad[grad.sum(1) <= 0] = 1.0
    return grad, "gradient"
