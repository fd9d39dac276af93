"""The kNN graph engine: exact search against brute force, the approximate search's recall,
the CSR / umap exports and knn.npz."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tamis.engine import knn as knn_module
from tamis.engine.backend import resolve_backend
from tamis.engine.knn import (
    KNN_FILE,
    approximate_knn,
    exact_knn,
    knn_block,
    knn_graph,
    knn_recall,
    load_knn,
    save_knn,
    to_csr,
    to_umap_precomputed,
)
from tamis.errors import ConfigError, InputError, TamisError


def unit_rows(rng, n, d):
    X = rng.standard_normal((n, d)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def grid_rows(rng, n, d):
    """Unit rows with four entries of +-0.5: every dot product is exact in float32 (a
    multiple of 1/4), whatever the summation order, so ties are exact ties."""
    X = np.zeros((n, d), np.float32)
    for i in range(n):
        cols = rng.choice(d, 4, replace=False)
        X[i, cols] = rng.choice([-0.5, 0.5], 4)
    return X


def clustered_rows(rng, n, d, clusters):
    centers = unit_rows(rng, clusters, d)
    X = centers[rng.integers(0, clusters, n)] + 0.8 * unit_rows(rng, n, d)
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def brute_force(X, k):
    """Full similarity matrix in float64, self masked, sorted by (-sim, index)."""
    S = X.astype(np.float64) @ X.astype(np.float64).T
    np.fill_diagonal(S, -np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(len(X)), S.shape), -S), axis=1)[:, :k]
    return order, np.take_along_axis(S, order, 1)


def check_against_brute_force(X, k, indices, sims, atol=2e-6):
    """Exactness that survives float32 rounding: the similarities are the true top-k
    similarities, each index really has its similarity, rows are sorted, no self."""
    n = len(X)
    want_idx, want_sim = brute_force(X, k)
    assert indices.shape == sims.shape == (n, k)
    assert indices.dtype == np.int64 and sims.dtype == np.float32
    np.testing.assert_allclose(sims, want_sim, atol=atol)
    true = np.einsum("ij,ij->i", np.repeat(X.astype(np.float64), k, 0),
                     X[indices.reshape(-1)].astype(np.float64)).reshape(n, k)
    np.testing.assert_allclose(sims, true, atol=atol)
    assert not (indices == np.arange(n)[:, None]).any()
    assert all(len(set(row)) == k for row in indices.tolist())
    assert (np.diff(sims, axis=1) <= 0).all()


def on(device, X):
    return resolve_backend(device).asarray(X)


# --------------------------------------------------------------------------- exact


@pytest.mark.parametrize("n,d,k,block_rows", [
    (50, 13, 5, 7),        # N not a multiple of the tile, odd d
    (97, 8, 10, 32),
    (64, 5, 1, 64),        # one tile
    (33, 3, 32, 10),       # k = N - 1
])
def test_exact_matches_brute_force(device, n, d, k, block_rows):
    rng = np.random.default_rng(n + d)
    X = unit_rows(rng, n, d)
    indices, sims = exact_knn(on(device, X), k, block_rows=block_rows)
    assert isinstance(indices, np.ndarray) and isinstance(sims, np.ndarray)
    check_against_brute_force(X, k, indices, sims)


@pytest.mark.parametrize("block_rows", [5, 16, 200])
def test_exact_ties_break_by_smaller_index(device, block_rows):
    rng = np.random.default_rng(7)
    X = grid_rows(rng, 120, 6)               # 6 dims, 4 nonzero: massive ties
    indices, sims = exact_knn(on(device, X), 8, block_rows=block_rows)
    want_idx, want_sim = brute_force(X, 8)
    np.testing.assert_array_equal(indices, want_idx)
    np.testing.assert_array_equal(sims, want_sim.astype(np.float32))


def test_exact_duplicated_rows_are_neighbours_self_is_not(device):
    rng = np.random.default_rng(1)
    X = unit_rows(rng, 40, 16)
    X[30:35] = X[3]                          # row 3 and five copies
    indices, sims = exact_knn(on(device, X), 5, block_rows=8)
    for r in [3, 30, 31, 32, 33, 34]:
        assert set(indices[r].tolist()) == {3, 30, 31, 32, 33, 34} - {r}
        np.testing.assert_allclose(sims[r], 1, atol=1e-6)
    check_against_brute_force(X, 5, indices, sims)


def test_exact_is_independent_of_tiling_and_memory():
    X = grid_rows(np.random.default_rng(2), 150, 10)
    ref = exact_knn(X, 6, block_rows=150)
    for kwargs in ({"block_rows": 7}, {"block_rows": 64}, {"memory_bytes": 6 * 64 * 64}):
        got = exact_knn(X, 6, **kwargs)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])


def test_exact_reports_progress():
    calls = []
    exact_knn(unit_rows(np.random.default_rng(0), 30, 4), 3, block_rows=10,
              progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 6) for i in range(1, 7)]  # 3 row blocks: 3 + 2 + 1 tiles


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 40), d=st.integers(1, 9), k_frac=st.floats(0, 1),
       block=st.integers(1, 45), seed=st.integers(0, 2**16), dup=st.booleans())
def test_property_exact_equals_brute_force(n, d, k_frac, block, seed, dup):
    rng = np.random.default_rng(seed)
    X = grid_rows(rng, n, max(d, 4))
    if dup:
        X[n // 2:] = X[: n - n // 2]
    k = 1 + int(k_frac * (n - 2))
    indices, sims = exact_knn(X, k, block_rows=block)
    want_idx, want_sim = brute_force(X, k)
    np.testing.assert_array_equal(indices, want_idx)
    np.testing.assert_array_equal(sims, want_sim.astype(np.float32))


def test_k_too_large_names_the_fix():
    X = unit_rows(np.random.default_rng(0), 7, 4)
    with pytest.raises(ConfigError, match=r"k=10 needs at least 11 valid rows, the store has 7; "
                                          r"lower k \(at most 6\)"):
        exact_knn(X, 10)
    with pytest.raises(ConfigError, match="k=7 needs at least 8"):
        knn_graph(X, 7)
    with pytest.raises(ConfigError, match="k=7 needs at least 8"):
        approximate_knn(X, 7)


@pytest.mark.parametrize("k", [0, -1, 2.5, True, "3"])
def test_bad_k(k):
    with pytest.raises(ConfigError, match="k="):
        exact_knn(unit_rows(np.random.default_rng(0), 7, 4), k)


def test_bad_inputs_are_named():
    rng = np.random.default_rng(0)
    X = unit_rows(rng, 10, 4)
    with pytest.raises(InputError, match="row 2 has norm 2"):
        exact_knn(np.where(np.arange(10)[:, None] == 2, 2 * X, X), 3)
    bad = X.copy()
    bad[5, 0] = np.nan
    with pytest.raises(InputError, match="row 5"):
        exact_knn(bad, 3)
    with pytest.raises(InputError, match="2-D"):
        exact_knn(X[0], 3)
    with pytest.raises(ConfigError, match="memory_bytes"):
        exact_knn(X, 3, memory_bytes=100)
    with pytest.raises(ConfigError, match="block_rows"):
        exact_knn(X, 3, block_rows=0)
    with pytest.raises(ConfigError, match="progress"):
        exact_knn(X, 3, progress="yes")
    assert issubclass(InputError, TamisError)


def test_float64_and_unnormalised_dtype_are_accepted_when_unit_norm():
    X = unit_rows(np.random.default_rng(4), 20, 5)
    a = exact_knn(X.astype(np.float64), 3)
    b = exact_knn(X, 3)
    np.testing.assert_array_equal(a[0], b[0])


# --------------------------------------------------------------------------- knn_block


def test_knn_block_equals_rows_of_exact(device):
    rng = np.random.default_rng(5)
    X = unit_rows(rng, 80, 12)
    full_idx, full_sim = exact_knn(X, 4)
    idx, sim = knn_block(on(device, X[30:47]), on(device, X), 30, 4, memory_bytes=6 * 64 * 64)
    np.testing.assert_array_equal(idx, full_idx[30:47])
    np.testing.assert_allclose(sim, full_sim[30:47], atol=1e-6)


def test_knn_block_outside_queries_keep_self_matches():
    X = unit_rows(np.random.default_rng(6), 20, 6)
    idx, sim = knn_block(X[:3], X, None, 20)          # k = N allowed without self-exclusion
    assert (idx[:, 0] == np.arange(3)).all()
    np.testing.assert_allclose(sim[:, 0], 1, atol=1e-6)
    with pytest.raises(ConfigError, match="runs past"):
        knn_block(X[:3], X, 18, 2)
    with pytest.raises(InputError, match="dimensions"):
        knn_block(X[:3, :4] / np.linalg.norm(X[:3, :4], axis=1, keepdims=True), X, 0, 2)


# --------------------------------------------------------------------------- approximate


@pytest.fixture(scope="module")
def clustered_5k():
    X = clustered_rows(np.random.default_rng(0), 5000, 64, clusters=50)
    return X, exact_knn(X, 10)


def test_approximate_recall_at_least_095(clustered_5k, caplog):
    X, (exact_idx, exact_sim) = clustered_5k
    with caplog.at_level(logging.INFO, logger="tamis"):
        indices, sims = approximate_knn(X, 10, target_recall=0.95)
    assert "sample recall@10" in caplog.text
    recall = knn_recall(indices, sims, exact_sim)
    assert recall >= 0.95
    assert not (indices == np.arange(len(X))[:, None]).any()
    # similarities are the true ones, rows sorted by (-sim, index)
    true = np.einsum("ij,ij->i", np.repeat(X, 10, 0), X[indices.reshape(-1)]).reshape(-1, 10)
    np.testing.assert_allclose(sims, true, atol=1e-5)
    order = np.lexsort((indices, -sims), axis=1)
    np.testing.assert_array_equal(order, np.broadcast_to(np.arange(10), order.shape))


def test_approximate_with_every_list_probed_is_exact(clustered_5k):
    X, (exact_idx, exact_sim) = clustered_5k
    X, exact_sim = X[:1500], exact_knn(X[:1500], 5)[1]
    indices, sims = approximate_knn(X, 5, n_lists=20, n_probe=20)
    np.testing.assert_allclose(sims, exact_sim, atol=1e-6)
    assert knn_recall(indices, sims, exact_sim) == 1.0


def test_approximate_validates_options():
    X = unit_rows(np.random.default_rng(0), 50, 4)
    with pytest.raises(ConfigError, match="target_recall"):
        approximate_knn(X, 3, target_recall=1.5)
    with pytest.raises(ConfigError, match="n_probe=9 exceeds n_lists=4"):
        approximate_knn(X, 3, n_lists=4, n_probe=9)
    with pytest.raises(ConfigError, match="n_lists=51 exceeds"):
        approximate_knn(X, 3, n_lists=51)


def test_knn_recall_counts_ties_as_found():
    exact = np.array([[0.9, 0.8]], np.float32)
    assert knn_recall(np.array([[1, 2]]), np.array([[0.9, 0.8]]), exact) == 1.0
    assert knn_recall(np.array([[1, 2]]), np.array([[0.9, 0.5]]), exact) == 0.5
    assert knn_recall(np.array([[1, -1]]), np.array([[0.9, 0.95]]), exact) == 0.5


# --------------------------------------------------------------------------- knn_graph


def test_knn_graph_auto_rule(monkeypatch, caplog):
    X = clustered_rows(np.random.default_rng(1), 800, 16, clusters=8)
    with caplog.at_level(logging.INFO, logger="tamis"):
        got = knn_graph(X, 5)
    assert "exact search of 800 rows" in caplog.text
    np.testing.assert_array_equal(got[0], exact_knn(X, 5)[0])
    monkeypatch.setattr(knn_module, "APPROXIMATE_MIN_ROWS", 500)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tamis"):
        knn_graph(X, 5, sample_size=200)
    assert "approximate search of 800 rows" in caplog.text


def test_knn_graph_rejects_unknown_engine_and_options():
    X = unit_rows(np.random.default_rng(0), 30, 4)
    with pytest.raises(ConfigError, match="engine='fast' is not one of auto, exact"):
        knn_graph(X, 3, engine="fast")
    with pytest.raises(ConfigError, match="unknown options"):
        knn_graph(X, 3, n_prob=4)
    with pytest.raises(ConfigError, match="approximate engine only"):
        knn_graph(X, 3, engine="exact", n_probe=4)


# --------------------------------------------------------------------------- exports


@pytest.fixture
def graph_with_duplicates():
    rng = np.random.default_rng(3)
    X = grid_rows(rng, 60, 40)
    X[50:] = X[:10]                          # ten exact duplicates: zero distances
    return X, exact_knn(X, 4)


def test_to_csr_layout(graph_with_duplicates):
    X, (indices, sims) = graph_with_duplicates
    G = to_csr(indices, sims, len(X))
    assert G.format == "csr" and G.shape == (60, 60)
    assert G.nnz == 60 * 4                   # explicit zeros kept: nnz // N == k (cleanlab)
    data = G.data.reshape(60, 4)
    assert (data[:10, 0] == 0).all() and (data >= 0).all()
    assert (np.diff(data, axis=1) >= 0).all()
    np.testing.assert_array_equal(G.indices.reshape(60, 4), indices)
    np.testing.assert_allclose(data, np.maximum(1 - sims, 0))
    assert (G.diagonal() == 0).all()
    from sklearn.neighbors import sort_graph_by_row_values

    with warnings.catch_warnings():
        warnings.simplefilter("error")       # warns when rows are not sorted by distance
        sort_graph_by_row_values(G, copy=True, warn_when_not_sorted=True)


def test_to_csr_rejects_bad_graphs(graph_with_duplicates):
    X, (indices, sims) = graph_with_duplicates
    with pytest.raises(InputError, match="60 rows but n=61"):
        to_csr(indices, sims, 61)
    bad = indices.copy()
    bad[0, 0] = -1
    with pytest.raises(InputError, match=r"lie in \[0, 60\)"):
        to_csr(bad, sims, 60)
    with pytest.raises(InputError, match="same shape"):
        to_csr(indices, sims[:, :2], 60)


def test_to_umap_precomputed(graph_with_duplicates):
    X, (indices, sims) = graph_with_duplicates
    knn_indices, knn_dists = to_umap_precomputed(indices, sims)
    assert knn_indices.shape == knn_dists.shape == (60, 5)
    assert (knn_indices[:, 0] == np.arange(60)).all() and (knn_dists[:, 0] == 0).all()
    np.testing.assert_array_equal(knn_indices[:, 1:], indices)
    assert knn_dists.dtype == np.float32 and (np.diff(knn_dists, axis=1) >= 0).all()


# --------------------------------------------------------------------------- knn.npz


def test_save_load_round_trip(tmp_path, graph_with_duplicates):
    X, (indices, sims) = graph_with_duplicates
    path = save_knn(tmp_path, indices, sims)
    assert path == tmp_path / KNN_FILE
    assert [p.name for p in tmp_path.iterdir()] == [KNN_FILE]    # no temp file left
    got_idx, got_sim = load_knn(tmp_path, n=60)
    np.testing.assert_array_equal(got_idx, indices)
    np.testing.assert_allclose(got_sim, np.minimum(sims, 1), atol=1e-6)
    with np.load(path) as data:
        assert set(data.files) == {"indices", "distances", "k", "metric"}
        assert int(data["k"]) == 4 and str(data["metric"]) == "cosine"
    other = save_knn(tmp_path / "graph.npz", indices, sims)       # an explicit file name
    np.testing.assert_array_equal(load_knn(other)[0], indices)


def test_save_into_missing_directory(tmp_path, graph_with_duplicates):
    X, (indices, sims) = graph_with_duplicates
    with pytest.raises(InputError, match="does not exist"):
        save_knn(tmp_path / "nope" / "knn.npz", indices, sims)


def _write(path: Path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def test_load_errors_name_the_problem(tmp_path, graph_with_duplicates):
    X, (indices, sims) = graph_with_duplicates
    dist = np.maximum(1 - sims, 0).astype(np.float32)
    good = {"indices": indices, "distances": dist, "k": np.int64(4), "metric": np.str_("cosine")}
    with pytest.raises(InputError, match="no kNN graph at"):
        load_knn(tmp_path / "missing.npz")
    path = save_knn(tmp_path, indices, sims)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="corrupt or truncated"):
        load_knn(path)
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(InputError, match="corrupt or truncated"):
        load_knn(path)
    cases = [
        ({k: v for k, v in good.items() if k != "distances"}, "missing distances"),
        ({**good, "metric": np.str_("euclidean")}, "euclidean graph"),
        ({**good, "k": np.int64(5)}, "k=5 but the arrays have 4 columns"),
        ({**good, "distances": dist[:, :3]}, "same shape"),
        ({**good, "distances": dist[:, ::-1].copy()}, "not sorted"),
        ({**good, "distances": np.full_like(dist, np.nan)}, "finite"),
        ({**good, "indices": np.full_like(indices, 99)}, r"lie in \[0, 60\)"),
        ({**good, "indices": np.repeat(np.arange(60)[:, None], 4, 1)}, "lists itself"),
    ]
    for arrays, message in cases:
        _write(path, **arrays)
        with pytest.raises(InputError, match=message):
            load_knn(path)
    _write(path, **good)
    with pytest.raises(InputError, match="60 rows but n=59"):
        load_knn(path, n=59)
