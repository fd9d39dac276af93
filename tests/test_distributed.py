"""Distributed scans on a local two-process Dask cluster give the single-process answers.

The store is a few sharded Parquet files written here (3,000 rows, planted exact and near
duplicates, invalid rows, labels, splits); the same data as an .npz archive, an .npy matrix
and in a format a test adds to the reader registry scans the same way. A worker killed in
the middle of the pair search is replaced and its task re-run (same answer); a task whose
workers keep dying ends the scan with a ClusterError and no report.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tamis
from tamis.config import ColumnSpec
from tamis.engine.executors.dask.blocked import DiskMatrix
from tamis.io import readers
from tamis.io.readers import open_partitioned

from .test_reader_registry import TextReader

N, D = 3000, 24
SHARDS = [(0, 1100), (1100, 2300), (2300, N)]


def _planted(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 8, N)
    centers = rng.normal(size=(8, D))
    emb = (centers[labels] + 0.9 * rng.normal(size=(N, D))).astype(np.float32)
    emb[1500:1540] = emb[:40] + 0.02 * rng.normal(size=(40, D)).astype(np.float32)   # near copies, across shards
    emb[2400:2420] = emb[900:920]                                                     # exact copies
    labels[1500:1505] = (labels[:5] + 1) % 8                                          # conflicting labels
    emb[10] = np.nan
    emb[2500] = 0.0
    split = np.where(rng.random(N) < 0.75, "train", "test")
    return {"embeddings": emb, "labels": labels, "split": split, "ids": np.array([f"s{i:05d}" for i in range(N)])}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    cols = _planted()
    folder = tmp_path_factory.mktemp("shards")
    for f, (a, b) in enumerate(SHARDS):
        table = pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(cols["embeddings"][a:b].reshape(-1)), D),
                          "label": cols["labels"][a:b], "split": cols["split"][a:b], "id": cols["ids"][a:b]})
        pq.write_table(table, folder / f"part-{f:02d}.parquet", row_group_size=300)
    return folder


@pytest.fixture(scope="module")
def single(store):
    return tamis.scan(store, device="cpu", engine="exact")


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                       silence_logs=50)
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        try:
            cluster.close()
        except KeyError:   # dask/distributed#5407: SpecCluster._update_worker_status races a worker the
            pass           # kill tests replaced; the cluster is closed either way


def _assert_same(a: tamis.Report, b: tamis.Report) -> None:
    assert a.counts() == b.counts()
    for name in a.samples.column_names:
        x, y = a.samples[name], b.samples[name]
        if pa.types.is_floating(x.type):
            np.testing.assert_allclose(x.to_numpy(zero_copy_only=False), y.to_numpy(zero_copy_only=False),
                                       rtol=0, atol=1e-6, err_msg=name)
        else:
            assert x.equals(y), name
    assert sorted(a.tables) == sorted(b.tables)
    for name in ("pairs", "groups", "conflicts", "exclude"):
        if name in a.tables:
            assert a.tables[name].equals(b.tables[name]), name
    assert a.exclude_list() == b.exclude_list()
    for check, result in a.summary["checks"].items():
        assert result.keys() == b.summary["checks"][check].keys()
    np.testing.assert_array_equal(a.knn[0], b.knn[0])
    np.testing.assert_array_equal(a.knn[1], b.knn[1])         # canonical similarities: the same lists,
    np.testing.assert_array_equal(a.knn[2], b.knn[2])         # bit for bit, however the rows are cut


def test_two_workers_give_the_single_process_answers(store, single, client):
    report = tamis.scan(store, client=client, partition_rows=250)      # 11 partitions, 66 pair blocks
    _assert_same(single, report)
    info = report.summary["distributed"]
    assert info["n_workers"] == 2 and info["n_partitions"] == 11
    assert info["engines"] == {"pairs": "exact", "neighbours": "exact"}
    assert report.summary["search"]["neighbours"]["engine"] == "exact"
    assert report.counts()["near_duplicate"] >= 80 and report.counts()["exact_duplicate"] >= 40


def test_neighbour_lists_do_not_depend_on_the_partitioning(single, store, client):
    report = tamis.scan(store, client=client, checks=["outlier"], partition_rows=700)
    rows, idx, sims = single.knn
    np.testing.assert_array_equal(idx, report.knn[1])           # ties included: broken by row id
    np.testing.assert_array_equal(sims, report.knn[2])


def test_bucketed_engines_never_invent_a_pair(store, single, client):
    report = tamis.scan(store, client=client, engine="ivf",
                        checks=["near_duplicate", "outlier"], partition_rows=600)
    exact, found = single.tables["pairs"], report.tables["pairs"]
    key = {(a, b): s for a, b, s in zip(*(exact[c].to_pylist() for c in ("row_a", "row_b", "similarity")))}
    pairs = list(zip(*(found[c].to_pylist() for c in ("row_a", "row_b", "similarity"))))
    assert all(key[(a, b)] == s for a, b, s in pairs)              # true pairs, exact similarities
    assert len(pairs) >= 0.95 * len(key)
    assert report.summary["distributed"]["engines"] == {"pairs": "ivf", "neighbours": "ivf"}
    info = report.summary["search"]
    assert info["pairs"]["engine"] == "ivf" and info["pairs"]["recall"] >= 0.95
    assert info["neighbours"]["engine"] == "ivf" and info["neighbours"]["recall"] > 0.9
    # every neighbour reported carries its canonical similarity (that of the exact graph where both list it)
    exact_rows, exact_idx, exact_sims = single.knn
    lookup = {(r, j): s for r, row_i, row_s in zip(exact_rows, exact_idx, exact_sims) for j, s in zip(row_i, row_s)}
    shared = [(r, j, s) for r, row_i, row_s in zip(*report.knn) for j, s in zip(row_i, row_s) if (r, j) in lookup]
    assert shared and all(lookup[(r, j)] == s for r, j, s in shared)
    assert (report.knn[1] >= 0).all()


@pytest.fixture(scope="module")
def npz_store(tmp_path_factory) -> Path:
    """The planted store as an .npz archive, embeddings in float64 (kept as float64 by both scans)."""
    cols = _planted(seed=1)
    path = tmp_path_factory.mktemp("npz") / "store.npz"
    np.savez(path, embeddings=cols["embeddings"].astype(np.float64), labels=cols["labels"], split=cols["split"],
             ids=cols["ids"])
    return path


@pytest.fixture(scope="module")
def npy_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("npy") / "store.npy"
    np.save(path, _planted(seed=2)["embeddings"])
    return path


@pytest.mark.parametrize("which", ["npz_store", "npy_store"])
def test_numpy_stores_give_the_single_process_answers(which, client, request):
    path = request.getfixturevalue(which)
    local = tamis.scan(path, device="cpu", engine="exact")
    report = tamis.scan(path, client=client, partition_rows=700)        # 5 row ranges, the last 300 rows
    _assert_same(local, report)
    assert report.summary["distributed"]["n_partitions"] == 5
    assert report.counts()["near_duplicate"] >= 80 and report.counts()["exact_duplicate"] >= 40


def test_a_reader_added_to_the_registry_serves_a_dask_scan(tmp_path, client, monkeypatch):
    monkeypatch.setattr(readers, "READERS", readers.READERS + (TextReader,))
    emb = _planted(seed=3)["embeddings"][:600]
    path = tmp_path / "store.txt"
    np.savetxt(path, emb)
    local = tamis.scan(path, device="cpu", engine="exact", checks=["invalid", "exact_duplicate", "near_duplicate",
                                                                   "outlier"])
    report = tamis.scan(path, client=client, partition_rows=250, checks=["invalid", "exact_duplicate",
                                                                         "near_duplicate", "outlier"])
    _assert_same(local, report)                   # the workers read with the test's reader, carried by the partitions
    assert report.summary["distributed"]["n_partitions"] == 3


def _killer(armed: Path, once: bool):
    """A worker plugin that SIGKILLs its worker process when a pair-search task starts there,
    while the file ``armed`` exists; ``once``: the first worker to delete it dies, no other."""
    from distributed import WorkerPlugin

    class KillWorker(WorkerPlugin):
        name = "tamis-test-kill"

        def transition(self, key, start, finish, **kwargs):
            if finish != "executing" or "-pairs-" not in str(key):
                return
            if once:
                try:
                    os.unlink(armed)
                except FileNotFoundError:
                    return
            elif not armed.exists():
                return
            os.kill(os.getpid(), signal.SIGKILL)

    return KillWorker()


def _disarm(client, armed: Path) -> None:
    armed.unlink(missing_ok=True)
    client.wait_for_workers(2, timeout=60)          # the nannies have restarted the killed workers
    client.unregister_worker_plugin("tamis-test-kill")


def test_a_worker_killed_mid_scan_is_replaced_and_the_answer_is_the_same(store, single, client, tmp_path):
    armed = tmp_path / "armed"
    armed.touch()
    client.register_plugin(_killer(armed, once=True), name="tamis-test-kill")
    try:
        report = tamis.scan(store, client=client, partition_rows=500)
        assert not armed.exists()                          # a worker did die during the pair search
    finally:
        _disarm(client, armed)
    _assert_same(single, report)


def test_a_task_whose_workers_keep_dying_fails_cleanly(store, client, tmp_path):
    from tamis.engine.executors.dask import ClusterError

    def allowed_failures(dask_scheduler, n):
        old, dask_scheduler.allowed_failures = dask_scheduler.allowed_failures, n
        return old

    old = client.run_on_scheduler(allowed_failures, n=0)
    armed = tmp_path / "armed"
    armed.touch()
    client.register_plugin(_killer(armed, once=False), name="tamis-test-kill")
    out = tmp_path / "report"
    try:
        with pytest.raises(ClusterError, match="workers died too often") as err:
            tamis.scan(store, client=client, out=str(out), checks=["near_duplicate"])
        assert isinstance(err.value, tamis.TamisError)
    finally:
        _disarm(client, armed)
        client.run_on_scheduler(allowed_failures, n=old)
    assert not out.exists()                                 # no partial report


def test_cli_workers_writes_the_same_report(store, single, tmp_path):
    pytest.importorskip("distributed")
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "tamis", "scan", str(store), "--workers", "2", "--out", str(out),
                           "--no-projection", "-q", "--checks", "invalid,exact_duplicate,near_duplicate,leakage"],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    report = tamis.read_report(out)
    for name in ("is_near_duplicate_issue", "is_exact_duplicate_issue", "is_leakage_issue"):
        assert report.samples[name].equals(single.samples[name]), name
    assert report.summary["distributed"]["started_local_cluster"] is True


# ---------------------------------------------------------------------------- without a cluster
def test_bad_distributed_options_are_config_errors(store, tmp_path):
    with pytest.raises(tamis.ConfigError, match="positive integer"):
        tamis.scan(store, workers=0)
    with pytest.raises(tamis.ConfigError, match="pass one"):
        tamis.scan(store, workers=2, scheduler="tcp://127.0.0.1:1")
    with pytest.raises(tamis.ConfigError, match="reads a store from a path the workers can read"):
        tamis.scan({"embeddings": np.eye(3, dtype=np.float32)}, workers=1)
    (tmp_path / "s.csv").write_text("a,b\n1,2\n")
    with pytest.raises(tamis.InputError, match=r"unknown store format '\.csv'; tamis reads .*\.npz"):
        tamis.scan(tmp_path / "s.csv", workers=1)
    with pytest.raises(tamis.ConfigError, match=r"search parameters \['n_buckets'\] apply to single-process"):
        tamis.scan(store, workers=1, engine="ivf", search_params={"n_buckets": 4})


def test_faiss_is_refused_on_a_cluster(store, client):
    with pytest.raises(tamis.ConfigError, match="engine='faiss' does not run on a Dask cluster"):
        tamis.scan(store, client=client, engine="faiss", checks=["near_duplicate"])


def test_partitioned_store_reads_the_same_rows(store):
    whole = tamis.load_store(store)
    lazy, parts = open_partitioned(store, ColumnSpec(), partition_rows=250)
    assert [p.n_rows for p in parts] == [300, 300, 300, 200] + [300] * 4 + [300, 300, 100]
    assert lazy.n == whole.n and lazy.labels.equals(whole.labels) and lazy.ids.equals(whole.ids)
    emb, raw = lazy.embeddings, np.asarray(whole.embeddings)
    rng = np.random.default_rng(1)
    take = rng.integers(-N, N, 500)
    np.testing.assert_array_equal(emb[take], raw[take])
    np.testing.assert_array_equal(emb[1090:2310], raw[1090:2310])
    np.testing.assert_array_equal(emb[::7], raw[::7])
    np.testing.assert_array_equal(emb[raw[:, 0] > 0], raw[raw[:, 0] > 0])
    np.testing.assert_array_equal(emb[-1], raw[-1])
    np.testing.assert_array_equal(np.asarray(emb), raw)


def test_disk_matrix_writes_and_reads_blocks(tmp_path):
    m = DiskMatrix.create(str(tmp_path), (1000, 8), "float16")
    data = np.random.default_rng(0).normal(size=(1000, 8)).astype(np.float32)
    for start in range(0, 1000, 300):
        m[start:start + 300] = data[start:start + 300]
    expected = data.astype(np.float16)
    np.testing.assert_array_equal(np.asarray(m), expected)
    np.testing.assert_array_equal(m[[5, 999, 5, 0]], expected[[5, 999, 5, 0]])
    np.testing.assert_array_equal(m[10:20, :3], expected[10:20, :3])
    assert m.shape == (1000, 8) and len(m) == 1000 and m.dtype == np.float16
    m.close()


def test_import_tamis_imports_no_dask():
    code = ("import sys, tamis, tamis.engine.executors.dask, tamis.cli; "
            "assert not {'dask', 'distributed'} & set(sys.modules), sorted(m for m in sys.modules if 'dask' in m)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
