"""Hugging Face ``datasets`` folders, as ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` write them.

A ``Dataset`` folder holds ``state.json`` and Arrow stream shards (``data-00000-of-0000N.arrow``,
listed in ``state.json``'s ``_data_files``); a ``DatasetDict`` folder holds
``dataset_dict.json`` and one such folder per split. The shards are read with pyarrow
(memory-mapped; the ``datasets`` package is not needed): a ``DatasetDict``'s splits are stacked
in the order ``dataset_dict.json`` lists them, with a ``split`` column naming each row's split
when the data has none. Columns are found by the usual names, as for any table. An in-memory
``datasets.Dataset`` is read by :mod:`.memory`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc

from ...errors import InputError
from .base import Reader
from .columns import table_columns, unreadable_type

STATE = "state.json"
DICT = "dataset_dict.json"


class HuggingFaceReader(Reader):
    title = "Hugging Face datasets folder (save_to_disk)"
    suffixes = ()
    reads_folders = True

    @classmethod
    def matches(cls, path: Path) -> bool:
        return path.is_dir() and ((path / STATE).is_file() or (path / DICT).is_file())

    @classmethod
    def describe(cls) -> str:
        return f"{cls.title}: a folder with {STATE} or {DICT}"

    def column_names(self) -> list[str]:
        return self._table().column_names

    def unreadable_columns(self, names: list[str]) -> dict[str, str]:
        schema = self._table().schema
        types = {f.name: f.type for f in schema}
        return {name: why for name in names if name in types and (why := unreadable_type(types[name])) is not None}

    def num_rows(self, column: str) -> int:
        return self._table().num_rows

    def read_columns(self, names: list[str] | None = None, start: int = 0, stop: int | None = None) -> dict[str, Any]:
        table = self._table()
        table = table if names is None else table.select(names)
        if start or stop is not None:
            table = table.slice(start, None if stop is None else max(0, stop - start))
        return table_columns(table)

    def _table(self) -> pa.Table:
        cached = getattr(self, "_cached", None)
        if cached is None:
            cached = self._read()
            self._cached = cached
        return cached

    def __getstate__(self) -> dict:   # a partition travels to workers without the table
        return {k: v for k, v in self.__dict__.items() if k != "_cached"}

    def _read(self) -> pa.Table:
        if (self.path / STATE).is_file():
            return _dataset(self.path)
        try:
            splits = json.loads((self.path / DICT).read_text(encoding="utf-8"))["splits"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{self.path}: {DICT} cannot be read ({exc}); is this a folder DatasetDict.save_to_disk "
                             "wrote?") from exc
        tables = []
        for name in splits:
            table = _dataset(self.path / str(name))
            if "split" not in table.column_names:
                table = table.append_column("split", pa.array([str(name)] * table.num_rows, pa.string()))
            tables.append(table)
        if not tables:
            raise InputError(f"{self.path}: {DICT} lists no split; save a DatasetDict with at least one")
        try:
            return pa.concat_tables(tables, promote_options="default")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise InputError(f"{self.path}: the splits have different columns ({exc}); give them the same ones") \
                from exc


def _dataset(folder: Path) -> pa.Table:
    """The rows of one ``Dataset.save_to_disk`` folder, its shards in order."""
    try:
        state = json.loads((folder / STATE).read_text(encoding="utf-8"))
        files = [folder / entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{folder}: {STATE} cannot be read ({exc}); is this a folder Dataset.save_to_disk "
                         "wrote?") from exc
    tables = []
    for file in files:
        try:
            with pa.memory_map(str(file)) as source:
                tables.append(ipc.open_stream(source).read_all())
        except Exception as exc:  # noqa: BLE001 - missing, truncated, not Arrow
            raise InputError(f"{file}: cannot read this datasets shard ({exc}); save the dataset again") from exc
    if not tables:
        raise InputError(f"{folder}: {STATE} lists no data file")
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


__all__ = ["HuggingFaceReader"]
