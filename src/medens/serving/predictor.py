"""The served ensemble without the web server: load, preprocess, predict, explain.

:class:`EnsemblePredictor` is what :class:`medens.serving.model.EnsembleModel` wraps; it has no
KServe dependency, so the in-process forward it runs is the reference the endpoint is measured
against (``benchmarks/serve.py``) and the one offline evaluation uses.
"""

from __future__ import annotations

import base64
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medens.data.decode import Reading
from medens.data.transforms import preprocess
from medens.ensemble.artifact import ENSEMBLE_MANIFEST, LoadedEnsemble, load_ensemble
from medens.ensemble.conformal import load_conformal
from medens.ensemble.drift_reference import load_drift_reference, predict_with_embeddings

ENTROPY_EPS = 1e-12


CHAMPION_FILE = "champion.json"  # medens.stages.registry's pointer: {"version", "artifact", "uri", ...}


def fetch_artifact(model_dir: str, *, endpoint: str | None = None, cache: str | os.PathLike | None = None) -> Path:
    """A local ensemble directory for ``model_dir``.

    - a path as is (a run directory: its ``best/``);
    - ``s3://bucket/prefix/name`` downloaded (checksums verified) through
      :class:`medens.storage.ArtifactStore` into ``cache`` (default a temp dir);
    - a champion pointer, local or on S3 (``<name>/champion``, holding only ``champion.json``):
      resolved to the version it names, which is fetched as above. This is how the chart's
      default ``storageUri`` (``s3://.../<name>/champion``) serves: KServe's storage initializer
      puts the pointer in /mnt/models, and the server fetches the champion's version when it
      starts, so a promotion (a new pointer) is a rollout, not a change of the pod spec.
    """
    path = _fetch_once(model_dir, endpoint=endpoint, cache=cache)
    pointer = path / CHAMPION_FILE
    if not (path / ENSEMBLE_MANIFEST).is_file() and pointer.is_file():
        champion = json.loads(pointer.read_text())
        target = str(champion.get("uri") or "")
        if not target:
            raise ValueError(f"{pointer} names no artifact (its 'uri' is empty)")
        path = _fetch_once(target, endpoint=endpoint, cache=cache)
        if not (path / ENSEMBLE_MANIFEST).is_file():
            raise ValueError(f"champion pointer {model_dir!r} names {target!r}, which is not an ensemble artifact "
                             f"({ENSEMBLE_MANIFEST} is missing)")
    if not (path / ENSEMBLE_MANIFEST).is_file():
        hint = ""
        if not path.exists():
            hint = "; the path does not exist"
        elif (path / "model.json").is_file():
            hint = "; that is a single model artifact: serve an ensemble artifact (e.g. a run's best/)"
        raise ValueError(f"{path} is not an ensemble artifact ({ENSEMBLE_MANIFEST} is missing){hint}")
    return path


def _fetch_once(model_dir: str, *, endpoint: str | None, cache: str | os.PathLike | None) -> Path:
    """A local directory for ``model_dir`` (an s3:// artifact downloaded, a run directory's best/)."""
    if model_dir.startswith("s3://"):
        from medens.storage import ArtifactStore

        base, _, name = model_dir.rstrip("/").rpartition("/")
        if not name or base in ("s3:", "s3:/"):
            raise ValueError(f"{model_dir!r} must name an artifact under a bucket: s3://bucket/[prefix/]name")
        store = ArtifactStore.from_uri(base, endpoint=endpoint, create_bucket=False)
        dest = Path(cache or tempfile.mkdtemp(prefix="medens-model-")) / name.replace("/", "_")
        return store.download(name, dest)
    path = Path(model_dir)
    if not (path / ENSEMBLE_MANIFEST).is_file() and (path / "best" / ENSEMBLE_MANIFEST).is_file():
        path = path / "best"  # a run directory: its winner
    return path


def predictive_entropy(probs: np.ndarray) -> np.ndarray:
    """``-sum_k p_k log p_k`` (nats) over axis 1."""
    p = np.clip(probs, ENTROPY_EPS, 1.0)
    return -(probs * np.log(p)).sum(axis=1)


def disagreement(probs: np.ndarray, member_probs: list[np.ndarray]) -> np.ndarray:
    """Fraction of members whose label differs from the ensemble's (per pixel for segmentation)."""
    label = probs.argmax(1)
    return np.mean([m.argmax(1) != label for m in member_probs], axis=0).astype(np.float64)


