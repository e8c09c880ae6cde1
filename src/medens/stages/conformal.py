"""Conformal calibration of the selected system (docs/methods.md, "Conformal prediction sets").

Calibration data: the selected system's *selection predictions*, the validation predictions that
scored it for selection and that no step fitted on:

- a prediction-level ensemble: its cross-fitted validation predictions (``predictions/val_oof.npz``:
  each validation image predicted by a combiner, top-k ranking included, fitted on the other
  folds), not ``val.npz``, on which its served combiner was fitted;
- a single member or a model-level (fusion) ensemble: its validation predictions (trained on
  the training split);
- under cross-validated selection: the out-of-fold predictions over train + validation (each
  image predicted by the fold model that did not train on it); the served system averages the
  fold models, which is at least as accurate as one fold model, so these scores are if anything
  pessimistic.

Why not a held-out calibration part of validation: members are early-stopped and
temperature-scaled on validation, and the ensembles fitted on it, so a part held out only from
selection would not be untouched either, and holding it out from everything would cost every
other step validation images (a minority class has few). What remains is a small, stated
optimism: selection picked one of a few systems by the gate metric on these predictions (not by
the conformity score), and the members' early stopping and temperature used them. The test
split is not read here: the report measures the coverage that resulted on it, once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from medens.ensemble.conformal import DEFAULT_LEVELS, ConformalSets, attach, calibrate, coverage_table
from medens.stages.ensemble import OOF

OPTIMISM = ("calibrated on the selection predictions of the selected system: selection (by the gate metric, "
            "among the candidate systems), the members' early stopping and temperature used them, so coverage "
            "may be slightly optimistic; the report gives the coverage measured on the test split")


def calibration_source(selected: str, members: dict[str, Path], ensembles: dict[str, Path]) -> Path:
    """The predictions the selected system is calibrated on: a prediction-level ensemble's
    cross-fitted ``val_oof.npz``, else the system's ``val.npz`` (never ``test.npz``)."""
    if selected in ensembles:
        oof = Path(ensembles[selected]) / "predictions" / OOF
        return oof if oof.is_file() else Path(ensembles[selected]) / "predictions" / "val.npz"
    if selected in members:
        return Path(members[selected]) / "predictions" / "val.npz"
    raise ValueError(f"selected system {selected!r} is neither a member nor an ensemble of this run")


def _class_names(system_dir: Path) -> list[str]:
    for manifest in ("ensemble.json", "model.json"):
        if (system_dir / manifest).is_file():
            return [str(c) for c in json.loads((system_dir / manifest).read_text())["class_names"]]
    raise ValueError(f"{system_dir} has neither ensemble.json nor model.json")


def calibrate_selected(selected: str, members: dict[str, Path], ensembles: dict[str, Path], *,
                       basis: str | None = None, levels: tuple[float, ...] = DEFAULT_LEVELS, score: str = "aps",
                       method: str = "mondrian") -> ConformalSets:
    """Mondrian (default) conformal thresholds of ``selected`` from its selection predictions only."""
    from medens.training.predictions import Predictions

    path = calibration_source(selected, members, ensembles)
    pred = Predictions.load(path)
    if pred.labels is None:
        raise ValueError(f"{path} has no labels: conformal calibration needs them")
    names = _class_names(Path((members | ensembles)[selected]))
    source = f"{selected}: {path.parent.parent.name}/predictions/{path.name}" + (f" ({basis})" if basis else "")
    return calibrate(pred.probs, pred.labels, names, levels=levels, method=method, score=score, source=source,
                     note=OPTIMISM)


def coverage_entry(sets: ConformalSets, test_probs: np.ndarray, test_labels: np.ndarray | None) -> dict[str, Any]:
    """``metrics.json``'s ``conformal``: the calibration and the coverage it gave on the test split
    (reported only)."""
    if test_labels is None:
        raise ValueError("the test split has no labels: conformal coverage cannot be measured")
    return {**sets.to_dict(), "test": coverage_table(sets, test_probs, test_labels)}


def attach_from(evaluation_dir: str | os.PathLike, artifact_dir: Path) -> Path | None:
    """Copy the evaluation's ``conformal.json`` into a packaged artifact (checksummed); ``None``
    when the evaluation has none (segmentation, or an older evaluation)."""
    from medens.ensemble.conformal import CONFORMAL_FILE

    p = Path(evaluation_dir) / CONFORMAL_FILE
    return attach(artifact_dir, ConformalSets.read(p)) if p.is_file() else None
