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

A member ``np.savez`` stored uncompressed (1 MiB or more) is not copied: it is read through a
read-only map of the file (:func:`_mapped`), after the zip's CRC-32 of its bytes is checked as a
read would. The arrays are then views of the file: the file must not be rewritten in place while
a scan reads it (replacing it, as tamis' own outputs are written, is safe).
"""

from __future__ import annotations

import io
import math
import mmap
import zipfile
import zlib
from typing import Any

import numpy as np

from ...errors import InputError
from .base import Partition, Reader, slice_rows

#: members smaller than this are read (a map is worth it for the big ones)
MAP_AT_LEAST = 1 << 20


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
        mapped = _mapped(self.path, archive.zip, f"{key}.npy" if f"{key}.npy" in archive.zip.namelist() else key)
        if mapped is not None:
            return mapped
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


def _mapped(path: Any, archive: zipfile.ZipFile, entry: str) -> np.ndarray | None:
    """Member ``entry`` as a read-only array over a map of the file, when ``np.savez`` stored it
    uncompressed (its bytes are then the .npy file itself), else None (it is read as usual).

    Reading a stored member copies it into new memory, which the first write faults in page by
    page (~0.4 s per 200 MB on a VM); the map reads the pages the file system already caches.
    The member's CRC-32 is checked over the mapped bytes (what a read would check), so a damaged
    member is still reported; the array is read-only, so the file can never be written through it.
    Object arrays, compressed, encrypted or Fortran-order members: None.
    """
    try:
        info = archive.getinfo(entry)
    except KeyError:
        return None
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1 or info.file_size < MAP_AT_LEAST:
        return None
    with open(path, "rb") as fh:
        try:
            view = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):            # a file system without maps: read it
            return None
    local = bytes(view[info.header_offset:info.header_offset + 30])
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        return None
    start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
    if start + info.file_size > len(view) or zlib.crc32(memoryview(view)[start:start + info.file_size]) != info.CRC:
        return None                              # damaged: the usual read reports it
    head = io.BytesIO(view[start:start + min(info.file_size, 1 << 16)])
    header = _read_header(head)
    if header is None:
        return None
    shape, fortran, dtype = header
    count = math.prod(shape)
    if fortran or dtype.hasobject or head.tell() + count * dtype.itemsize != info.file_size:
        return None
    return np.frombuffer(view, dtype=dtype, count=count, offset=start + head.tell()).reshape(shape)


def _header_shape(archive: Any, entry: str) -> tuple[int, ...] | None:
    """The shape in the .npy header (format 1.0 or 2.0) of zip member ``entry``, or None."""
    header = _header(archive, entry)
    return None if header is None else header[0]


def _header(archive: Any, entry: str) -> tuple[tuple[int, ...], np.dtype] | None:
    """``(shape, dtype)`` from the .npy header (format 1.0 or 2.0) of zip member ``entry``, or None."""
    try:
        with archive.open(entry) as member:
            header = _read_header(member)
    except Exception:  # noqa: BLE001 - a damaged member: loading it gives the message
        return None
    return None if header is None else (header[0], header[2])


def _read_header(stream: Any) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """``(shape, fortran order, dtype)`` of the .npy header (format 1.0 or 2.0) at the start of
    ``stream`` (left just past it), or None for another format or a header that does not parse."""
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(stream)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(stream)
    except ValueError:
        return None
    return None
