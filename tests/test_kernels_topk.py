"""The running top-k merge: NumPy reference against a brute-force oracle, CUDA kernel
against the reference (on a GPU when there is one)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tamis.engine.backend import gpu_available
from tamis.errors import ConfigError
from tamis.kernels import topk
from tamis.kernels.topk import (
    KERNEL_MAX_K,
    empty_topk,
    merge_topk,
    merge_topk_reference,
)

HAS_GPU = gpu_available()


def oracle(S, col0, row0, best_sim, best_idx, k):
    """Sort every candidate of every row in Python: the definition of the merge."""
    m, n = S.shape
    out_sim = np.full((m, k), -np.inf, np.float32)
    out_idx = np.full((m, k), -1, np.int64)
    for r in range(m):
        cands = [(float(S[r, c]), col0 + c) for c in range(n)
                 if S[r, c] > -np.inf and (row0 is None or col0 + c != row0 + r)]
        cands += [(float(best_sim[r, p]), int(best_idx[r, p])) for p in range(k)
                  if best_idx[r, p] >= 0]
        cands.sort(key=lambda e: (-e[0], e[1]))
        for p, (s, j) in enumerate(cands[:k]):
            out_sim[r, p], out_idx[r, p] = s, j
    return out_sim, out_idx


def tile(rng, m, n, levels=8, layout="C"):
    """Similarities on a coarse grid (many ties) in the requested memory layout."""
    S = (rng.integers(-levels, levels + 1, size=(m, n)) / levels).astype(np.float32)
    if layout == "F":                       # a transposed view, as exact_knn passes S.T
        return np.ascontiguousarray(S.T).T
    if layout == "strided":                 # a row-major view with a leading dimension > n
        wide = np.zeros((m, n + 5), np.float32)
        wide[:, 2:2 + n] = S
        return wide[:, 2:2 + n]
    return S


def running(rng, m, k, col0, row0):
    """Running lists after one earlier tile of 20 columns."""
    S0 = tile(rng, m, 20)
    return merge_topk_reference(S0, col0, row0, *empty_topk(m, k), k)


def assert_same(a, b):
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.parametrize("chunk", [None, 5])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
@pytest.mark.parametrize("k", [1, 3, 10])
def test_reference_matches_oracle(layout, k, chunk, monkeypatch):
    if chunk is not None:                    # rows merged in chunks of about 5 candidates
        monkeypatch.setattr(topk, "_CANDIDATE_CHUNK", chunk)
    rng = np.random.default_rng(k)
    for _ in range(15):
        m, n = int(rng.integers(1, 30)), int(rng.integers(1, 40))
        col0 = int(rng.integers(0, 50))
        row0 = None if rng.random() < 0.2 else int(rng.integers(0, 50))
        S = tile(rng, m, n, layout=layout)
        best = running(rng, m, k, col0 + n, row0) if rng.random() < 0.6 else empty_topk(m, k)
        assert_same(merge_topk_reference(S, col0, row0, *best, k),
                    oracle(S, col0, row0, *best, k))


def test_reference_wide_tile_uses_partition_bound():
    # more columns than the partition probe (1024), NaN and -inf entries ignored
    rng = np.random.default_rng(0)
    for layout in ("C", "F"):
        S = tile(rng, 6, 2500, levels=40)
        S[rng.random(S.shape) < 0.02] = np.nan
        S[rng.random(S.shape) < 0.02] = -np.inf
        S = S if layout == "C" else np.asfortranarray(S)
        for k in (1, 7):
            assert_same(merge_topk_reference(S, 3, 100, *empty_topk(6, k), k),
                        oracle(S, 3, 100, *empty_topk(6, k), k))


@pytest.mark.parametrize("layout", ["C", "F"])
def test_reference_rows_with_many_ties(layout):
    # a few rows tie with hundreds of columns, the others do not: grouped by width
    rng = np.random.default_rng(4)
    S = tile(rng, 50, 300, levels=1000, layout="C")
    S[[0, 7]] = 1.0
    S[3, ::2] = 0.5
    S = S if layout == "C" else np.asfortranarray(S)
    for k in (1, 4):
        assert_same(merge_topk_reference(S, 0, 0, *empty_topk(50, k), k),
                    oracle(S, 0, 0, *empty_topk(50, k), k))


def test_reference_fewer_candidates_than_k_leaves_empty_slots():
    S = np.array([[0.5, 0.2], [0.1, np.nan]], np.float32)
    sim, idx = merge_topk_reference(S, 0, 0, *empty_topk(2, 3), 3)
    np.testing.assert_array_equal(idx, [[1, -1, -1], [0, -1, -1]])
    np.testing.assert_array_equal(sim, np.array([[0.2, -np.inf, -np.inf], [0.1, -np.inf, -np.inf]],
                                                np.float32))


def test_reference_self_and_ties():
    S = np.ones((3, 5), np.float32)          # every entry ties: smaller indices win
    sim, idx = merge_topk_reference(S, 10, 11, *empty_topk(3, 3), 3)
    np.testing.assert_array_equal(idx, [[10, 12, 13], [10, 11, 13], [10, 11, 12]])
    assert (sim == 1).all()


def test_reference_rejects_bad_arguments():
    S = np.zeros((2, 3), np.float32)
    with pytest.raises(ConfigError, match="float32"):
        merge_topk_reference(S.astype(np.float64), 0, 0, *empty_topk(2, 2), 2)
    with pytest.raises(ConfigError, match="shape"):
        merge_topk_reference(S, 0, 0, *empty_topk(3, 2), 2)
    with pytest.raises(ConfigError, match="k >= 1"):
        merge_topk_reference(S, 0, 0, *empty_topk(2, 1), 0)


@st.composite
def merge_problem(draw):
    m = draw(st.integers(1, 12))
    n = draw(st.integers(1, 24))
    k = draw(st.integers(1, 8))
    values = st.sampled_from([-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, -np.inf, np.nan])
    S = np.array(draw(st.lists(values, min_size=m * n, max_size=m * n)),
                 np.float32).reshape(m, n)
    if draw(st.booleans()):
        S = np.asfortranarray(S)
    col0 = draw(st.integers(0, 30))
    row0 = draw(st.one_of(st.none(), st.integers(0, 30)))
    return S, col0, row0, k


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=merge_problem(), split=st.integers(0, 24))
def test_property_reference_is_the_oracle_and_order_free(problem, split):
    """Merging a tile equals the oracle, and equals merging its two column halves in
    either order (so tiles may arrive in any order)."""
    S, col0, row0, k = problem
    m, n = S.shape
    whole = merge_topk_reference(S, col0, row0, *empty_topk(m, k), k)
    assert_same(whole, oracle(S, col0, row0, *empty_topk(m, k), k))
    split = min(split, n)
    left, right = (S[:, :split], col0), (S[:, split:], col0 + split)
    for first, second in ((left, right), (right, left)):
        best = merge_topk_reference(first[0], first[1], row0, *empty_topk(m, k), k)
        assert_same(merge_topk_reference(second[0], second[1], row0, *best, k), whole)


def test_merge_topk_dispatches_to_reference_on_numpy():
    rng = np.random.default_rng(3)
    S = tile(rng, 9, 17)
    assert_same(merge_topk(S, 4, 2, *empty_topk(9, 5), 5, np),
                merge_topk_reference(S, 4, 2, *empty_topk(9, 5), 5, np))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="no usable CUDA GPU with CuPy here")
@pytest.mark.parametrize("k", [1, 5, 10, KERNEL_MAX_K, KERNEL_MAX_K + 3])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_cuda_kernel_matches_reference(k, layout):
    import cupy as cp

    rng = np.random.default_rng(k)
    for m, n in [(1, 1), (31, 33), (70, 300), (257, 1500)]:
        for row0 in (None, 0, 40):
            S = tile(rng, m, n, levels=16, layout=layout)
            S[rng.random(S.shape) < 0.01] = np.nan
            best = running(rng, m, k, n + 7, row0) if m > 1 else empty_topk(m, k)
            want = merge_topk_reference(S, 7, row0, *best, k)
            got = merge_topk(cp.asarray(S) if layout == "C" else _device_view(cp, S, layout),
                             7, row0, cp.asarray(best[0]), cp.asarray(best[1]), k, cp)
            assert_same((got[0].get(), got[1].get()), want)


def _device_view(cp, S, layout):
    if layout == "F":
        return cp.ascontiguousarray(cp.asarray(S.T)).T
    wide = cp.zeros((S.shape[0], S.shape[1] + 5), cp.float32)
    wide[:, 2:2 + S.shape[1]] = cp.asarray(np.ascontiguousarray(S))
    return wide[:, 2:2 + S.shape[1]]
