"""The pair search engines against brute force, on both backends where there is a GPU."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tamis.engine import pairsearch
from tamis.engine.backend import gpu_available
from tamis.engine.pairsearch import exact_pairs, find_pairs, pairs_in_block, partitioned_pairs
from tamis.errors import ConfigError, InputError

HAS_GPU = gpu_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no usable CUDA GPU with CuPy here")


def unit(X):
    X = np.asarray(X, np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return (X / np.where(norms == 0, 1, norms)).astype(np.float32)


def brute(X, threshold):
    """The definition: float64 dot products of the float32 rows, i < j, >= threshold."""
    X64 = np.asarray(X, np.float32).astype(np.float64)
    S = X64 @ X64.T
    a, b = np.nonzero(np.triu(S >= threshold, 1))
    return a, b, S[a, b].astype(np.float32)


def planted(n, d, seed=0, n_clusters=None, dup_fraction=0.05, cos_range=(0.88, 1.0)):
    """Anisotropic clusters with near-duplicate copies (cosine in ``cos_range``), shuffled."""
    rng = np.random.default_rng(seed)
    n_clusters = n_clusters or max(1, n // 100)
    scale = 1.0 / np.sqrt(np.arange(1, d + 1))
    scale *= np.sqrt(d / (scale**2).sum())
    n_dups = int(n * dup_fraction)
    centers = unit(rng.standard_normal((n_clusters, d)))
    label = rng.integers(0, n_clusters, n - n_dups)
    X = unit(centers[label] + rng.uniform(0.7, 1.3, n_clusters)[label, None]
             * rng.standard_normal((n - n_dups, d)) * scale / np.sqrt(d))
    src = rng.integers(0, n - n_dups, n_dups)
    step = rng.standard_normal((n_dups, d)) * scale
    step -= (step * X[src]).sum(1, keepdims=True) * X[src]
    step = unit(step)
    cos = rng.uniform(*cos_range, n_dups)[:, None]
    X = np.concatenate([X, unit(cos * X[src] + np.sqrt(1 - cos**2) * step)])
    return X[rng.permutation(n)]


def assert_pairs_equal(got, want):
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[2], want[2])


def assert_well_formed(pairs):
    a, b, s = pairs
    assert a.dtype == np.int64 and b.dtype == np.int64 and s.dtype == np.float32
    assert isinstance(a, np.ndarray) and isinstance(s, np.ndarray)
    assert (a < b).all()
    key = a * (int(b.max(initial=0)) + 1) + b
    assert (np.diff(key) > 0).all()                     # sorted by (row_a, row_b), unique


def recall(got, want):
    want_keys = set(zip(want[0].tolist(), want[1].tolist()))
    if not want_keys:
        return 1.0
    return len(want_keys & set(zip(got[0].tolist(), got[1].tolist()))) / len(want_keys)


# ---- exact engine ---------------------------------------------------------------------

@pytest.mark.parametrize("n,d,block_rows", [(1, 8, None), (2, 8, None), (257, 33, 64),
                                             (300, 17, 7), (500, 64, None), (130, 5, 1000)])
def test_exact_matches_brute_force(n, d, block_rows):
    X = planted(n, d, seed=n + d, dup_fraction=0.2)
    got = exact_pairs(X, 0.9, block_rows=block_rows, memory_bytes=1 << 20)
    assert_well_formed(got)
    assert_pairs_equal(got, brute(X, 0.9))


def test_exact_small_memory_budget_forces_narrow_tiles():
    X = planted(400, 16, seed=3, dup_fraction=0.3)
    got = exact_pairs(X, 0.85, block_rows=3, memory_bytes=1 << 20)
    assert_pairs_equal(got, brute(X, 0.85))


def test_exact_no_pairs_and_empty_input():
    X = np.eye(50, dtype=np.float32)                      # orthogonal rows
    for pairs in (exact_pairs(X, 0.5), exact_pairs(np.zeros((0, 4), np.float32), 0.5)):
        assert_well_formed(pairs)
        assert all(len(p) == 0 for p in pairs)


def dyadic_rows():
    """Rows with entries +-1/4 in d=16: every dot product is a multiple of 1/8, computed
    exactly in any precision and summation order, so pairs sit exactly on thresholds."""
    rng = np.random.default_rng(5)
    base = np.where(rng.random((20, 16)) < 0.5, -0.25, 0.25).astype(np.float32)
    flips = []
    for k in (1, 2):                                       # cosines 0.875 and 0.75
        copy = base[:5].copy()
        copy[:, :k] *= -1
        flips.append(copy)
    return np.concatenate([base, *flips])


@pytest.mark.parametrize("threshold", [0.75, 0.875, 1.0])
def test_pairs_exactly_at_the_threshold_are_kept(threshold):
    X = dyadic_rows()
    want = brute(X, threshold)
    assert len(want[0]) >= 5 or threshold == 1.0
    assert_pairs_equal(exact_pairs(X, threshold), want)
    assert_pairs_equal(partitioned_pairs(X, threshold, n_buckets=3), want)
    assert np.isin(want[2], [0.75, 0.875, 1.0]).all()


def test_exact_is_deterministic_and_independent_of_blocking():
    X = planted(600, 24, seed=11, dup_fraction=0.2)
    first = exact_pairs(X, 0.92)
    for kwargs in ({}, {"block_rows": 1}, {"block_rows": 101, "memory_bytes": 1 << 20}):
        assert_pairs_equal(exact_pairs(X, 0.92, **kwargs), first)


def test_exact_progress_counts_every_row_once():
    X = planted(333, 8, seed=2)
    seen = []
    exact_pairs(X, 0.9, block_rows=50, progress=seen.append)
    assert sum(seen) == 333 and len(seen) == 7


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 40), d=st.integers(1, 9), seed=st.integers(0, 2**16),
       threshold=st.sampled_from([0.3, 0.8, 0.95, 0.99, 1.0]),
       block_rows=st.one_of(st.none(), st.integers(1, 17)))
def test_exact_property(n, d, seed, threshold, block_rows):
    rng = np.random.default_rng(seed)
    X = unit(rng.integers(-2, 3, size=(n, d)))             # many exact and near copies
    got = exact_pairs(X, threshold, block_rows=block_rows)
    assert_well_formed(got)
    assert_pairs_equal(got, brute(X, threshold))


def test_gpu_precision_plan_emulated_on_numpy(monkeypatch):
    """The GPU plan's float16 tiles and wider margin, run by NumPy: still the exact result,
    pairs exactly on the threshold included."""
    plan = dataclasses.replace(pairsearch._GPU_PLAN, workers=1, tile_rows=96,
                               max_tile_elements=96 * 200)
    monkeypatch.setattr(pairsearch, "plan_for", lambda xp: plan)
    X = planted(500, 40, seed=21, dup_fraction=0.3)
    assert_pairs_equal(exact_pairs(X, 0.9), brute(X, 0.9))
    assert_pairs_equal(partitioned_pairs(X, 0.9, n_buckets=4, probes=4, probe_slack=1.0),
                       brute(X, 0.9))
    assert_pairs_equal(exact_pairs(dyadic_rows(), 0.875), brute(dyadic_rows(), 0.875))


def test_device_code_path_with_a_numpy_stand_in(monkeypatch):
    """The GPU code path (float16 plan, one worker, compaction in arbitrary order, the
    array module not being numpy) driven by a NumPy stand-in for CuPy: same pairs."""
    import tamis.kernels.pairs as kernels

    fake = types.ModuleType("cupy")
    fake.__dict__.update({k: v for k, v in np.__dict__.items() if not k.startswith("__")})
    rng = np.random.default_rng(0)

    def unordered(S, row0, col0, cutoff, upper, xp):       # like the atomic-counter kernel
        assert xp is fake
        out = kernels.compact_pairs_reference(S, row0, col0, cutoff, upper, np)
        order = rng.permutation(len(out[0]))
        return tuple(o[order] for o in out)

    monkeypatch.setattr(kernels, "_compact_pairs_cuda", unordered)
    X = planted(700, 24, seed=8, dup_fraction=0.2)
    want = brute(X, 0.9)
    assert_pairs_equal(exact_pairs(X, 0.9, xp=fake), want)
    assert_pairs_equal(exact_pairs(X, 0.9, xp=fake, block_rows=50), want)
    assert_pairs_equal(find_pairs(X, 0.9, xp=fake), want)
    got = partitioned_pairs(X, 0.9, xp=fake, n_buckets=6)
    assert recall(got, want) >= 0.99
    assert_pairs_equal(partitioned_pairs(X, 0.9, xp=fake, n_buckets=6), got)
    assert_pairs_equal(partitioned_pairs(X, 0.9, xp=fake, n_buckets=6, probes=6,
                                         probe_slack=1.0), want)


def test_margins_bound_the_tile_error():
    rng = np.random.default_rng(0)
    for d in (3, 64, 512):
        X = unit(rng.standard_normal((200, d)))
        exact = X.astype(np.float64) @ X.T.astype(np.float64)
        H = X.astype(np.float16)
        tile16 = (H.astype(np.float32) @ H.T.astype(np.float32)).astype(np.float16)  # as cuBLAS
        assert np.abs(tile16 - exact).max() < pairsearch._GPU_PLAN.margin(d) / 1.3
        assert np.abs(X @ X.T - exact).max() < pairsearch._CPU_PLAN.margin(d) / 2


# ---- blocks ---------------------------------------------------------------------------

def test_blocks_compose_to_the_exact_result():
    X = planted(240, 12, seed=4, dup_fraction=0.3)
    edges = [0, 70, 150, 240]
    parts = []
    for i in range(3):
        a = slice(edges[i], edges[i + 1])
        parts.append(pairs_in_block(X[a], X[a], a.start, a.start, 0.9, upper=True))
        for j in range(i + 1, 3):
            b = slice(edges[j], edges[j + 1])
            parts.append(pairs_in_block(X[a], X[b], a.start, b.start, 0.9))
    rows = np.concatenate([p[0] for p in parts])
    cols = np.concatenate([p[1] for p in parts])
    sims = np.concatenate([p[2] for p in parts])
    order = np.lexsort((cols, rows))
    assert_pairs_equal((rows[order], cols[order], sims[order]), exact_pairs(X, 0.9))
    for p in parts:
        assert_well_formed(p)


def test_block_errors():
    X = unit(np.ones((4, 3)))
    with pytest.raises(ConfigError, match="upper=True"):
        pairs_in_block(X, X, 0, 2, 0.9)
    with pytest.raises(InputError, match="columns"):
        pairs_in_block(X, unit(np.ones((4, 5))), 0, 4, 0.9)
    with pytest.raises(ConfigError, match="offset_a"):
        pairs_in_block(X, X, -1, 4, 0.9)


# ---- partitioned engine ---------------------------------------------------------------

@pytest.mark.parametrize("threshold", [0.9, 0.95])
@pytest.mark.parametrize("n_clusters", [5, 60])
def test_partitioned_recall_on_planted_data(threshold, n_clusters):
    X = planted(6000, 48, seed=n_clusters, n_clusters=n_clusters)
    want = exact_pairs(X, threshold)
    got = partitioned_pairs(X, threshold)
    assert_well_formed(got)
    assert len(want[0]) > 100
    assert recall(got, want) >= 0.99
    # never a false pair, and the same similarities as the exact engine
    keys = {(a, b): s for a, b, s in zip(*(x.tolist() for x in want))}
    assert all(keys[(a, b)] == s for a, b, s in zip(*(x.tolist() for x in got)))


def test_partitioned_with_full_slack_and_probes_is_exact():
    """probe_slack=1 with every bucket allowed is the proven-lossless setting."""
    X = planted(1500, 16, seed=7, dup_fraction=0.1, cos_range=(0.7, 1.0))
    got = partitioned_pairs(X, 0.8, n_buckets=12, probes=12, probe_slack=1.0)
    assert_pairs_equal(got, exact_pairs(X, 0.8))


def test_partitioned_is_deterministic_and_seeded():
    X = planted(2000, 32, seed=9)
    first = partitioned_pairs(X, 0.9, n_buckets=30)
    assert_pairs_equal(partitioned_pairs(X, 0.9, n_buckets=30), first)
    assert_pairs_equal(partitioned_pairs(X.copy(), 0.9, n_buckets=30, seed=0), first)
    other = partitioned_pairs(X, 0.9, n_buckets=30, seed=1)
    assert recall(other, first) >= 0.97


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_partitioned_tiny_inputs(n):
    X = unit(np.ones((n, 4)))
    got = partitioned_pairs(X, 0.9, n_buckets=5)
    assert_pairs_equal(got, brute(X, 0.9))


def test_partitioned_progress_counts_every_row_once():
    X = planted(900, 8, seed=1)
    seen = []
    partitioned_pairs(X, 0.9, n_buckets=10, progress=seen.append)
    assert sum(seen) == 900


# ---- find_pairs -----------------------------------------------------------------------

def test_find_pairs_engines_agree_on_small_data(caplog):
    X = planted(800, 16, seed=12)
    want = exact_pairs(X, 0.9)
    with caplog.at_level("INFO", logger="tamis"):
        assert_pairs_equal(find_pairs(X, 0.9), want)          # auto -> exact at this size
    assert "exact engine" in caplog.text
    assert_pairs_equal(find_pairs(X, 0.9, engine="exact", block_rows=33), want)
    assert recall(find_pairs(X, 0.9, engine="partitioned", n_buckets=8), want) >= 0.99


def test_find_pairs_accepts_float64_and_lists():
    X = planted(50, 4, seed=1, dup_fraction=0.2)
    want = exact_pairs(X, 0.9)
    assert_pairs_equal(find_pairs(X.astype(np.float64), 0.9), want)
    assert_pairs_equal(find_pairs(X.tolist(), 0.9), want)


# ---- parameter and input errors -------------------------------------------------------

X_OK = unit(np.random.default_rng(0).standard_normal((10, 4)))


@pytest.mark.parametrize("threshold", [0, -0.5, 1.5, float("nan"), "0.9", True, None])
def test_bad_threshold(threshold):
    for fn in (exact_pairs, partitioned_pairs, find_pairs):
        with pytest.raises(ConfigError, match=r"threshold=.*\(0, 1\]"):
            fn(X_OK, threshold)


@pytest.mark.parametrize("fn,kwargs,match", [
    (exact_pairs, {"block_rows": 0}, "block_rows=0"),
    (exact_pairs, {"block_rows": 2.5}, "block_rows=2.5"),
    (exact_pairs, {"memory_bytes": 1000}, "memory_bytes=1000"),
    (exact_pairs, {"progress": 3}, "progress=3"),
    (partitioned_pairs, {"n_buckets": 0}, "n_buckets=0"),
    (partitioned_pairs, {"probes": -1}, "probes=-1"),
    (partitioned_pairs, {"probe_slack": 1.5}, "probe_slack=1.5"),
    (partitioned_pairs, {"seed": -2}, "seed=-2"),
    (partitioned_pairs, {"kmeans_iters": 0}, "kmeans_iters=0"),
    (find_pairs, {"engine": "fast"}, "engine='fast'"),
    (find_pairs, {"engine": "exact", "n_buckets": 4}, "n_buckets"),
    (find_pairs, {"xp": types.ModuleType("torch")}, "xp='torch'"),
])
def test_bad_parameters_name_the_parameter(fn, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        fn(X_OK, 0.9, **kwargs)


@pytest.mark.parametrize("X,match", [
    (np.ones(5, np.float32), "2-D"),
    (np.ones((3, 2), np.int64), "dtype int64"),
    (np.zeros((3, 0), np.float32), "0 columns"),
    (np.array([[1.0, 0.0], [np.nan, 0.0]], np.float32), "row 1 has NaN"),
    (np.array([[1.0, 0.0], [3.0, 4.0]], np.float32), "row 1 has L2 norm 5"),
])
def test_bad_inputs(X, match):
    for fn in (exact_pairs, partitioned_pairs, find_pairs):
        with pytest.raises(InputError, match=match):
            fn(X, 0.9)


def test_zero_rows_are_allowed_and_pair_with_nothing():
    X = np.zeros((4, 3), np.float32)
    X[0] = X[1] = [1, 0, 0]
    assert_pairs_equal(exact_pairs(X, 0.5), brute(X, 0.5))
    assert exact_pairs(X, 0.5)[0].tolist() == [0]


# ---- GPU: same results as the CPU -----------------------------------------------------

@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("n,d,block_rows", [(1, 8, None), (257, 33, 64), (3000, 64, None)])
def test_gpu_exact_equals_cpu(n, d, block_rows):
    import cupy

    X = planted(n, d, seed=n, dup_fraction=0.2)
    want = exact_pairs(X, 0.9)
    assert_pairs_equal(exact_pairs(cupy.asarray(X), 0.9, block_rows=block_rows), want)
    assert_pairs_equal(exact_pairs(X, 0.9, xp=cupy), want)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("threshold", [0.75, 0.875])
def test_gpu_keeps_pairs_exactly_at_the_threshold(threshold):
    import cupy

    X = dyadic_rows()
    want = brute(X, threshold)
    assert_pairs_equal(exact_pairs(cupy.asarray(X), threshold), want)
    assert_pairs_equal(partitioned_pairs(cupy.asarray(X), threshold, n_buckets=3), want)


@pytest.mark.gpu
@needs_gpu
def test_gpu_partitioned_recall_and_determinism():
    import cupy

    X = planted(6000, 48, seed=3, n_clusters=30)
    want = exact_pairs(X, 0.9)
    got = partitioned_pairs(cupy.asarray(X), 0.9, n_buckets=40)
    assert_well_formed(got)
    assert recall(got, want) >= 0.99
    assert_pairs_equal(partitioned_pairs(cupy.asarray(X), 0.9, n_buckets=40), got)
    assert_pairs_equal(find_pairs(cupy.asarray(X), 0.9), want)     # auto -> exact on GPU
