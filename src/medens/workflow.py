"""Stage functions over artifact directories: what the Kubeflow components call.

Each Kubeflow component (``components/``) is a thin wrapper that calls one function here (or in
:mod:`medens.experiment`) with the local paths of its input and output artifacts. Compared with
:func:`medens.experiment.run_experiment`, which keeps a whole experiment in one run directory,
these functions take and give one artifact directory each, so every stage can run in its own
container:

- :func:`training_grid`: the members to train, one per (model, loss) pair, plus study 3's
  sampling-method member per pair when ``data.sampling_method`` is set (segmentation);
- :func:`prepare_data`, :func:`train_member`, :func:`build_ensembles`, :func:`evaluate_systems`;
- :func:`package_best`: the winner as a servable ensemble artifact (a single member is wrapped);
- :func:`register_artifact` / :func:`fetch_champion` / :func:`champion_gate`: the model
  repository in an :class:`~medens.storage.ArtifactStore`. Layout under the store root::

      <name>/versions/<version>/   ensemble artifacts (ensemble.json + members/), one per registration
      <name>/champion/             champion.json: which version is serving (written last)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from medens.config import ComponentSpec, ExperimentSpec, parse_spec
from medens.storage.atomic import atomic_write_text

SAMPLING_SUFFIX = "__sampling"
CHAMPION = "champion"
CHAMPION_FILE = "champion.json"


def spec_from_text(text: str) -> ExperimentSpec:
    """An :class:`ExperimentSpec` from its YAML (or JSON) text, as the pipelines pass it."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"experiment spec text is not valid YAML: {e}") from e
    return parse_spec(data, source="pipeline parameter spec")


def training_grid(spec: ExperimentSpec) -> list[dict[str, Any]]:
    """One entry per member to train: ``{"id", "model", "loss", "train_on"}`` (JSON-ready).

    Every (model, loss) pair trains on ``train``. With ``data.sampling_method`` (study 3,
    Roshan et al. 2024: a main U-Net on the images and a second one on lesion-centred crops,
    both with the same loss) each model also gets a sampling-method member trained on
    ``train_crops`` with the spec's first loss, id suffixed ``__sampling``.
    """
    from medens.experiment import member_id

    out = []
    for model, loss in spec.pairs():
        out.append({"id": member_id(model, loss), "model": model.model_dump(mode="json"),
                    "loss": loss.model_dump(mode="json"), "train_on": "train"})
    if spec.task == "segmentation" and spec.data.sampling_method:
        loss = spec.losses[0]
        for model in spec.models:
            out.append({"id": member_id(model, loss) + SAMPLING_SUFFIX, "model": model.model_dump(mode="json"),
                        "loss": loss.model_dump(mode="json"), "train_on": "train_crops"})
    return out


def _store(uri: str, endpoint: str | None = None, **options: Any):
    from medens.storage import ArtifactStore

    return ArtifactStore.from_uri(uri, endpoint=endpoint or None, **options)


def prepare_data(spec: ExperimentSpec, out_dir: str | os.PathLike, *, data_uri: str = "",
                 endpoint: str | None = None) -> dict[str, Any]:
    """The data stage into ``out_dir`` (a ``SplitData`` directory plus ``spec.yaml``).

    Args:
        spec: the experiment.
        out_dir: the dataset directory to write.
        data_uri: new data for retraining, replacing ``data.path``: a local folder, or
            ``s3://bucket/prefix`` whose objects are downloaded first (MinIO; endpoint and
            credentials from the environment).
        endpoint: S3 endpoint for ``data_uri`` (default ``MINIO_ENDPOINT``).

    Returns:
        The dataset summary (class counts per split, imbalance ratio).
    """
    from medens.data import build_dataset

    tmp = None
    try:
        if data_uri:
            path = data_uri
            if data_uri.startswith("s3://"):
                bucket, _, key = data_uri[5:].partition("/")
                tmp = tempfile.mkdtemp(prefix="medens-data-")
                files = _store(f"s3://{bucket}", endpoint, create_bucket=False).sync_down(key.strip("/"), tmp)
                if not files:
                    raise ValueError(f"no objects under {data_uri}")
                path = tmp
            spec = spec.model_copy(update={"data": spec.data.model_copy(update={"path": path})})
        data = build_dataset(spec)
        out = data.save(out_dir)
        spec.save(out / "spec.yaml")
        return data.summary()
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def train_member(spec: ExperimentSpec, data_dir: str | os.PathLike, member: dict[str, Any] | str,
                 out_dir: str | os.PathLike, *, progress: bool | None = None) -> Path:
    """Train one member of :func:`training_grid` and save its validation and test predictions.

    Resumes from ``out_dir/checkpoint.pt`` when present, so a retried task continues where the
    failed attempt stopped. The member id is recorded in ``model.json`` (``member_id``).
    """
    from medens.data.types import SplitData
    from medens.training import fit, predict_split

    m = json.loads(member) if isinstance(member, str) else dict(member)
    data = SplitData.load(data_dir)
    res = fit(ComponentSpec.model_validate(m["model"]), ComponentSpec.model_validate(m["loss"]), data, spec.training,
              out_dir, seed=spec.seed, resume=True, normalize=spec.data.normalize, train_on=m.get("train_on", "train"),
              progress=progress, extra_manifest={"member_id": m["id"]})
    test_path = res.path / "predictions" / "test.npz"
    if not test_path.is_file():
        predict_split(res.path, data.test).save(test_path)
    return res.path