class EnsemblePredictor:
    """An ensemble artifact ready to answer: ``prepare`` images, ``forward`` batches, ``explain``."""

    def __init__(self, ensemble: LoadedEnsemble, device: str | torch.device = "cpu") -> None:
        self.ensemble = ensemble
        self.device = torch.device(device)
        self.manifest = ensemble.manifest
        self.input_spec = ensemble.input_spec
        self.class_names = ensemble.class_names
        self.task = ensemble.task
        self.member_ids = list(ensemble.members)
        # conformal prediction sets (conformal.json, checksummed); None for older artifacts
        self.conformal = load_conformal(ensemble.path, self.manifest) if self.task == "classification" else None
        # the content-drift reference (penultimate embeddings of validation images), if packaged
        self.embedding_reference = load_drift_reference(ensemble) if self.task == "classification" else None

    @classmethod
    def load(cls, model_dir: str | os.PathLike, *, device: str = "cpu", endpoint: str | None = None,
             verify: bool = True, backend: str = "auto", threads: int | None = None) -> EnsemblePredictor:
        """Load (and verify the checksums of) the ensemble at a local path or ``s3://`` URI; its members
        run on ``backend`` (``auto``, ``onnx`` or ``torch``: :func:`medens.ensemble.onnx_members.resolve_backend`)
        with ``threads`` intra-op threads (ONNX Runtime; default torch's thread count)."""
        from medens.ensemble.onnx_members import attach_backend

        path = fetch_artifact(str(model_dir), endpoint=endpoint)
        ensemble = load_ensemble(path, map_location=device, verify=verify)
        attach_backend(ensemble, backend, device=device, threads=threads or torch.get_num_threads())
        return cls(ensemble, device=device)

    @property
    def backend(self) -> str:
        """``onnx`` (ONNX Runtime) or ``torch``: what runs the members' forward."""
        return self.ensemble.backend

    @property
    def reference(self) -> dict | None:
        """The training intensity histogram (``ensemble.json`` or the first member's ``model.json``)."""
        ref = self.manifest.get("reference")
        if ref is None and self.ensemble.members:
            ref = next(iter(self.ensemble.members.values())).manifest.get("reference")
        return ref

    @property
    def reading(self) -> Reading:
        """How uploads become pixels, as the members' training data did: the VOI window
        (``data.window``, applied to DICOM and volume-format uploads; ``None``: a DICOM file's own,
        else the image's full range) and the bit depth (``data.bit_depth``; 8 for artifacts that
        do not record one)."""
        window, depth = None, 8
        for member in self.ensemble.members.values():
            pre = member.manifest.get("preprocessing", {})
            if window is None and pre.get("dicom_window") is not None:
                window = (float(pre["dicom_window"][0]), float(pre["dicom_window"][1]))
            depth = max(depth, int(pre.get("bit_depth", 8)))
        return Reading(window=window, depth=depth)

    def describe(self) -> dict[str, Any]:
        return {"name": self.manifest.get("name"), "task": self.task, "method": self.manifest.get("method"),
                "members": self.member_ids, "class_names": self.class_names, "input": self.input_spec.to_dict(),
                "medens_version": self.manifest.get("medens_version"), "backend": self.backend}

    def prepare(self, images: list[np.ndarray]) -> np.ndarray:
        """Decoded images ``(H, W, C)`` of any size -> the artifact's preprocessing, ``(N, C, S, S)`` float32.

        Each image is preprocessed on its own (sizes may differ). Decoded uploads (uint8, or uint16
        for a 16-bit model) are first resized as the data stage resizes files
        (:func:`medens.data.decode.resize_pixels`), so an uploaded file gives the model exactly the
        input its training copy gave; float arrays (in 8-bit units, [0, 255], whatever the model's
        depth) are resized by :func:`medens.data.transforms.preprocess`.
        """
        from medens.data.decode import resize_pixels

        size, spec = self.input_spec.size, self.input_spec
        widen = spec.max_value / 255.0  # float arrays come in 8-bit units

        def one(img: np.ndarray) -> np.ndarray:
            if img.dtype in (np.uint8, np.uint16):
                return resize_pixels(img, size)
            return img * np.float32(widen) if widen != 1.0 else img

        return np.concatenate([preprocess(one(img)[None], spec) for img in images], axis=0)

    @torch.no_grad()
    def forward(self, x: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Ensemble forward of preprocessed ``(N, C, S, S)``; one dict per row (probabilities, members,
        entropy, disagreement, and the ensemble ``embedding`` when the artifact has a drift reference)."""
        emb = None
        if self.embedding_reference is not None:
            probs, members, emb = predict_with_embeddings(self.ensemble, x, device=self.device)
        else:
            probs, members = self.ensemble.predict(x, device=self.device)
        mlist = [members[m] for m in self.member_ids]
        ent = predictive_entropy(probs)
        dis = disagreement(probs, mlist)
        return [{"probs": probs[i], "members": {m: members[m][i] for m in self.member_ids},
                 "entropy": ent[i], "disagreement": dis[i], **({"embedding": emb[i]} if emb is not None else {})}
                for i in range(len(probs))]

    def coverage_level(self, requested: Any = None) -> float | None:
        """The stored coverage level a request asks for (``None``: the artifact's default; ``None``
        back for an artifact without conformal sets). ``ValueError`` naming the stored levels."""
        if self.conformal is None:
            if requested is not None:
                raise ValueError("coverage: this model has no conformal prediction sets (its artifact has no "
                                 "conformal.json; package it again to add them)")
            return None
        return self.conformal.level(requested)

    def prediction_sets(self, probs: np.ndarray, level: float | None = None) -> list[list[str]] | None:
        """Each row's conformal prediction set (class names, most probable first) at ``level``."""
        return None if self.conformal is None else self.conformal.prediction_sets(np.atleast_2d(probs), level)

    def _set_of(self, probs: np.ndarray, coverage: float | None) -> dict[str, Any]:
        """``{"prediction_set", "coverage"}`` of one classification row (nothing without conformal sets)."""
        if self.conformal is None:
            return {}
        level = self.conformal.level(coverage)
        return {"prediction_set": self.conformal.prediction_sets(probs[None], level)[0], "coverage": level}

    def result(self, row: dict[str, np.ndarray], *, members: bool = False, coverage: float | None = None
               ) -> dict[str, Any]:
        """One image's JSON answer (v1); with conformal sets, ``prediction_set`` and ``coverage``
        (``coverage``: a stored level, default the artifact's)."""
        probs = row["probs"]
        if self.task == "segmentation":
            mask = probs.argmax(0).astype(np.uint8)
            out = {"mask_png": png_base64(mask), "shape": list(mask.shape),
                   "class_fractions": {c: float(np.mean(mask == k)) for k, c in enumerate(self.class_names)},
                   "confidence": float(probs.max(0).mean()), "entropy": float(np.mean(row["entropy"])),
                   "disagreement": float(np.mean(row["disagreement"]))}
        else:
            label = int(probs.argmax())
            out = {"label": label, "class_name": self.class_names[label],
                   "probabilities": [float(p) for p in probs], "confidence": float(probs[label]),
                   "entropy": float(row["entropy"]), "disagreement": float(row["disagreement"])}
            out.update(self._set_of(probs, coverage))
        if members:
            out["members"] = {m: np.asarray(p, dtype=np.float64).tolist() for m, p in row["members"].items()} \
                if self.task != "segmentation" else {m: float(np.mean(p.argmax(0) == probs.argmax(0)))
                                                     for m, p in row["members"].items()}
        return out

    def explain(self, images: list[np.ndarray], class_idx: int | None = None,
                on_rows: Callable[[list[dict[str, Any]]], None] | None = None,
                coverage: float | None = None) -> list[dict[str, Any]]:
        """Grad-CAM of the ensemble for its label (or ``class_idx``): the members' maps summed with
        the weights the ensemble gives them for that class (:mod:`medens.ensemble.contribution`),
        then normalised to [0, 1], as a base64 PNG overlay on the image as sent; with the
        uncertainty of the prediction (confidence, entropy, disagreement), the conformal
        ``prediction_set`` and its ``coverage`` (a stored level, default the artifact's) when the
        artifact has sets, and the member weights. ``on_rows`` receives the forward's rows (the
        server observes their embeddings for drift)."""
        from medens.ensemble.contribution import member_weights
        from medens.evaluation.explain import overlay

        if self.task != "classification":
            raise ValueError("explain (Grad-CAM) is available for classification ensembles only")
        x = self.prepare(images)
        rows = self.forward(x)
        if on_rows is not None:
            on_rows(rows)
        labels = np.array([int(r["probs"].argmax()) for r in rows]) if class_idx is None else \
            np.full(len(rows), int(class_idx))
        k = len(self.class_names)
        if labels.min() < 0 or labels.max() >= k:
            raise ValueError(f"class index must be in [0, {k}), got {int(labels.max())}")
        members = {m: np.stack([r["members"][m] for r in rows]) for m in self.member_ids}
        weights, rule = member_weights(self.ensemble, members, labels)
        cams = self._weighted_cam(x, labels, weights)
        out = []
        for img, cam, lab, row, w in zip(images, cams, labels, rows, weights):
            shown = img if img.dtype == np.uint16 else np.clip(np.rint(img), 0, 255).astype(np.uint8)
            probs = row["probs"]
            out.append({"label": int(lab), "class_name": self.class_names[int(lab)],
                        "probabilities": [float(p) for p in probs], "confidence": float(probs.max()),
                        "entropy": float(row["entropy"]), "disagreement": float(row["disagreement"]),
                        **self._set_of(probs, coverage),
                        "member_weights": {m: float(v) for m, v in zip(self.member_ids, w)}, "weighting": rule,
                        "overlay_png": png_base64(overlay(shown, cam)), "cam_shape": list(cam.shape)})
        return out

    def _weighted_cam(self, x: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``normalize(sum_m w[i, m] * cam_m[i])``; members weighing 0 for every image are not run."""
        from medens.evaluation.explain import grad_cam, normalize_maps

        total = np.zeros((len(x), *x.shape[2:]), dtype=np.float64)
        with torch.enable_grad():
            for j, member in enumerate(self.ensemble.members.values()):
                if np.any(weights[:, j] > 0):
                    total += weights[:, j, None, None] * grad_cam(member.model, x, class_idx=labels)
        return normalize_maps(total)


def png_base64(array: np.ndarray) -> str:
    """uint8 ``(H, W)`` or ``(H, W, 3)`` -> base64 PNG text."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
