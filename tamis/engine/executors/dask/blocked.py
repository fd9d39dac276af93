"""The client's normalised matrix as a local file, read and written in blocks of rows.

A distributed or out-of-core scan never holds the whole embedding matrix in the client:
the raw store stays in its files, read by its reader's partitions
(:class:`tamis.io.readers.lazy.PartitionedMatrix`), and the normalised matrix goes to a local
file (:class:`DiskMatrix`, a :class:`~tamis.io.readers.lazy.BlockedMatrix`). Both look enough like a
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

from ....io.readers.lazy import BlockedMatrix


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
