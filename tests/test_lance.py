"""Lance datasets (``.lance`` folders, pylance): read like the same rows as Parquet, locally and
by fragments on Dask, at the version first read; pylance imported only when one is read, with the
install hint when it is missing; a damaged dataset is an InputError."""

from __future__ import annotations

import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tamis
from tamis import ColumnSpec
from tamis.cli import main
from tamis.io.readers import load_store, open_partitioned, reader_for
from tamis.io.readers.lance import Fragments, LanceReader, _reading

lance = pytest.importorskip("lance")

N, D = 150, 8
FRAGMENT_ROWS = 20     # max_rows_per_file: 150 rows in fragments of 20, 20, ..., 10


def _table(vectors: str = "fixed float32", n: int = N, seed: int = 0) -> pa.Table:
    """Rows with planted findings: exact copies, near copies across splits, a NaN and a zero row
    (and a null vector for the list column), two spellings of one colour."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, D)).astype(np.float32)
    emb[n - 1] = emb[0]                                               # exact copy
    emb[100:110] = emb[10:20] + 0.01 * rng.normal(size=(10, D)).astype(np.float32)   # near copies
    emb[5] = np.nan
    emb[6] = 0.0
    if vectors == "fixed float32":
        column = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), D)
    else:   # a list of float64, row 7 null
        column = pa.array([None if i == 7 else row.astype(np.float64).tolist() for i, row in enumerate(emb)],
                          type=pa.list_(pa.float64()))
    colours = rng.choice(["red", "blue", "green"], n).astype(object)
    colours[::37] = "Red "
    return pa.table({"embedding": column, "label": rng.integers(0, 3, n),
                     "split": np.where(np.arange(n) < 90, "train", "test"),
                     "id": [f"s{i:04d}" for i in range(n)], "colour": colours.astype(str),
                     "tags": pa.array([[1, 2]] * n, type=pa.list_(pa.int64()))})


def _write(folder: Path, table: pa.Table, name: str = "store") -> tuple[Path, Path]:
    """The same rows as a Lance dataset (fragments of FRAGMENT_ROWS rows) and as a Parquet file."""
    lance.write_dataset(table, folder / f"{name}.lance", max_rows_per_file=FRAGMENT_ROWS)
    pq.write_table(table, folder / f"{name}.parquet", row_group_size=25)
    return folder / f"{name}.lance", folder / f"{name}.parquet"


CHECKS = ["invalid", "exact_duplicate", "near_duplicate", "leakage", "outlier", "metadata"]


@pytest.mark.parametrize("vectors", ["fixed float32", "list float64 with a null"])
def test_a_lance_dataset_reads_and_scans_like_the_same_parquet(tmp_path, vectors):
    path, parquet = _write(tmp_path, _table(vectors))
    assert isinstance(reader_for(path), LanceReader)
    assert len(lance.dataset(str(path)).get_fragments()) == 8
    store, same = load_store(path), load_store(parquet)
    np.testing.assert_array_equal(store.embeddings, same.embeddings)          # NaN rows included
    assert store.columns == same.columns == {"embeddings": "embedding", "labels": "label", "split": "split",
                                             "ids": "id"}
    for name in ("labels", "split", "ids"):
        assert getattr(store, name).to_pylist() == getattr(same, name).to_pylist(), name
    assert store.metadata.column_names == ["colour"]
    assert store.metadata["colour"].to_pylist() == same.metadata["colour"].to_pylist()
    assert "list" in store.metadata_skipped["tags"]

    report = tamis.scan(path, device="cpu", engine="exact", checks=CHECKS)
    expected = tamis.scan(parquet, device="cpu", engine="exact", checks=CHECKS)
    assert report.counts() == expected.counts()
    assert report.counts()["exact_duplicate"] == 2 and report.counts()["leakage"] >= 10
    assert report.counts()["invalid"] == (3 if vectors != "fixed float32" else 2)
    for check in CHECKS[:-1]:
        np.testing.assert_array_equal(report.flags(check), expected.flags(check), err_msg=check)
    assert report.tables["pairs"].equals(expected.tables["pairs"])
    assert report.exclude_list() == expected.exclude_list()
    np.testing.assert_array_equal(report.keep_mask(), expected.keep_mask())
    assert report.tables["metadata"].to_pylist() == expected.tables["metadata"].to_pylist()


def test_partitions_are_whole_fragments_and_read_the_rows_of_a_local_load(tmp_path):
    path, _ = _write(tmp_path, _table())
    dataset = lance.dataset(str(path))
    dataset.delete("id = 's0021' OR id = 's0022' OR id = 's0140'")    # deletion files: fragments 1 and 7 shrink
    whole = load_store(path)
    assert whole.n == N - 3 and "s0021" not in whole.ids.to_pylist()
    raw = np.asarray(whole.embeddings)
    lazy, parts = open_partitioned(path, ColumnSpec(), partition_rows=30)
    assert all(isinstance(p, Fragments) for p in parts)
    # fragments of 20, 18, 20, 20, 20, 20, 20, 9 rows: a partition closes at >= 30 rows, never splits one
    assert [p.fragment_rows for p in parts] == [(20, 18), (20, 20), (20, 20), (20, 9)]
    assert [p.fragment_ids for p in parts] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert [p.row0 for p in parts] == [0, 38, 78, 118] and sum(p.n_rows for p in parts) == whole.n
    for part in parts:
        shipped = pickle.loads(pickle.dumps(part))           # what a worker gets: the path and the version
        assert shipped.reader.__dict__ == {"path": path, "_version": dataset.version}
        rows = shipped.reader.read_partition(shipped, "embedding", D)
        np.testing.assert_array_equal(rows, raw[part.row0:part.row0 + part.n_rows])
        pieces = shipped.pieces()
        assert [p.n_rows for p in pieces] == list(part.fragment_rows)
        np.testing.assert_array_equal(np.concatenate([p.reader.read_partition(p, "embedding", D) for p in pieces]),
                                      rows)
    np.testing.assert_array_equal(np.asarray(lazy.embeddings), raw)
    np.testing.assert_array_equal(lazy.embeddings[[N - 4, 0, 37, 38, 37]], raw[[N - 4, 0, 37, 38, 37]])
    assert lazy.ids.equals(whole.ids)
    rows = reader_for(path).read_columns(["id"], 35, 41)["id"].to_pylist()     # a range across two fragments
    assert rows == ["s0037", "s0038", "s0039", "s0040", "s0041", "s0042"]
    _, parts = open_partitioned(path, partition_rows=40)          # 40 rows exactly close a partition
    assert [p.fragment_ids for p in parts] == [(0, 1, 2), (3, 4), (5, 6), (7,)]
    _, parts = open_partitioned(path, partition_rows=1)
    assert [p.fragment_ids for p in parts] == [(i,) for i in range(8)]


def test_the_version_first_read_is_the_one_every_partition_reads(tmp_path):
    path, _ = _write(tmp_path, _table())
    _, parts = open_partitioned(path, partition_rows=1)
    lance.write_dataset(_table(n=120, seed=1), path, mode="overwrite")     # a new version, other rows
    np.testing.assert_array_equal(load_store(path).embeddings, load_store(_table(n=120, seed=1)).embeddings)
    before = np.asarray(load_store(_table()).embeddings)
    shipped = pickle.loads(pickle.dumps(parts[3]))
    np.testing.assert_array_equal(shipped.reader.read_partition(shipped, "embedding", D), before[60:80])


def test_a_dask_scan_reads_fragments_and_gives_the_local_answers(tmp_path):
    distributed = pytest.importorskip("distributed")
    path, _ = _write(tmp_path, _table())
    checks = ["invalid", "exact_duplicate", "near_duplicate", "leakage"]
    local = tamis.scan(path, device="cpu", engine="exact", checks=checks)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=50) as cluster, distributed.Client(cluster) as client:
        remote = tamis.scan(path, client=client, partition_rows=50, engine="exact", checks=checks)
    assert remote.summary["distributed"]["n_partitions"] == 3          # fragments of 20: 60, 60 and 30 rows
    assert remote.counts() == local.counts() and local.counts()["near_duplicate"] >= 20
    assert remote.tables["pairs"].equals(local.tables["pairs"])
    assert remote.samples["near_duplicate_score"].equals(local.samples["near_duplicate_score"])
    assert remote.exclude_list() == local.exclude_list()


def test_an_in_memory_lance_dataset(tmp_path):
    path, _ = _write(tmp_path, _table())
    store = load_store(lance.dataset(str(path)))
    expected = load_store(path)
    np.testing.assert_array_equal(store.embeddings, expected.embeddings)
    assert store.ids.equals(expected.ids) and store.source == "memory"


def test_reading_without_pylance_says_how_to_install_it(tmp_path, monkeypatch):
    path, parquet = _write(tmp_path, _table())
    monkeypatch.setitem(sys.modules, "lance", None)          # `import lance` now raises ImportError
    with pytest.raises(tamis.ConfigError) as err:
        load_store(path)
    message = str(err.value)
    assert message.startswith(f"{path}: reading a Lance dataset needs the optional package 'lance'")
    assert "pip install pylance" in message and "tamis[lance]" in message
    with pytest.raises(tamis.ConfigError, match="pip install pylance"):
        open_partitioned(path)
    assert load_store(parquet).n == N                        # other formats never need it


def test_import_tamis_and_its_readers_imports_no_lance():
    code = ("import sys, tamis, tamis.io.readers, tamis.io.readers.lance; "
            "print('lance' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _damage(path: Path, how: str) -> None:
    data = sorted((path / "data").iterdir())
    if how == "a data file truncated":
        data[3].write_bytes(data[3].read_bytes()[:64])
    elif how == "a data file missing":
        data[3].unlink()
    elif how == "a data file emptied":
        data[3].write_bytes(b"")
    elif how == "the versions missing":
        shutil.rmtree(path / "_versions")
    elif how == "the manifest truncated":
        manifest = next((path / "_versions").glob("*.manifest"))
        manifest.write_bytes(manifest.read_bytes()[:40])
    else:
        raise AssertionError(how)


DAMAGE = ["a data file truncated", "a data file missing", "a data file emptied", "the versions missing",
          "the manifest truncated"]


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_dataset_is_an_input_error(tmp_path, how, capsys):
    path, _ = _write(tmp_path, _table())
    _damage(path, how)
    with pytest.raises(tamis.InputError, match=rf"^{re.escape(str(path))}: cannot (open|read|count)") as err:
        load_store(path)
    assert ".rs:" not in str(err.value)                      # Rust source locations are left out
    with pytest.raises(tamis.InputError, match=rf"^{re.escape(str(path))}: cannot"):
        _, parts = open_partitioned(path, partition_rows=1)   # a worker's read of a damaged fragment too
        for part in parts:
            part.reader.read_partition(part, "embedding", D)
    assert main(["scan", str(path), "--out", str(tmp_path / "r"), "--device", "cpu"]) == 2
    assert "cannot" in capsys.readouterr().err and not (tmp_path / "r" / "summary.json").exists()


def test_a_rust_panic_is_a_read_failure_and_ctrl_c_is_not():
    class PanicException(BaseException):     # what pyo3 raises when Lance's Rust code panics on a bad file
        pass

    with pytest.raises(tamis.InputError, match=r"^s.lance: cannot read \(range end index 4 out of range\); fix it$"):
        with _reading("s.lance: cannot read", "fix it"):
            raise PanicException("range end index 4 out of range, /rust/src/lib.rs:12:5")
    with pytest.raises(KeyboardInterrupt):
        with _reading("s.lance: cannot read", "fix it"):
            raise KeyboardInterrupt


@pytest.mark.parametrize("what", ["a file", "an empty folder"])
def test_a_path_that_is_no_lance_dataset_is_an_input_error(tmp_path, what):
    path = tmp_path / "s.lance"
    if what == "a file":
        path.write_bytes(b"LANC")
        match = "a Lance dataset is a folder"
    else:
        path.mkdir()
        match = "cannot open this Lance dataset"
    with pytest.raises(tamis.InputError, match=match):
        load_store(path)
