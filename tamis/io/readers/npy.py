"""One (N, d) NumPy matrix saved with ``np.save``: embeddings only.

The file is memory-mapped, so a row-range read (a Dask partition, a block of the client's
passes) reads only those rows; a local scan uses the mapped matrix in place when it is a
float matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...config import ColumnSpec
from ...errors import InputError
from .base import Reader, slice_rows

#: the one column of a .npy store, as the report names it
NPY_COLUMN = "(npy matrix)"


class NpyReader(Reader):
    title = "NumPy matrix"
    suffixes = (".npy",)

    def column_names(self) -> list[str]:
        return [NPY_COLUMN]

    def num_rows(self, column: str) -> int:
        """Rows of the matrix (a 0-d array counts as one row)."""
        shape = self._matrix().shape
        return int(shape[0]) if shape else 1

    def read_columns(self, names: list[str] | None = None, start: int = 0, stop: int | None = None) -> dict[str, Any]:
        return {NPY_COLUMN: np.asarray(slice_rows(self._matrix(), start, stop))}

    def choose(self, names: list[str], spec: ColumnSpec) -> dict[str, str]:
        """The matrix is the embeddings; naming any other column is an error."""
        named = [k for k, v in spec.as_dict().items() if v is not None and k != "embedding"]
        if named:
            raise InputError(f"{self.path}: a .npy file holds embeddings only, but --{named[0].replace('_', '-')}-col "
                             "was given; use an .npz or Parquet store for labels and other columns")
        return {"embeddings": NPY_COLUMN}

    def _matrix(self) -> np.ndarray:
        try:
            return np.load(self.path, allow_pickle=False, mmap_mode="r")
        except ValueError as exc:
            if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
                raise InputError(f"{self.path}: the .npy file holds an object array; re-save it with "
                                 "np.save(path, embeddings.astype(np.float32))") from exc
            raise InputError(f"{self.path}: cannot read this .npy file ({exc})") from exc
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{self.path}: cannot read this .npy file ({exc}); is it a complete file written by "
                             "np.save?") from exc
