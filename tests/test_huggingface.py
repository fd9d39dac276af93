"""Hugging Face datasets: an in-memory Dataset, a save_to_disk folder and a DatasetDict folder
(whose splits become the split column), read with the usual column names, locally and on Dask."""

from __future__ import annotations

import numpy as np
import pytest

import tamis

datasets = pytest.importorskip("datasets")


def _dataset(n=60, seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    emb[n - 1] = emb[0]                                   # an exact copy
    return datasets.Dataset.from_dict({"embedding": list(emb), "label": rng.integers(0, 3, n).tolist(),
                                       "image_path": [f"img/{i}.png" for i in range(n)]}), emb


def test_an_in_memory_dataset_with_a_select_applied(tmp_path):
    ds, emb = _dataset()
    picked = ds.select(range(59, -1, -1))               # reversed: the indices mapping must be honoured
    store = tamis.load_store(picked)
    np.testing.assert_array_equal(store.embeddings, emb[::-1])
    assert store.columns["labels"] == "label" and store.paths[0].as_py() == "img/59.png"
    report = tamis.scan(picked, device="cpu", checks=["exact_duplicate"])
    assert set(np.flatnonzero(report.flags("exact_duplicate"))) == {0, 59}


def test_a_save_to_disk_folder_reads_like_the_dataset(tmp_path):
    ds, emb = _dataset()
    ds.save_to_disk(str(tmp_path / "ds"), num_shards=3)
    store = tamis.load_store(tmp_path / "ds")
    np.testing.assert_array_equal(store.embeddings, emb)
    assert store.labels.to_pylist() == ds["label"]
    local = tamis.scan(tmp_path / "ds", device="cpu", out=tmp_path / "r")
    assert local.counts()["exact_duplicate"] == 2


def test_a_dataset_dict_folder_gives_its_splits(tmp_path):
    ds, emb = _dataset()
    dd = datasets.DatasetDict({"train": ds.select(range(40)), "test": ds.select(range(40, 60))})
    dd.save_to_disk(str(tmp_path / "dd"))
    store = tamis.load_store(tmp_path / "dd")
    np.testing.assert_array_equal(store.embeddings, emb)
    assert store.split.to_pylist() == ["train"] * 40 + ["test"] * 20
    report = tamis.scan(tmp_path / "dd", device="cpu", checks=["leakage"])
    assert set(np.flatnonzero(report.flags("leakage"))) == {59}    # row 59 (test) copies row 0 (train)


def test_a_damaged_folder_is_a_named_error(tmp_path):
    ds, _ = _dataset()
    ds.save_to_disk(str(tmp_path / "ds"))
    shard = next((tmp_path / "ds").glob("*.arrow"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(tamis.InputError, match="cannot read this datasets shard"):
        tamis.load_store(tmp_path / "ds")


def test_a_save_to_disk_folder_on_dask_gives_the_local_answers(tmp_path):
    distributed = pytest.importorskip("distributed")
    ds, _ = _dataset(200)
    ds.save_to_disk(str(tmp_path / "ds"))
    local = tamis.scan(tmp_path / "ds", device="cpu", engine="exact", checks=["exact_duplicate", "near_duplicate"])
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        remote = tamis.scan(tmp_path / "ds", client=client, partition_rows=70, engine="exact",
                            checks=["exact_duplicate", "near_duplicate"])
    assert remote.counts() == local.counts()
    assert remote.samples["near_duplicate_score"].equals(local.samples["near_duplicate_score"])
