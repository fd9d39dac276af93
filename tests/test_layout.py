"""tamis' own UMAP layout: the epoch kernel against a per-edge loop, the fuzzy graph and curve
against umap-learn's, the spectral start against scipy's eigenvectors, determinism, and maps
that separate what the data separates (2-D, 3-D, fitted on a sample)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from tamis import ConfigError, InputError, resolve_backend
from tamis.engine.layout import (
    curve_params,
    default_epochs,
    fuzzy_graph,
    initial_layout,
    optimise,
    umap_layout,
)
from tamis.kernels.layout import (
    FIXED_STEP,
    epoch_key,
    fired_edges,
    layout_epoch,
    layout_epoch_reference,
    negative_rows,
)
from tests.test_projection import clusters as projection_clusters
from tests.test_projection import needs_umap, neighbour_agreement


def clusters(n=300, d=16, k=4, seed=0):
    return projection_clusters(n=n, d=d, k=k, seed=seed)


def knn(x, k=10):
    sim = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(sim, -np.inf)
    ind = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return ind, np.clip(1.0 - np.take_along_axis(sim, ind, axis=1), 0.0, None)


def pca(x, dims=3):
    c = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(c.astype(np.float64), full_matrices=False)
    return c @ vt[:dims].T


def small_problem(m=60, e=400, dims=2, seed=0):
    rng = np.random.default_rng(seed)
    Y = rng.normal(scale=3.0, size=(dims, m)).astype(np.float32)
    Y[:, 5] = Y[:, 6]  # two coincident points: no force between them
    head = rng.integers(0, m, e)
    tail = (head + rng.integers(1, m, e)) % m
    head[0], tail[0] = 5, 6
    rate = rng.uniform(0.05, 1.0, e).astype(np.float32)
    rate[:50] = 1.0
    return Y, head.astype(np.int64), tail.astype(np.int64), rate


def per_edge_loop(Y, head, tail, rate, *, epoch, alpha, a, b, gamma=1.0, negative_rate=5, seed=0):
    """The epoch written as umap-learn's loop, edge by edge, from the epoch's start positions."""
    dims, m = Y.shape
    key = epoch_key(seed, epoch)
    move = np.zeros((dims, m))
    for e in range(len(head)):
        r = float(rate[e])
        if not math.floor((epoch + 1) * r) > math.floor(epoch * r):
            continue
        h, t = int(head[e]), int(tail[e])
        diff = Y[:, h].astype(np.float64) - Y[:, t]
        d2 = float(diff @ diff)
        coef = -2.0 * a * b * d2 ** (b - 1.0) / (a * d2 ** b + 1.0) if d2 > 0 else 0.0
        g = np.clip(coef * diff, -4, 4) * alpha
        move[:, h] += g
        move[:, t] -= g
        for s in range(negative_rate):
            j = int(negative_rows(np.array([e]), s, key, m, negative_rate)[0])
            diff = Y[:, h].astype(np.float64) - Y[:, j]
            d2 = float(diff @ diff)
            coef = 2.0 * gamma * b / ((0.001 + d2) * (a * d2 ** b + 1.0)) if d2 > 0 else 0.0
            move[:, h] += np.clip(coef * diff, -4, 4) * alpha
    return move


# ---------------------------------------------------------------------- the epoch kernel
@pytest.mark.parametrize("dims", [2, 3])
def test_epoch_reference_matches_the_per_edge_loop(dims):
    Y, head, tail, rate = small_problem(dims=dims)
    a, b = curve_params()
    for epoch in (0, 3, 17):
        got = layout_epoch_reference(Y, head, tail, rate, epoch=epoch, alpha=0.7, a=a, b=b, seed=4)
        want = per_edge_loop(Y, head, tail, rate, epoch=epoch, alpha=0.7, a=a, b=b, seed=4)
        assert got.shape == (dims, Y.shape[1])
        assert np.abs(got - want).max() < 1e-4 * max(1.0, np.abs(want).max())
        assert np.array_equal(np.rint(got / FIXED_STEP) * FIXED_STEP, got)  # exact multiples of the step
        assert np.abs(got).max() > 0.1  # the edges moved something


def test_epoch_is_the_same_for_any_block_size():
    Y, head, tail, rate = small_problem(m=200, e=3000)
    a, b = curve_params()
    whole = layout_epoch_reference(Y, head, tail, rate, epoch=2, alpha=1.0, a=a, b=b)
    for block in (1, 7, 333):
        assert np.array_equal(layout_epoch_reference(Y, head, tail, rate, epoch=2, alpha=1.0, a=a, b=b,
                                                     block_edges=block), whole)


def test_an_epoch_cut_into_parts_sums_to_the_whole_epoch():
    Y, head, tail, rate = small_problem(m=100, e=900)
    a, b = curve_params()
    whole = layout_epoch_reference(Y, head, tail, rate, epoch=4, alpha=0.9, a=a, b=b, seed=3)
    parts = sum(layout_epoch_reference(Y, head[lo:hi], tail[lo:hi], rate[lo:hi], epoch=4, alpha=0.9, a=a, b=b,
                                       seed=3, edge_offset=lo) for lo, hi in ((0, 250), (250, 251), (251, 900)))
    assert np.array_equal(parts, whole)


def test_edges_fire_as_often_as_their_rate_says():
    rate = np.array([1.0, 0.5, 0.25, 0.1, 0.013], dtype=np.float32)
    fired = np.zeros(len(rate), dtype=int)
    for epoch in range(200):
        fired[fired_edges(rate, epoch)] += 1
    assert fired.tolist() == [math.floor(200 * float(r)) for r in rate]


def test_negative_samples_are_in_range_uniform_and_keyed():
    edges = np.arange(200_000)
    rows = negative_rows(edges, 0, epoch_key(0, 0), 97, 5)
    assert rows.min() >= 0 and rows.max() < 97
    counts = np.bincount(rows, minlength=97)
    expected = len(edges) / 97
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 160  # 96 degrees of freedom: p < 1e-4 above this
    assert not np.array_equal(rows, negative_rows(edges, 0, epoch_key(0, 1), 97, 5))  # another epoch
    assert not np.array_equal(rows, negative_rows(edges, 1, epoch_key(0, 0), 97, 5))  # another sample
    assert np.array_equal(rows, negative_rows(edges, 0, epoch_key(0, 0), 97, 5))


@pytest.mark.gpu
@pytest.mark.parametrize("dims", [2, 3])
def test_epoch_kernel_matches_the_reference_on_the_gpu(dims):
    import cupy as cp

    Y, head, tail, rate = small_problem(m=500, e=20_000, dims=dims)
    a, b = curve_params()
    args = dict(epoch=5, alpha=0.8, a=a, b=b, seed=2)
    want = layout_epoch_reference(Y, head, tail, rate, **args)
    got = layout_epoch(cp.asarray(Y), cp.asarray(head), cp.asarray(tail), cp.asarray(rate), xp=cp, **args)
    again = layout_epoch(cp.asarray(Y), cp.asarray(head), cp.asarray(tail), cp.asarray(rate), xp=cp, **args)
    assert np.array_equal(cp.asnumpy(got), cp.asnumpy(again))  # integer atomics: no scheduling noise
    assert np.abs(cp.asnumpy(got) - want).max() < 1e-4 * max(1.0, np.abs(want).max())
    on_gpu_ref = layout_epoch_reference(cp.asarray(Y), cp.asarray(head), cp.asarray(tail), cp.asarray(rate), xp=cp,
                                        **args)
    assert np.abs(cp.asnumpy(on_gpu_ref) - want).max() < 1e-4 * max(1.0, np.abs(want).max())


# ---------------------------------------------------------------------- graph, curve, start
@needs_umap
def test_fuzzy_graph_matches_umap_learn():
    from umap.umap_ import fuzzy_simplicial_set

    x, _ = clusters(n=200)
    ind, dist = knn(x, k=9)
    graph = fuzzy_graph(ind, dist)
    m = len(x)
    ind_full = np.concatenate([np.arange(m)[:, None], ind], axis=1)
    dist_full = np.concatenate([np.zeros((m, 1)), dist], axis=1)
    ref, _, _ = fuzzy_simplicial_set(x, 10, 0, "cosine", knn_indices=ind_full, knn_dists=dist_full.astype(np.float32))
    ours = sp.csr_matrix((graph.weight, (graph.head, graph.tail)), shape=(m, m)).toarray()
    ref = ref.toarray()
    assert np.array_equal(ours > 0, ref > 0)
    assert np.abs(ours - ref).max() < 2e-3
    assert np.allclose(ours, ours.T)


def test_fuzzy_graph_memberships():
    x, _ = clusters(n=120)
    ind, dist = knn(x, k=8)
    ind[0, -3:] = -1                    # a row with fewer neighbours
    ind[1, :] = -1                      # a row with none
    graph = fuzzy_graph(ind, dist)
    assert graph.weight.min() > 0 and graph.weight.max() <= 1.0
    pointing_at_1 = set(np.flatnonzero((ind == 1).any(axis=1)).tolist())
    assert set(graph.tail[graph.head == 1].tolist()) == pointing_at_1  # row 1's edges: only the union's
    W = sp.csr_matrix((graph.weight, (graph.head, graph.tail)), shape=(120, 120))
    # each row's nearest neighbour has membership 1 in its own direction, so at least 1 after the union
    assert (W.toarray()[np.arange(2, 120), ind[2:, 0]] > 0.999).all()
    assert (W != W.T).nnz == 0


def test_curve_params_match_umap_learns_fit():
    a, b = curve_params(0.1, 1.0)
    assert abs(a - 1.577) < 0.01 and abs(b - 0.895) < 0.01  # umap-learn: a=1.5769, b=0.8951
    a2, b2 = curve_params(0.5, 1.0)
    assert a2 < a and b2 > b


def test_spectral_start_spans_the_graphs_leading_eigenvectors():
    x, labels = clusters(n=240, k=3)
    graph = fuzzy_graph(*knn(x, k=10))
    m = graph.n_vertices
    Y = initial_layout(graph, pca(x), 2, seed=0).T.astype(np.float64)
    W = sp.csr_matrix((graph.weight.astype(np.float64), (graph.head, graph.tail)), shape=(m, m))
    deg = np.asarray(W.sum(axis=1)).ravel()
    L = sp.eye(m) - sp.diags(deg ** -0.5) @ W @ sp.diags(deg ** -0.5)
    vals, vecs = np.linalg.eigh(L.toarray())
    ref = (deg ** -0.5)[:, None] * vecs[:, 1:3]          # the two smallest non-trivial, as umap-learn
    q_ours, _ = np.linalg.qr(Y - Y.mean(axis=0))
    q_ref, _ = np.linalg.qr(ref - ref.mean(axis=0))
    cosines = np.linalg.svd(q_ours.T @ q_ref, compute_uv=False)  # principal angles' cosines
    assert cosines.min() > 0.95
    assert np.abs(Y).max() == pytest.approx(10.0, abs=1e-2)
    assert neighbour_agreement(Y, labels) > 0.9


# ---------------------------------------------------------------------- whole maps
@pytest.mark.parametrize("dims", [2, 3])
def test_map_separates_clusters_and_is_deterministic(dims):
    x, labels = clusters()
    ind, dist = knn(x)
    y, info = umap_layout(ind, dist, pca(x), dims=dims, seed=1)
    assert y.shape == (len(x), dims) and y.dtype == np.float32 and np.isfinite(y).all()
    assert neighbour_agreement(y, labels) > 0.95
    again, _ = umap_layout(ind, dist, pca(x), dims=dims, seed=1)
    assert np.array_equal(y, again)
    other, _ = umap_layout(ind, dist, pca(x), dims=dims, seed=2)
    assert not np.array_equal(y, other)
    assert info.n_epochs == default_epochs(len(x)) == 500 and info.n_edges > len(x)


def test_map_does_not_depend_on_the_blas_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    x, _ = clusters(n=400)
    ind, dist = knn(x)
    with threadpoolctl.threadpool_limits(1):
        one, _ = umap_layout(ind, dist, pca(x), seed=0, n_epochs=60)
    with threadpoolctl.threadpool_limits(2):
        two, _ = umap_layout(ind, dist, pca(x), seed=0, n_epochs=60)
    assert np.array_equal(one, two)


def test_a_fitted_sample_places_the_rest_with_their_cluster():
    x, labels = clusters(n=500)
    ind, dist = knn(x)
    sample = np.sort(np.random.default_rng(0).choice(500, 150, replace=False))
    y, info = umap_layout(ind, dist, pca(x), seed=0, sample=sample, sample_graph=knn(x[sample]))
    assert np.isfinite(y).all()
    assert neighbour_agreement(y, labels) > 0.9
    assert {"sample_graph", "place", "refine"} <= set(info.seconds)
    whole, _ = umap_layout(ind, dist, pca(x), seed=0)
    assert not np.array_equal(y, whole)


def test_placing_puts_a_row_at_the_mean_of_its_placed_neighbours():
    from tamis.engine.layout import Graph, LayoutInfo, place

    # a path 0 - 1 - 2 - 3 and an isolated row 4; rows 0 and 3 fitted
    head = np.array([0, 1, 1, 2, 2, 3])
    tail = np.array([1, 0, 2, 1, 3, 2])
    graph = Graph(head, tail, np.ones(6, np.float32), 5)
    start = np.arange(10, dtype=np.float64).reshape(5, 2)
    fitted = np.array([[0.0, 9.0], [0.0, 3.0]], dtype=np.float32)   # (dims, sample)
    Y = place(graph, np.array([0, 3]), fitted, start, 0, LayoutInfo())
    assert np.allclose(Y[:, 0], [0, 0]) and np.allclose(Y[:, 3], [9, 3])
    assert np.allclose(Y[:, 1], [0, 0]) and np.allclose(Y[:, 2], [9, 3])  # one placed neighbour each
    assert np.isfinite(Y[:, 4]).all() and np.abs(Y[:, 4]).max() <= 10.001  # no path: its scaled start


def test_optimise_keeps_frozen_rows_in_place():
    x, _ = clusters(n=100)
    graph = fuzzy_graph(*knn(x))
    Y0 = initial_layout(graph, pca(x), 2, seed=0)
    frozen = np.zeros(100, dtype=bool)
    frozen[:40] = True
    a, b = curve_params()
    Y = optimise(Y0.copy(), graph, 20, a=a, b=b, seed=0, frozen=frozen)
    assert np.array_equal(Y[:, :40], Y0[:, :40])
    assert not np.array_equal(Y[:, 40:], Y0[:, 40:])


def test_bad_layout_arguments_are_named():
    x, _ = clusters(n=30)
    ind, dist = knn(x, k=5)
    with pytest.raises(ConfigError, match="dims"):
        umap_layout(ind, dist, pca(x), dims=4)
    with pytest.raises(ConfigError, match="n_epochs"):
        umap_layout(ind, dist, pca(x), n_epochs=0)
    with pytest.raises(InputError, match="neighbour indices"):
        umap_layout(ind[:, :3], dist, pca(x))
    with pytest.raises(ConfigError, match="sample_graph"):
        umap_layout(ind, dist, pca(x), sample=np.arange(10))


def test_layout_on_every_backend(device):
    xp = resolve_backend(device).xp
    x, labels = clusters(n=200)
    ind, dist = knn(x)
    y, _ = umap_layout(ind, dist, pca(x), seed=0, xp=xp)
    assert neighbour_agreement(y, labels) > 0.95
