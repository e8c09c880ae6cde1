"""The embedded local run: the same pipeline functions, executed by ``kfp.local`` on this machine.

``kfp.local.init(runner=SubprocessRunner(use_venv=False))`` runs every task as a subprocess of
this Python environment (no cluster, no containers). kfp 2.17's local orchestrator supports what
the pipelines use: ``dsl.ParallelFor`` over a task's list output (at most two iterations at a
time), ``dsl.Collected`` of the loop's artifacts, ``dsl.If`` on a pipeline parameter or a task's
single ``Output``, NamedTuple pipeline outputs and retries. Kubernetes settings (GPUs, node
selectors, tolerations, secrets, /dev/shm) and CPU/memory requests have no local effect.

Two local adjustments, both outside the pipeline definition: each task's subprocess gets
``OMP_NUM_THREADS`` (half the CPUs inside the training loop, where two tasks run at once, all
but one elsewhere), and the output is filtered for the terminal (:class:`LogFilter`; the full
output goes to ``run.log``).

Run directory (``<out>/<run-id>/``, with ``<out>/latest`` pointing at it)::

    spec.yaml, pipeline.yaml    the spec and the compiled pipeline that ran
    kfp/                        kfp.local's pipeline root: every task's output artifacts
    data -> kfp/...             the dataset (links into kfp/, relative)
    members/<id> -> kfp/...     the trained members
    ensembles -> kfp/...        the ensemble artifacts
    evaluation -> kfp/...       metrics.json, report.html, report.md, summary.json
    best -> kfp/...             the selected system as a servable ensemble artifact
    registry/                   the local ArtifactStore: <name>/versions/<run-id>, <name>/champion
    summary.json, run.log       the leaderboard and everything the tasks printed
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, TextIO
from unittest import mock

from medens.config import ExperimentSpec

ANSI = re.compile(r"\x1b\[[0-9;]*m")
TIMESTAMP = re.compile(r"\d\d:\d\d:\d\d\.\d{3} - ")


@contextlib.contextmanager
def _no_indented_print():
    """kfp.local indents subprocess output by swapping ``builtins.print``; from two loop threads at
    once the swaps interleave and leave ``print`` wrapped for good. The LogFilter indents instead."""
    yield


class LogFilter(io.TextIOBase):
    """A line filter for kfp.local's output: everything to the log file, the essentials to the terminal.

    Dropped from the terminal: the KFP executor's own lines and the executor-input JSON it
    dumps, "Streamed logs:" headers, blank lines and the per-task output listings; kept: task
    start and status lines, what the components print, warnings and tracebacks. Parallel loop
    iterations stream from their own threads, so line buffers and JSON state are per thread;
    a log record (one ``write``) that lists a task's outputs is dropped whole.
    """

    def __init__(self, terminal: TextIO, log: TextIO | None = None, verbose: bool = False) -> None:
        self.terminal, self.log, self.verbose = terminal, log, verbose
        self._local = threading.local()
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        with self._lock:
            if self.log is not None:
                self.log.write(ANSI.sub("", s))
            if not self.verbose and re.search(r"Task .* outputs:\n", ANSI.sub("", s)):
                return len(s)
            buf = getattr(self._local, "buf", "") + s
            *lines, self._local.buf = buf.split("\n")
            for line in lines:
                if self.verbose or self.keep(line):
                    timestamped = TIMESTAMP.match(ANSI.sub("", line))
                    self.terminal.write(("" if timestamped else "    ") + line + "\n")
        return len(s)

    def keep(self, line: str) -> bool:
        """Whether a line reaches the terminal (updates this thread's JSON state)."""
        raw = ANSI.sub("", line).rstrip()
        text = raw.strip()
        state = getattr(self._local, "json", None)  # None, "start", or the indentation of the opening brace
        if state == "start":
            self._local.json = raw[: len(raw) - len(raw.lstrip())] if text == "{" else None
            return False
        if state is not None:
            if raw == state + "}":
                self._local.json = None
            return False
        if "Got executor_input:" in text:
            self._local.json = "start"
            return False
        return bool(text) and not text.startswith(("[KFP Executor", "---")) and not text.endswith("Streamed logs:")

    def flush(self) -> None:
        with self._lock:
            rest = getattr(self._local, "buf", "")
            if rest and (self.verbose or self.keep(rest)):
                self.terminal.write(rest)
            self._local.buf = ""
            self.terminal.flush()
            if self.log is not None:
                self.log.flush()


def _link(link: Path, target: Path) -> None:
    """A relative symlink ``link -> target`` (replacing an old link)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.is_file():
        link.unlink()
    link.symlink_to(os.path.relpath(target, link.parent))


def update_latest(out: Path, run_dir: Path) -> Path:
    """Point ``<out>/latest`` at ``run_dir`` (atomically: a new link renamed over the old one)."""
    latest = out / "latest"
    tmp = out / f".latest-{os.getpid()}"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, latest)
    return latest


def run_layout(run_dir: Path, outputs: dict[str, Any]) -> dict[str, list[str]]:
    """Links from the run directory into kfp.local's task outputs; returns what was linked."""
    made: dict[str, list[str]] = {"members": []}
    for key, name in (("dataset", "data"), ("ensembles", "ensembles"), ("evaluation", "evaluation"),
                      ("best", "best"), ("challenger", "best")):
        art = outputs.get(key)
        if art is not None and getattr(art, "path", None) and Path(art.path).exists():
            _link(run_dir / name, Path(art.path))
            made[name] = [art.path]
    for manifest in sorted((run_dir / "kfp").glob("*/*/train/model/model.json")):
        mid = json.loads(manifest.read_text()).get("member_id") or manifest.parent.parent.parent.name
        _link(run_dir / "members" / mid, manifest.parent)
        made["members"].append(mid)
    return made


def torch_threads(full_command: list[str], cpus: int | None = None) -> int:
    """Threads for one task: kfp.local runs two loop iterations (train tasks) at once, so they get
    half the CPUs each; every other task runs alone and gets all CPUs but one. Torch's intra-op
    threads degrade badly when they outnumber free cores (a fusion fit measured 22 s on one thread
    and 69 s on two on a busy 2-core machine), so the count stays at or below the cores."""
    cpus = cpus or os.cpu_count() or 1
    # the task's own output file tells where it runs (its inputs may come from a loop)
    outputs = re.findall(r'"outputFile":\s*"([^"]*executor_output\.json)"', " ".join(full_command))
    in_loop = any("-iteration-" in path for path in outputs)
    return max(1, cpus // 2) if in_loop else max(1, cpus - 1)


def _threaded_subprocess(run):
    """Wrap kfp.local's ``run_local_subprocess`` to give each task its thread count (unless the
    user set OMP_NUM_THREADS)."""

    def wrapped(full_command, env_vars=None):
        env = dict(env_vars or {})
        if "OMP_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in env:
            n = str(torch_threads(list(full_command)))
            env.update({"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n})
        return run(full_command=full_command, env_vars=env)

    return wrapped


def run_local(spec: ExperimentSpec, *, out: str | os.PathLike = "runs", run_id: str | None = None,
              pipeline: str = "auto", store_uri: str | None = None, data_uri: str = "", verbose: bool = False,
              terminal: TextIO | None = None) -> dict[str, Any]:
    """Run the pipeline for ``spec`` with kfp.local and lay out ``<out>/<run-id>/``.

    Args:
        spec: the experiment.
        out: the runs folder; the run goes to ``<out>/<run-id>`` and ``<out>/latest`` points at it.
        run_id: default ``<spec name>-<YYYYmmdd-HHMMSS>``; also the registered version.
        pipeline: ``auto`` (by task), ``classification``, ``segmentation`` or ``retraining``.
        store_uri: the model repository (default ``<run>/registry``; a shared folder or
            ``s3://`` lets retraining find a champion).
        data_uri: new data for the retraining pipeline.
        verbose: show kfp.local's full output (it always goes to ``run.log``).
        terminal: where progress goes (default ``sys.stdout``).

    Returns:
        The evaluation summary plus ``run_id``, ``run_dir``, ``uri`` (registered artifact or
        None), ``promoted`` (retraining), ``seconds`` and the linked ``layout``.
    """
    from kfp import compiler, local
    from kfp.local import logging_utils, subprocess_task_handler

    from medens.stages.results import EvaluationSummary
    from pipelines import pipeline_for

    terminal = terminal or sys.stdout
    out = Path(out)
    run_id = run_id or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = (out / run_id).resolve()
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ValueError(f"run directory {run_dir} already exists and is not empty; pick another --run-id")
    run_dir.mkdir(parents=True, exist_ok=True)
    fn = pipeline_for(spec.task, pipeline)
    spec.save(run_dir / "spec.yaml")
    compiler.Compiler().compile(fn, str(run_dir / "pipeline.yaml"))
    update_latest(out.resolve(), run_dir)
    store = store_uri or str(run_dir / "registry")
    args: dict[str, Any] = {"spec": spec.to_yaml(), "store_uri": store, "version": run_id, "deploy_model": False,
                            "store_endpoint": os.environ.get("MINIO_ENDPOINT", "")}
    if fn.name == "medens-retraining":
        args["data_uri"] = data_uri
    print(f"medens: {fn.name} pipeline for {spec.name!r} with kfp.local -> {run_dir}", file=terminal)
    print(f"        {len(spec.pairs())} (model, loss) pairs; cluster settings (GPU, node selector, secrets) "
          f"are ignored locally; full log: {run_dir / 'run.log'}", file=terminal)
    t0 = time.perf_counter()
    with open(run_dir / "run.log", "w") as log:
        filt = LogFilter(terminal, log, verbose)
        try:
            with contextlib.redirect_stdout(filt), warnings.catch_warnings(), \
                    mock.patch.object(logging_utils, "indented_print", _no_indented_print), \
                    mock.patch.object(subprocess_task_handler, "run_local_subprocess",
                                      _threaded_subprocess(subprocess_task_handler.run_local_subprocess)):
                warnings.simplefilter("ignore", RuntimeWarning)
                warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
                local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_dir / "kfp"),
                           raise_on_error=True)
                try:
                    task = fn(**args)
                except RuntimeError as e:  # kfp.local: "Pipeline ... finished with status FAILURE ..."
                    raise RuntimeError(f"{ANSI.sub('', str(e))} The task's output is above; everything is in "
                                       f"{run_dir / 'run.log'}") from e
        finally:
            filt.flush()
    seconds = round(time.perf_counter() - t0, 1)
    outputs = dict(task.outputs)
    layout = run_layout(run_dir, outputs)
    summary = EvaluationSummary.read(run_dir / "evaluation" / "summary.json").model_dump()
    promoted = outputs.get("promoted")
    uri = outputs.get("uri")
    if uri is None:  # retraining registers inside dsl.If, so the store says whether it did
        from medens.stages import registered_uri

        uri = registered_uri(store, spec.name, run_id, endpoint=os.environ.get("MINIO_ENDPOINT") or None)
    summary.update({"run_id": run_id, "run_dir": str(run_dir), "uri": uri, "promoted": promoted,
                    "seconds": seconds, "layout": layout, "pipeline": fn.name})
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def format_result(summary: dict[str, Any]) -> str:
    """The leaderboard, the winner, where things are and how to serve the result."""
    from medens.stages import leaderboard_text

    run_dir = Path(summary["run_dir"])
    try:
        shown = run_dir.relative_to(Path.cwd())
    except ValueError:
        shown = run_dir
    lines = ["", f"Leaderboard (ordered by validation {summary['gate_metric']}, the selection score; test metrics "
                 "beside it):", leaderboard_text(summary), "",
             f"selected: {summary['selected']} ({summary['selection_rule']})",
             f"reference (best member on validation): {summary['reference']}",
             *[f"skipped: {name}: {reason}" for name, reason in summary.get("skipped", {}).items()],
             f"report: {shown / 'evaluation' / 'report.html'}"]
    if summary.get("promoted") is not None:
        lines.append(f"champion gate: {'challenger promoted' if summary['promoted'] else 'champion kept'}")
    uri = summary.get("uri")
    if uri:
        model_dir = Path(uri)
        try:
            model_dir = model_dir.relative_to(Path.cwd())
        except ValueError:
            pass
        lines += [f"registered: {uri}", "serve it (KServe v1/v2 REST and /metrics on port 8080):",
                  f"  .venv/bin/medens serve --model-dir {model_dir} --http-port 8080",
                  "  or: make serve   (serves runs/latest)"]
    lines.append(f"run: {shown} ({summary['seconds']} s; {run_dir.parent / 'latest'} points here)")
    return "\n".join(lines)
