"""Running top-k selection over similarity tiles, for the k-nearest-neighbour graph.

An exact kNN search computes tiles ``S = A @ B.T`` of similarities between the rows
``row0 .. row0 + S.shape[0]`` and the columns ``col0 .. col0 + S.shape[1]`` of a larger
problem, and keeps, per row, the ``k`` best entries seen so far. :func:`merge_topk` is that
step: it merges one tile into the running ``(rows, k)`` lists and returns the new lists.

The order is total, so the result does not depend on the order in which tiles arrive:
similarity descending, then global column index ascending (ties go to the smaller index).
The entry of a row's own index (global column == global row) is never selected, nor are
NaN or ``-inf`` entries. Empty slots hold similarity ``-inf`` and index ``-1`` and rank
after every real entry.

* on NumPy, :func:`merge_topk_reference`: a lower bound on each row's k-th best value
  (the running k-th best, or a partition of a slice of the tile), the entries at or above
  it (``flatnonzero``), and one row-wise sort of those candidates and the running lists,
  each packed into a uint64 key;
* on CuPy, the CUDA kernel ``tamis_merge_topk<K>`` below (k up to :data:`KERNEL_MAX_K`;
  larger k use the reference, which runs on CuPy too).

Both take and return the same things, and return identical lists for the same input.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from ..errors import ConfigError
from . import cuda_function

__all__ = ["merge_topk", "merge_topk_reference", "empty_topk", "topk_rows", "CUDA_SOURCE", "KERNEL_MAX_K"]

KERNEL_MAX_K = 32
"""Largest k the CUDA kernel is compiled for (its lists live in registers)."""

# One block of 8 warps handles 32 query rows of the tile; lane l of every warp owns query
# row l of the block. The warps split the columns into 32-wide sub-tiles: a warp loads a
# 32 x 32 sub-tile with coalesced reads into shared memory (lanes run along whichever axis
# of S is contiguous, so a transposed tile, sq == 1, reads as fast as a row-major one) and
# then each lane scans its query row of the sub-tile, keeping a sorted top-K list in
# registers (a fully unrolled insertion, so the arrays are never indexed dynamically).
# Finally warp 0 merges the running list from global memory and, one warp at a time
# through shared memory, the other warps' lists. Static shared memory:
# 8*32*33*4 + 32*32*(4+8) = 46,080 bytes for K = 32, under the 48 KiB static limit.
CUDA_SOURCE = r"""
#define TAMIS_TOPK_WARPS 8
#define TAMIS_TOPK_TILE 32
#define TAMIS_NEG_INF (-__int_as_float(0x7f800000))  /* NVRTC has no <cmath> INFINITY */

__device__ __forceinline__ bool tamis_topk_better(float s, long long j, float bs, long long bj) {
    /* (s, j) ranks before (bs, bj): larger similarity, then smaller index; the empty slot
       (-inf, -1) ranks last because -1 is the largest index as unsigned. */
    return s > bs || (s == bs && (unsigned long long)j < (unsigned long long)bj);
}

template <int K>
__device__ __forceinline__ void tamis_topk_insert(float s, long long j, float (&v)[K],
                                                  long long (&ix)[K]) {
    if (!tamis_topk_better(s, j, v[K - 1], ix[K - 1])) return;
    v[K - 1] = s;
    ix[K - 1] = j;
#pragma unroll
    for (int p = K - 1; p > 0; --p) {
        if (tamis_topk_better(v[p], ix[p], v[p - 1], ix[p - 1])) {
            const float ts = v[p]; v[p] = v[p - 1]; v[p - 1] = ts;
            const long long tj = ix[p]; ix[p] = ix[p - 1]; ix[p - 1] = tj;
        }
    }
}