def member_dirs(paths: list[str | os.PathLike]) -> dict[str, Path]:
    """``member id -> directory`` for model artifacts (id from ``model.json``, else the folder name)."""
    from medens.models.artifact import read_manifest

    out: dict[str, Path] = {}
    for p in paths:
        d = Path(p)
        mid = read_manifest(d).get("member_id") or d.name
        if mid in out:
            raise ValueError(f"member {mid!r} appears twice: {out[mid]} and {d}")
        out[mid] = d
    return dict(sorted(out.items()))


def ensemble_dirs(directory: str | os.PathLike) -> dict[str, Path]:
    """``name -> directory`` of the ensemble artifacts directly under ``directory``."""
    d = Path(directory)
    if not d.is_dir():
        return {}
    return {p.name: p for p in sorted(d.iterdir()) if (p / "ensemble.json").is_file()}


def build_ensembles(spec: ExperimentSpec, data_dir: str | os.PathLike, member_paths: list[str | os.PathLike],
                    out_dir: str | os.PathLike) -> dict[str, Path]:
    """Every ensemble of the spec from the members' saved predictions, into ``out_dir/<name>/``."""
    from medens.experiment import stage_ensemble

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return stage_ensemble(spec, member_dirs(member_paths), out, data_dir=data_dir)


