"""Content drift: a kernel two-sample test of recent embeddings against a stored reference sample.

The intensity PSI (:mod:`medens.data.drift`) is blind to a change of content at equal brightness.
This module compares penultimate-layer embeddings (:mod:`medens.models.embed`) instead, with the
maximum mean discrepancy (Gretton, Borgwardt, Rasch, Schoelkopf, Smola. A Kernel Two-Sample Test.
JMLR 13, 2012):

- ``MMD^2_b = mean k(x, x') + mean k(y, y') - 2 mean k(x, y)`` (the biased V-statistic, eq. 5 of
  the paper) over the reference ``x`` (n rows) and the window ``y`` (m rows), with the Gaussian
  kernel ``k(a, b) = exp(-||a - b||^2 / (2 sigma^2))``.
- ``sigma^2`` is the median of the reference's pairwise squared distances (the median
  heuristic), fixed when the reference is built, so the statistic means the same at every test.
- The p-value is a permutation test: the pooled n + m rows are relabelled ``permutations``
  times and ``p = (1 + #{MMD^2 of a relabelling >= the observed}) / (1 + permutations)``, which is
  a valid p-value under exchangeability (P(p <= a) <= a).

An ensemble's embedding concatenates its members' blocks (different architectures have different
widths, so they cannot be averaged). Each dimension is standardised with the reference's mean and
standard deviation and each block is divided by ``sqrt(its width)``, so every member contributes
the same expected squared distance whatever its width or scale.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STD_FLOOR = 1e-6
"""Standard deviations below this (constant dimensions) are treated as 1: they add no distance."""


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``||a_i - b_j||^2`` for rows of ``a`` ``(n, d)`` and ``b`` ``(m, d)`` (float64, clipped at 0)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d2, 0.0)


def median_sigma2(z: np.ndarray) -> float:
    """The median heuristic: the median of the pairwise squared distances between distinct rows."""
    n = len(z)
    if n < 2:
        raise ValueError(f"the median heuristic needs at least 2 reference rows, got {n}")
    d2 = squared_distances(z, z)[np.triu_indices(n, k=1)]
    sigma2 = float(np.median(d2))
    if sigma2 <= 0.0:  # more than half the pairs coincide: the mean of the non-zero ones, else 1
        nonzero = d2[d2 > 0]
        sigma2 = float(nonzero.mean()) if len(nonzero) else 1.0
    return sigma2


def gaussian_kernel(a: np.ndarray, b: np.ndarray, sigma2: float) -> np.ndarray:
    """``exp(-||a_i - b_j||^2 / (2 sigma^2))``."""
    return np.exp(-squared_distances(a, b) / (2.0 * sigma2))


def mmd2_biased(x: np.ndarray, y: np.ndarray, sigma2: float) -> float:
    """``MMD^2_b`` of samples ``x`` and ``y`` with the Gaussian kernel of bandwidth ``sigma2``."""
    return float(gaussian_kernel(x, x, sigma2).mean() + gaussian_kernel(y, y, sigma2).mean()
                 - 2.0 * gaussian_kernel(x, y, sigma2).mean())


def mmd_permutation_test(x: np.ndarray, y: np.ndarray, sigma2: float, permutations: int = 200,
                         rng: np.random.Generator | int | None = 0) -> tuple[float, float]:
    """``(MMD^2_b, permutation p-value)`` of ``x`` against ``y`` (see the module docstring).

    One kernel matrix of the pooled rows serves every relabelling: with ``w = (1/n, ..., 1/n,
    -1/m, ..., -1/m)`` the statistic is ``w^T K w``, and a relabelling permutes ``w``.
    """
    n, m = len(x), len(y)
    if n < 1 or m < 1:
        raise ValueError(f"both samples need rows, got {n} and {m}")
    if permutations < 1:
        raise ValueError(f"permutations must be at least 1, got {permutations}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    pooled = np.concatenate([np.asarray(x, np.float64), np.asarray(y, np.float64)])
    k = gaussian_kernel(pooled, pooled, sigma2)
    w = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    observed = float(w @ k @ w)
    perms = np.stack([w[gen.permutation(n + m)] for _ in range(permutations)])
    null = np.einsum("pi,pi->p", perms @ k, perms)
    tol = 1e-12 * max(1.0, abs(observed))
    p = (1.0 + float(np.sum(null >= observed - tol))) / (1.0 + permutations)
    return observed, p


@dataclass
class EmbeddingReference:
    """A reference sample of (raw, concatenated) embeddings and what standardises them.

    Attributes:
        embeddings: ``(n, D)`` float32, the members' blocks side by side.
        blocks: ``(member id, width)`` of each block, in column order.
        mean, scale: per column; ``standardise(e) = (e - mean) * scale`` with
            ``scale = 1 / (std * sqrt(block width))``.
        sigma2: the Gaussian kernel's bandwidth, the median heuristic on the standardised reference.
        labels: the reference images' labels (the stratification), ``(n,)``.
    """

    embeddings: np.ndarray
    blocks: list[tuple[str, int]]
    mean: np.ndarray
    scale: np.ndarray
    sigma2: float
    labels: np.ndarray

    @classmethod
    def build(cls, embeddings: np.ndarray, blocks: list[tuple[str, int]], labels: np.ndarray | None = None
              ) -> EmbeddingReference:
        e = np.asarray(embeddings, np.float32)
        widths = [int(w) for _, w in blocks]
        if e.ndim != 2 or sum(widths) != e.shape[1]:
            raise ValueError(f"embeddings {e.shape} do not match the blocks {blocks} (widths sum to {sum(widths)})")
        std = e.std(axis=0).astype(np.float64)
        std[std < STD_FLOOR] = 1.0
        per_col = np.repeat([1.0 / np.sqrt(w) for w in widths], widths)
        mean = e.mean(axis=0).astype(np.float64)
        scale = per_col / std
        ref = cls(e, [(str(b), int(w)) for b, w in blocks], mean, scale, 1.0,
                  np.full(len(e), -1) if labels is None else np.asarray(labels, np.int64))
        ref.sigma2 = median_sigma2(ref.standardise(e))
        return ref

    def standardise(self, e: np.ndarray) -> np.ndarray:
        e = np.asarray(e, np.float64)
        if e.ndim != 2 or e.shape[1] != len(self.mean):
            raise ValueError(f"embeddings of width {e.shape[-1] if e.ndim else 0} against a reference of width "
                             f"{len(self.mean)} (blocks {self.blocks})")
        return (e - self.mean) * self.scale

    def test(self, window: np.ndarray, permutations: int = 200, rng: np.random.Generator | int | None = 0
             ) -> tuple[float, float]:
        """``(MMD^2_b, p-value)`` of a window of raw embeddings against this reference."""
        return mmd_permutation_test(self.standardise(self.embeddings), self.standardise(window), self.sigma2,
                                    permutations, rng)

    def save(self, path: str | os.PathLike) -> Path:
        from medens.storage.atomic import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, embeddings=self.embeddings, block_ids=np.array([b for b, _ in self.blocks]),
                 block_widths=np.array([w for _, w in self.blocks], np.int64), labels=self.labels)
        atomic_write_bytes(path, buf.getvalue())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> EmbeddingReference:
        """Read a reference saved by :meth:`save`; mean, scale and bandwidth are recomputed from the
        stored embeddings (deterministically, so they equal the packaged ones)."""
        with np.load(path, allow_pickle=False) as z:
            blocks = list(zip(z["block_ids"].tolist(), z["block_widths"].tolist(), strict=True))
            return cls.build(z["embeddings"], blocks, z["labels"])
