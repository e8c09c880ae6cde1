"""The stages of one experiment: the only orchestration in medens.

Each stage takes the spec and input artifact directories and writes one output artifact
directory. ``medens run`` (:func:`run_experiment`, one process), ``python -m pipelines run``
(kfp.local) and the cluster components (``components/``, one container per stage) all call
these functions and nothing else.

=====================  =====================================================================
stage                  function
=====================  =====================================================================
data                   :func:`prepare_data` (with :func:`source_fingerprint`), :func:`training_grid`
train                  :func:`train_member`: one grid entry -> model artifact + predictions;
                       :func:`train_grid`: the grid the selection mode needs (``medens.stages.cv``:
                       k fold models per entry under cross-validated selection)
ensemble               :func:`build_ensembles`: ensembles + cross-fitted validation predictions
evaluate               :func:`evaluate_systems`: select on validation, score on test, report,
                       :func:`package_best`
register / gate        :func:`register_artifact`, :func:`champion_gate` (recorded by
                       :func:`record_decision`; read back with :func:`registry_history`)
=====================  =====================================================================

What the stages hand each other is typed (``medens.stages.results``): :class:`GridEntry`,
:class:`MemberResult`, :class:`EnsembleIndex`, :class:`EvaluationResult`,
:class:`EvaluationSummary`, :class:`GateDecision`, each written to and read from JSON.

Importing this package loads none of the stages: each name below is imported from its module on
first use, so a process that only fingerprints, registers or reports (one kfp task, one
container) does not pay for torch and MONAI (about 6 s a process on two cores).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medens.stages.data import (
        SAMPLING_SUFFIX,
        dataset_lineage,
        member_id,
        prepare_data,
        source_fingerprint,
        spec_from_text,
        training_grid,
    )
    from medens.stages.ensemble import build_ensembles, ensemble_dirs, read_index
    from medens.stages.evaluate import evaluate_systems, export_report, gate_metric, leaderboard_text, package_best
    from medens.stages.registry import (
        champion_gate,
        fetch_champion,
        record_decision,
        register_artifact,
        registered_uri,
        registry_history,
    )
    from medens.stages.results import (
        EnsembleIndex,
        EvaluationResult,
        EvaluationSummary,
        GateDecision,
        GridEntry,
        MemberResult,
    )
    from medens.stages.run import run_experiment, train_grid
    from medens.stages.train import member_dirs, train_member

__all__ = [
    "EnsembleIndex", "EvaluationResult", "EvaluationSummary", "GateDecision", "GridEntry", "MemberResult",
    "SAMPLING_SUFFIX", "build_ensembles", "champion_gate", "dataset_lineage", "ensemble_dirs", "evaluate_systems",
    "export_report", "fetch_champion", "gate_metric", "leaderboard_text", "member_dirs", "member_id",
    "package_best", "prepare_data", "read_index", "record_decision", "register_artifact", "registered_uri",
    "registry_history", "run_experiment", "source_fingerprint", "spec_from_text", "train_grid", "train_member", "training_grid",
]

_MODULES = {
    "medens.stages.data": ("SAMPLING_SUFFIX", "dataset_lineage", "member_id", "prepare_data", "source_fingerprint",
                           "spec_from_text", "training_grid"),
    "medens.stages.ensemble": ("build_ensembles", "ensemble_dirs", "read_index"),
    "medens.stages.evaluate": ("evaluate_systems", "export_report", "gate_metric", "leaderboard_text",
                               "package_best"),
    "medens.stages.registry": ("champion_gate", "fetch_champion", "record_decision", "register_artifact",
                               "registered_uri", "registry_history"),
    "medens.stages.results": ("EnsembleIndex", "EvaluationResult", "EvaluationSummary", "GateDecision", "GridEntry",
                              "MemberResult"),
    "medens.stages.run": ("run_experiment", "train_grid"),
    "medens.stages.train": ("member_dirs", "train_member"),
}
_HOME = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    """PEP 562: import the stage that defines ``name`` the first time it is asked for."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'medens.stages' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
