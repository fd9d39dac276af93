"""Every input format, read from a small file the test writes, gives the same store."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

import tamis
from tamis import ColumnSpec, load_store


def _table(cols: dict, fixed: bool = True) -> pa.Table:
    emb = cols["embeddings"]
    flat = pa.array(emb.reshape(-1))
    vectors = pa.FixedSizeListArray.from_arrays(flat, emb.shape[1]) if fixed else \
        pa.ListArray.from_arrays(pa.array(np.arange(0, emb.size + 1, emb.shape[1], dtype=np.int32)), flat)
    return pa.table({"embedding": vectors, "label": cols["labels"], "image_path": cols["image_paths"],
                     "split": cols["split"], "id": cols["ids"]})


def _same(store, cols):
    np.testing.assert_array_equal(np.asarray(store.embeddings), cols["embeddings"])
    assert store.labels.to_pylist() == cols["labels"].tolist()
    assert store.paths.to_pylist() == cols["image_paths"].tolist()
    assert store.split.to_pylist() == cols["split"].tolist()
    assert store.ids.to_pylist() == cols["ids"].tolist()


def test_npz(tmp_path, small_columns):
    path = tmp_path / "s.npz"
    np.savez_compressed(path, **small_columns)
    _same(load_store(path), small_columns)


def test_npz_stored_members_are_mapped_read_only(tmp_path, small_columns, monkeypatch):
    """An uncompressed .npz member is read through a map of the file (no copy), read-only, with
    the values a plain read gives; its CRC is still checked, so a damaged member is reported."""
    from tamis.io.readers import npz
    monkeypatch.setattr(npz, "MAP_AT_LEAST", 0)          # the small store's members too
    path = tmp_path / "s.npz"
    cols = dict(small_columns, pred_probs=np.full((60, 3), 1 / 3, dtype=np.float32))
    np.savez(path, **cols)
    before = path.read_bytes()
    store = load_store(path)
    _same(store, small_columns)
    emb = np.asarray(store.embeddings)
    assert not emb.flags.writeable and not emb.flags.owndata       # a view of the map, not a copy
    with pytest.raises(ValueError):
        emb[0, 0] = 1.0                                            # the file cannot be written through it
    np.testing.assert_array_equal(store.pred_probs, cols["pred_probs"])
    report = tamis.scan(path, projection="none", checks=["invalid", "near_duplicate", "label_error"])
    assert report.summary["store"]["n_rows"] == 60
    assert path.read_bytes() == before
    # one flipped byte inside the embeddings' data: the map's CRC check fails and the read reports it
    data = bytearray(before)
    at = data.index(cols["embeddings"].tobytes()[:16]) + 8
    data[at] ^= 0xFF
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    with pytest.raises(tamis.InputError, match="damaged"):
        load_store(tmp_path / "bad.npz")


def test_npz_with_pred_probs_only(tmp_path):
    probs = np.full((5, 3), 1 / 3, dtype=np.float32)
    np.savez(tmp_path / "p.npz", labels=np.array([0, 1, 2, 0, 1]), pred_probs=probs)
    store = load_store(tmp_path / "p.npz")
    assert store.available == {"labels", "pred_probs"}
    assert store.embeddings is None and store.pred_probs.shape == (5, 3)


def test_npy(tmp_path, small_columns):
    np.save(tmp_path / "e.npy", small_columns["embeddings"])
    store = load_store(tmp_path / "e.npy")
    np.testing.assert_array_equal(store.embeddings, small_columns["embeddings"])
    assert store.available == {"embeddings"}


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed_size_list", "list"])
def test_parquet_file(tmp_path, small_columns, fixed):
    pq.write_table(_table(small_columns, fixed), tmp_path / "s.parquet")
    _same(load_store(tmp_path / "s.parquet"), small_columns)


def test_parquet_directory_of_shards(tmp_path, small_columns):
    table = _table(small_columns)
    (tmp_path / "shards").mkdir()
    for i, start in enumerate(range(0, 60, 25)):
        pq.write_table(table.slice(start, 25), tmp_path / "shards" / f"part-{i:03d}.parquet")
    _same(load_store(tmp_path / "shards"), small_columns)


def test_parquet_float32_single_chunk_is_not_copied(tmp_path, small_columns):
    pq.write_table(_table(small_columns), tmp_path / "s.parquet")
    store = load_store(tmp_path / "s.parquet")
    assert store.embeddings.dtype == np.float32
    assert not store.embeddings.flags.owndata  # a view on the Arrow buffer


def test_feather_and_arrow_stream(tmp_path, small_columns):
    table = _table(small_columns)
    feather.write_feather(table, tmp_path / "s.feather")
    _same(load_store(tmp_path / "s.feather"), small_columns)
    with pa.OSFile(str(tmp_path / "s.arrow"), "wb") as sink, ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    _same(load_store(tmp_path / "s.arrow"), small_columns)


def test_column_options_and_detection(tmp_path, small_columns):
    table = _table(small_columns).rename_columns(["clip", "klass", "file", "fold", "key"])
    pq.write_table(table, tmp_path / "s.parquet")
    spec = ColumnSpec(embedding="clip", label="klass", path="file", split="fold", id="key")
    _same(load_store(tmp_path / "s.parquet", spec), small_columns)
    # "fold" is detected as the split without being named; "clip" is not a usual embedding name
    store = load_store(tmp_path / "s.parquet", ColumnSpec(embedding="clip"))
    assert store.split is not None and store.labels is None


def test_in_memory_forms(small_columns):
    _same(load_store(small_columns), small_columns)
    only = load_store(small_columns["embeddings"])
    assert only.available == {"embeddings"}
    _same(load_store(_table(small_columns)), small_columns)
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"embedding": list(small_columns["embeddings"]), "label": small_columns["labels"],
                       "image_path": small_columns["image_paths"], "split": small_columns["split"],
                       "id": small_columns["ids"]})
    _same(load_store(df), small_columns)


def test_float_labels_that_are_integers_become_integers():
    store = load_store({"embeddings": np.eye(3, dtype=np.float32), "labels": np.array([0.0, 1.0, 2.0])})
    assert pa.types.is_integer(store.labels.type)


def test_null_embedding_row_in_parquet_is_invalid_not_a_crash(tmp_path, small_columns):
    emb = small_columns["embeddings"]
    vectors = pa.array([list(map(float, row)) if i != 3 else None for i, row in enumerate(emb)],
                       type=pa.list_(pa.float32()))
    pq.write_table(pa.table({"embedding": vectors, "label": small_columns["labels"]}), tmp_path / "n.parquet")
    report = tamis.scan(tmp_path / "n.parquet", device="cpu")
    flagged = report.samples["is_invalid_issue"].to_pylist()
    assert flagged[3] and sum(flagged) == 1


def test_inputs_are_never_modified(tmp_path, small_columns):
    path = tmp_path / "s.npz"
    np.savez(path, **small_columns)
    before = path.read_bytes()
    emb = small_columns["embeddings"].copy()
    tamis.scan(path, device="cpu", out=tmp_path / "r")
    tamis.scan(small_columns, device="cpu")
    assert path.read_bytes() == before
    np.testing.assert_array_equal(small_columns["embeddings"], emb)
