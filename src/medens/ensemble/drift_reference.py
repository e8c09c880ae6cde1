"""The ensemble's embedding drift reference (``drift_reference.npz``), and embeddings at prediction time.

An ensemble's embedding is its members' penultimate-layer embeddings (:mod:`medens.models.embed`)
concatenated in ``ensemble.json``'s member order (fold models of a cross-validated system
included), captured during the prediction's own forward. When the selected system is packaged
(:func:`medens.stages.evaluate.package_best`), a stratified sample of validation images is
embedded and stored with the artifact, covered by its checksums like every other file; the server
compares a window of recent embeddings with it (:mod:`medens.data.embedding_drift`).

Validation images, because the members never fitted them: their embeddings are what unseen
images of the training distribution give. Training images' embeddings are tighter (the members
fitted them), and a reference of them would flag fresh in-distribution images as drift. Only
when validation has fewer than ``MIN_VALIDATION`` images are training images added (recorded as
the ``source``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medens.data.embedding_drift import EmbeddingReference
from medens.ensemble.artifact import ENSEMBLE_MANIFEST, LoadedEnsemble, load_ensemble
from medens.storage.atomic import atomic_write_text
from medens.storage.checksum import checksums

DRIFT_REFERENCE_FILE = "drift_reference.npz"
REFERENCE_SIZE = 300
MIN_VALIDATION = 50


@torch.no_grad()
def predict_with_embeddings(ensemble: LoadedEnsemble, x: torch.Tensor | np.ndarray, *,
                            device: str | torch.device = "cpu"
                            ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """``LoadedEnsemble.predict`` plus the ensemble embedding ``(N, D)`` of the same forward: the
    members' embeddings in member order, from either backend (``LoadedEnsemble.member_outputs``)."""
    members, embeddings = ensemble.member_outputs(x, device=device)
    return ensemble.combine(members), members, np.concatenate([embeddings[m] for m in ensemble.members], axis=1)


def embedding_blocks(ensemble: LoadedEnsemble) -> list[tuple[str, int]]:
    """``(member id, embedding width)`` in column order."""
    from medens.models.embed import classification_layer

    return [(mid, classification_layer(m.model).in_features) for mid, m in ensemble.members.items()]


def stratified_indices(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` indices (all when there are fewer) drawn without replacement, each class in proportion
    to its count (largest remainders), every present class at least once; sorted."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / counts.sum()
    take = np.minimum(np.maximum(np.floor(exact).astype(int), 1), counts)
    for i in np.argsort(-(exact - np.floor(exact)), kind="stable"):
        if take.sum() >= n:
            break
        if take[i] < counts[i]:
            take[i] += 1
    while take.sum() > n:  # the floor of 1 per class overshot: trim the largest classes
        take[int(np.argmax(take))] -= 1
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(labels == c), size=int(t), replace=False) for c, t in zip(classes, take)]
    return np.sort(np.concatenate(picked))


def build_reference(ensemble: LoadedEnsemble, images: np.ndarray, labels: np.ndarray, *,
                    n: int = REFERENCE_SIZE, seed: int = 0, batch_size: int = 64) -> EmbeddingReference:
    """Embed a stratified sample of ``n`` of ``images`` (uint8/uint16 ``(N, H, W, C)``) with ``ensemble``."""
    from medens.data.transforms import preprocess

    idx = stratified_indices(labels, n, seed)
    chunks = []
    for s in range(0, len(idx), batch_size):
        part = np.asarray(images[idx[s:s + batch_size]])
        chunks.append(predict_with_embeddings(ensemble, preprocess(part, ensemble.input_spec))[2])
    return EmbeddingReference.build(np.concatenate(chunks), embedding_blocks(ensemble), np.asarray(labels)[idx])


def write_drift_reference(artifact_dir: str | os.PathLike, val_images: np.ndarray, val_labels: np.ndarray,
                          train_images: np.ndarray | None = None, train_labels: np.ndarray | None = None, *,
                          n: int = REFERENCE_SIZE, seed: int = 0) -> dict[str, Any] | None:
    """Store the embedding reference in a classification ensemble artifact and re-checksum it.

    Returns the ``drift_reference`` entry added to ``ensemble.json`` (None for segmentation, which
    has no penultimate embedding: its drift stays the intensity PSI).
    """
    out = Path(artifact_dir)
    ensemble = load_ensemble(out, verify=False)
    if ensemble.task != "classification":
        return None
    images, labels, source = val_images, np.asarray(val_labels), "validation"
    if len(labels) < MIN_VALIDATION and train_images is not None and train_labels is not None:
        # every validation image, topped up with a stratified sample of training images
        t_idx = stratified_indices(np.asarray(train_labels), max(n - len(labels), 0), seed)
        images = np.concatenate([np.asarray(val_images[np.arange(len(labels))]), np.asarray(train_images[t_idx])])
        labels = np.concatenate([labels, np.asarray(train_labels)[t_idx]])
        source = "validation+train"
    ref = build_reference(ensemble, images, labels, n=n, seed=seed)
    ref.save(out / DRIFT_REFERENCE_FILE)
    entry = {"file": DRIFT_REFERENCE_FILE, "n": len(ref.embeddings), "source": source, "seed": seed,
             "blocks": [list(b) for b in ref.blocks], "sigma2": ref.sigma2,
             "statistic": "MMD^2 (biased), Gaussian kernel, median-heuristic bandwidth"}
    manifest = json.loads((out / ENSEMBLE_MANIFEST).read_text())
    manifest["drift_reference"] = entry
    manifest["files"] = checksums(out, exclude=(ENSEMBLE_MANIFEST,))
    atomic_write_text(out / ENSEMBLE_MANIFEST, json.dumps(manifest, indent=2))
    return entry


def load_drift_reference(ensemble: LoadedEnsemble) -> EmbeddingReference | None:
    """The artifact's embedding reference, or None when it has none (packaged before references)."""
    entry = ensemble.manifest.get("drift_reference")
    if not entry:
        return None
    ref = EmbeddingReference.load(ensemble.path / entry["file"])
    if ref.blocks != embedding_blocks(ensemble):
        raise ValueError(f"{entry['file']} has blocks {ref.blocks}, the members embed as {embedding_blocks(ensemble)}")
    return ref
