"""Image arrays on disk, read by rows: datasets larger than memory.

A :class:`FileArray` is a read-only array-like over an uncompressed ``.npy`` file (C order). It
reads only the rows asked for, with ``os.pread`` (no memory map, so pages read for one batch are
not kept in the process's resident memory), and a row selection (:meth:`take`) is a lazy view,
not a copy. Training gathers one batch at a time from it, so its memory does not grow with the
dataset. :class:`NpyWriter` writes such a file row chunk by row chunk; :func:`iter_rows` walks
any array (in memory or on disk) in bounded chunks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

CHUNK_BYTES = 64 * 2**20
"""Chunk size for whole-array passes (statistics, copies): 64 MiB of rows at a time."""


class FileArray:
    """Rows ``index`` (all when ``None``) of the ``.npy`` file at ``path``, read on demand."""

    def __init__(self, path: str | os.PathLike, index: np.ndarray | None = None) -> None:
        self.path = Path(path)
        with self.path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"{self.path}: .npy format version {version} is not supported")
            shape, fortran, dtype = read_header(f)
            self._offset = f.tell()
        if fortran:
            raise ValueError(f"{self.path}: Fortran-ordered arrays are not supported")
        if dtype.hasobject:
            raise ValueError(f"{self.path}: object arrays are not supported")
        self._rows, self._row_shape, self.dtype = int(shape[0]), tuple(int(s) for s in shape[1:]), np.dtype(dtype)
        self._row_bytes = int(np.prod(self._row_shape, dtype=np.int64)) * self.dtype.itemsize
        expected = self._offset + self._rows * self._row_bytes
        if self.path.stat().st_size < expected:
            raise ValueError(f"{self.path}: truncated ({self.path.stat().st_size} bytes, {expected} expected)")
        if index is not None:
            index = np.asarray(index, dtype=np.int64)
            if index.ndim != 1 or (index.size and (index.min() < 0 or index.max() >= self._rows)):
                raise IndexError(f"row index out of range for {self._rows} rows")
        self._index = index

    # array-like surface -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self._row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self._row_shape)

    @property
    def nbytes(self) -> int:
        return len(self) * self._row_bytes

    def __len__(self) -> int:
        return self._rows if self._index is None else int(self._index.size)

    def __repr__(self) -> str:
        return f"FileArray({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"

    def _file_rows(self, rows: np.ndarray) -> np.ndarray:
        return rows if self._index is None else self._index[rows]

    def take(self, index: Any) -> FileArray:
        """A lazy view of rows ``index`` (nothing is read)."""
        rows = np.arange(len(self))[np.asarray(index, dtype=np.int64)]
        return FileArray(self.path, self._file_rows(rows))

    def __getitem__(self, key: Any) -> np.ndarray:
        rest = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, int | np.integer):
            n = len(self)
            k = int(key) + n if key < 0 else int(key)
            if not 0 <= k < n:
                raise IndexError(f"row {key} out of range for {n} rows")
            out = self._read(np.array([k]))[0]
        else:
            rows = np.arange(len(self))[key]
            out = self._read(np.atleast_1d(rows))
        return out[(slice(None), *rest)] if rest and out.ndim > len(self._row_shape) else (out[rest] if rest else out)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """Rows (positions in this view) in the order given; contiguous file runs read at once."""
        file_rows = self._file_rows(np.asarray(rows, dtype=np.int64))
        out = np.empty((len(file_rows), *self._row_shape), dtype=self.dtype)
        if not len(file_rows):
            return out
        order = np.argsort(file_rows, kind="stable")
        sorted_rows = file_rows[order]
        flat = out.reshape(len(out), -1).view(np.uint8) if out.size else out
        fd = os.open(self.path, os.O_RDONLY)
        try:
            start = 0
            while start < len(sorted_rows):
                stop = start + 1
                while stop < len(sorted_rows) and sorted_rows[stop] == sorted_rows[stop - 1] + 1:
                    stop += 1
                first, count = int(sorted_rows[start]), stop - start
                data = os.pread(fd, count * self._row_bytes, self._offset + first * self._row_bytes)
                if len(data) != count * self._row_bytes:
                    raise OSError(f"{self.path}: short read at row {first}")
                block = np.frombuffer(data, dtype=np.uint8).reshape(count, self._row_bytes)
                flat[order[start:stop]] = block
                start = stop
        finally:
            os.close(fd)
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self._read(np.arange(len(self)))
        return a if dtype is None else a.astype(dtype)


def iter_rows(array: Any, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """Consecutive row chunks of ``array`` (a ``FileArray`` or an in-memory array), each about
    ``chunk_bytes``: whole-array passes without loading the whole array."""
    n = len(array)
    row_bytes = max(1, int(np.prod(array.shape[1:], dtype=np.int64)) * np.dtype(array.dtype).itemsize)
    step = max(1, chunk_bytes // row_bytes)
    for start in range(0, n, step):
        yield np.asarray(array[start:start + step])


class NpyWriter:
    """Write an ``.npy`` file of ``rows`` rows of ``row_shape`` row chunk by row chunk (``append``);
    ``close`` checks that every row was written. Nothing is held in memory but the chunk."""

    def __init__(self, path: str | os.PathLike, rows: int, row_shape: tuple[int, ...], dtype: Any) -> None:
        self.path = Path(path)
        self.rows, self.row_shape, self.dtype = int(rows), tuple(row_shape), np.dtype(dtype)
        self.written = 0
        self._f = self.path.open("wb")
        np.lib.format.write_array_header_2_0(
            self._f, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                      "shape": (self.rows, *self.row_shape)})

    def append(self, chunk: np.ndarray) -> None:
        a = np.ascontiguousarray(chunk, dtype=self.dtype)
        if a.shape[1:] != self.row_shape:
            raise ValueError(f"rows of shape {a.shape[1:]} for a file of rows {self.row_shape}")
        if self.written + len(a) > self.rows:
            raise ValueError(f"more than {self.rows} rows written to {self.path}")
        self._f.write(a.tobytes())
        self.written += len(a)

    def close(self) -> Path:
        self._f.close()
        if self.written != self.rows:
            raise ValueError(f"{self.path}: {self.written} of {self.rows} rows written")
        return self.path

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self._f.close()


def write_npy(path: str | os.PathLike, array: Any, chunk_bytes: int = CHUNK_BYTES) -> Path:
    """Write ``array`` (in memory or a ``FileArray``) as an ``.npy`` file in bounded chunks."""
    with NpyWriter(path, len(array), tuple(array.shape[1:]), array.dtype) as w:
        for chunk in iter_rows(array, chunk_bytes):
            w.append(chunk)
    return Path(path)
