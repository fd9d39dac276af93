"""The similarity search (tamis.engine.search): one conformance suite over every engine and
device, the canonical similarity, certification of exact neighbours, recall of approximate
engines, the auto rule and the errors.

The reference is written here, in float64 NumPy, from the contract alone: a pair is every
(a < b) whose canonical similarity is >= the threshold; a row's neighbours are the k other
rows of largest canonical similarity, ties to the smaller row id. Exact engines must equal
it bit for bit; approximate ones must be a subset with the same values.
"""

from __future__ import annotations

import logging
import math
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tamis._optional import has_module
from tamis.engine.backend import resolve_backend, to_host
from tamis.engine.search import choose, engine_names, find_pairs, knn_graph, prepare
from tamis.engine.search import rows as rows_module
from tamis.engine.search import tiles as tiles_module
from tamis.engine.search.recall import knn_recall
from tamis.engine.search.rows import canonical_dot, tile_margin
from tamis.errors import ConfigError, InputError

HAS_FAISS = has_module("faiss")
needs_faiss = pytest.mark.skipif(not HAS_FAISS, reason="faiss is not installed")

# (engine, params, exact?) -- every registered engine, with its index variants
ENGINE_CASES = [("exact", {}, True), ("ivf", {}, False),
                pytest.param("faiss", {"index": "flat"}, True, marks=needs_faiss),
                pytest.param("faiss", {"index": "ivf", "nlist": 16}, False, marks=needs_faiss)]


# ---------------------------------------------------------------------------- data
def unit(X):
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    X = X[norms[:, 0] > 0]
    return (X / norms[norms[:, 0] > 0]).astype(np.float32)


def planted(n=1500, d=32, seed=0, clusters=12, dup_fraction=0.1):
    """Clustered rows with exact copies, near copies and a 40-copy block (more copies than any
    candidate list holds, so every neighbour is a tie broken by row id)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    X = centres[rng.integers(0, clusters, n)] + 0.7 * rng.standard_normal((n, d))
    m = int(dup_fraction * n)
    src = rng.choice(n, m, replace=False)
    dst = rng.choice(np.setdiff1d(np.arange(n), src), m, replace=False)
    X[dst[: m // 2]] = X[src[: m // 2]]                                       # exact copies
    X[dst[m // 2:]] = X[src[m // 2:]] + 0.05 * rng.standard_normal((m - m // 2, d))   # near copies
    X[100:140] = X[7]                                                         # 41 identical rows
    return unit(X)


def dyadic_rows():
    """Rows whose dot products are exact dyadic numbers: pairs sit exactly on 0.75 and 0.875."""
    rows = []
    for i in range(16):
        v = np.zeros(16)
        v[i] = 0.5
        v[(i + 1) % 16] = 0.5
        v[(i + 2) % 16] = 0.5
        v[(i + 3) % 16] = 0.5
        rows.append(v)
    base = np.array(rows)
    return np.concatenate([base, base[:4]]).astype(np.float32)    # with four exact copies


def reference_sims(X):
    """The canonical similarity of every pair (the definition, computed row by row)."""
    n = len(X)
    S = np.empty((n, n))
    for i in range(n):
        S[i] = canonical_dot(X, X, np.full(n, i), np.arange(n), np)
    return S


def reference_pairs(X, threshold):
    S = reference_sims(X)
    a, b = np.nonzero(np.triu(S >= threshold, 1))
    return a, b, S[a, b].astype(np.float32)


def reference_knn(X, k):
    S = reference_sims(X)
    np.fill_diagonal(S, -np.inf)
    ids = np.broadcast_to(np.arange(len(X)), S.shape)
    order = np.lexsort((ids, -S), axis=1)[:, :k]
    return order, np.take_along_axis(S, order, 1).astype(np.float32)


def assert_pairs_equal(got, want):
    for g, w, name in zip(got, want, ("row_a", "row_b", "similarity")):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=name)


def assert_pairs_subset(got, want):
    """Approximate: every pair found is a true pair with the reference's similarity."""
    n = 1 << 32
    key = dict(zip((want[0] * n + want[1]).tolist(), want[2].tolist()))
    found = (np.asarray(got[0]) * n + np.asarray(got[1])).tolist()
    assert all(f in key for f in found)
    assert [key[f] for f in found] == np.asarray(got[2]).tolist()
    assert (np.diff(np.asarray(got[0]) * n + np.asarray(got[1])) > 0).all()    # sorted, no repeat