def evaluate_systems(spec: ExperimentSpec, data_dir: str | os.PathLike, member_paths: list[str | os.PathLike],
                     ensembles_dir: str | os.PathLike, out_dir: str | os.PathLike,
                     best_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Score every member and ensemble on test and write the report; package the winner.

    Writes ``metrics.json``, ``kfp_metrics.json`` (classification), ``report.html``,
    ``report.md`` and ``summary.json`` (the leaderboard) into ``out_dir``; with ``best_dir``, the
    best system on the gate metric becomes a servable ensemble artifact there.
    """
    from medens.evaluation.report import stage_evaluate

    members = member_dirs(member_paths)
    ensembles = ensemble_dirs(ensembles_dir)
    summary = stage_evaluate(spec, data_dir, members, ensembles, out_dir)
    out = Path(out_dir)
    summary["members"] = list(members)
    summary["ensembles"] = list(ensembles)
    metrics = json.loads((out / "metrics.json").read_text())
    best = metrics["systems"][summary["best"]]["metrics"]
    summary["best_metrics"] = {k: float(v) for k, v in best.items()
                               if isinstance(v, int | float) and not isinstance(v, bool) and v == v}
    summary["report"] = "report.html"
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
    if best_dir is not None:
        package_best(out, members, ensembles, best_dir)
    return summary


def package_best(evaluation_dir: str | os.PathLike, members: dict[str, Path], ensembles: dict[str, Path],
                 out_dir: str | os.PathLike) -> Path:
    """The best system of ``evaluation_dir/metrics.json`` as an ensemble artifact in ``out_dir``.

    An ensemble is copied without its saved predictions; a single member is wrapped with
    ``write_ensemble(combiner=None)``. ``ensemble.json`` gains ``evaluation``: the experiment,
    gate metric and the test metrics that made it win.
    """
    from medens.ensemble.artifact import ENSEMBLE_MANIFEST, write_ensemble

    metrics = json.loads((Path(evaluation_dir) / "metrics.json").read_text())
    best = metrics["best"]
    if best not in ensembles and best not in members:
        raise ValueError(f"best system {best!r} is neither a member nor an ensemble of this run")
    entry = metrics["systems"][best]
    test_metrics = {k: v for k, v in entry["metrics"].items() if isinstance(v, int | float) or v is None}
    evaluation = {"experiment": metrics.get("experiment"), "system": best, "kind": entry["kind"],
                  "gate_metric": metrics.get("gate_metric"), "test_metrics": test_metrics,
                  "n_test": metrics.get("n_test")}
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    if best in ensembles:
        src = Path(ensembles[best])
        shutil.copytree(src, out, ignore=shutil.ignore_patterns("predictions"))
        manifest = json.loads((out / ENSEMBLE_MANIFEST).read_text())
        manifest["evaluation"] = evaluation
        atomic_write_text(out / ENSEMBLE_MANIFEST, json.dumps(manifest, indent=2))
    else:
        write_ensemble(out, name=best, member_dirs={best: members[best]}, combiner=None, gate_metrics=test_metrics,
                       extra={"evaluation": evaluation})
    return out


def register_artifact(artifact_dir: str | os.PathLike, store_uri: str, name: str, *, version: str = "",
                      endpoint: str | None = None) -> dict[str, str]:
    """Publish an ensemble artifact as ``<name>/versions/<version>`` and make it the champion.

    The champion pointer (``<name>/champion/champion.json``) is published after the version, so
    a reader never finds a champion whose artifact is incomplete.

    Returns:
        ``{"uri", "name", "version", "champion_uri"}``; ``uri`` is what KServe's storageUri takes.
    """
    from medens.ensemble.artifact import read_ensemble_manifest

    read_ensemble_manifest(artifact_dir)  # refuse anything that is not an ensemble artifact
    version = version or time.strftime("%Y%m%d-%H%M%S")
    store = _store(store_uri, endpoint)
    artifact = f"{name}/versions/{version}"
    uri = store.publish(artifact_dir, artifact)
    with tempfile.TemporaryDirectory(prefix="medens-champion-") as tmp:
        pointer = {"name": name, "version": version, "artifact": artifact, "uri": uri,
                   "registered": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        atomic_write_text(Path(tmp) / CHAMPION_FILE, json.dumps(pointer, indent=2))
        champion_uri = store.publish(tmp, f"{name}/{CHAMPION}")
    return {"uri": uri, "name": name, "version": version, "champion_uri": champion_uri}


def registered_uri(store_uri: str, name: str, version: str, *, endpoint: str | None = None) -> str | None:
    """The URI of ``<name>/versions/<version>`` when it is published in the store, else ``None``."""
    store = _store(store_uri, endpoint)
    artifact = f"{name}/versions/{version}"
    return f"{store.uri.rstrip('/')}/{artifact}" if store.exists(artifact) else None


def fetch_champion(store_uri: str, name: str, dest: str | os.PathLike, *,
                   endpoint: str | None = None) -> dict[str, Any] | None:
    """Download the serving ensemble of ``name`` to ``dest``; ``None`` when there is none yet.

    Returns:
        The champion pointer (``name``, ``version``, ``artifact``, ``uri``) with ``path`` added.
    """
    store = _store(store_uri, endpoint)
    if not store.exists(f"{name}/{CHAMPION}"):
        return None
    with tempfile.TemporaryDirectory(prefix="medens-champion-") as tmp:
        pointer = json.loads((store.download(f"{name}/{CHAMPION}", Path(tmp) / "p") / CHAMPION_FILE).read_text())
    path = store.download(pointer["artifact"], dest)
    return {**pointer, "path": str(path)}


def gate_metric(spec: ExperimentSpec) -> str:
    """The metric that ranks systems and gates promotion: ``evaluation.gate_metric``; Dice for
    segmentation unless the gate metric is ``dice`` or ``iou`` (as the report ranks them)."""
    m = spec.evaluation.gate_metric
    if spec.task == "segmentation":
        return m if m in ("dice", "iou") else "dice"
    return m


def champion_gate(spec: ExperimentSpec, challenger_dir: str | os.PathLike, data_dir: str | os.PathLike, *,
                  store_uri: str = "", name: str = "", endpoint: str | None = None,
                  split: str = "test") -> dict[str, Any]:
    """Compare the challenger with the champion registered under ``name`` on the same images.

    The gate metric, ``alpha``, bootstrap resamples and seed come from the spec's
    ``evaluation`` section; the store and name default to ``store.uri`` and the spec's name.

    Returns:
        :func:`medens.evaluation.gate.compare_ensembles`'s decision plus ``champion_version``.
    """
    from medens.evaluation.gate import compare_ensembles

    ev = spec.evaluation
    with tempfile.TemporaryDirectory(prefix="medens-gate-") as tmp:
        champ = fetch_champion(store_uri or spec.store.uri, name or spec.name, Path(tmp) / "champion",
                               endpoint=endpoint or spec.store.endpoint)
        out = compare_ensembles(champ["path"] if champ else None, challenger_dir, data_dir, split,
                                metric=gate_metric(spec), alpha=ev.alpha, n_resamples=ev.bootstrap, seed=spec.seed)
    out["champion_version"] = champ["version"] if champ else None
    return out


def leaderboard_text(summary: dict[str, Any], limit: int = 15) -> str:
    """The leaderboard of :func:`evaluate_systems`'s summary as aligned text columns."""
    rows = summary.get("leaderboard", [])[:limit]
    if not rows:
        return "(no systems)"
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys).rstrip()]
    lines += ["  ".join(str(r[k]).ljust(widths[k]) for k in keys).rstrip() for r in rows]
    return "\n".join(lines)


def export_report(evaluation_dir: str | os.PathLike, html_path: str | os.PathLike,
                  markdown_path: str | os.PathLike | None = None) -> str:
    """Copy the report out of an evaluation directory (for KFP's HTML/Markdown artifacts).

    Returns:
        The leaderboard as text.
    """
    d = Path(evaluation_dir)
    for src, dest in (("report.html", html_path), ("report.md", markdown_path)):
        if dest is not None:
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(d / src, dest)
    return leaderboard_text(json.loads((d / "summary.json").read_text()))
