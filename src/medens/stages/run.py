"""Every stage in turn in one process: what ``medens run`` does without kfp."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from medens.config import ExperimentSpec
from medens.stages.cv import train_grid
from medens.stages.data import prepare_data
from medens.stages.ensemble import build_ensembles
from medens.stages.evaluate import evaluate_systems
from medens.stages.registry import register_artifact
from medens.storage.atomic import atomic_write_text


def run_experiment(spec: ExperimentSpec, run_dir: str | os.PathLike, *, progress: bool | None = None,
                   log=print, register: bool = True) -> dict[str, Any]:
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
    if summary.get("quality") == "failed":
        log(f"[evaluate] RUN FAILED ON QUALITY: {summary['quality_reason']}")
    summary["report"] = str(run / "evaluation" / "report.html")
    if register and summary.get("quality") == "failed":
        log("[register] not registered: a system that predicts one class is never made the champion")
    elif register:
        reg = register_artifact(run / "best", str(run / "registry"), spec.name, version=run.name)
        summary["uri"] = reg["uri"]
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(run / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary
