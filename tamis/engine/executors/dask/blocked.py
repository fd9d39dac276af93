"""Matrices that live outside the process and are read in blocks of rows.

A distributed or out-of-core scan never holds the whole embedding matrix in the client:
the raw store stays in its Parquet partitions (:class:`tamis.engine.executors.dask.partitions.PartitionedMatrix`)
and the normalised matrix goes to a local file (:class:`DiskMatrix`). Both look enough like a
NumPy array for the client-side checks, which read them in blocks (``m[a:b]``) or gather a few
rows (``m[rows]``): each access returns a fresh NumPy array of the rows asked for.

Reads and writes go through ``os.pread`` / ``os.pwrite``, not a memory map, so the only
memory they take is the block returned: pages of the file sit in the OS page cache, shared
and reclaimable, and never count towards the process's resident memory. ``np.asarray(m)``
still works (it reads everything: only the heavy engines would need that, and a distributed
scan builds those on the workers).
"""

from __future__ import annotations

import os
import tempfile
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


class DiskMatrix(BlockedMatrix):
    """A writable (N, d) matrix in a local ``.npy`` file, read and written in row blocks.

    Made by :meth:`create` (in a temporary folder the caller removes). ``m[a:b] = rows``
    writes rows (cast to the matrix's dtype; CuPy arrays are copied to the host first).
    """

    def __init__(self, path: str, shape: tuple[int, int], dtype: Any, offset: int):
        super().__init__(shape, dtype)
        self.path = path
        self._offset = offset
        self._fd = os.open(path, os.O_RDWR)

    @classmethod
    def create(cls, folder: str, shape: tuple[int, int], dtype: Any) -> "DiskMatrix":
        """A new matrix file in ``folder`` (its rows are zeros until written)."""
        fd, path = tempfile.mkstemp(suffix=".npy", dir=folder)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                  "shape": tuple(int(s) for s in shape)}
        with os.fdopen(fd, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            offset = f.tell()
            f.truncate(offset + int(shape[0]) * int(shape[1]) * np.dtype(dtype).itemsize)
        return cls(path, shape, dtype, offset)

    def _row_bytes(self) -> int:
        return self.shape[1] * self.dtype.itemsize

    def _read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, self.shape[1]), dtype=self.dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        pos, done = self._offset + start * self._row_bytes(), 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], pos + done)
            if got <= 0:
                raise OSError(f"{self.path}: short read at byte {pos + done}")
            done += got
        return out

    def __setitem__(self, key: Any, value: Any) -> None:
        if not isinstance(key, slice):
            raise TypeError("a DiskMatrix is written by row slices, m[a:b] = rows")
        start, stop, step = key.indices(self.shape[0])
        if step != 1:
            raise TypeError("a DiskMatrix is written by contiguous row slices")
        value = value.get() if hasattr(value, "get") and not isinstance(value, np.ndarray) else value
        rows = np.ascontiguousarray(np.broadcast_to(np.asarray(value, dtype=self.dtype),
                                                    (stop - start, self.shape[1])))
        data = memoryview(rows.reshape(-1).view(np.uint8))
        pos, done = self._offset + start * self._row_bytes(), 0
        while done < len(data):
            done += os.pwrite(self._fd, data[done:], pos + done)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:  # the file itself belongs to the folder the caller removes
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
