"""Every stage in turn in one process: what ``medens run`` does without kfp."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medens.config import ExperimentSpec
from medens.stages.cv import SMALL_CLASS
from medens.stages.data import prepare_data
from medens.stages.ensemble import build_ensembles
from medens.stages.evaluate import evaluate_systems
from medens.stages.registry import register_artifact
from medens.stages.results import EvaluationSummary, MemberResult


def run_experiment(spec: ExperimentSpec, run_dir: str | os.PathLike, *, progress: bool | None = None,
                   log: Callable[[str], object] = print, register: bool = True) -> EvaluationSummary:
    """The same stages as the pipelines, in turn on this machine, into one run directory::

        <run>/spec.yaml, <run>/data/, <run>/members/<id>/, <run>/ensembles/<name>/,
        <run>/evaluation/, <run>/best/, <run>/registry/<name>/versions/<run-name>/, <run>/summary.json
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    spec.save(run / "spec.yaml")
    t0 = time.perf_counter()
    data = prepare_data(spec, run / "data")
    log(f"[data] {run / 'data'} (source fingerprint {data['source']['sha256'][:12]})")
    # evaluation.selection: the single validation split, or k-fold CV on train + val (stages.cv);
    # the cost is printed before anything trains
    paths, plan, spec = train_grid(spec, run / "data", run / "members", progress=progress, log=log)
    made = build_ensembles(spec, run / "data", paths, run / "ensembles", progress=progress)
    log(f"[ensemble] {', '.join(made) or 'none'}")
    summary = evaluate_systems(spec, run / "data", paths, run / "ensembles", run / "evaluation", run / "best")
    if summary.quality == "failed":
        log(f"[evaluate] RUN FAILED ON QUALITY: {summary.quality_reason}")
    summary.report = str(run / "evaluation" / "report.html")
    if register and summary.quality == "failed":
        log("[register] not registered: a system that predicts one class is never made the champion")
    elif register:
        reg = register_artifact(run / "best", str(run / "registry"), spec.name, version=run.name)
        summary.uri = reg["uri"]
    summary.seconds = round(time.perf_counter() - t0, 1)
    summary.write(run / "summary.json")
    return summary


def train_grid(spec: ExperimentSpec, data_dir: str | os.PathLike, members_root: str | os.PathLike, *,
               progress: bool | None = None, log: Callable[[str], object] = print) -> tuple[list[Path], dict[str, Any], ExperimentSpec]:
    """Train the grid the selection mode needs: ``(member paths, plan, spec used)``.

    Prints the cost before training. ``validation``: :func:`~medens.stages.train_member` per grid
    entry. ``cv``: :func:`train_cv_member` per entry (``hog_mlp`` added per :func:`cv_spec`).
    ``auto`` without rule 1: the single split first; when systems tie at the top of its ranking
    (rule 2), the cv grid is trained into ``<members_root>_cv`` and used instead.
    """
    import time

    from medens.data.types import SplitData
    from medens.stages.cv import cost_line, cv_spec, plan_selection, train_cv_member
    from medens.stages.data import training_grid
    from medens.stages.train import train_member
    from medens.training.collapse import collapse_warning

    data = SplitData.load(data_dir)
    plan = plan_selection(spec, data)
    root = Path(members_root)

    def train(use: ExperimentSpec, cv: bool, into: Path) -> list[Path]:
        grid = training_grid(use)
        paths = []
        for i, member in enumerate(grid, 1):
            t = time.perf_counter()
            if cv:
                paths.append(train_cv_member(use, data_dir, member, into / member.id, plan, progress=progress))
            else:
                paths.append(train_member(use, data_dir, member, into / member.id, progress=progress))
            folds = f" ({plan['folds']} folds)" if cv else ""
            log(f"[train {i}/{len(grid)}] {member.id}{folds} "
                f"({time.perf_counter() - t:.0f} s)")
            result = MemberResult.load(paths[-1])
            if result.collapsed:
                log(f"[train {i}/{len(grid)}] {collapse_warning(member.id, result.model_dump())}")
        return paths

    if plan["mode"] == "cv":
        use = cv_spec(spec, plan)
        log(cost_line(plan, len(training_grid(use))))
        return train(use, True, root), plan, use
    log(cost_line(plan, len(training_grid(spec))))
    paths = train(spec, False, root)
    if plan["mode"] == "validation":
        return paths, plan, spec
    tie = validation_tie(spec, data_dir, paths, root.with_name(root.name + "_tie_check"))
    if tie is None:
        return paths, {**plan, "mode": "validation", "reason": "no class has fewer than "
                       f"{SMALL_CLASS} validation images and no tie at the top of the validation ranking"}, spec
    plan = {**plan, "mode": "cv", "reason": tie}
    use = cv_spec(spec, plan)
    log(cost_line(plan, len(training_grid(use))))
    return train(use, True, root.with_name(root.name + "_cv")), plan, use


def validation_tie(spec: ExperimentSpec, data_dir, paths: list[Path], scratch: Path) -> str | None:
    """Rule 2 on single-split members: build the ensembles into ``scratch``, score every system
    as the evaluation stage would, and return the tie's description (or ``None``)."""
    from medens.stages.cv import tie_reason
    from medens.stages.ensemble import ensemble_dirs, read_index
    from medens.stages.evaluate import _selection, gate_metric
    from medens.stages.train import member_dirs

    build_ensembles(spec, data_dir, paths, scratch)
    metric = gate_metric(spec)
    sel = _selection(metric, member_dirs(paths), ensemble_dirs(scratch), read_index(scratch))
    return tie_reason({n: s["score"] for n, s in sel.items()}, {n for n, s in sel.items() if s.get("collapsed")},
                      metric)
