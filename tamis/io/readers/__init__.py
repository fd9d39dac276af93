"""Read an embedding store from a file, a folder of shards, or memory.

Every file format is one reader class in its own module, listed once in :data:`READERS`;
the same reader serves a local scan (:func:`load_store`) and a Dask scan
(:func:`open_partitioned`: the client's store, with the embeddings left in the files, and
the partitions the workers read). What a reader implements is in :mod:`.base`.

Formats
-------
- ``.npz`` (:mod:`.npz`): arrays ``embeddings`` and optional ``labels``, ``image_paths``,
  ``split``, ``pred_probs``, ``ids`` (read with ``allow_pickle=False``);
- ``.npy`` (:mod:`.npy`): one (N, d) matrix, embeddings only, memory-mapped;
- Parquet (:mod:`.parquet`): one file or a folder of shards; Arrow IPC / Feather
  (:mod:`.arrow`: ``.arrow``, ``.feather``, ``.ipc``): the embedding column as a list or
  fixed-size list of numbers;
- Lance (:mod:`.lance`): a ``.lance`` dataset folder, read by fragments with ``pylance``
  (imported only when one is read);
- memory (:mod:`.memory`): a NumPy / CuPy matrix, a dict of columns, a pandas / cuDF
  DataFrame or a pyarrow Table.

Column names are found by :class:`~tamis.config.ColumnSpec` or, when not given, by the
usual names (:data:`ALIASES`); :mod:`.columns` turns columns into validated arrays.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ...config import ColumnSpec
from ...errors import InputError
from ..store import Store
from .arrow import ARROW_SUFFIXES, ArrowReader
from .base import PARTITION_BYTES, Partition, Reader
from .columns import ALIASES, MATRIX_INPUTS, choose_columns, convert_columns
from .huggingface import HuggingFaceReader
from .lance import LanceReader
from .lazy import PartitionedMatrix
from .memory import load_memory
from .npy import NpyReader
from .npz import NpzReader
from .parquet import PARQUET_SUFFIXES, ParquetReader, RowGroups, parquet_shards

#: every file format tamis reads, one reader class each; the first that matches a path reads it
READERS: tuple[type[Reader], ...] = (
    HuggingFaceReader,      # before Parquet: both read folders, this one only those datasets wrote
    LanceReader,            # before Parquet too: a .lance folder (pylance, imported when one is read)
    NpzReader,
    NpyReader,
    ParquetReader,
    ArrowReader,
)


def load_store(source: Any, columns: ColumnSpec | None = None, metadata: Sequence[str] | None = None) -> Store:
    """Read ``source`` (a path or in-memory data) into a validated :class:`Store`.

    ``metadata``: the other columns kept as ``Store.metadata``: None for all of them (list and
    nested columns are skipped), the names to keep (``--metadata-cols``; one the store lacks is a
    :class:`~tamis.errors.ConfigError`), or ``()`` for none (they are then not read at all).
    """
    columns = columns or ColumnSpec()
    if isinstance(source, Store):
        return source.validate()
    if isinstance(source, (str, os.PathLike)):
        return reader_for(source).load(columns, metadata).validate()
    return load_memory(source, columns, metadata).validate()


def open_partitioned(path: str | os.PathLike, columns: ColumnSpec | None = None,
                     partition_rows: int | None = None,
                     metadata: Sequence[str] | None = ()) -> tuple[Store, list[Partition]]:
    """What a Dask scan needs of the store at ``path``: the client's validated :class:`Store`,
    its embeddings left in the store as a :class:`PartitionedMatrix`, and the partitions of
    about ``partition_rows`` rows the workers read (:meth:`Reader.read_partition`); ``metadata``
    as for :func:`load_store` (default: none)."""
    return reader_for(path).open_partitioned(columns or ColumnSpec(), partition_rows, metadata)


def reader_for(path: str | os.PathLike) -> Reader:
    """The registered reader of ``path`` (the first in :data:`READERS` that matches it)."""
    path = Path(path)
    if path.exists():
        for reader in READERS:
            if reader.matches(path):
                return reader(path)
    raise format_error(path)


def format_error(path: Path) -> InputError:
    """The error for a path no registered reader reads (missing, or of an unknown format),
    listing the formats of :data:`READERS`."""
    formats = "; ".join(reader.describe() for reader in READERS)
    if not path.exists():
        return InputError(f"{path}: no such file or directory; give the path of a store in a format tamis reads: "
                          f"{formats}")
    what = "(a folder)" if path.is_dir() else repr(path.suffix.lower() or "(no suffix)")
    return InputError(f"{path}: unknown store format {what}; tamis reads {formats}")


__all__ = [
    "READERS", "Reader", "Partition", "RowGroups", "PartitionedMatrix", "PARTITION_BYTES",
    "load_store", "open_partitioned", "reader_for", "format_error",
    "ALIASES", "MATRIX_INPUTS", "choose_columns", "convert_columns",
    "PARQUET_SUFFIXES", "ARROW_SUFFIXES", "parquet_shards",
    "NpzReader", "NpyReader", "ParquetReader", "ArrowReader",
]
