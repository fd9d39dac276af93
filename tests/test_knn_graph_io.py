"""The kNN graph's exports (CSR for cleanlab and scikit-learn, umap-learn's precomputed_knn)
and knn.npz. The search that builds the graph is tested in test_search.py."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from tamis.engine.search import knn_graph
from tamis.errors import InputError
from tamis.io.knn_file import KNN_FILE, load_knn, load_knn_rows, save_knn, to_csr, to_umap_precomputed


def exact_knn(X, k):
    return tuple(knn_graph(X, k, engine="exact"))


def grid_rows(rng, n, d):
    """Unit rows with four entries of +-0.5: every dot product is exact in float32 (a
    multiple of 1/4), whatever the summation order, so ties are exact ties."""
    X = np.zeros((n, d), np.float32)
    for i in range(n):
        cols = rng.choice(d, 4, replace=False)
        X[i, cols] = rng.choice([-0.5, 0.5], 4)
    return X


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


@pytest.mark.parametrize("gap", [False, True])
def test_save_with_rows_round_trip(tmp_path, graph_with_duplicates, gap):
    """``rows``: the graph's indices are input rows on disk and positions once loaded, whether the
    rows are every input row (0 .. n - 1) or skip some (invalid rows); a neighbour outside
    ``rows`` is refused either way."""
    X, (indices, sims) = graph_with_duplicates
    rows = np.arange(60) + (np.arange(60) >= 30) * 5 if gap else np.arange(60)     # gap: input rows 30-34 missing
    path = save_knn(tmp_path, rows[indices], sims, rows=rows)
    with np.load(path) as data:
        np.testing.assert_array_equal(data["indices"], rows[indices])
    got_rows, got_input, _ = load_knn_rows(tmp_path)
    np.testing.assert_array_equal(got_rows, rows)
    np.testing.assert_array_equal(got_input, rows[indices])
    np.testing.assert_array_equal(load_knn(tmp_path)[0], indices)
    bad = rows[indices].copy()
    bad[3, 1] = 32 if gap else 60                                          # no graph row has that input row
    with pytest.raises(InputError, match=r"no graph row \(e.g. (32|60)\)"):
        save_knn(tmp_path, bad, sims, rows=rows)
    bad[3, 1] = -1
    with pytest.raises(InputError, match=r"no graph row \(e.g. -1\)"):
        save_knn(tmp_path, bad, sims, rows=rows)


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