def on(device, X):
    return resolve_backend(device).xp.asarray(X)


@pytest.fixture(scope="module")
def store():
    X = planted()
    return X, reference_pairs(X, 0.9), reference_knn(X, 10)


# ---------------------------------------------------------------------------- conformance
@pytest.mark.parametrize("engine,params,exact", ENGINE_CASES)
def test_pairs_conform(store, device, engine, params, exact):
    X, want, _ = store
    got = find_pairs(on(device, X), 0.9, engine=engine, **params)
    assert got.row_a.dtype == np.int64 and got.similarity.dtype == np.float32
    assert got.info["exact"] is exact
    if exact:
        assert_pairs_equal(got, want)
        assert got.info["recall"] == 1.0
    else:
        assert_pairs_subset(got, want)
        true_recall = len(got.row_a) / len(want[0])
        assert true_recall >= 0.99 and got.info["recall"] >= 0.99
        assert 0 <= got.info["recall"] <= 1


@pytest.mark.parametrize("engine,params,exact", ENGINE_CASES)
def test_neighbours_conform(store, device, engine, params, exact):
    X, _, (want_idx, want_sim) = store
    got = knn_graph(on(device, X), 10, engine=engine, **params)
    assert got.indices.shape == (len(X), 10) and got.indices.dtype == np.int64
    assert got.info["engine"] in engine_names()
    if got.info["exact"]:
        np.testing.assert_array_equal(got.indices, want_idx)
        np.testing.assert_array_equal(got.similarities, want_sim)
        assert got.info["recall"] == 1.0
    else:
        rows = np.repeat(np.arange(len(X)), 10)
        canonical = canonical_dot(X, X, rows, got.indices.reshape(-1), np).astype(np.float32)
        np.testing.assert_array_equal(got.similarities.reshape(-1), canonical)   # never invented
        assert not (got.indices == np.arange(len(X))[:, None]).any()
        assert all(len(set(r)) == 10 for r in got.indices.tolist())
        recall = knn_recall(got.indices, got.similarities, want_sim)
        assert recall >= 0.95 and got.info["recall"] >= 0.95
    # the 41 identical rows: every one's neighbours are the lowest other ids of the block
    block = [7] + list(range(100, 140))
    np.testing.assert_array_equal(got.indices[7], block[1:11])
    np.testing.assert_array_equal(got.indices[105], [r for r in block if r != 105][:10])


@pytest.mark.parametrize("threshold", [0.75, 0.875])
@pytest.mark.parametrize("engine,params,exact", [c for c in ENGINE_CASES if c[0] != "ivf"][:2])
def test_pairs_exactly_on_the_threshold_are_kept(device, threshold, engine, params, exact):
    X = dyadic_rows()
    assert_pairs_equal(find_pairs(on(device, X), threshold, engine=engine, **params), reference_pairs(X, threshold))


def test_ivf_widest_rule_is_exact():
    X = planted(900, 16, seed=5)
    got = find_pairs(X, 0.85, engine="ivf", probe_slack=1.0, probes=10_000, n_buckets=9)
    assert_pairs_equal(got, reference_pairs(X, 0.85))


# ---------------------------------------------------------------------------- canonical answers
def test_answers_do_not_depend_on_block_shapes_or_memory(store):
    X, want_pairs, (want_idx, want_sim) = store
    for kwargs in ({"block_rows": 1}, {"block_rows": 37}, {"memory_bytes": 1 << 20}):
        assert_pairs_equal(find_pairs(X, 0.9, engine="exact", **kwargs), want_pairs)
    got = knn_graph(X, 10, engine="exact", memory_bytes=1 << 20)
    np.testing.assert_array_equal(got.indices, want_idx)
    np.testing.assert_array_equal(got.similarities, want_sim)


