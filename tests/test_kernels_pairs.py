"""The tile compaction: NumPy reference against a brute-force oracle, CUDA kernel against
the reference (on a GPU when there is one)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tamis.engine.backend import gpu_available
from tamis.errors import ConfigError
from tamis.kernels.pairs import compact_pairs, compact_pairs_reference

HAS_GPU = gpu_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no usable CUDA GPU with CuPy here")


def oracle(S, row0, col0, cutoff, upper):
    """Every entry, one at a time: the definition of the compaction (as a sorted list)."""
    out = []
    for a in range(S.shape[0]):
        for b in range(S.shape[1]):
            value = np.float32(S[a, b])
            if value >= np.float32(cutoff) and (not upper or col0 + b > row0 + a):
                out.append((row0 + a, col0 + b, float(value)))
    return sorted(out)


def as_list(rows, cols, sims):
    rows, cols, sims = (np.asarray(getattr(x, "get", lambda: x)()) for x in (rows, cols, sims))
    return sorted(zip(rows.tolist(), cols.tolist(), sims.astype(np.float64).tolist()))


def tile(rng, m, n, dtype=np.float32, levels=16):
    """Similarities on a coarse grid, so that many entries sit exactly on a cutoff."""
    return (rng.integers(-levels, levels + 1, size=(m, n)) / levels).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("upper", [False, True])
@pytest.mark.parametrize("shape,row0,col0", [((7, 9), 0, 0), ((13, 5), 40, 37), ((1, 1), 3, 3),
                                              ((6, 20), 10, 4), ((20, 6), 0, 100)])
def test_reference_matches_oracle(dtype, upper, shape, row0, col0):
    S = tile(np.random.default_rng(shape[0] * 31 + shape[1]), *shape, dtype=dtype)
    got = compact_pairs_reference(S, row0, col0, 0.5, upper, np)
    assert as_list(*got) == oracle(S, row0, col0, 0.5, upper)
    assert got[0].dtype == np.int64 and got[1].dtype == np.int64 and got[2].dtype == np.float32


def test_reference_keeps_entries_equal_to_the_cutoff_and_is_row_major():
    S = np.array([[0.25, 0.5, 0.75], [0.5, 0.5, 0.0]], np.float32)
    rows, cols, sims = compact_pairs_reference(S, 10, 20, 0.5, False, np)
    assert rows.tolist() == [10, 10, 11, 11]
    assert cols.tolist() == [21, 22, 20, 21]
    assert sims.tolist() == [0.5, 0.75, 0.5, 0.5]


def test_reference_upper_drops_the_diagonal_and_below():
    S = np.ones((4, 4), np.float32)
    rows, cols, _ = compact_pairs_reference(S, 0, 0, 0.9, True, np)
    assert list(zip(rows.tolist(), cols.tolist())) == [(0, 1), (0, 2), (0, 3),
                                                       (1, 2), (1, 3), (2, 3)]


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0)])
def test_reference_empty_tile(shape):
    rows, cols, sims = compact_pairs_reference(np.zeros(shape, np.float32), 0, 0, 0.5, True, np)
    assert rows.shape == cols.shape == sims.shape == (0,)


def test_dispatch_on_numpy_is_the_reference():
    S = tile(np.random.default_rng(0), 9, 11)
    a = compact_pairs(S, 2, 3, 0.25, True, np)
    b = compact_pairs_reference(S, 2, 3, 0.25, True, np)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((2, 2, 2), np.float32), "2-D"),
    (np.zeros((2, 2), np.int32), "float32 or float16"),
    (np.zeros((2, 2), np.float64), "float32 or float16"),
])
def test_reference_rejects_bad_tiles(bad, match):
    with pytest.raises(ConfigError, match=match):
        compact_pairs_reference(bad, 0, 0, 0.5, False, np)


@settings(max_examples=60, deadline=None)
@given(m=st.integers(0, 12), n=st.integers(0, 12), row0=st.integers(0, 30),
       col0=st.integers(0, 30), cutoff=st.sampled_from([-1.0, -0.5, 0.0, 0.3125, 0.5, 1.0, 2.0]),
       upper=st.booleans(), half=st.booleans(), seed=st.integers(0, 2**16))
def test_reference_property(m, n, row0, col0, cutoff, upper, half, seed):
    S = tile(np.random.default_rng(seed), m, n, dtype=np.float16 if half else np.float32)
    assert as_list(*compact_pairs_reference(S, row0, col0, cutoff, upper, np)) == \
        oracle(S, row0, col0, cutoff, upper)


# ---- the CUDA kernel against the reference ----------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("upper", [False, True])
@pytest.mark.parametrize("shape,row0,col0", [((7, 9), 0, 0), ((300, 517), 100, 90),
                                              ((1, 70000), 5, 0), ((70000, 3), 0, 2)])
@pytest.mark.gpu
@needs_gpu
def test_kernel_matches_reference(dtype, upper, shape, row0, col0):
    import cupy

    S = tile(np.random.default_rng(shape[0] + shape[1]), *shape, dtype=dtype)
    want = as_list(*compact_pairs_reference(S, row0, col0, 0.5, upper, np))
    got = as_list(*compact_pairs(cupy.asarray(S), row0, col0, 0.5, upper, cupy))
    assert got == want


@pytest.mark.gpu
@needs_gpu
def test_kernel_strided_view_and_buffer_overflow():
    """A column slice (leading dimension > width) and more matches than the first buffer."""
    import cupy

    wide = tile(np.random.default_rng(1), 400, 420)
    S = wide[:, 7:407]                                   # 160,000 entries, all kept below
    want = as_list(*compact_pairs_reference(S, 0, 0, -2.0, False, np))
    got = as_list(*compact_pairs(cupy.asarray(wide)[:, 7:407], 0, 0, -2.0, False, cupy))
    assert len(want) == S.size and got == want


@pytest.mark.gpu
@needs_gpu
def test_kernel_empty_tile_and_no_matches():
    import cupy

    for S in (cupy.zeros((0, 4), cupy.float32), cupy.zeros((4, 4), cupy.float16)):
        rows, cols, sims = compact_pairs(S, 0, 0, 0.5, True, cupy)
        assert rows.shape == cols.shape == sims.shape == (0,)