template <int K>
__global__ void tamis_merge_topk(
        const float* __restrict__ S, const long long sq, const long long sc,
        const int rows, const int cols, const long long col0, const long long self_shift,
        const int exclude_self,
        const float* __restrict__ best_sim, const long long* __restrict__ best_idx,
        float* __restrict__ out_sim, long long* __restrict__ out_idx) {
    __shared__ float tile[TAMIS_TOPK_WARPS][TAMIS_TOPK_TILE][TAMIS_TOPK_TILE + 1];
    __shared__ float xs[TAMIS_TOPK_TILE][K];
    __shared__ long long xi[TAMIS_TOPK_TILE][K];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int q0 = blockIdx.x * TAMIS_TOPK_TILE;
    const int q = q0 + lane;
    /* local column of this lane's own row: row0 + q - col0 (never matches when excluded) */
    const long long self_col = exclude_self ? self_shift + q : -1;
    float v[K];
    long long ix[K];
#pragma unroll
    for (int p = 0; p < K; ++p) { v[p] = TAMIS_NEG_INF; ix[p] = -1; }

    for (int c0 = warp * TAMIS_TOPK_TILE; c0 < cols; c0 += TAMIS_TOPK_WARPS * TAMIS_TOPK_TILE) {
        if (sc == 1) {           /* row-major: lanes run along the columns */
            const int c = c0 + lane;
            for (int i = 0; i < TAMIS_TOPK_TILE; ++i) {
                const int r = q0 + i;
                tile[warp][i][lane] = (r < rows && c < cols) ? S[(long long)r * sq + c]
                                                             : TAMIS_NEG_INF;
            }
        } else {                 /* transposed (sq == 1): lanes run along the query rows */
            for (int i = 0; i < TAMIS_TOPK_TILE; ++i) {
                const int c = c0 + i;
                tile[warp][lane][i] = (q < rows && c < cols) ? S[(long long)c * sc + q]
                                                             : TAMIS_NEG_INF;
            }
        }
        __syncwarp();
        for (int i = 0; i < TAMIS_TOPK_TILE; ++i) {
            const float s = tile[warp][lane][i];
            const int c = c0 + i;
            /* s > -inf also rejects NaN and the padding of partial sub-tiles */
            if (s >= v[K - 1] && s > TAMIS_NEG_INF && (long long)c != self_col) {
                tamis_topk_insert<K>(s, col0 + c, v, ix);
            }
        }
        __syncwarp();
    }

    if (warp == 0 && q < rows) {
        for (int p = 0; p < K; ++p) {
            const long long j = best_idx[(long long)q * K + p];
            if (j >= 0) tamis_topk_insert<K>(best_sim[(long long)q * K + p], j, v, ix);
        }
    }
    for (int w = 1; w < TAMIS_TOPK_WARPS; ++w) {
        __syncthreads();
        if (warp == w) {
#pragma unroll
            for (int p = 0; p < K; ++p) { xs[lane][p] = v[p]; xi[lane][p] = ix[p]; }
        }
        __syncthreads();
        if (warp == 0) {
            for (int p = 0; p < K; ++p) {
                const long long j = xi[lane][p];
                if (j >= 0) tamis_topk_insert<K>(xs[lane][p], j, v, ix);
            }
        }
    }
    if (warp == 0 && q < rows) {
#pragma unroll
        for (int p = 0; p < K; ++p) {
            out_sim[(long long)q * K + p] = v[p];
            out_idx[(long long)q * K + p] = ix[p];
        }
    }
}
"""

_THREADS = 32 * 8           # TAMIS_TOPK_WARPS warps
_ROWS_PER_BLOCK = 32        # TAMIS_TOPK_TILE
_MIN_PROBE_COLS = 1024      # columns partitioned for the first lower bound of a row
_LOWEST = np.finfo(np.float32).min


def empty_topk(rows: int, k: int, xp: ModuleType = np) -> tuple[Any, Any]:
    """Running lists with every slot empty: similarity ``-inf``, index ``-1``."""
    return (xp.full((rows, k), -np.inf, dtype=xp.float32),
            xp.full((rows, k), -1, dtype=xp.int64))


def merge_topk_reference(S: Any, col0: int, row0: int | None, best_sim: Any, best_idx: Any,
                         k: int, xp: ModuleType = np) -> tuple[Any, Any]:
    """Merge the tile ``S`` into the running top-k lists (NumPy or any array module).

    Parameters
    ----------
    S : (m, n) float32 array
        Similarities of global rows ``row0 .. row0+m-1`` against global columns
        ``col0 .. col0+n-1``. Any strides (a transposed view is fine); not modified.
    col0 : int
        Global index of column 0 of ``S``.
    row0 : int or None
        Global index of row 0 of ``S``; the entry whose global column equals its global
        row is never selected. ``None``: the rows are outside the column set (no
        self-exclusion).
    best_sim, best_idx : (m, k) float32 and int64 arrays
        The running lists, each row sorted best first; empty slots are (-inf, -1). Not
        modified.
    k : int
        List length, ``best_sim.shape[1]``.
    xp : module
        Array module of the arguments.

    Returns
    -------
    (best_sim, best_idx) : new (m, k) float32 and int64 arrays, sorted per row by
        similarity descending then index ascending.

    Notes
    -----
    Only entries at or above a lower bound of the row's new k-th best value are
    candidates: the running k-th best, or where a list is not full yet the (k+1)-th
    largest of the first columns of the tile (one of those may be the row's own entry).
    Each candidate and list entry becomes one uint64 key (similarity bits, then index)
    and every row's keys are sorted at once. O(m n) time and an O(m n)-byte boolean mask,
    plus O(m k + c) for c candidates (a few times k per row unless many entries tie at the
    bound; then rows are merged in chunks of 2^20 candidates).
    """
    m, n = (int(v) for v in S.shape)
    _check_lists(S, best_sim, best_idx, k)
    if int(col0) + n >= _EMPTY_INDEX:
        raise ConfigError(f"merge_topk supports column indices below {_EMPTY_INDEX}, got "
                          f"columns up to {int(col0) + n - 1}; split the problem")
    if m == 0:
        return best_sim.copy(), best_idx.copy()
    bound = best_sim[:, k - 1]
    if n > k and bool((best_idx[:, k - 1] < 0).any()):
        probe = min(n, max(_MIN_PROBE_COLS, 8 * (k + 1)))
        head = S[:, :probe]
        head = xp.where(head == head, head, xp.float32(-np.inf))  # NaN would sort as largest
        part = xp.partition(head, probe - (k + 1), axis=1)[:, probe - (k + 1)]
        bound = xp.maximum(bound, part)
    # at least the lowest finite float, so that -inf (like NaN) never passes
    mask = S >= xp.maximum(bound, xp.float32(_LOWEST))[:, None]
    if row0 is not None:
        r = xp.arange(m)
        c = r + (int(row0) - int(col0))
        inside = (c >= 0) & (c < n)
        mask[r[inside], c[inside]] = False
    total = int(xp.count_nonzero(mask))
    if total <= _CANDIDATE_CHUNK:
        cuts = [0, m]
    else:  # many entries tie at the bound (duplicated rows): bound the candidate arrays
        ends = xp.cumsum(mask.sum(axis=1))
        marks = xp.arange(1, total // _CANDIDATE_CHUNK + 1) * _CANDIDATE_CHUNK
        cuts = sorted({0, m, *(int(c) for c in xp.searchsorted(ends, marks).tolist())})
    parts = [_merge_rows(S, mask, i, j, col0, best_sim, best_idx, k, xp)
             for i, j in zip(cuts[:-1], cuts[1:]) if j > i]
    return (xp.concatenate([p[0] for p in parts]), xp.concatenate([p[1] for p in parts]))


def _merge_rows(S: Any, mask: Any, i: int, j: int, col0: int, best_sim: Any, best_idx: Any,
                k: int, xp: ModuleType) -> tuple[Any, Any]:
    """Rows ``i:j`` of the reference merge: pack, sort per row, keep k."""
    rows = j - i
    sub = mask[i:j]
    # candidates grouped by row (columns ascending), read in the memory order of the mask
    if sub.flags.c_contiguous or not sub.T.flags.c_contiguous:
        flat = xp.flatnonzero(sub)
        cand_r = flat // sub.shape[1]
        cand_c = flat - cand_r * sub.shape[1]
    else:
        flat = xp.flatnonzero(sub.T)
        cand_c = flat // rows
        cand_r = flat - cand_c * rows
        order = xp.argsort(cand_r, kind="stable")
        cand_r, cand_c = cand_r[order], cand_c[order]
    cand_keys = _pack(S[cand_r + i, cand_c], cand_c + int(col0), xp)
    list_keys = _pack(best_sim[i:j], best_idx[i:j], xp)
    counts = xp.bincount(cand_r, minlength=rows)
    slot = xp.arange(cand_r.shape[0]) - (xp.cumsum(counts) - counts)[cand_r] + k
    widest = int(counts.max()) if cand_r.shape[0] else 0
    # Every row's keys go into one dense (rows, k + count) array sorted along rows. When a
    # few rows have far more candidates than the rest, rows are grouped by the power of two
    # above their count, so the padding never exceeds the candidates themselves.
    if rows * widest <= 2 * cand_r.shape[0] + rows * k:
        groups = [(None, widest)]
    else:
        width_class = xp.ceil(xp.log2(counts + 1)).astype(xp.int64)
        groups = [(c, 2 ** c) for c in xp.unique(width_class).tolist()]
    out = xp.empty((rows, k), dtype=xp.uint64)
    for cls, width in groups:
        if cls is None:
            members, cand = xp.arange(rows), slice(None)
        else:
            members = xp.flatnonzero(width_class == cls)
            cand = xp.flatnonzero(width_class[cand_r] == cls)
        at = xp.empty(rows, dtype=xp.int64)
        at[members] = xp.arange(members.shape[0])
        keys = xp.full((members.shape[0], k + width), _PAD_KEY, dtype=xp.uint64)
        keys[:, :k] = list_keys[members]
        keys[at[cand_r[cand]], slot[cand]] = cand_keys[cand]
        out[members] = xp.sort(keys, axis=1)[:, :k]
    return _unpack(out, xp)


# A (similarity, index) entry as one uint64 whose ascending order is the list order:
# high 32 bits = the float's bits mapped to an order-preserving unsigned integer, then
# inverted (similarity descending); low 32 bits = the index, with -1 as 0xFFFFFFFF.
_EMPTY_INDEX = 0xFFFFFFFF
_PAD_KEY = np.uint64(0xFFFFFFFFFFFFFFFF)
_CANDIDATE_CHUNK = 1 << 20    # candidates packed at once (24 bytes each)


def _pack(sim: Any, idx: Any, xp: ModuleType) -> Any:
    bits = (sim + xp.float32(0)).astype(xp.float32).view(xp.uint32)  # -0.0 -> +0.0
    negative = (bits >> xp.uint32(31)).astype(bool)
    ordered = xp.where(negative, ~bits, bits | xp.uint32(0x80000000))
    high = (~ordered).astype(xp.uint64) << xp.uint64(32)
    return high | (idx.astype(xp.int64) & 0xFFFFFFFF).astype(xp.uint64)


def _unpack(keys: Any, xp: ModuleType) -> tuple[Any, Any]:
    ordered = (~(keys >> xp.uint64(32))).astype(xp.uint32)
    positive = (ordered >> xp.uint32(31)).astype(bool)
    bits = xp.where(positive, ordered & xp.uint32(0x7FFFFFFF), ~ordered)
    low = (keys & xp.uint64(0xFFFFFFFF)).astype(xp.int64)
    return bits.view(xp.float32), xp.where(low == _EMPTY_INDEX, -1, low)


def merge_topk(S: Any, col0: int, row0: int | None, best_sim: Any, best_idx: Any, k: int,
               xp: ModuleType = np) -> tuple[Any, Any]:
    """:func:`merge_topk_reference` on NumPy, the CUDA kernel on CuPy (identical results).

    The kernel makes one coalesced pass over the tile (row-major or transposed) and writes
    only the ``(m, k)`` lists; k above :data:`KERNEL_MAX_K` use the reference on CuPy.
    """
    if xp is np or k > KERNEL_MAX_K:
        return merge_topk_reference(S, col0, row0, best_sim, best_idx, k, xp)
    return _merge_topk_cuda(S, col0, row0, best_sim, best_idx, k, xp)


def _check_lists(S: Any, best_sim: Any, best_idx: Any, k: int) -> None:
    if S.ndim != 2 or str(S.dtype) != "float32":
        raise ConfigError(f"merge_topk needs a 2-D float32 similarity tile, got shape "
                          f"{S.shape} and dtype {S.dtype}; pass the float32 matmul output")
    if k < 1:
        raise ConfigError(f"merge_topk needs k >= 1, got k={k}")
    want = (int(S.shape[0]), int(k))
    if tuple(best_sim.shape) != want or tuple(best_idx.shape) != want:
        raise ConfigError(f"merge_topk running lists must have shape {want} (tile rows, k), "
                          f"got {tuple(best_sim.shape)} and {tuple(best_idx.shape)}; start "
                          "them with empty_topk(rows, k)")
    if str(best_sim.dtype) != "float32" or str(best_idx.dtype) != "int64":
        raise ConfigError(f"merge_topk running lists must be float32 and int64, got "
                          f"{best_sim.dtype} and {best_idx.dtype}")


def _cuda_kernel(device_id: int, k: int) -> Any:
    """The compiled kernel for one device and one k (compiled on first use, then cached)."""
    name = f"tamis_merge_topk<{k}>"
    return cuda_function(CUDA_SOURCE, (name,), name, device_id)


def _merge_topk_cuda(S: Any, col0: int, row0: int | None, best_sim: Any, best_idx: Any,
                     k: int, xp: ModuleType) -> tuple[Any, Any]:
    _check_lists(S, best_sim, best_idx, k)
    m, n = (int(v) for v in S.shape)
    if m == 0 or n == 0:
        return best_sim.copy(), best_idx.copy()
    if S.strides[1] == S.itemsize:
        sq, sc = S.strides[0] // S.itemsize, 1
    elif S.strides[0] == S.itemsize:
        sq, sc = 1, S.strides[1] // S.itemsize
    else:
        S = xp.ascontiguousarray(S)
        sq, sc = n, 1
    best_sim = xp.ascontiguousarray(best_sim)
    best_idx = xp.ascontiguousarray(best_idx)
    out_sim = xp.empty_like(best_sim)
    out_idx = xp.empty_like(best_idx)
    kernel = _cuda_kernel(xp.cuda.Device().id, int(k))
    grid = (-(-m // _ROWS_PER_BLOCK),)
    shift = 0 if row0 is None else int(row0) - int(col0)
    kernel(grid, (_THREADS,),
           (S, np.int64(sq), np.int64(sc), np.int32(m), np.int32(n), np.int64(col0),
            np.int64(shift), np.int32(row0 is not None), best_sim, best_idx, out_sim, out_idx))
    return out_sim, out_idx


def topk_rows(sims: Any, idx: Any, k: int, xp: ModuleType = np, ordered: bool = True) -> tuple[Any, Any]:
    """The ``k`` best entries of every row of ``(m, w)`` ``sims`` / ``idx`` (float32 / int64,
    ``w >= k``), in the total order of :func:`merge_topk` (similarity descending, then index
    ascending; index ``-1`` marks an empty slot and ranks last); ``ordered=False`` returns the
    same ``k`` entries of a row in no particular order. One partition (and sort) of packed
    uint64 keys per row, written against ``xp``; which entries are kept does not depend on
    their order within a row. O(m w) (+ O(m k log k) ordered)."""
    keys = _pack(sims.astype(xp.float32, copy=False), idx, xp)
    if keys.shape[1] > k:
        keys = xp.partition(keys, k - 1, axis=1)[:, :k]
    if ordered:
        keys = xp.sort(keys, axis=1)
    return _unpack(keys, xp)
