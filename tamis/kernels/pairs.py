"""Compaction of a similarity tile into its (row, column, similarity) entries above a cutoff.

A pair search computes a tile ``S = A @ B.T`` of similarities between the rows
``row0 .. row0 + S.shape[0]`` and the columns ``col0 .. col0 + S.shape[1]`` of a larger
problem, then keeps only the few entries with ``S >= cutoff``. :func:`compact_pairs` does
that second step:

* on NumPy, :func:`compact_pairs_reference` (``flatnonzero`` of the mask);
* on CuPy, the CUDA kernel ``tamis_compact_pairs`` below: one thread per element,
  coalesced row reads, and an atomic counter that hands out output slots, so a tile of
  a billion elements is compacted in one launch and only the matches are written.

Both take and return the same things; only the ORDER of the returned entries differs
(row-major for the reference, unspecified for the kernel, which depends on thread
scheduling). Callers sort when they need an order.

The tile may be float32 or float16 (the tensor-core matmul output); values are widened to
float32 before the comparison with ``float32(cutoff)``, in both implementations.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from ..errors import ConfigError
from . import cuda_function

__all__ = ["compact_pairs", "compact_pairs_reference", "CUDA_SOURCE"]

# One thread per tile element; blockIdx.y walks rows, x threads walk columns (coalesced),
# both with grid-stride loops so any tile size fits any grid. float16 tiles are passed as
# raw 16-bit words and widened with the PTX instruction, so no CUDA header is needed.
# A match takes a slot from the 64-bit counter; slots past ``capacity`` are counted but not
# written, so the caller learns the true count and can relaunch with a larger buffer.
CUDA_SOURCE = r"""
template <typename T> __device__ __forceinline__ float tamis_widen(T v);

template <> __device__ __forceinline__ float tamis_widen<float>(float v) { return v; }

template <> __device__ __forceinline__ float tamis_widen<unsigned short>(unsigned short v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v));
    return f;
}

