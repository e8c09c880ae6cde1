"""Datasets as a manifest plus a shared cache: arrays in object storage, rows fetched on demand.

On a cluster every train task receives the dataset artifact; when that artifact holds every
pixel, each task copies the whole dataset before its first step. :func:`publish_arrays` turns a
saved dataset directory into a manifest: each ``<split>.images.npy`` / ``<split>.masks.npy`` is
uploaded once to an S3 store (MinIO) under a content address (``cache/<sha256>.npy``, so an
unchanged array is uploaded once across runs) and replaced by ``<split>.images.ref.json`` (store
URI, key, size and sha256; never credentials, which come from the environment as for every S3
access). :meth:`medens.data.types.SplitData.load` opens a reference as a :class:`RemoteArray`:
a :class:`~medens.data.filearray.FileArray` over a sparse local file that is filled row run by
row run with HTTP range requests the first time those rows are read, so a task downloads only
the rows it uses, each once, and its memory stays bounded as with any on-disk dataset.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from medens.data.filearray import FileArray

REF_SUFFIX = ".ref.json"
HEADER_PROBE = 1 << 16
"""Bytes read to parse an ``.npy`` header (numpy writes headers well under this)."""

_SCRATCH: list[Path] = []
_CACHES: dict[tuple[str, str, str], _RowCache] = {}
"""One row cache per remote array in this process: loading a dataset twice shares it (a second
cache over the same local file would truncate the rows the first one has fetched)."""


def _scratch_dir() -> Path:
    if not _SCRATCH:
        _SCRATCH.append(Path(tempfile.mkdtemp(prefix="medens-rowcache-")))
        atexit.register(shutil.rmtree, _SCRATCH[0], True)
    return _SCRATCH[0]


def _open_store(ref: dict[str, Any]):
    from medens.storage import ArtifactStore

    return ArtifactStore.from_uri(ref["store"], endpoint=ref.get("endpoint") or None, create_bucket=False)


class _RowCache:
    """A sparse local copy of one remote ``.npy`` file; rows are fetched the first time they are read."""

    def __init__(self, ref: dict[str, Any]) -> None:
        self.ref = dict(ref)
        store = _open_store(self.ref)
        size = store.object_size(self.ref["key"])
        if size != int(self.ref["bytes"]):
            raise ValueError(f"{self.ref['store']}/{self.ref['key']}: {size} bytes, the manifest says "
                             f"{self.ref['bytes']} (changed or truncated since it was published)")
        head = store.read_range(self.ref["key"], 0, min(size, HEADER_PROBE))
        import io

        f = io.BytesIO(head)
        version = np.lib.format.read_magic(f)
        shape, _, dtype = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}[version](f)
        self.offset = f.tell()
        self.rows = int(shape[0]) if shape else 0
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
        if self.offset + self.rows * self.row_bytes != size:
            raise ValueError(f"{self.ref['store']}/{self.ref['key']}: not a plain .npy array of its header's shape")
        self.path = _scratch_dir() / f"{self.ref['sha256']}.npy"
        with self.path.open("wb") as out:  # a valid .npy whose rows are holes until fetched
            out.write(head[: self.offset])
            out.truncate(size)
        self.have = np.zeros(self.rows, dtype=bool)
        self.remote_reads = 0
        self._store = store
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers: no client or lock in the pickle
        return {k: v for k, v in self.__dict__.items() if k not in ("_store", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._store, self._lock = None, threading.Lock()

    def ensure(self, file_rows: np.ndarray) -> None:
        """Fetch the rows of ``file_rows`` not yet local, one range request per contiguous run."""
        with self._lock:
            missing = np.unique(file_rows[~self.have[file_rows]])
            if not missing.size:
                return
            if self._store is None:
                self._store = _open_store(self.ref)
            breaks = np.flatnonzero(np.diff(missing) != 1) + 1
            fd = os.open(self.path, os.O_WRONLY)
            try:
                for run in np.split(missing, breaks):
                    first, count = int(run[0]), int(run.size)
                    start = self.offset + first * self.row_bytes
                    os.pwrite(fd, self._store.read_range(self.ref["key"], start, count * self.row_bytes), start)
                    self.remote_reads += 1
            finally:
                os.close(fd)
            self.have[missing] = True


def _row_cache(ref: dict[str, Any]) -> _RowCache:
    """The process's cache of ``ref`` (created on first use)."""
    key = (str(ref["store"]), str(ref["key"]), str(ref["sha256"]))
    if key not in _CACHES:
        _CACHES[key] = _RowCache(ref)
    return _CACHES[key]


class RemoteArray(FileArray):
    """A :class:`FileArray` whose file lives in object storage (see the module docstring)."""

    def __init__(self, ref: dict[str, Any] | _RowCache, index: np.ndarray | None = None) -> None:
        self._cache = ref if isinstance(ref, _RowCache) else _row_cache(ref)
        super().__init__(self._cache.path, index)

    def __repr__(self) -> str:
        return (f"RemoteArray({self._cache.ref['store']}/{self._cache.ref['key']}, shape={self.shape}, "
                f"dtype={self.dtype}, rows local {int(self._cache.have.sum())}/{self._cache.rows})")

    @property
    def remote_reads(self) -> int:
        """Range requests made so far (all views of the same array together)."""
        return self._cache.remote_reads

    def take(self, index: Any) -> RemoteArray:
        rows = np.arange(len(self))[np.asarray(index, dtype=np.int64)]
        return RemoteArray(self._cache, self._file_rows(rows))

    def _read(self, rows: np.ndarray) -> np.ndarray:
        self._cache.ensure(self._file_rows(np.asarray(rows, dtype=np.int64)))
        return super()._read(rows)


def publish_arrays(directory: str | os.PathLike, store_uri: str, *, endpoint: str | None = None,
                   prefix: str = "cache") -> list[str]:
    """Upload every ``*.images.npy`` / ``*.masks.npy`` of a saved dataset to ``store_uri`` (an
    ``s3://`` store) under ``<prefix>/<sha256>.npy`` and replace each with its ``.ref.json``.

    Returns the keys written. An array already in the store (same sha256) is not uploaded again.

    Raises:
        ValueError: ``store_uri`` is not an ``s3://`` URI (a local dataset keeps its files).
    """
    from medens.storage import ArtifactStore
    from medens.storage.atomic import atomic_write_text
    from medens.storage.checksum import sha256_file

    if not store_uri.startswith("s3://"):
        raise ValueError(f"a dataset cache needs an s3:// store, got {store_uri!r}; a local dataset keeps its files")
    store = ArtifactStore.from_uri(store_uri, endpoint=endpoint)
    d, keys = Path(directory), []
    for npy in sorted([*d.glob("*.images.npy"), *d.glob("*.masks.npy")]):
        sha, size = sha256_file(npy), npy.stat().st_size
        key = f"{prefix}/{sha}.npy"
        try:
            present = store.object_size(key) == size
        except Exception:  # minio's S3Error for a missing key
            present = False
        if not present:
            store.put_file(npy, key)
        ref = {"store": store.uri, "key": key, "endpoint": endpoint, "bytes": size, "sha256": sha}
        atomic_write_text(npy.with_name(npy.name[: -len(".npy")] + REF_SUFFIX), json.dumps(ref, indent=2))
        npy.unlink()
        keys.append(key)
    return keys


def open_ref(path: str | os.PathLike) -> RemoteArray:
    """The :class:`RemoteArray` of a ``.ref.json`` written by :func:`publish_arrays`."""
    return RemoteArray(json.loads(Path(path).read_text()))
