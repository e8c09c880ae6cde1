"""The split structure every data source returns.

A ``Split`` holds images as a uint8 (or uint16) array ``(N, H, W, C)`` (channel-last, as MedMNIST stores
them; in memory, or on disk as a :class:`~medens.data.filearray.FileArray` read by rows when the
dataset is large), labels ``(N,)`` for classification or masks ``(N, H, W)`` for segmentation,
and one string id per sample. ``SplitData`` bundles the train/val/test splits with the class names.
Transforms turn images into float tensors ``(N, C, H, W)`` later.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from medens.data.filearray import FileArray

Task = Literal["classification", "segmentation"]
SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """One split: images ``(N, H, W, C)`` uint8 (uint16 with ``data.bit_depth`` 16), labels ``(N,)``
    or masks ``(N, H, W)``, ids."""

    images: np.ndarray
    ids: list[str]
    labels: np.ndarray | None = None
    masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray | list[int]) -> Split:
        """A new split holding the samples at ``index`` (in that order)."""
        idx = np.asarray(index, dtype=np.int64)
        return Split(
            images=_rows(self.images, idx),
            ids=[self.ids[i] for i in idx],
            labels=None if self.labels is None else self.labels[idx],
            masks=None if self.masks is None else _rows(self.masks, idx),
        )

    @staticmethod
    def concat(parts: list[Split]) -> Split:
        """Concatenate splits of the same kind."""
        if not parts:
            raise ValueError("cannot concatenate an empty list of splits")
        return Split(
            images=np.concatenate([p.images for p in parts]),
            ids=[i for p in parts for i in p.ids],
            labels=None if parts[0].labels is None else np.concatenate([p.labels for p in parts]),
            masks=None if parts[0].masks is None else np.concatenate([p.masks for p in parts]),
        )


def _rows(array, idx: np.ndarray):
    """Rows ``idx`` of an in-memory array, or a lazy selection of an on-disk one."""
    return array.take(idx) if isinstance(array, FileArray) else array[idx]


def pixel_counts(masks, k: int) -> np.ndarray:
    """Pixels per class of masks ``(N, H, W)`` (in memory or on disk), counted in row chunks."""
    from medens.data.filearray import iter_rows

    total = np.zeros(k, dtype=np.int64)
    for chunk in iter_rows(masks, 16 * 2**20):
        c = np.bincount(chunk.reshape(-1), minlength=len(total))
        if len(c) > len(total):  # values >= k: kept, as np.bincount of the whole would (validation names them)
            total = np.pad(total, (0, len(c) - len(total)))
        total += c
    return total


@dataclass
class SplitData:
    """Train/val/test splits plus class names; what the data stage hands to training."""

    task: Task
    class_names: list[str]
    train: Split
    val: Split
    test: Split
    info: dict = field(default_factory=dict)
    extras: dict[str, Split] = field(default_factory=dict)

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[-1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train.images.shape[1]), int(self.train.images.shape[2])

    def class_counts(self, split: str = "train") -> list[int]:
        """Samples per class in ``split`` (for segmentation: pixels per class)."""
        s = self.split(split)
        if self.task == "classification":
            return np.bincount(s.labels, minlength=self.num_classes).astype(int).tolist()
        return pixel_counts(s.masks, self.num_classes).astype(int).tolist()

    def summary(self) -> dict:
        """Class names and counts per split, imbalance ratio, sizes; JSON-ready."""
        from medens.data.imbalance import imbalance_ratio

        out: dict = {
            "task": self.task,
            "class_names": list(self.class_names),
            "image_size": list(self.image_size),
            "channels": self.channels,
            "splits": {},
        }
        for name in SPLITS:
            s = self.split(name)
            entry: dict = {"n": len(s)}
            if self.task == "classification":
                counts = self.class_counts(name)
                entry["class_counts"] = dict(zip(self.class_names, counts))
                entry["rho"] = imbalance_ratio(s.labels, num_classes=self.num_classes) if len(s) else None
            else:
                fractions = np.asarray(self.class_counts(name), dtype=float)
                fractions = fractions / max(fractions.sum(), 1.0)
                entry["pixel_fraction"] = dict(zip(self.class_names, fractions.round(5).tolist()))
                from medens.data.filearray import iter_rows

                entry["images_with_lesion"] = int(sum((c.reshape(len(c), -1).max(axis=1) > 0).sum()
                                                      for c in iter_rows(s.masks, 16 * 2**20) if len(c)))
            out["splits"][name] = entry
        for name, extra in self.extras.items():
            out["splits"][name] = {"n": len(extra)}
        out["info"] = self.info
        return out

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``<split>.images.npy`` and, for segmentation, ``<split>.masks.npy`` (uncompressed,
        written in bounded chunks, so a dataset on disk is copied without loading it) and
        ``<split>.npz`` (ids, labels) for each split, and ``dataset.json``; atomic per file."""
        from medens.data.filearray import write_npy
        from medens.storage.atomic import atomic_write_bytes, atomic_write_text

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for name in (*SPLITS, *(f"extra_{e}" for e in self.extras)):
            s = self.extras[name[6:]] if name.startswith("extra_") else self.split(name)
            for kind, array in (("images", s.images), ("masks", s.masks)):
                if array is not None:
                    tmp = d / f".{name}.{kind}.npy.tmp"
                    write_npy(tmp, array)
                    os.replace(tmp, d / f"{name}.{kind}.npy")
            arrays = {"ids": np.asarray(s.ids, dtype=str)}
            if s.labels is not None:
                arrays["labels"] = s.labels
            buf = io.BytesIO()
            np.savez_compressed(buf, **arrays)
            atomic_write_bytes(d / f"{name}.npz", buf.getvalue())
        meta = {"task": self.task, "class_names": self.class_names, "info": self.info,
                "summary": self.summary()}
        atomic_write_text(d / "dataset.json", json.dumps(meta, indent=2, default=str))
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike, *, lazy: bool | None = None) -> SplitData:
        """Read a directory written by :meth:`save`.

        Args:
            directory: the dataset directory.
            lazy: keep each split's images and masks on disk (a
                :class:`~medens.data.filearray.FileArray`, read one batch at a time) instead of in
                memory. ``None`` (default): on disk when a split's images (or masks) exceed
                :func:`lazy_bytes` (``MEDENS_LAZY_BYTES``, 64 MiB).
        """
        d = Path(directory)
        meta_path = d / "dataset.json"
        if not meta_path.is_file():
            raise ValueError(f"{d} is not a medens dataset directory: {meta_path.name} is missing")
        meta = json.loads(meta_path.read_text())
        splits = {name: _load_split(d, name, lazy) for name in SPLITS}
        extras = {p.stem[6:]: _load_split(d, p.stem, lazy) for p in sorted(d.glob("extra_*.npz"))}
        return cls(task=meta["task"], class_names=list(meta["class_names"]), info=meta.get("info", {}),
                   extras=extras, **splits)


