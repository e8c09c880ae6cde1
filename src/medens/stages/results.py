"""Typed results that the stages hand to each other, and the JSON each one is written as.

=====================  ==========================  =============================================
model                  JSON at the stage boundary  written by / read by
=====================  ==========================  =============================================
:class:`GridEntry`     a pipeline parameter        :func:`~medens.stages.training_grid` /
                                                   :func:`~medens.stages.train_member`
:class:`MemberResult`  ``<member>/model.json``     the training engine / the train stage's callers
:class:`EnsembleIndex` ``ensembles.json``          :func:`~medens.stages.build_ensembles` /
                                                   :func:`~medens.stages.read_index`
:class:`EvaluationResult`   ``metrics.json``       :func:`~medens.stages.evaluate_systems` /
                                                   :func:`~medens.stages.package_best`
:class:`EvaluationSummary`  ``summary.json``       :func:`~medens.stages.evaluate_systems` / the CLI,
                                                   the components, ``pipelines.local``
:class:`GateDecision`  ``history/*/decision.json``  :func:`~medens.stages.champion_gate` /
                                                   :func:`~medens.stages.registry_history`
=====================  ==========================  =============================================

The JSON shapes are the ones earlier runs wrote, so their artifacts still load; unknown keys are
kept (``extra="allow"``) so an artifact written by a newer version loads too. The selected system
is ``selected`` everywhere; ``best`` (what ``summary.json`` called it, and ``metrics.json`` also
wrote) is read as ``selected`` and no longer written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, model_validator

from medens.config import ComponentSpec, ModelSpec
from medens.storage.atomic import atomic_write_text


class _Result(BaseModel):
    """A stage result: keys this version does not know are kept, and written back."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    @classmethod
    def read(cls, path: str | os.PathLike) -> Self:
        """The result from its JSON file (NaN, as ``json.dumps`` writes it, is accepted)."""
        return cls.model_validate(json.loads(Path(path).read_text()))

    def write(self, path: str | os.PathLike) -> Path:
        """Write the result as indented JSON (atomically), in the shape earlier versions wrote."""
        atomic_write_text(path, json.dumps(self.model_dump(), indent=2, default=_json_default))
        return Path(path)


def _json_default(value: Any) -> Any:
    """numpy scalars as numbers (what ``default=float`` did), anything else as text."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


class _SelectedAlias(_Result):
    """``best`` (the old name of the selected system) is read as ``selected``."""

    @model_validator(mode="before")
    @classmethod
    def _best_is_selected(cls, data: Any) -> Any:
        if isinstance(data, dict) and "best" in data:
            data = dict(data)
            best = data.pop("best")
            data.setdefault("selected", best)
        return data


class GridEntry(BaseModel):
    """One member of the training grid: ``{"id", "model", "loss", "train_on"}`` as JSON."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    model: ModelSpec
    loss: ComponentSpec
    train_on: Literal["train", "train_crops"] = "train"

    @classmethod
    def parse(cls, entry: GridEntry | dict[str, Any] | str) -> GridEntry:
        """An entry from itself, its dict, or its JSON text (what the pipelines pass a train task)."""
        if isinstance(entry, GridEntry):
            return entry
        if isinstance(entry, str):
            return cls.model_validate_json(entry)
        return cls.model_validate(entry)


class MemberResult(_Result):
    """What the stages read of a trained member's ``model.json`` (the rest is kept as is)."""

    member_id: str | None = None
    best_epoch: int | None = None
    val_metrics: dict[str, Any] = {}
    collapsed: bool = False
    collapsed_class: str | int | None = None
    cv: dict[str, Any] | None = None

    @classmethod
    def load(cls, artifact_dir: str | os.PathLike) -> MemberResult:
        return cls.read(Path(artifact_dir) / "model.json")


class SelectionBasis(_Result):
    """How an ensemble's selection score is computed: ``basis`` ``None`` means it has none (``reason``)."""

    basis: str | None = None
    reason: str | None = None
    folds: int | None = None


class EnsembleIndex(_Result):
    """``ensembles.json``: what the ensemble stage made, skipped (and why), and how to score each."""

    made: list[str] = []
    skipped: dict[str, str] = {}
    selection: dict[str, SelectionBasis] = {}
    collapsed_members: dict[str, str | int] = {}

    def write(self, path: str | os.PathLike) -> Path:
        atomic_write_text(path, self.model_dump_json(indent=2, exclude_none=True))
        return Path(path)


class EvaluationResult(_SelectedAlias):
    """``metrics.json``: every system's selection score and test metrics, the selection and its rule.

    ``systems`` (test metrics per system) and the statistical comparisons come from
    :mod:`medens.evaluation.systems` and stay untyped dicts.
    """

    experiment: str | None = None
    task: str | None = None
    gate_metric: str | None = None
    selection_rule: str | None = None
    selection_mode: dict[str, Any] | None = None
    classical_member: dict[str, Any] | None = None
    selection: dict[str, dict[str, Any]] = {}
    selected: str
    leaderboard: list[str] = []
    best_kind: str | None = None
    best_path: str | None = None
    best_on_test: str | None = None
    systems: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    n_test: int | None = None
    data_source: dict[str, Any] | None = None
    collapsed: dict[str, Any] = {}
    quality: Literal["ok", "failed"] = "ok"
    quality_reason: str | None = None
    #: the selected classifier's conformal calibration and its test coverage (medens.stages.conformal)
    conformal: dict[str, Any] | None = None


class EvaluationSummary(_SelectedAlias):
    """``summary.json`` of the evaluation stage (what :func:`~medens.stages.evaluate_systems` returns).

    :func:`~medens.stages.run_experiment` adds ``uri`` (where the selection was registered) and
    ``seconds``, and replaces ``report`` by the report's full path.
    """

    selected: str
    best_path: str
    gate_metric: str
    reference: str
    selection_rule: str
    selection_score: float | None = None
    selection_mode: dict[str, Any] | None = None
    classical_member: dict[str, Any] | None = None
    best_on_test: str | None = None
    skipped: dict[str, str] = {}
    leaderboard: list[dict[str, Any]] = []
    report: str = "report.html"
    members: list[str] = []
    ensembles: list[str] = []
    data_source: dict[str, Any] | None = None
    collapsed: dict[str, Any] = {}
    quality: Literal["ok", "failed"] = "ok"
    quality_reason: str | None = None
    best_metrics: dict[str, float] = {}
    uri: str | None = None
    seconds: float | None = None


class GateDecision(_Result):
    """One champion-gate decision, as ``decision.json`` in the model's history records it.

    The comparison (:func:`medens.evaluation.gate.compare_ensembles`'s dict) plus what the
    registry adds: the versions, the challenger's system name, the time and the data lineage.
    """

    promote: bool
    reason: str
    metric: str
    champion: float | None = None
    challenger: float | None = None
    difference: float | None = None
    p_value: float | None = None
    test: str | None = None
    alpha: float | None = None
    n: int | None = None
    collapsed: bool = False
    split: str | None = None
    champion_version: str | None = None
    challenger_version: str | None = None
    challenger_system: str | None = None
    time: str | None = None
    decision: Literal["promote", "keep champion"] | None = None
    data_fingerprint: str | None = None
    data_source: str | None = None
