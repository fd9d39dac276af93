"""The client's embedding matrix when the rows stay in the store: read in blocks, on demand.

A Dask scan's client never holds the whole embedding matrix: the Store it scans has a
:class:`PartitionedMatrix`, which asks the store's reader for one partition of rows at a
time (:meth:`tamis.io.readers.base.Reader.read_partition`, the same conversion as a local
load, so the rows are bit for bit those of :func:`tamis.io.readers.load_store`). It looks
enough like a NumPy array for the client-side passes, which read it in blocks (``m[a:b]``)
or gather a few rows (``m[rows]``): each access returns a fresh NumPy array of the rows
asked for.

:class:`BlockedMatrix` is the generic part (indexing on top of one ``_read(start, stop)``).
It lives here, below the engine, because readers may not import the Dask executor; the
executor's ``DiskMatrix`` (:mod:`tamis.engine.executors.dask.blocked`) is its other subclass.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

#: rows are read in runs of at most this many bytes when gathering scattered rows
GATHER_BYTES = 64 << 20


class BlockedMatrix:
    """Read-only (N, d) matrix read by row blocks; subclasses implement :meth:`_read`."""

    ndim = 2

    def __init__(self, shape: tuple[int, int], dtype: Any):
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)

    def _read(self, start: int, stop: int) -> np.ndarray:  # pragma: no cover - abstract
        """Rows ``start:stop`` (0 <= start <= stop <= N) as a new (stop - start, d) array."""
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self._read(0, self.shape[0])
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            rows, cols = key[0], key[1:]
            return self[rows][(slice(None), *cols)]
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step == 1:
                return self._read(start, max(start, stop))
            return self._gather(np.arange(start, stop, step))
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self.shape[0] if key < 0 else 0)
            if not 0 <= i < self.shape[0]:
                raise IndexError(f"row {key} is out of range for {self.shape[0]} rows")
            return self._read(i, i + 1)[0]
        index = np.asarray(getattr(key, "get", lambda: key)())   # a CuPy index comes to the host
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return self._gather(index.astype(np.int64, copy=False).reshape(-1))

    def _gather(self, index: np.ndarray) -> np.ndarray:
        """Rows ``index`` (any order, repeats allowed), reading sorted runs of nearby rows."""
        n, d = self.shape
        if index.size and (index.min() < -n or index.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        index = np.where(index < 0, index + n, index)
        out = np.empty((len(index), d), dtype=self.dtype)
        if not len(index):
            return out
        order = np.argsort(index, kind="stable")
        wanted = index[order]
        span = max(1, GATHER_BYTES // max(1, d * self.dtype.itemsize))
        i = 0
        while i < len(wanted):
            first = int(wanted[i])
            j = int(np.searchsorted(wanted, first + span, side="left"))
            block = self._read(first, int(wanted[j - 1]) + 1)
            out[order[i:j]] = block[wanted[i:j] - first]
            i = j
        return out


class PartitionedMatrix(BlockedMatrix):
    """A store's raw embeddings, read from its reader one partition at a time.

    Keeps the last partition read, so a pass in row order reads every partition once; memory:
    one partition (about ``PARTITION_BYTES``; a whole .npz member, which cannot be read in parts).
    """

    def __init__(self, reader: Any, partitions: list, column: str, dim: int, dtype: Any):
        super().__init__((sum(p.n_rows for p in partitions), dim), dtype)
        self.reader = reader
        self.partitions = partitions
        self.column = column
        self._starts = np.array([p.row0 for p in partitions], dtype=np.int64)
        self._last: tuple[int, np.ndarray] | None = None
        self._lock = threading.Lock()

    def _partition(self, i: int) -> np.ndarray:
        with self._lock:
            if self._last is not None and self._last[0] == i:
                return self._last[1]
            matrix = self.reader.read_partition(self.partitions[i], self.column, self.shape[1])
            self._last = (i, matrix)
            return matrix

    def _read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, self.shape[1]), dtype=self.dtype)
        i = max(0, int(np.searchsorted(self._starts, start, side="right")) - 1)
        row = start
        while row < stop:
            part = self.partitions[i]
            lo, hi = row - part.row0, min(stop, part.row0 + part.n_rows) - part.row0
            out[row - start:row - start + hi - lo] = self._partition(i)[lo:hi]
            row += hi - lo
            i += 1
        return out
