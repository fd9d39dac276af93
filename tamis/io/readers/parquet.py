"""Parquet: one file, or a folder of shards read in path order.

The embedding column is a list or fixed-size list of numbers. A Dask scan plans its
partitions from the footers alone: every partition is one or more consecutive row groups of
one shard (a row group is never split), and a worker reads its partition's row groups
directly, one row group at a time (:meth:`RowGroups.pieces`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ...errors import InputError
from .base import Partition, Reader
from .columns import table_columns, unreadable_type

PARQUET_SUFFIXES = (".parquet", ".pq")


def parquet_shards(path: Path) -> list[Path]:
    """The Parquet files of a store, in row order: the file itself, or a folder's shards sorted by path."""
    if not path.is_dir():
        return [path]
    shards = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PARQUET_SUFFIXES)
    if not shards:
        raise InputError(f"{path}: the directory holds no .parquet shards; give a file or a "
                         "directory of Parquet shards")
    return shards


@dataclass(frozen=True)
class RowGroups(Partition):
    """Row groups ``row_groups`` (of ``group_rows`` rows each) of the shard ``path``."""

    path: str
    row_groups: tuple[int, ...]
    group_rows: tuple[int, ...]

    @property
    def where(self) -> str:
        return f"{self.path}: row groups {list(self.row_groups)}"

    def pieces(self) -> list[Partition]:
        """One partition per row group (same index), in order."""
        out, row0 = [], self.row0
        for g, n in zip(self.row_groups, self.group_rows):
            out.append(RowGroups(self.index, self.reader, row0, n, self.path, (g,), (n,)))
            row0 += n
        return out


class ParquetReader(Reader):
    title = "Parquet"
    suffixes = PARQUET_SUFFIXES
    reads_folders = True

    def files(self) -> list[Path]:
        return parquet_shards(self.path)

    def column_names(self) -> list[str]:
        return _footer(self.files()[0]).schema.to_arrow_schema().names

    def unreadable_columns(self, names: list[str]) -> dict[str, str]:
        types = {f.name: f.type for f in _footer(self.files()[0]).schema.to_arrow_schema()}
        return {name: why for name in names if name in types and (why := unreadable_type(types[name])) is not None}

    def num_rows(self, column: str) -> int:
        files = self.files()
        self._check_columns(files, [column])
        return sum(_footer(f).num_rows for f in files)

    def read_columns(self, names: list[str] | None = None, start: int = 0, stop: int | None = None) -> dict[str, Any]:
        files = self.files()
        if names is not None:
            self._check_columns(files, names)
        try:
            if start == 0 and stop is None:
                tables = [pq.read_table(f, columns=names) for f in files]
            else:
                tables = list(_row_range(files, names, start, stop))
                if not tables:   # an empty range
                    empty = pq.read_schema(files[0]).empty_table()
                    tables = [empty if names is None else empty.select(names)]
            table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
        except Exception as exc:  # noqa: BLE001 - ArrowInvalid, OSError, ...
            raise InputError(f"{self.source}: cannot read the Parquet store ({exc}); is every shard a complete "
                             "Parquet file with the same columns?") from exc
        return table_columns(table)

    def partitions(self, n_rows: int, rows: int) -> list[Partition]:
        """Consecutive row groups of each shard, grouped into partitions of about ``rows`` rows
        (``rows=1``: one row group each). Reads the footers only."""
        parts: list[Partition] = []
        row0 = 0
        for path in self.files():
            meta = _footer(path)
            groups: list[int] = []
            sizes: list[int] = []
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                if n == 0:
                    continue
                groups.append(g)
                sizes.append(n)
                if sum(sizes) >= rows:
                    parts.append(RowGroups(len(parts), self, row0, sum(sizes), str(path), tuple(groups), tuple(sizes)))
                    row0, groups, sizes = row0 + sum(sizes), [], []
            if groups:
                parts.append(RowGroups(len(parts), self, row0, sum(sizes), str(path), tuple(groups), tuple(sizes)))
                row0 += sum(sizes)
        return parts

    def partition_column(self, part: Partition, column: str) -> Any:
        if not isinstance(part, RowGroups):
            return super().partition_column(part, column)
        try:
            table = pq.ParquetFile(part.path).read_row_groups(list(part.row_groups), columns=[column])
        except Exception as exc:  # noqa: BLE001 - ArrowInvalid, OSError, ...
            raise InputError(f"{part.path}: cannot read row groups {list(part.row_groups)} ({exc}); is the shard "
                             "a complete Parquet file, unchanged since the scan started?") from exc
        return table.column(column)

    def _check_columns(self, files: list[Path], names: list[str]) -> None:
        for f in files[1:]:
            missing = set(names) - set(_footer(f).schema.to_arrow_schema().names)
            if missing:
                raise InputError(f"{f}: this shard lacks column {sorted(missing)[0]!r} that {files[0].name} has; "
                                 "every shard needs the same columns")


def _footer(path: Path):
    try:
        return pq.ParquetFile(path).metadata
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: cannot read the Parquet footer ({exc}); is it a complete Parquet file?") from exc


def _row_range(files: list[Path], names: list[str] | None, start: int, stop: int | None):
    """Tables of rows ``[start, stop)`` of the store, streamed from the row groups that hold them."""
    row0 = 0
    for path in files:
        pf = pq.ParquetFile(path)
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if stop is not None and row0 >= stop:
                return
            if row0 + n > start and n:
                lo, hi = max(start - row0, 0), n if stop is None else min(stop - row0, n)
                seen = 0
                for batch in pf.iter_batches(batch_size=max(1, min(hi, 1 << 16)), row_groups=[g], columns=names):
                    a, b = max(lo - seen, 0), min(hi - seen, batch.num_rows)
                    if b > a:
                        yield pa.Table.from_batches([batch.slice(a, b - a)])
                    seen += batch.num_rows
                    if seen >= hi:
                        break
            row0 += n