LAZY_BYTES = 64 * 2**20


def lazy_bytes() -> int:
    """Images larger than this stay on disk when a dataset is loaded (``MEDENS_LAZY_BYTES``)."""
    raw = os.environ.get("MEDENS_LAZY_BYTES")
    try:
        return LAZY_BYTES if raw is None else int(raw)
    except ValueError:
        raise ValueError(f"MEDENS_LAZY_BYTES must be an integer number of bytes, got {raw!r}") from None


def _array(path: Path, lazy: bool | None):
    """An ``.npy`` file on disk (``FileArray``) when ``lazy`` says so or it is large, else in memory."""
    array = FileArray(path)
    if not (lazy or (lazy is None and array.nbytes > lazy_bytes())):
        return np.load(path, allow_pickle=False)
    return array


def _stored(d: Path, stem: str, lazy: bool | None):
    """``<stem>.npy`` (on disk or in memory), or its ``<stem>.ref.json`` in object storage (a
    :class:`~medens.data.remote.RemoteArray`), or ``None`` when there is neither."""
    if (d / f"{stem}.npy").is_file():
        return _array(d / f"{stem}.npy", lazy)
    if (d / f"{stem}.ref.json").is_file():
        from medens.data.remote import open_ref

        return open_ref(d / f"{stem}.ref.json")
    return None


def _load_split(d: Path, name: str, lazy: bool | None) -> Split:
    with np.load(d / f"{name}.npz", allow_pickle=False) as z:
        # datasets written before images (and masks) had their own files hold them in the npz
        images = z["images"] if "images" in z else _stored(d, f"{name}.images", lazy)
        if images is None:
            raise ValueError(f"{d}: {name}.images.npy (or its .ref.json) is missing")
        masks = z["masks"] if "masks" in z else _stored(d, f"{name}.masks", lazy)
        return Split(
            images=images,
            ids=[str(i) for i in z["ids"]],
            labels=z["labels"] if "labels" in z else None,
            masks=masks,
        )
