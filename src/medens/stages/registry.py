"""The model repository stages: register, fetch the champion, gate a challenger, keep the history.

Layout under the store root (an :class:`~medens.storage.ArtifactStore`: a folder or ``s3://``)::

    <name>/versions/<version>/   ensemble artifacts (ensemble.json + members/), one per registration
    <name>/champion/             champion.json: which version is serving (written last)
    <name>/history/<time>-<version>/decision.json   one per champion-gate decision, never rewritten
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from medens.config import ExperimentSpec
from medens.stages.data import _store, dataset_lineage
from medens.stages.evaluate import gate_metric
from medens.stages.results import GateDecision
from medens.storage.atomic import atomic_write_text

CHAMPION = "champion"
CHAMPION_FILE = "champion.json"
HISTORY = "history"
DECISION_FILE = "decision.json"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _publish_json(store, name: str, filename: str, payload: dict[str, Any]) -> str:
    with tempfile.TemporaryDirectory(prefix="medens-registry-") as tmp:
        atomic_write_text(Path(tmp) / filename, json.dumps(payload, indent=2, default=str))
        return store.publish(tmp, name)


def register_artifact(artifact_dir: str | os.PathLike, store_uri: str, name: str, *, version: str = "",
                      endpoint: str | None = None) -> dict[str, str]:
    """Publish an ensemble artifact as ``<name>/versions/<version>`` and make it the champion.

    The champion pointer (``<name>/champion/champion.json``, with the data fingerprint the
    artifact was trained on) is published after the version, so a reader never finds a
    champion whose artifact is incomplete.

    Returns:
        ``{"uri", "name", "version", "champion_uri"}``; ``uri`` is what KServe's storageUri takes.
    """
    from medens.ensemble.manifest import read_ensemble_manifest

    manifest = read_ensemble_manifest(artifact_dir)  # refuse anything that is not an ensemble artifact
    version = version or time.strftime("%Y%m%d-%H%M%S")
    store = _store(store_uri, endpoint)
    artifact = f"{name}/versions/{version}"
    uri = store.publish(artifact_dir, artifact)
    lineage = manifest.get("lineage") or {}
    pointer = {"name": name, "version": version, "artifact": artifact, "uri": uri, "registered": _now(),
               "data_fingerprint": lineage.get("data_fingerprint"), "data_source": lineage.get("data_source"),
               "system": (manifest.get("evaluation") or {}).get("system")}
    champion_uri = _publish_json(store, f"{name}/{CHAMPION}", CHAMPION_FILE, pointer)
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
        The champion pointer (``name``, ``version``, ``artifact``, ``uri``, ...) with ``path`` added.
    """
    store = _store(store_uri, endpoint)
    if not store.exists(f"{name}/{CHAMPION}"):
        return None
    with tempfile.TemporaryDirectory(prefix="medens-champion-") as tmp:
        pointer = json.loads((store.download(f"{name}/{CHAMPION}", Path(tmp) / "p") / CHAMPION_FILE).read_text())
    path = store.download(pointer["artifact"], dest)
    return {**pointer, "path": str(path)}


def record_decision(store_uri: str, name: str, decision: GateDecision | dict[str, Any], *,
                    endpoint: str | None = None) -> str:
    """Append one gate decision to ``<name>/history/`` (a new artifact each time; nothing is rewritten)."""
    decision = GateDecision.model_validate(decision) if isinstance(decision, dict) else decision
    store = _store(store_uri, endpoint)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time_ns() % 1_000_000_000:09d}"
    version = str(decision.challenger_version or "unversioned").replace("/", "_")
    with tempfile.TemporaryDirectory(prefix="medens-registry-") as tmp:
        decision.write(Path(tmp) / DECISION_FILE)
        return store.publish(tmp, f"{name}/{HISTORY}/{stamp}-{version}")


def registry_history(store_uri: str, name: str, *, endpoint: str | None = None) -> list[GateDecision]:
    """Every gate decision recorded for ``name``, oldest first."""
    store = _store(store_uri, endpoint)
    out = []
    with tempfile.TemporaryDirectory(prefix="medens-history-") as tmp:
        for i, entry in enumerate(store.list(f"{name}/{HISTORY}/")):
            d = store.download(entry, Path(tmp) / str(i))
            out.append(GateDecision.read(d / DECISION_FILE))
    return out


def champion_gate(spec: ExperimentSpec, challenger_dir: str | os.PathLike, data_dir: str | os.PathLike, *,
                  store_uri: str = "", name: str = "", endpoint: str | None = None, split: str = "test",
                  version: str = "") -> GateDecision:
    """Compare the challenger with the champion registered under ``name`` on the same images, and
    append the decision to the model's history.

    The gate metric, ``alpha``, bootstrap resamples and seed come from the spec's
    ``evaluation`` section; the store and name default to ``store.uri`` and the spec's name.
    The challenger is the system the evaluation stage selected on validation; the test split
    of the new data is what both systems are compared on.

    Returns:
        :func:`medens.evaluation.gate.compare_ensembles`'s decision plus ``champion_version``,
        ``challenger_version``, ``data_fingerprint`` and ``time`` (what the history records), as a
        :class:`~medens.stages.results.GateDecision`.
    """
    from medens.ensemble.artifact import read_ensemble_manifest
    from medens.evaluation.gate import compare_ensembles

    ev = spec.evaluation
    store_uri, name = store_uri or spec.store.uri, name or spec.name
    endpoint = endpoint or spec.store.endpoint
    with tempfile.TemporaryDirectory(prefix="medens-gate-") as tmp:
        champ = fetch_champion(store_uri, name, Path(tmp) / "champion", endpoint=endpoint)
        out = compare_ensembles(champ["path"] if champ else None, challenger_dir, data_dir, split,
                                metric=gate_metric(spec), alpha=ev.alpha, n_resamples=ev.bootstrap, seed=spec.seed)
    evaluation = read_ensemble_manifest(challenger_dir).get("evaluation") or {}
    decision = GateDecision.model_validate({
        **out, "champion_version": champ["version"] if champ else None, "challenger_version": version or None,
        "challenger_system": evaluation.get("system"), "time": _now(),
        "decision": "promote" if out["promote"] else "keep champion", **dataset_lineage(data_dir)})
    record_decision(store_uri, name, decision, endpoint=endpoint)
    return decision
