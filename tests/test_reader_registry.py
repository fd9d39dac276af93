"""The reader registry: every format reads the same rows whole (a local scan) and by partitions
(what a Dask worker reads), and a format added to the registry serves both."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

import tamis
from tamis import ColumnSpec
from tamis.io import readers
from tamis.io.readers import Reader, load_store, open_partitioned
from tamis.io.readers.parquet import RowGroups


class TextReader(Reader):
    """A test format: one vector per line of a text file (``np.savetxt``), embeddings only."""

    title = "text matrix"
    suffixes = (".txt",)

    def column_names(self) -> list[str]:
        return ["embeddings"]

    def num_rows(self, column: str) -> int:
        return len(np.loadtxt(self.path, ndmin=2))

    def read_columns(self, names: list[str] | None = None, start: int = 0, stop: int | None = None) -> dict[str, Any]:
        return {"embeddings": np.loadtxt(self.path, ndmin=2)[start:stop]}


N, D = 53, 6


def _columns() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    emb = rng.normal(size=(N, D)).astype(np.float32)
    emb[4] = np.nan
    emb[30] = 0.0
    return {"embeddings": emb, "labels": rng.integers(0, 3, N), "ids": np.array([f"r{i}" for i in range(N)])}


def _vectors(emb: np.ndarray, null_row: int | None = None) -> pa.Array:
    """Fixed-size float32 lists; or float64 lists with row ``null_row`` null."""
    if null_row is None:
        return pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), D)
    return pa.array([None if i == null_row else row.tolist() for i, row in enumerate(emb)],
                    type=pa.list_(pa.float64()))


def _write(kind: str, folder: Path) -> Path:
    cols = _columns()
    emb = cols["embeddings"]
    table = pa.table({"embedding": _vectors(emb), "label": cols["labels"], "id": cols["ids"]})
    if kind == "npz float16":
        np.savez(folder / "s.npz", embeddings=emb.astype(np.float16), labels=cols["labels"], ids=cols["ids"])
        return folder / "s.npz"
    if kind == "npz compressed float64":
        np.savez_compressed(folder / "s.npz", embeddings=emb.astype(np.float64), labels=cols["labels"])
        return folder / "s.npz"
    if kind == "npy float32":
        np.save(folder / "s.npy", emb)
        return folder / "s.npy"
    if kind == "npy int16":
        np.save(folder / "s.npy", (np.nan_to_num(emb) * 100).astype(np.int16))
        return folder / "s.npy"
    if kind == "parquet list with a null row":
        pq.write_table(pa.table({"embedding": _vectors(emb, null_row=9), "label": cols["labels"]}),
                       folder / "s.parquet", row_group_size=10)
        return folder / "s.parquet"
    if kind == "parquet shards":
        (folder / "shards").mkdir()
        for i, (a, b) in enumerate([(0, 20), (20, 21), (21, N)]):
            pq.write_table(table.slice(a, b - a), folder / "shards" / f"part-{i}.parquet", row_group_size=6)
        return folder / "shards"
    if kind == "feather lz4":
        feather.write_feather(table, folder / "s.feather", compression="lz4", chunksize=8)
        return folder / "s.feather"
    if kind == "lance fragments":
        lance = pytest.importorskip("lance")
        lance.write_dataset(table, folder / "s.lance", max_rows_per_file=10)
        return folder / "s.lance"
    if kind == "arrow stream":
        with pa.OSFile(str(folder / "s.arrow"), "wb") as sink, ipc.new_stream(sink, table.schema) as writer:
            for start in range(0, N, 11):
                writer.write_table(table.slice(start, 11))
        return folder / "s.arrow"
    raise AssertionError(kind)


KINDS = ["npz float16", "npz compressed float64", "npy float32", "npy int16", "parquet list with a null row",
         "parquet shards", "feather lz4", "arrow stream", "lance fragments"]


def _assert_partitions_read_the_store(path: Path, partition_rows: int) -> None:
    whole = load_store(path)
    raw = np.asarray(whole.embeddings)
    lazy, parts = open_partitioned(path, ColumnSpec(), partition_rows=partition_rows)
    assert [p.index for p in parts] == list(range(len(parts)))
    assert [p.row0 for p in parts] == list(np.cumsum([0] + [p.n_rows for p in parts[:-1]]))
    assert sum(p.n_rows for p in parts) == whole.n == lazy.n
    column, dim = lazy.embeddings.column, lazy.embeddings.shape[1]
    for part in parts:
        shipped = pickle.loads(pickle.dumps(part))          # what a worker gets
        rows = shipped.reader.read_partition(shipped, column, dim)
        assert rows.dtype == raw.dtype
        np.testing.assert_array_equal(rows, raw[part.row0:part.row0 + part.n_rows])   # NaN rows included
        pieces = [piece.reader.read_partition(piece, column, dim) for piece in shipped.pieces()]
        np.testing.assert_array_equal(np.concatenate(pieces), rows)
    assert lazy.embeddings.dtype == raw.dtype and lazy.embeddings.shape == raw.shape
    np.testing.assert_array_equal(np.asarray(lazy.embeddings), raw)
    np.testing.assert_array_equal(lazy.embeddings[[N - 1, 0, 17, 17]], raw[[N - 1, 0, 17, 17]])
    assert lazy.columns == whole.columns
    for name in ("labels", "ids"):
        assert (getattr(lazy, name) is None) == (getattr(whole, name) is None)
        if getattr(whole, name) is not None:
            assert getattr(lazy, name).equals(getattr(whole, name)), name


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("partition_rows", [7, 1000])
def test_partitions_read_the_rows_of_a_local_load(tmp_path, kind, partition_rows):
    _assert_partitions_read_the_store(_write(kind, tmp_path), partition_rows)


def test_parquet_partitions_are_whole_row_groups(tmp_path):
    _, parts = open_partitioned(_write("parquet shards", tmp_path), partition_rows=10)
    assert all(isinstance(p, RowGroups) for p in parts)
    # shards of 20, 1 and 32 rows in row groups of 6: partitions close at >= 10 rows or a shard's end
    assert [p.group_rows for p in parts] == [(6, 6), (6, 2), (1,), (6, 6), (6, 6), (6, 2)]
    assert [len(p.pieces()) for p in parts] == [2, 2, 1, 2, 2, 2]


def test_every_reader_module_is_registered():
    package = Path(readers.__file__).parent
    defined = set()
    for info in pkgutil.iter_modules([str(package)]):
        module = importlib.import_module(f"tamis.io.readers.{info.name}")
        defined |= {obj for _, obj in inspect.getmembers(module, inspect.isclass)
                    if issubclass(obj, Reader) and obj is not Reader and obj.__module__ == module.__name__}
    assert defined == set(readers.READERS)
    suffixes = [s for reader in readers.READERS for s in reader.suffixes]
    assert len(suffixes) == len(set(suffixes)), "two readers claim one suffix"


def test_a_reader_added_to_the_registry_serves_both_scans(tmp_path, monkeypatch):
    emb = _columns()["embeddings"]
    path = tmp_path / "s.txt"
    np.savetxt(path, emb)
    with pytest.raises(tamis.InputError, match="unknown store format '.txt'"):
        load_store(path)
    monkeypatch.setattr(readers, "READERS", readers.READERS + (TextReader,))
    store = load_store(path)
    np.testing.assert_array_equal(store.embeddings, emb.astype(np.float64))
    assert store.available == {"embeddings"}
    _assert_partitions_read_the_store(path, partition_rows=10)
    report = tamis.scan(path, device="cpu", checks=["invalid"])
    assert report.samples["is_invalid_issue"].to_pylist().count(True) == 2


def test_unknown_format_and_missing_file_list_the_registered_formats(tmp_path, monkeypatch):
    (tmp_path / "s.csv").write_text("a,b\n1,2\n")
    for path, start in ((tmp_path / "s.csv", "unknown store format '.csv'"), (tmp_path / "nope.npz", "no such file")):
        with pytest.raises(tamis.InputError) as err:
            load_store(path)
        message = str(err.value)
        assert start in message
        for reader in readers.READERS:
            assert reader.title in message and all(s in message for s in reader.suffixes), (reader, message)
    monkeypatch.setattr(readers, "READERS", readers.READERS + (TextReader,))
    with pytest.raises(tamis.InputError, match=r"text matrix \(\.txt\)"):
        load_store(tmp_path / "s.csv")
    with pytest.raises(tamis.InputError, match=r"text matrix \(\.txt\)"):
        open_partitioned(tmp_path / "s.csv")


def test_npy_is_memory_mapped(tmp_path):
    np.save(tmp_path / "s.npy", _columns()["embeddings"])
    rows = readers.NpyReader(tmp_path / "s.npy").read_columns(start=10, stop=20)["(npy matrix)"]
    assert isinstance(rows.base, np.memmap) and rows.shape == (10, D)     # a view of the mapped file, not a load
    _, parts = open_partitioned(tmp_path / "s.npy", partition_rows=10)
    assert [p.n_rows for p in parts] == [10] * 5 + [3]