template <typename T>
__global__ void tamis_compact_pairs(
        const T* __restrict__ S, const long long n_rows, const long long n_cols,
        const long long ld, const long long row0, const long long col0,
        const float cutoff, const int upper,
        long long* __restrict__ out_rows, long long* __restrict__ out_cols,
        float* __restrict__ out_sims, unsigned long long* __restrict__ counter,
        const unsigned long long capacity) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long a = blockIdx.y; a < n_rows; a += gridDim.y) {
        const long long gi = row0 + a;
        const T* row = S + a * ld;
        for (long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x; b < n_cols;
             b += stride) {
            const float s = tamis_widen<T>(row[b]);
            const long long gj = col0 + b;
            if (s >= cutoff && (!upper || gj > gi)) {
                const unsigned long long slot = atomicAdd(counter, 1ULL);
                if (slot < capacity) {
                    out_rows[slot] = gi;
                    out_cols[slot] = gj;
                    out_sims[slot] = s;
                }
            }
        }
    }
}
"""

_KERNEL_NAMES = {"float32": "tamis_compact_pairs<float>",
                 "float16": "tamis_compact_pairs<unsigned short>"}
_THREADS = 256
_MAX_GRID_X = 64          # x-blocks per row: 64 * 256 threads cover 16,384 columns per pass
_MAX_GRID_Y = 65535       # CUDA's limit on gridDim.y; larger tiles use the grid-stride loop
_MIN_CAPACITY = 1 << 16


def compact_pairs_reference(S: Any, row0: int, col0: int, cutoff: float, upper: bool,
                            xp: ModuleType = np) -> tuple[Any, Any, Any]:
    """Entries of the tile ``S`` with ``S >= cutoff``, as global (row, column, value).

    Parameters
    ----------
    S : (m, n) float32 or float16 array
        Similarities of global rows ``row0 .. row0+m-1`` against global columns
        ``col0 .. col0+n-1``.
    row0, col0 : int
        Global index of ``S[0, 0]``.
    cutoff : float
        Keep entries whose value, widened to float32, is ``>= float32(cutoff)``.
    upper : bool
        Keep only entries with global column > global row (the strict upper triangle);
        set it for tiles that touch the diagonal of a self-join.
    xp : module
        Array module of ``S`` (``numpy``; any module with ``flatnonzero`` works).

    Returns
    -------
    rows, cols : int64 arrays; sims : float32 array
        In row-major order. O(m n) time, O(m n) bytes for the mask.
    """
    S = _check_tile(S)
    n_cols = S.shape[1]
    mask = S >= np.float32(cutoff)
    flat = xp.flatnonzero(mask)
    rows = flat // max(n_cols, 1)
    cols = flat - rows * n_cols
    sims = S.reshape(-1)[flat].astype(np.float32)
    rows = rows.astype(np.int64) + int(row0)
    cols = cols.astype(np.int64) + int(col0)
    if upper:
        keep = cols > rows
        rows, cols, sims = rows[keep], cols[keep], sims[keep]
    return rows, cols, sims


def compact_pairs(S: Any, row0: int, col0: int, cutoff: float, upper: bool,
                  xp: ModuleType = np) -> tuple[Any, Any, Any]:
    """:func:`compact_pairs_reference` on NumPy, the CUDA kernel on CuPy (same results).

    The CuPy path makes one pass over the tile and one host read of the match count (a
    second launch only when the matches outnumber the first output buffer). The order of
    the entries it returns is unspecified.
    """
    if xp is np:
        return compact_pairs_reference(S, row0, col0, cutoff, upper, xp)
    return _compact_pairs_cuda(S, row0, col0, cutoff, upper, xp)


def _check_tile(S: Any) -> Any:
    if S.ndim != 2:
        raise ConfigError(f"compact_pairs needs a 2-D similarity tile, got shape {S.shape}; "
                          "pass the (rows x columns) matmul output")
    if str(S.dtype) not in _KERNEL_NAMES:
        raise ConfigError(f"compact_pairs needs a float32 or float16 tile, got {S.dtype}; "
                          "cast the similarities with .astype('float32')")
    return S


def _compact_pairs_cuda(S: Any, row0: int, col0: int, cutoff: float, upper: bool,
                        xp: ModuleType) -> tuple[Any, Any, Any]:
    S = _check_tile(S)
    if S.strides[1] != S.itemsize:
        S = xp.ascontiguousarray(S)
    n_rows, n_cols = (int(v) for v in S.shape)
    if n_rows == 0 or n_cols == 0:
        return (xp.empty(0, dtype=xp.int64), xp.empty(0, dtype=xp.int64),
                xp.empty(0, dtype=xp.float32))
    ld = S.strides[0] // S.itemsize
    kernel = cuda_function(CUDA_SOURCE, tuple(_KERNEL_NAMES.values()), _KERNEL_NAMES[str(S.dtype)],
                           xp.cuda.Device().id)
    grid = (min(_MAX_GRID_X, -(-n_cols // _THREADS)), min(_MAX_GRID_Y, n_rows))
    capacity = max(_MIN_CAPACITY, (n_rows * n_cols) >> 10)
    while True:
        out_rows = xp.empty(capacity, dtype=xp.int64)
        out_cols = xp.empty(capacity, dtype=xp.int64)
        out_sims = xp.empty(capacity, dtype=xp.float32)
        counter = xp.zeros(1, dtype=xp.uint64)
        kernel(grid, (_THREADS,),
               (S, np.int64(n_rows), np.int64(n_cols), np.int64(ld), np.int64(row0),
                np.int64(col0), np.float32(cutoff), np.int32(bool(upper)),
                out_rows, out_cols, out_sims, counter, np.uint64(capacity)))
        count = int(counter.get()[0])
        if count <= capacity:
            # copies, so that the large buffers are freed now, not with the last view
            return out_rows[:count].copy(), out_cols[:count].copy(), out_sims[:count].copy()
        capacity = count