def test_answers_survive_a_blas_that_rounds_differently(store, monkeypatch):
    """Tiles computed from rows perturbed by up to a quarter of the proven margin (as another
    BLAS kernel, block shape or device would round): identical pairs and neighbours."""
    X, want_pairs, (want_idx, want_sim) = store
    rng = np.random.default_rng(1)
    eps = tile_margin(X.shape[1], "float32") / 8
    noise = rng.standard_normal(X.shape)
    noise *= eps / np.linalg.norm(noise, axis=1, keepdims=True)
    original = tiles_module.as_tile
    lookup = {}

    def rounded_differently(A, start, stop, dtype):
        block = original(A, start, stop, dtype)
        key = id(A)
        if key not in lookup:   # the same perturbation for every view of one matrix
            lookup[key] = (A, noise[:len(A)] if len(A) == len(X) else np.zeros(A.shape))
        return (block + lookup[key][1][start:stop]).astype(block.dtype)

    monkeypatch.setattr(tiles_module, "as_tile", rounded_differently)
    assert_pairs_equal(find_pairs(X, 0.9, engine="exact"), want_pairs)
    got = knn_graph(X, 10, engine="exact")
    np.testing.assert_array_equal(got.indices, want_idx)
    np.testing.assert_array_equal(got.similarities, want_sim)
    assert got.info["rows_rechecked"] > 0        # the identical block needed the fallback


def test_canonical_dot_is_chunking_invariant_and_accurate(monkeypatch):
    rng = np.random.default_rng(2)
    for d in (1, 3, 64, 100, 512):
        A = unit(rng.standard_normal((50, d)))
        ia, ib = rng.integers(0, 50, 300), rng.integers(0, 50, 300)
        whole = canonical_dot(A, A, ia, ib, np)
        monkeypatch.setattr(rows_module, "CPU_CHUNK_ELEMENTS", 7)
        np.testing.assert_array_equal(canonical_dot(A, A, ia, ib, np), whole)
        monkeypatch.undo()
        exact = [math.fsum(float(x) * float(y) for x, y in zip(A[i], A[j])) for i, j in zip(ia, ib)]
        np.testing.assert_allclose(whole, exact, rtol=0, atol=d * 2.0**-52)


def test_margins_bound_the_tile_error():
    rng = np.random.default_rng(0)
    for d in (3, 64, 512):
        X = unit(rng.standard_normal((200, d)))
        exact = X.astype(np.float64) @ X.T.astype(np.float64)
        H = X.astype(np.float16)
        tile16 = (H.astype(np.float32) @ H.T.astype(np.float32)).astype(np.float16)   # as cuBLAS
        assert np.abs(tile16 - exact).max() < tile_margin(d, "float16") / 1.3
        assert np.abs(X @ X.T - exact).max() < tile_margin(d, "float32") / 2


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 40), d=st.integers(1, 6), seed=st.integers(0, 2**16),
       threshold=st.sampled_from([0.3, 0.8, 0.95, 1.0]), k=st.integers(1, 12))
def test_exact_engine_property(n, d, seed, threshold, k):
    rng = np.random.default_rng(seed)
    X = unit(rng.integers(-2, 3, size=(n, d)))          # many exact copies and exact ties
    if len(X) < 2:
        return
    assert_pairs_equal(find_pairs(X, threshold, engine="exact"), reference_pairs(X, threshold))
    k = min(k, len(X) - 1)
    got = knn_graph(X, k, engine="exact")
    want = reference_knn(X, k)
    np.testing.assert_array_equal(got.indices, want[0])
    np.testing.assert_array_equal(got.similarities, want[1])


def test_float16_rows_are_searched_without_a_float32_copy(store):
    X16 = store[0].astype(np.float16)
    got, _ = prepare(X16)
    assert got.dtype == np.float16
    want = reference_knn(X16.astype(np.float32), 10)     # the stored float16 values, exactly
    res = knn_graph(X16, 10, engine="exact")
    np.testing.assert_array_equal(res.indices, want[0])
    np.testing.assert_array_equal(res.similarities, want[1])


