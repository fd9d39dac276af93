"""NumPy archives (``np.savez`` / ``np.savez_compressed``): one array per column.

Arrays ``embeddings`` and optional ``labels``, ``image_paths``, ``split``, ``pred_probs``,
``ids`` (or any names :data:`~tamis.io.readers.columns.ALIASES` knows), read with
``allow_pickle=False``.

An .npz member cannot be sliced: it is a zip member (deflated by ``np.savez_compressed``), so
reading rows ``[start, stop)`` loads the whole member and keeps those rows. That is correct
(the rows are those of a local load) but costs O(N d) per read: a Dask worker loads the
embedding member once for every partition it reads (its partition cache then has it), and
the client loads it twice (for the first vectors, to learn d and the dtype; then for its
matrix, one partition: the whole member, kept in memory while the scan runs). The row count
comes from the member's header, without loading it.
"""

from __future__ import annotations

import zipfile
from typing import Any

import numpy as np

from ...errors import InputError
from .base import Partition, Reader, slice_rows


class NpzReader(Reader):
    title = "NumPy archive"
    suffixes = (".npz",)

    def column_names(self) -> list[str]:
        with self._open() as archive:
            return list(archive.files)

    def num_rows(self, column: str) -> int:
        """Rows of member ``column``, from its .npy header (a 0-d array counts as one row)."""
        with self._open() as archive:
            entry = f"{column}.npy" if f"{column}.npy" in archive.zip.namelist() else column
            shape = _header_shape(archive.zip, entry)
        if shape is None:   # not a header this reads: load the member (which reports what is wrong)
            shape = np.shape(self.read_columns([column])[column])
        return int(shape[0]) if shape else 1

    def unreadable_columns(self, names: list[str]) -> dict[str, str]:
        """Members that are no 1-D array of numbers, strings or bools, from their .npy headers
        (object arrays are never loaded: unpickling can run code)."""
        out = {}
        with self._open() as archive:
            listed = archive.zip.namelist()
            for name in names:
                header = _header(archive.zip, f"{name}.npy" if f"{name}.npy" in listed else name)
                if header is None:
                    continue
                shape, dtype = header
                if len(shape) != 1:
                    out[name] = f"has shape {tuple(shape)} (one value per row is analysed, not a matrix)"
                elif dtype.kind in "OSV":
                    out[name] = f"has dtype {dtype} (objects and bytes are not analysed: save strings with " \
                                "dtype=str)"
        return out

    def read_columns(self, names: list[str] | None = None, start: int = 0, stop: int | None = None) -> dict[str, Any]:
        out = {}
        with self._open() as archive:
            for key in archive.files if names is None else names:
                out[key] = slice_rows(self._member(archive, key), start, stop)
        return out

    def client_partitions(self, n_rows: int, rows: int) -> list[Partition]:
        """One partition, the whole member: it is loaded whole on every read anyway."""
        return self.partitions(n_rows, max(1, n_rows))

    def _open(self) -> np.lib.npyio.NpzFile:
        if self.path.is_file() and not zipfile.is_zipfile(self.path):   # numpy would advise unpickling it
            raise InputError(f"{self.path}: cannot read this file: it is not an .npz archive (a zip of .npy arrays, as "
                             "np.savez writes); "
                             "it may be a pickle, a text file or a truncated download: write it with np.savez, "
                             "or give it the suffix of what it is")
        try:
            archive = np.load(self.path, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - zipfile, OSError and ValueError all mean unreadable
            raise InputError(f"{self.path}: cannot read this .npz file ({exc}); is it a complete file written by "
                             "np.savez?") from exc
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise InputError(f"{self.path}: this is not an .npz archive; rename it or save with np.savez")
        return archive

    def _member(self, archive: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
        try:
            return archive[key]
        except ValueError as exc:
            if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
                raise InputError(
                    f"{self.path}: array {key!r} is an object array, which tamis does not load (pickles can "
                    f"run code); re-save it with a plain dtype, e.g. np.savez(..., {key}="
                    f"np.asarray({key}, dtype=str)) for strings or .astype(np.float32) for numbers") from exc
            raise InputError(f"{self.path}: cannot read array {key!r} ({exc})") from exc
        except Exception as exc:  # noqa: BLE001 - a damaged member raises zlib/zipfile errors
            raise InputError(f"{self.path}: array {key!r} is damaged ({exc}); write the file again") from exc


def _header_shape(archive: Any, entry: str) -> tuple[int, ...] | None:
    """The shape in the .npy header (format 1.0 or 2.0) of zip member ``entry``, or None."""
    header = _header(archive, entry)
    return None if header is None else header[0]


def _header(archive: Any, entry: str) -> tuple[tuple[int, ...], np.dtype] | None:
    """``(shape, dtype)`` from the .npy header (format 1.0 or 2.0) of zip member ``entry``, or None."""
    try:
        with archive.open(entry) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                return shape, dtype
            if version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                return shape, dtype
    except Exception:  # noqa: BLE001 - a damaged member: loading it gives the message
        return None
    return None
