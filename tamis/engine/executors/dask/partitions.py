"""A Parquet store as partitions: runs of row groups with their global row offsets.

:func:`plan_partitions` reads only the files' footers: every partition is one or more
consecutive row groups of one file (a row group is never split), about
``partition_rows`` rows. :func:`read_partition` reads one partition's embedding column
into a float32 matrix, exactly as :func:`tamis.load_store` reads the whole column, so a
worker that reads partition ``i`` sees rows ``row0 .. row0 + n_rows`` of the store bit for bit.

:func:`open_partitioned_store` builds the client's :class:`~tamis.io.store.Store`: the
descriptive columns (labels, paths, split, ids, pred_probs, quality: O(N), small next to the
embeddings) are read whole; the embeddings stay on disk as a :class:`PartitionedMatrix`,
read one row group at a time when the client's light passes (validity, normalisation,
hashing) walk through them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ....errors import InputError
from ....io.readers import (
    PARQUET_SUFFIXES,
    choose_columns,
    convert_columns,
    parquet_shards,
)
from ....io.store import ColumnSpec, Store
from .blocked import BlockedMatrix

#: default partition size: about this many bytes of float32 embeddings
PARTITION_BYTES = 64 << 20


@dataclass(frozen=True)
class Partition:
    """Row groups ``row_groups`` of ``path``: global input rows ``row0 .. row0 + n_rows``."""

    index: int
    path: str
    row_groups: tuple[int, ...]
    row0: int
    n_rows: int
    group_rows: tuple[int, ...] = ()    # rows of each row group

    def groups(self) -> list["Partition"]:
        """One partition per row group of this one (same index), in order."""
        out, row0 = [], self.row0
        for g, n in zip(self.row_groups, self.group_rows):
            out.append(Partition(self.index, self.path, (g,), row0, n, (n,)))
            row0 += n
        return out


def plan_partitions(files: list[Path], dim: int, partition_rows: int | None = None) -> list[Partition]:
    """Consecutive row groups of each file, grouped into partitions of about ``partition_rows``
    rows (default: :data:`PARTITION_BYTES` of float32 embeddings). Reads the footers only."""
    import pyarrow.parquet as pq

    target = partition_rows or max(1, PARTITION_BYTES // (4 * max(1, dim)))
    parts: list[Partition] = []
    row0 = 0
    for path in files:
        meta = _footer(pq, path)
        groups: list[int] = []
        sizes: list[int] = []
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if n == 0:
                continue
            groups.append(g)
            sizes.append(n)
            if sum(sizes) >= target:
                parts.append(Partition(len(parts), str(path), tuple(groups), row0, sum(sizes), tuple(sizes)))
                row0, groups, sizes = row0 + sum(sizes), [], []
        if groups:
            parts.append(Partition(len(parts), str(path), tuple(groups), row0, sum(sizes), tuple(sizes)))
            row0 += sum(sizes)
    return parts


def read_partition(part: Partition, column: str, source: str, dim: int) -> np.ndarray:
    """The raw embeddings of ``part``: an (n_rows, dim) float32 matrix (NaN rows for nulls)."""
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(part.path).read_row_groups(list(part.row_groups), columns=[column])
    except Exception as exc:  # noqa: BLE001 - ArrowInvalid, OSError, ...
        raise InputError(f"{part.path}: cannot read row groups {list(part.row_groups)} ({exc}); is the shard "
                         "a complete Parquet file, unchanged since the scan started?") from exc
    matrix = convert_columns({column: table.column(column)}, {"embeddings": column}, source)["embeddings"]
    if matrix.base is not None:   # a zero-copy view of Arrow memory: keep a copy, let Arrow's go
        matrix = matrix.copy()
    del table
    pa.default_memory_pool().release_unused()   # Arrow's allocator keeps freed pages otherwise
    if matrix.shape != (part.n_rows, dim):
        raise InputError(f"{part.path}: row groups {list(part.row_groups)} hold a {matrix.shape[0]} x "
                         f"{matrix.shape[1]} embedding block, expected {part.n_rows} x {dim}; every row needs "
                         f"the same length d, and the shards must not change during a scan")
    return matrix


class PartitionedMatrix(BlockedMatrix):
    """The store's raw embeddings, read from its partitions on demand (float32).

    Keeps the last partition read, so a pass in row order reads every partition once; the
    client's matrix has one partition per row group (``row group x d x 4`` bytes in memory).
    """

    def __init__(self, partitions: list[Partition], column: str, source: str, dim: int):
        super().__init__((sum(p.n_rows for p in partitions), dim), np.float32)
        self.partitions = partitions
        self.column = column
        self.source = source
        self._starts = np.array([p.row0 for p in partitions], dtype=np.int64)
        self._last: tuple[int, np.ndarray] | None = None
        self._lock = threading.Lock()

    def _partition(self, i: int) -> np.ndarray:
        with self._lock:
            if self._last is not None and self._last[0] == i:
                return self._last[1]
            matrix = read_partition(self.partitions[i], self.column, self.source, self.shape[1])
            self._last = (i, matrix)
            return matrix

    def _read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, self.shape[1]), dtype=np.float32)
        i = max(0, int(np.searchsorted(self._starts, start, side="right")) - 1)
        row = start
        while row < stop:
            part = self.partitions[i]
            lo, hi = row - part.row0, min(stop, part.row0 + part.n_rows) - part.row0
            out[row - start:row - start + hi - lo] = self._partition(i)[lo:hi]
            row += hi - lo
            i += 1
        return out


def open_partitioned_store(path: str | Path, columns: ColumnSpec,
                           partition_rows: int | None = None) -> tuple[Store, list[Partition]]:
    """The client's :class:`Store` of a Parquet file or folder of shards, and its partitions.

    Reads the footers, the first row (to learn d) and the descriptive columns; the
    embeddings stay in the files (:class:`PartitionedMatrix`).
    """
    import pyarrow.parquet as pq

    path = Path(path)
    src = str(path)
    if not path.exists():
        raise InputError(f"{src}: no such file or directory; give a Parquet file or a folder of Parquet shards")
    if not path.is_dir() and path.suffix.lower() not in PARQUET_SUFFIXES:
        raise InputError(f"{src}: a distributed scan reads Parquet stores (a .parquet file or a folder of "
                         "shards); convert it, e.g. with pyarrow.parquet.write_table(table, 'store.parquet', "
                         "row_group_size=100_000)")
    files = parquet_shards(path)
    names = _footer(pq, files[0]).schema.to_arrow_schema().names
    chosen = choose_columns(names, columns, src)
    for f in files[1:]:
        missing = set(chosen.values()) - set(_footer(pq, f).schema.to_arrow_schema().names)
        if missing:
            raise InputError(f"{f}: this shard lacks column {sorted(missing)[0]!r} that {files[0].name} has; "
                             "every shard needs the same columns")
    descriptive = [c for name, c in chosen.items() if name != "embeddings"]
    try:
        tables = [pq.read_table(f, columns=descriptive) for f in files]
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{src}: cannot read the Parquet store ({exc}); is every shard a complete "
                         "Parquet file with the same columns?") from exc
    cols: dict[str, Any] = {c: table.column(c) for c in descriptive}
    values = convert_columns(cols, {k: v for k, v in chosen.items() if k != "embeddings"}, src)
    partitions: list[Partition] = []
    if "embeddings" in chosen:
        column = chosen["embeddings"]
        dim = _first_dim(pq, files, column, src)
        partitions = plan_partitions(files, dim, partition_rows)
        # the client reads one row group at a time: its passes need no more
        values["embeddings"] = PartitionedMatrix(plan_partitions(files, dim, 1), column, src, dim)
        if values["embeddings"].shape[0] != table.num_rows:
            raise InputError(f"{src}: the embedding column has {values['embeddings'].shape[0]} rows but the other "
                             f"columns have {table.num_rows}; every column needs one value per row")
    return Store(**values, source=src, columns=chosen).validate(), partitions


def _footer(pq, path: Path):
    try:
        return pq.ParquetFile(path).metadata
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: cannot read the Parquet footer ({exc}); is it a complete Parquet file?") from exc


def _first_dim(pq, files: list[Path], column: str, src: str) -> int:
    """d: the list size of a fixed-size-list column, else the length of the first non-null vector.
    The first block read is converted too, which checks the column's type."""
    for f in files:
        pf = pq.ParquetFile(f)
        for batch in pf.iter_batches(batch_size=4096, columns=[column]):
            values = batch.column(0)
            if pa.types.is_fixed_size_list(values.type):
                convert_columns({column: values}, {"embeddings": column}, src)
                return int(values.type.list_size)
            present = values.filter(values.is_valid())
            if len(present):
                first = convert_columns({column: present.slice(0, 1)}, {"embeddings": column}, src)["embeddings"]
                return int(first.shape[1])
    raise InputError(f"{src}: column {column!r} holds no vector values; it must hold one vector of d numbers per row")