def test_device_code_path_with_a_numpy_stand_in(monkeypatch, store):
    """The GPU plan (float16 pair tiles with their wider margin, one worker, compaction in
    any order, the CUDA top-k merge) driven by a NumPy stand-in for CuPy: the same answers."""
    import tamis.kernels.pairs as pair_kernels
    import tamis.kernels.topk as topk_kernels

    fake = types.ModuleType("cupy")
    fake.__dict__.update({k: v for k, v in np.__dict__.items() if not k.startswith("__")})
    rng = np.random.default_rng(0)

    def unordered(S, row0, col0, cutoff, upper, xp):     # like the atomic-counter kernel
        assert xp is fake
        out = pair_kernels.compact_pairs_reference(S.astype(np.float32), row0, col0, cutoff, upper, np)
        order = rng.permutation(len(out[0]))
        return tuple(o[order] for o in out)

    monkeypatch.setattr(pair_kernels, "_compact_pairs_cuda", unordered)
    monkeypatch.setattr(topk_kernels, "_merge_topk_cuda",
                        lambda S, col0, row0, bs, bi, k, xp: topk_kernels.merge_topk_reference(S, col0, row0, bs,
                                                                                                bi, k, np))
    X, want_pairs, (want_idx, want_sim) = store
    X = X[:600]
    want_pairs = reference_pairs(X, 0.9)
    want_idx, want_sim = reference_knn(X, 10)
    assert tiles_module.plan_for(fake).pair_dtype == "float16"
    assert_pairs_equal(find_pairs(X, 0.9, engine="exact", xp=fake), want_pairs)
    got = knn_graph(X, 10, engine="exact", xp=fake)
    np.testing.assert_array_equal(got.indices, want_idx)
    np.testing.assert_array_equal(got.similarities, want_sim)
    assert_pairs_subset(find_pairs(X, 0.9, engine="ivf", xp=fake), want_pairs)


# ---------------------------------------------------------------------------- the auto rule
def test_auto_rule():
    assert choose("pairs", 20_000, 512, "cpu") == "exact"
    assert choose("pairs", 21_000, 512, "cpu") == "ivf"
    assert choose("pairs", 21_000, 512, "cpu", workers=2) == "exact"     # the work is shared
    assert choose("neighbours", 29_000, 512, "cpu") == "exact"
    assert choose("neighbours", 31_000, 512, "cpu") == "ivf"
    assert choose("pairs", 500_000, 512, "gpu") == "exact"
    assert choose("neighbours", 1_000_000, 512, "gpu") == "exact"
    assert choose("neighbours", 2_000_000, 512, "gpu") == "ivf"


def test_auto_is_logged_and_recorded(store, caplog):
    X = store[0]
    with caplog.at_level(logging.INFO, logger="tamis"):
        got = find_pairs(X, 0.9)
    assert "pairs search: exact engine for 1500 rows" in caplog.text
    assert got.info["engine"] == "exact"


# ---------------------------------------------------------------------------- errors
def test_bad_input_and_options_are_named():
    X = planted(200, 8)
    with pytest.raises(ConfigError, match="engine='fast' is not one of auto, exact, ivf"):
        find_pairs(X, 0.9, engine="fast")
    with pytest.raises(ConfigError, match="engine 'exact' takes no parameter n_buckets"):
        find_pairs(X, 0.9, engine="exact", n_buckets=4)
    with pytest.raises(ConfigError, match=r"threshold=1.5 is outside \(0, 1\]"):
        find_pairs(X, 1.5)
    with pytest.raises(ConfigError, match="k=500 needs at least 501 rows"):
        knn_graph(X, 500)
    with pytest.raises(ConfigError, match="memory_bytes=100"):
        knn_graph(X, 3, memory_bytes=100)
    with pytest.raises(ConfigError, match="progress='yes' is not callable"):
        find_pairs(X, 0.9, progress="yes")
    with pytest.raises(InputError, match="row 3 has L2 norm 2"):
        find_pairs(np.where(np.arange(200)[:, None] == 3, 2 * X, X), 0.9)
    bad = X.copy()
    bad[5, 0] = np.nan
    with pytest.raises(InputError, match="row 5 has L2 norm nan"):
        knn_graph(bad, 3)
    with pytest.raises(InputError, match="2-D"):
        knn_graph(X[0], 3)
    with pytest.raises(InputError, match="dtype int64"):
        find_pairs(np.ones((3, 3), dtype=np.int64), 0.9)


