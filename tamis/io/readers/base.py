"""What every reader is: the formats it matches, a whole-store read, and row-range reads.

A reader is one class in its own module, listed once in :data:`tamis.io.readers.READERS`.
It serves a local scan (:meth:`Reader.load`: the whole store) and a Dask scan
(:meth:`Reader.open_partitioned`: the descriptive columns, the embeddings left in the store
as a :class:`~tamis.io.readers.lazy.PartitionedMatrix`, and the :class:`Partition` list the
workers read with :meth:`Reader.read_partition`). A new format is one module with one
subclass of :class:`Reader` that names itself (``title``, ``suffixes``, ``reads_folders``),
implements three methods, and one line in ``READERS``:

- :meth:`Reader.column_names` -- the store's columns, without reading their values;
- :meth:`Reader.num_rows` -- the number of rows of one column;
- :meth:`Reader.read_columns` -- rows ``[start, stop)`` of some columns, as raw Arrow or
  NumPy arrays (``names=None``, ``stop=None``: everything, for a local scan).

A reader may also say which columns hold no scalar per row from its schema alone
(:meth:`Reader.unreadable_columns`), so the metadata columns are chosen without reading those.
Only the columns a scan uses are read: the inputs, and the metadata columns when a check
reads them.

The base class builds the rest on those: partitions are plain row ranges of about
:data:`PARTITION_BYTES`, and a partition's embedding rows go through the same
:func:`~tamis.io.readers.columns.convert_columns` as a local load, so a worker reading
partition ``i`` sees rows ``row0 .. row0 + n_rows`` of ``load_store``'s matrix bit for bit.
A reader overrides what it can do better (Parquet cuts on row-group boundaries from the
footers and reads a partition's row groups directly).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import pyarrow as pa

from ...config import ColumnSpec
from ...errors import InputError
from ..store import Store
from .columns import choose_columns, convert_columns, from_columns, metadata_plan, metadata_table
from .lazy import PartitionedMatrix

#: default partition size: about this many bytes of float32 embeddings (workers and client)
PARTITION_BYTES = 64 << 20
#: rows read at a time while looking for the first vector (to learn d and the dtype)
PROBE_ROWS = 4096


@dataclass(frozen=True)
class Partition:
    """Global input rows ``row0 .. row0 + n_rows`` of the store ``reader`` reads.

    The partition carries its reader (a small object: the store's path), so a worker reads
    it with ``part.reader.read_partition(part, ...)`` and needs no registry of its own.
    """

    index: int
    reader: Reader
    row0: int
    n_rows: int

    @property
    def where(self) -> str:
        """The rows, for messages: ``store.npz: rows 0..249``."""
        return f"{self.reader.source}: rows {self.row0}..{self.row0 + self.n_rows - 1}"

    def pieces(self) -> list[Partition]:
        """The parts a worker reads one at a time to bound its memory (this one, whole)."""
        return [self]


class Reader:
    """One file format. ``__init__`` only stores the path; nothing is read until asked."""

    #: what messages call the format
    title: ClassVar[str] = ""
    #: file suffixes it reads, lower case, with the dot
    suffixes: ClassVar[tuple[str, ...]] = ()
    #: whether it also reads a folder (of shards)
    reads_folders: ClassVar[bool] = False

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def source(self) -> str:
        return str(self.path)

    @classmethod
    def matches(cls, path: Path) -> bool:
        """Whether this reader reads ``path`` (an existing file or folder)."""
        return cls.reads_folders if path.is_dir() else path.suffix.lower() in cls.suffixes

    @classmethod
    def describe(cls) -> str:
        """The format, as messages list it: ``Parquet (.parquet, .pq, or a folder of them)``."""
        where = ", ".join(cls.suffixes) + (", or a folder of them" if cls.reads_folders else "")
        return f"{cls.title} ({where})"

    # ------------------------------------------------------------------ the interface a format implements
    def column_names(self) -> list[str]:
        """The store's column names, in order, without reading their values."""
        raise NotImplementedError

    def num_rows(self, column: str) -> int:
        """The number of rows of ``column`` (the same for every column of a table format)."""
        raise NotImplementedError

    def read_columns(self, names: list[str] | None = None, start: int = 0, stop: int | None = None) -> dict[str, Any]:
        """Column name -> its rows ``[start, stop)`` as a raw Arrow or NumPy array (``names``:
        all columns when None; ``stop``: the end when None)."""
        raise NotImplementedError

    def unreadable_columns(self, names: list[str]) -> dict[str, str]:
        """Columns of ``names`` that the schema shows hold no scalar per row (lists, nested values,
        bytes, matrices), with the reason; those are never read as metadata. Default: none known
        (every column is read, then judged)."""
        return {}

    # ------------------------------------------------------------------ local scan
    def choose(self, names: list[str], spec: ColumnSpec) -> dict[str, str]:
        """Input name -> the column that holds it (:func:`~tamis.io.readers.columns.choose_columns`)."""
        return choose_columns(names, spec, self.source)

    def load(self, spec: ColumnSpec, metadata: Sequence[str] | None = None) -> Store:
        """The whole store, read into memory (validated by the caller): its input columns, and as
        metadata every other column (``metadata=None``), those named, or none (``()``)."""
        names = self.column_names()
        chosen = self.choose(names, spec)
        extra, skipped = self._metadata_plan(names, chosen, metadata)
        wanted = list(dict.fromkeys(list(chosen.values()) + extra))
        cols = self.read_columns(wanted) if wanted else {}
        return from_columns(cols, chosen, self.source, extra, skipped, named=metadata is not None)

    def _metadata_plan(self, names: list[str], chosen: dict[str, str],
                       metadata: Sequence[str] | None) -> tuple[list[str], dict[str, str]]:
        inputs = set(chosen.values())
        if metadata is not None and not metadata:
            return [], {}
        unreadable = self.unreadable_columns([c for c in names if c not in inputs])
        return metadata_plan(names, chosen, metadata, self.source, unreadable)

    # ------------------------------------------------------------------ Dask scan
    def open_partitioned(self, spec: ColumnSpec, partition_rows: int | None = None,
                         metadata: Sequence[str] | None = ()) -> tuple[Store, list[Partition]]:
        """The client's validated :class:`Store` and the embedding partitions for the workers.

        Reads the column names, the descriptive columns (labels, paths, split, ids,
        pred_probs, quality, and the ``metadata`` columns as :meth:`load` chooses them: O(N),
        small next to the embeddings) and the first vectors (to learn d and the dtype); the
        embeddings stay in the store as a :class:`~tamis.io.readers.lazy.PartitionedMatrix`.
        Partitions hold about ``partition_rows`` rows (default: :data:`PARTITION_BYTES` of
        float32 embeddings).
        """
        names = self.column_names()
        chosen = self.choose(names, spec)
        extra, skipped = self._metadata_plan(names, chosen, metadata)
        described = {name: col for name, col in chosen.items() if name != "embeddings"}
        wanted = sorted(set(described.values()) | set(extra))
        cols = self.read_columns(wanted) if wanted else {}
        values = convert_columns(cols, described, self.source)
        partitions: list[Partition] = []
        if "embeddings" in chosen:
            column = chosen["embeddings"]
            n = self.num_rows(column)
            dim, dtype = self.embedding_layout(column, n)
            rows = default_rows(dim)
            partitions = self.partitions(n, partition_rows or rows)
            values["embeddings"] = PartitionedMatrix(self, self.client_partitions(n, rows), column, dim, dtype)
        n_rows = next((len(v) for v in values.values() if v is not None), None)
        table, more = metadata_table(cols, extra, n_rows, self.source, named=bool(metadata))
        return Store(**values, metadata=table, metadata_skipped={**skipped, **more}, source=self.source,
                     columns=chosen).validate(), partitions

    def partitions(self, n_rows: int, rows: int) -> list[Partition]:
        """Consecutive row ranges of ``rows`` rows (the last one shorter) covering the store."""
        return [Partition(i, self, row0, min(rows, n_rows - row0)) for i, row0 in enumerate(range(0, n_rows, rows))]

    def client_partitions(self, n_rows: int, rows: int) -> list[Partition]:
        """The partitions the client's matrix reads: as the workers' at the default size."""
        return self.partitions(n_rows, rows)

    def partition_column(self, part: Partition, column: str) -> Any:
        """The raw values of ``column`` in ``part``'s rows."""
        return self.read_columns([column], part.row0, part.row0 + part.n_rows)[column]

    def read_partition(self, part: Partition, column: str, dim: int) -> np.ndarray:
        """The raw embeddings of ``part``: an (n_rows, dim) matrix, converted as :meth:`load` converts
        the whole column (float32 from Arrow, NaN rows for nulls; NumPy keeps its float dtype)."""
        raw = self.partition_column(part, column)
        matrix = convert_columns({column: raw}, {"embeddings": column}, self.source)["embeddings"]
        del raw
        if matrix.base is not None:   # a view of the reader's buffers: keep these rows, let the rest go
            matrix = np.array(matrix)
        pa.default_memory_pool().release_unused()   # Arrow's allocator keeps freed pages otherwise
        if matrix.shape != (part.n_rows, dim):
            raise InputError(f"{part.where} hold a {matrix.shape[0]} x {matrix.shape[1]} embedding block, expected "
                             f"{part.n_rows} x {dim}; every row needs the same length d, and the store must not "
                             "change during a scan")
        return matrix

    def embedding_layout(self, column: str, n_rows: int) -> tuple[int, np.dtype]:
        """(d, dtype) of the converted embedding column, from its first vectors. Converting the
        first block also checks the column's type, as a local load would."""
        if n_rows == 0:
            return 0, np.dtype(np.float32)
        for start in range(0, n_rows, PROBE_ROWS):
            raw = self.read_columns([column], start, min(n_rows, start + PROBE_ROWS))[column]
            if isinstance(raw, (pa.Array, pa.ChunkedArray)) and not pa.types.is_fixed_size_list(raw.type):
                raw = raw.filter(raw.is_valid())   # a list column's null rows say nothing of d
                if not len(raw):
                    continue
            matrix = convert_columns({column: raw}, {"embeddings": column}, self.source)["embeddings"]
            return int(matrix.shape[1]), matrix.dtype
        raise InputError(f"{self.source}: column {column!r} holds no vector values; it must hold one vector of d "
                         "numbers per row")


def default_rows(dim: int) -> int:
    """Rows in :data:`PARTITION_BYTES` of float32 vectors of length ``dim``."""
    return max(1, PARTITION_BYTES // (4 * max(1, dim)))


def slice_rows(array: Any, start: int, stop: int | None) -> Any:
    """Rows ``[start, stop)`` of a NumPy array: the array itself when that is all of it (a 0-d
    array as it is: the conversion reports it)."""
    whole = np.ndim(array) == 0 or (start == 0 and (stop is None or stop >= len(array)))
    return array if whole else array[start:stop]
