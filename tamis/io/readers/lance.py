"""Lance datasets: a ``.lance`` folder, read with ``pylance`` (imported only when one is read).

A Lance dataset is a folder of versions (``_versions/``) and data files (``data/``); a version
lists the dataset's fragments, each some rows of every column. The first read opens the latest
version and pins it: every later read of the reader, and every partition a Dask worker reads,
sees that version, whatever is written to the dataset meanwhile. Rows are in fragment order
(the order a Lance scan returns them in, deleted rows left out). A Dask scan plans its
partitions from the fragments' row counts alone: every partition is one or more consecutive
whole fragments (a fragment is never split, like a Parquet row group), and a worker reads its
partition's fragments directly, one at a time (:meth:`Fragments.pieces`). Columns are found by
the usual names; the embedding column is a fixed-size list (Lance's vector type) or a list of
numbers. An in-memory ``lance.LanceDataset`` is read by :mod:`.memory`.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from ..._optional import optional_import
from ...errors import InputError
from .base import Partition, Reader
from .columns import table_columns, unreadable_type

LANCE_SUFFIX = ".lance"
#: the folder of a Lance dataset's manifests, one per version
VERSIONS = "_versions"
#: what a failed read of a data file asks
DATA_FIX = "is every data file complete and the dataset unchanged since the scan started?"
#: what a failed open asks
OPEN_FIX = "is it a complete folder lance.write_dataset wrote?"


@dataclass(frozen=True)
class Fragments(Partition):
    """Fragments ``fragment_ids`` (of ``fragment_rows`` rows each, in that order) of the dataset."""

    fragment_ids: tuple[int, ...]
    fragment_rows: tuple[int, ...]

    @property
    def where(self) -> str:
        return f"{self.reader.source}: fragments {list(self.fragment_ids)}"

    def pieces(self) -> list[Partition]:
        """One partition per fragment (same index), in order."""
        out, row0 = [], self.row0
        for fragment, n in zip(self.fragment_ids, self.fragment_rows):
            out.append(Fragments(self.index, self.reader, row0, n, (fragment,), (n,)))
            row0 += n
        return out


class LanceReader(Reader):
    title = "Lance dataset"
    suffixes = (LANCE_SUFFIX,)

    # state learned by the first read (``__init__`` only stores the path): the version read, pinned
    # (it travels with the partitions to the workers), and, never pickled, the open dataset and
    # (fragment id, rows) of each fragment
    _version: int | None = None
    _cached_dataset: Any = None
    _cached_fragments: list[tuple[int, int]] | None = None

    @classmethod
    def matches(cls, path: Path) -> bool:
        return path.suffix.lower() == LANCE_SUFFIX or (path.is_dir() and (path / VERSIONS).is_dir())

    @classmethod
    def describe(cls) -> str:
        return f"{cls.title} (a {LANCE_SUFFIX} folder, with pylance installed)"

    def column_names(self) -> list[str]:
        return list(self._dataset().schema.names)

    def unreadable_columns(self, names: list[str]) -> dict[str, str]:
        types = {f.name: f.type for f in self._dataset().schema}
        return {name: why for name in names if name in types and (why := unreadable_type(types[name])) is not None}

    def num_rows(self, column: str) -> int:
        return sum(n for _, n in self._fragments())

    def read_columns(self, names: list[str] | None = None, start: int = 0, stop: int | None = None) -> dict[str, Any]:
        dataset = self._dataset()
        with _reading(f"{self.source}: cannot read the Lance dataset", DATA_FIX):
            if start == 0 and stop is None:
                table = dataset.to_table(columns=names, scan_in_order=True)
            else:
                table = self._row_range(names, start, stop)
        return table_columns(table)

    def partitions(self, n_rows: int, rows: int) -> list[Partition]:
        """Consecutive whole fragments, grouped into partitions of about ``rows`` rows (``rows=1``:
        one fragment each; fragments whose rows are all deleted are left out). Reads the manifest
        only."""
        parts: list[Partition] = []
        row0, ids, sizes = 0, [], []
        for fragment, n in self._fragments():
            if n == 0:
                continue
            ids.append(fragment)
            sizes.append(n)
            if sum(sizes) >= rows:
                parts.append(Fragments(len(parts), self, row0, sum(sizes), tuple(ids), tuple(sizes)))
                row0, ids, sizes = row0 + sum(sizes), [], []
        if ids:
            parts.append(Fragments(len(parts), self, row0, sum(sizes), tuple(ids), tuple(sizes)))
        return parts

    def partition_column(self, part: Partition, column: str) -> Any:
        if not isinstance(part, Fragments):
            return super().partition_column(part, column)
        dataset = self._dataset()
        tables = []
        for fragment_id in part.fragment_ids:
            with _reading(f"{self.source}: cannot read fragment {fragment_id} of the Lance dataset", DATA_FIX):
                fragment = dataset.get_fragment(fragment_id)
                if fragment is None:
                    raise ValueError(f"version {self._version} has no fragment {fragment_id}")
                tables.append(fragment.to_table(columns=[column]))
        return pa.concat_tables(tables).column(column) if len(tables) > 1 else tables[0].column(column)

    # ------------------------------------------------------------------ the dataset, opened once per process
    def _dataset(self) -> Any:
        """The open dataset at the pinned version (the latest one at the first call)."""
        if self._cached_dataset is not None:
            return self._cached_dataset
        if not self.path.is_dir():
            raise InputError(f"{self.path}: a Lance dataset is a folder (holding {VERSIONS}/ and data/), and this is "
                             "a file; give the path of the dataset's folder, the one lance.write_dataset wrote")
        lance = optional_import("lance", needed_for=f"{self.path}: reading a Lance dataset")
        at = "" if self._version is None else f" at version {self._version}"
        with _reading(f"{self.path}: cannot open this Lance dataset{at}", OPEN_FIX):
            dataset = lance.dataset(str(self.path), version=self._version)
            version = int(dataset.version)
        self._version = version
        self._cached_dataset = dataset
        return dataset

    def _fragments(self) -> list[tuple[int, int]]:
        """(fragment id, rows) of every fragment, in the dataset's row order, from its manifest (and
        deletion files)."""
        if self._cached_fragments is None:
            dataset = self._dataset()
            with _reading(f"{self.source}: cannot count the rows of the Lance dataset's fragments", OPEN_FIX):
                self._cached_fragments = [(int(f.fragment_id), int(f.count_rows())) for f in dataset.get_fragments()]
        return self._cached_fragments

    def _row_range(self, names: list[str] | None, start: int, stop: int | None) -> pa.Table:
        """Rows ``[start, stop)``, read from the fragments that hold them."""
        dataset = self._dataset()
        tables, row0 = [], 0
        for fragment_id, n in self._fragments():
            if stop is not None and row0 >= stop:
                break
            lo, hi = max(start - row0, 0), n if stop is None else min(stop - row0, n)
            if hi > lo:
                fragment = dataset.get_fragment(fragment_id)
                tables.append(fragment.to_table(columns=names, offset=lo, limit=hi - lo))
            row0 += n
        if not tables:   # an empty range
            schema = dataset.schema
            return schema.empty_table() if names is None else schema.empty_table().select(names)
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)

    def __getstate__(self) -> dict:   # a partition travels to the workers with the path and version only
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_cached")}


@contextmanager
def _reading(what: str, fix: str) -> Iterator[None]:
    """Turn a failure of pylance inside the block into an :class:`InputError` saying ``what`` failed,
    why, and ``fix``. A damaged file can make Lance's Rust code panic, which pyo3 raises as a
    ``PanicException``, a BaseException: that is a read failure too (Ctrl-C and exits are not)."""
    try:
        yield
    except InputError:
        raise
    except BaseException as exc:
        if not (isinstance(exc, Exception) or type(exc).__name__ == "PanicException"):
            raise
        raise InputError(f"{what} ({_one_line(exc)}); {fix}") from exc


#: a Rust source location in Lance's messages (``, /path/to/file.rs:12:5``): noise to a user
_RUST_LOCATION = re.compile(r",?\s*/\S+\.rs:\d+:\d+")


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line, without the Rust source locations Lance adds."""
    return " ".join(_RUST_LOCATION.sub("", str(exc)).split())[:500]


__all__ = ["LanceReader", "Fragments", "LANCE_SUFFIX"]