def test_faiss_missing_is_a_clear_error(monkeypatch):
    import tamis.engine.search.faiss_engine as faiss_engine

    monkeypatch.setattr(faiss_engine, "has_module", lambda name: False)
    with pytest.raises(ConfigError, match="engine='faiss' cannot run here: the faiss package is not installed"):
        find_pairs(planted(100, 8), 0.9, engine="faiss")


@needs_faiss
def test_faiss_rejects_an_unknown_index():
    with pytest.raises(ConfigError, match="faiss index='hnsw' is not one of auto, flat, ivf"):
        knn_graph(planted(100, 8), 3, engine="faiss", index="hnsw")


# ---------------------------------------------------------------------------- GPU == CPU
@pytest.mark.gpu
def test_gpu_and_cpu_give_identical_answers(store):
    import cupy

    X, want_pairs, (want_idx, want_sim) = store
    assert_pairs_equal(find_pairs(cupy.asarray(X), 0.9, engine="exact"), want_pairs)
    got = knn_graph(cupy.asarray(X), 10, engine="exact")
    np.testing.assert_array_equal(got.indices, want_idx)
    np.testing.assert_array_equal(got.similarities, want_sim)
    cpu = to_host(canonical_dot(X, X, np.arange(50), np.arange(50)[::-1], np))
    gpu = to_host(canonical_dot(cupy.asarray(X), cupy.asarray(X), cupy.arange(50), cupy.arange(50)[::-1], cupy))
    np.testing.assert_array_equal(cpu, gpu)


# ---------------------------------------------------------------------------- ivf edge cases
def test_slack_rule_probes_near_twin_centroids():
    """Two centroids whose float32 cosine rounds to 1 (k-means put both on one cluster of
    copies): the widest rule must still probe a row into its twin bucket."""
    from tamis.engine.search.ivf import _bucket_pairs
    from tamis.engine.search.registry import SearchOptions

    X = unit([[1, -1e-3, 0, 0], [1, 1e-3, 0, 0]])
    C = unit([[1, -1e-4, 0, 0], [1, 1e-4, 0, 0]])
    assert float(C[0] @ C[1]) == 1.0 and list((X @ C.T).argmax(axis=1)) == [0, 1]
    a, b, _ = _bucket_pairs(X, 0.99, C, 2, math.sqrt(2 - 2 * 0.99), SearchOptions(), None)
    assert list(zip(a.tolist(), b.tolist())) == [(0, 1)]


def test_ivf_finds_every_pair_among_tight_copies():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((30, 32))
    X = unit(base[rng.integers(0, 30, 3000)] + 1e-4 * rng.standard_normal((3000, 32)))
    got = find_pairs(X, 0.99, engine="ivf")
    assert_pairs_equal(got, find_pairs(X, 0.99, engine="exact"))
    assert got.info["recall"] == 1.0


def test_ivf_never_lists_a_neighbour_twice_when_centroids_tie():
    """Sparse non-negative rows tie exactly with many centroids: every round's probes must come
    from one total order, or a bucket is searched twice and its rows listed twice."""
    rng = np.random.default_rng(0)
    X = np.zeros((3000, 2048), np.float32)
    for i in range(3000):
        X[i, rng.choice(2048, 2, replace=False)] = rng.random(2) + 0.1
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    got = knn_graph(X, 10, engine="ivf", n_buckets=200, target_recall=0.99)
    assert got.info["engine"] == "ivf"
    assert all(len(set(row)) == len(row) for row in got.indices.tolist())


def test_engine_parameters_are_used_or_refused(store):
    X, _, (want_idx, want_sim) = store
    got = knn_graph(X, 10, engine="exact", block_rows=100)          # used by the neighbour tiles too
    np.testing.assert_array_equal(got.indices, want_idx)
    with pytest.raises(ConfigError, match="block_rows=0 is not a positive integer"):
        knn_graph(X, 10, engine="exact", block_rows=0)
    if HAS_FAISS:
        with pytest.raises(ConfigError, match="nlist=5000 exceeds the 1500 rows"):
            knn_graph(X, 5, engine="faiss", index="ivf", nlist=5000)
