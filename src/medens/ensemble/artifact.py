"""Ensemble artifacts (docs/architecture.md section 5.4): ``ensemble.json`` plus ``members/<id>/`` model artifacts.

This directory is what KServe mounts at ``/mnt/models``. ``ensemble.json`` names the method,
member ids, the fitted combiner (weights or stacking coefficients as plain numbers, no pickles),
class names, the preprocessing every member shares, and gate metrics; it is written last, with
the sha256 of every other file. A model-level (fusion) ensemble is one member, method ``single``.
A packaged ``best/`` also holds ``members/<id>/model.onnx`` (:mod:`medens.ensemble.onnx_members`),
which ``LoadedEnsemble.runners`` may run instead of the PyTorch members.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from medens import __version__
from medens.ensemble.manifest import ENSEMBLE_MANIFEST, read_ensemble_manifest
from medens.models.artifact import LoadedModel, ManifestView, load_artifact, read_manifest, verify_checksums
from medens.models.embed import capture_embeddings
from medens.storage.atomic import atomic_write_text
from medens.storage.checksum import checksums

MEMBER_FILES = ("model.json", "weights.pt")


def write_ensemble(
    out_dir: str | os.PathLike,
    *,
    name: str,
    member_dirs: dict[str, str | os.PathLike],
    combiner: dict[str, Any] | None,
    gate_metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    fold_members: dict[str, list[str]] | None = None,
) -> Path:
    """Write an ensemble artifact: copies of the member artifacts and ``ensemble.json`` last.

    Args:
        out_dir: the directory to create (replaced if it exists).
        name: the ensemble's name (e.g. ``weighted-top3``).
        member_dirs: member id -> model artifact directory, in the combiner's member order.
        combiner: ``PredictionEnsemble.to_dict()`` / ``SegmentationEnsemble.to_dict()``, or
            ``None`` for a single model (a fused model-level ensemble).
        gate_metrics: validation (or test) figures that decide promotion.
        extra: more keys for ``ensemble.json``.
        fold_members: a cross-validated system whose combiner is not a weighted average (vote,
            stacking): combiner member id -> its fold models' ids in ``member_dirs``; the loaded
            ensemble averages each member's fold models before the combiner.
    """
    if not member_dirs:
        raise ValueError("an ensemble needs at least one member")
    manifests = {mid: read_manifest(p) for mid, p in member_dirs.items()}
    first_id, first = next(iter(manifests.items()))
    for mid, m in manifests.items():
        for key in ("class_names", "input", "task"):
            if m.get(key) != first.get(key):
                raise ValueError(f"member {mid!r} differs from {first_id!r} in {key}: {m.get(key)} vs {first.get(key)}")
    if fold_members is not None:
        unknown = [f for fs in fold_members.values() for f in fs if f not in member_dirs]
        if unknown or (combiner is not None and list(combiner.get("member_ids", [])) != list(fold_members)):
            raise ValueError(f"fold members {fold_members} do not match the combiner {combiner and combiner.get('member_ids')} "
                             f"and the members {list(member_dirs)}")
    elif combiner is not None and list(combiner.get("member_ids", member_dirs)) != list(member_dirs):
        raise ValueError(f"combiner members {combiner.get('member_ids')} differ from {list(member_dirs)}")
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    for mid, src in member_dirs.items():
        dest = out / "members" / mid
        dest.mkdir(parents=True)
        for f in MEMBER_FILES:
            shutil.copy2(Path(src) / f, dest / f)
    manifest = {
        "kind": "ensemble",
        "name": name,
        "task": first.get("task", "classification"),
        "method": combiner["method"] if combiner else "single",
        "members": list(member_dirs),
        "combiner": combiner,
        "class_names": first["class_names"],
        "input": first["input"],
        # the first member's training intensity histogram: the drift reference of a server
        "reference": first.get("reference"),
        "gate_metrics": gate_metrics or {},
        **({"fold_members": fold_members} if fold_members is not None else {}),
        "medens_version": __version__,
        **(extra or {}),
    }
    manifest["files"] = checksums(out, exclude=(ENSEMBLE_MANIFEST,))
    atomic_write_text(out / ENSEMBLE_MANIFEST, json.dumps(manifest, indent=2, default=_plain))
    return out


def _plain(o: Any) -> Any:
    if isinstance(o, np.generic | np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class MemberRunner(Protocol):
    """Another backend's member forward (``medens.ensemble.onnx_members.OnnxMember``): the member's
    probabilities, as ``LoadedModel.probs`` defines them, of preprocessed ``(N, C, H, W)``, and with
    them its embedding as ``medens.models.embed`` defines it (when ``has_embedding``)."""

    has_embedding: bool

    def probs(self, x: np.ndarray) -> np.ndarray: ...

    def outputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class LoadedEnsemble(ManifestView):
    """Members and combiner rebuilt from an ensemble artifact."""

    manifest: dict
    members: dict[str, LoadedModel]
    combiner: Any | None
    path: Path
    #: member id -> another backend's forward (ONNX Runtime); None: the PyTorch members
    runners: dict[str, MemberRunner] | None = None

    @property
    def backend(self) -> str:
        return "torch" if self.runners is None else "onnx"

    @torch.no_grad()
    def member_probs(self, x: torch.Tensor | np.ndarray, *, device: str | torch.device = "cpu"
                     ) -> dict[str, np.ndarray]:
        """Each member's probabilities (float64) for preprocessed inputs ``(N, C, H, W)``."""
        if self.runners is not None:
            xn = np.ascontiguousarray(x.cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
            return {mid: self.runners[mid].probs(xn).astype(np.float64) for mid in self.members}
        t = torch.as_tensor(x).to(device)
        return {mid: m.probs(t).cpu().numpy().astype(np.float64) for mid, m in self.members.items()}

    @torch.no_grad()
    def member_outputs(self, x: torch.Tensor | np.ndarray, *, device: str | torch.device = "cpu"
                       ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Each member's probabilities (float64) and embedding ``(N, D)`` (float32,
        :mod:`medens.models.embed`) of one forward, from the runners when attached."""
        if self.runners is not None:
            xn = np.ascontiguousarray(x.cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
            out = {mid: self.runners[mid].outputs(xn) for mid in self.members}
            return {m: p.astype(np.float64) for m, (p, _) in out.items()}, {m: e for m, (_, e) in out.items()}
        with capture_embeddings([m.model for m in self.members.values()]) as captured:
            probs = self.member_probs(x, device=device)
        if any(c is None for c in captured):
            raise RuntimeError("a member's classification layer did not run during the forward")
        return probs, {mid: c for mid, c in zip(self.members, captured) if c is not None}

    def predict(self, x: torch.Tensor | np.ndarray, *, device: str | torch.device = "cpu"
                ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Ensemble probabilities and per-member probabilities for preprocessed inputs ``(N, C, H, W)``."""
        member_probs = self.member_probs(x, device=device)
        return self.combine(member_probs), member_probs

    def combine(self, member_probs: dict[str, np.ndarray]) -> np.ndarray:
        """The ensemble's probabilities from its members' (fold models averaged, then the combiner)."""
        inputs = member_probs
        folds = self.manifest.get("fold_members")
        if folds:  # a cross-validated member: the mean of its fold models
            inputs = {mid: np.mean([member_probs[f] for f in fids], axis=0) for mid, fids in folds.items()}
        if self.combiner is None:
            probs = next(iter(inputs.values()))
        else:
            probs = self.combiner.predict_proba([inputs[mid] for mid in self.combiner.member_ids])
        return np.asarray(probs, dtype=np.float64)


def load_ensemble(path: str | os.PathLike, *, map_location: str | torch.device = "cpu",
                  verify: bool = True) -> LoadedEnsemble:
    """Rebuild an ensemble artifact (checksums verified; a mismatch names the file)."""
    d = Path(path)
    manifest = read_ensemble_manifest(d)
    if verify:
        verify_checksums(d, manifest.get("files", {}), ENSEMBLE_MANIFEST)
    members = {mid: load_artifact(d / "members" / mid, map_location=map_location, verify=False)
               for mid in manifest["members"]}
    combiner = None
    if manifest.get("combiner"):
        if manifest.get("task") == "segmentation":
            from medens.ensemble.segmentation import SegmentationEnsemble as Combiner
        else:
            from medens.ensemble.prediction import PredictionEnsemble as Combiner
        combiner = Combiner.from_dict(manifest["combiner"])
    return LoadedEnsemble(manifest=manifest, members=members, combiner=combiner, path=d)
