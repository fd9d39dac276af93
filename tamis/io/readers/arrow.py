"""Arrow IPC: the file format (Feather v2, ``.feather`` / ``.arrow``) or the stream format.

The embedding column is a list or fixed-size list of numbers. Files are memory-mapped: an
uncompressed file is used in place, only the pages touched are read. A row-range read of
the file format reads the record batches up to the range's end, and only the columns asked
for (a compressed file, as Feather's default lz4, decompresses those batches); the stream
format has no index, so a row-range read maps the whole stream and slices it.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.ipc as ipc

from ...errors import InputError
from .base import Reader
from .columns import table_columns, unreadable_type

ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")


class ArrowReader(Reader):
    title = "Arrow IPC / Feather"
    suffixes = ARROW_SUFFIXES

    def column_names(self) -> list[str]:
        file = self._file()
        return file.schema.names if file is not None else self._table().column_names

    def unreadable_columns(self, names: list[str]) -> dict[str, str]:
        file = self._file()
        schema = file.schema if file is not None else self._table().schema
        types = {f.name: f.type for f in schema}
        return {name: why for name in names if name in types and (why := unreadable_type(types[name])) is not None}

    def num_rows(self, column: str) -> int:
        file = self._file()
        return file.count_rows() if file is not None else self._table().num_rows

    def read_columns(self, names: list[str] | None = None, start: int = 0, stop: int | None = None) -> dict[str, Any]:
        file = None if start == 0 and stop is None else self._file(names)
        if file is None:
            table = self._table()
            table = table if names is None else table.select(names)
            return table_columns(table if start == 0 and stop is None else table.slice(start, _length(start, stop)))
        chunks: list[pa.RecordBatch] = []
        row = 0
        for i in range(file.num_record_batches):
            if stop is not None and row >= stop:
                break
            batch = file.get_batch(i)
            lo, hi = max(start - row, 0), batch.num_rows if stop is None else min(stop - row, batch.num_rows)
            if hi > lo:
                chunks.append(batch.slice(lo, hi - lo))
            row += batch.num_rows
        return table_columns(pa.Table.from_batches(chunks, schema=file.schema))

    def _table(self) -> pa.Table:
        """The whole store, memory-mapped (file format, else stream format)."""
        try:
            return feather.read_table(self.path, memory_map=True)
        except Exception:  # noqa: BLE001 - not a file-format IPC; try the stream format
            pass
        try:
            with pa.memory_map(str(self.path)) as source:
                return ipc.open_stream(source).read_all()
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{self.path}: cannot read this Arrow IPC / Feather file ({exc}); write it with "
                             "pyarrow.feather.write_feather") from exc

    def _file(self, names: list[str] | None = None) -> ipc.RecordBatchFileReader | None:
        """A random-access reader of the file format (only the columns ``names``), or None for a stream."""
        try:   # one memory map, whose pages the OS shares and reclaims; closed with the reader
            source = pa.memory_map(str(self.path))
            schema = ipc.open_file(source).schema
            fields = None if names is None else [schema.get_field_index(n) for n in names]
            return ipc.open_file(source, options=ipc.IpcReadOptions(included_fields=fields))
        except Exception:  # noqa: BLE001 - the stream format (or not Arrow at all: _table says so)
            return None


def _length(start: int, stop: int | None) -> int | None:
    return None if stop is None else max(0, stop - start)
