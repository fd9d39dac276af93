"""One epoch of the UMAP layout optimisation: attraction along sampled edges, repulsion from
negative samples, summed in fixed point so the answer never depends on thread order.

The layout (``tamis.engine.layout``) holds the map as a ``(dims, M)`` float32 array ``Y``
(one row per axis). An epoch visits the edges ``(head[e], tail[e])`` of the fuzzy graph
whose sampling schedule fires at this epoch (edge ``e`` fires at epoch ``n`` when
``floor((n + 1) * rate[e]) > floor(n * rate[e])``, so an edge of rate ``r`` fires
``round-down(n_epochs * r)`` times, evenly spread, as umap-learn's ``epochs_per_sample``
schedule). For a fired edge, with ``diff = Y[:, head] - Y[:, tail]`` and ``d2 = |diff|^2``:

* attraction: ``g = clip(-2ab d2^(b-1) / (1 + a d2^b) * diff, -4, 4)`` moves the head by
  ``+alpha g`` and the tail by ``-alpha g``;
* repulsion: ``negative_rate`` rows ``j`` drawn by a counter-based hash of
  ``(seed, epoch, e, s)`` (:func:`negative_rows`), each with
  ``g = clip(2 gamma b / ((0.001 + d2)(1 + a d2^b)) * (Y[:, head] - Y[:, j]), -4, 4)``
  (zero when ``d2 == 0``), move the head by ``+alpha g``.

All moves of an epoch are computed from the positions at its start (a batch step, as on a
GPU where every edge runs at once), rounded to multiples of :data:`FIXED_STEP` and summed as
exact integers (float64 holds every partial sum exactly below 2**53), then applied. Integer
sums do not depend on the order of the additions, so the epoch is bit-for-bit the same for
any block size, thread count or atomic scheduling. (Bit for bit on one machine: NumPy's float32
``**`` is vectorised per instruction set, AVX2 and AVX-512 may round its last bit differently,
and a map made on another CPU kind may differ a little; the CUDA kernel is compiled without fused
multiply-adds so that only ``powf``'s last bit separates it from the reference.)

* :func:`layout_epoch_reference`: vectorised, written once against ``xp`` (NumPy or CuPy),
  in blocks of at most ``block_edges`` fired edges: O(E * negative_rate * dims) time and
  O(block_edges * negative_rate * dims) temporary memory per epoch.
* :func:`layout_epoch`: the reference on NumPy; on CuPy the CUDA kernel
  ``tamis_layout_epoch`` below (one thread per edge, 64-bit integer atomics into a fixed-point
  accumulator). Both give the same moves up to the last-bit rounding of ``pow`` on each device
  (the accumulation itself is exact), and each is deterministic.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from ..errors import ConfigError
from . import cuda_function

__all__ = ["layout_epoch", "layout_epoch_reference", "negative_rows", "fired_edges", "CUDA_SOURCE",
           "FIXED_STEP", "CLIP"]

#: every move is rounded to a multiple of this before summation (2**-24: far below what a map shows)
FIXED_SCALE = float(1 << 24)
FIXED_STEP = 1.0 / FIXED_SCALE
#: umap-learn's gradient clip, per coordinate and per edge
CLIP = 4.0

# lowbias32 (C. Wellons) of the 32-bit counter, keyed by the epoch's key; the row is the hash's
# high bits times M (a multiply-shift, uniform enough for M << 2**32).
_HASH_M1 = 0x7FEB352D
_HASH_M2 = 0x846CA68B


def _lowbias32(x: Any, xp: ModuleType) -> Any:
    x = x ^ (x >> xp.uint32(16))
    x = x * xp.uint32(_HASH_M1)
    x = x ^ (x >> xp.uint32(15))
    x = x * xp.uint32(_HASH_M2)
    return x ^ (x >> xp.uint32(16))


def epoch_key(seed: int, epoch: int) -> int:
    """The 32-bit key of one epoch's negative samples (a hash of the seed and the epoch)."""
    x = np.asarray([(int(seed) * 0x9E3779B1 + int(epoch) * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF],
                   dtype=np.uint32)
    with np.errstate(over="ignore"):
        return int(_lowbias32(_lowbias32(x, np), np)[0])


def negative_rows(edges: Any, s: int, key: int, n_vertices: int, negative_rate: int, xp: ModuleType = np) -> Any:
    """Row drawn as the ``s``-th negative sample of each edge id in ``edges`` (uint32 counter hash).

    ``counter = edges * negative_rate + s`` (mod 2**32), hashed with the epoch's ``key``;
    the row is ``(hash * n_vertices) >> 32``. Deterministic in (key, edge, s) alone.
    """
    with np.errstate(over="ignore"):
        c = edges.astype(xp.uint32) * xp.uint32(negative_rate) + xp.uint32(s)
        h = _lowbias32(c ^ xp.uint32(key), xp)
        return ((h.astype(xp.uint64) * xp.uint64(n_vertices)) >> xp.uint64(32)).astype(xp.int64)


def fired_edges(rate: Any, epoch: int, xp: ModuleType = np) -> Any:
    """Ids of the edges whose schedule fires at ``epoch``: floor((n+1) r) > floor(n r)."""
    r = rate.astype(xp.float64)
    return xp.flatnonzero(xp.floor((epoch + 1) * r) > xp.floor(epoch * r))


def _check(Y: Any, head: Any, tail: Any, rate: Any) -> None:
    if Y.ndim != 2 or str(Y.dtype) != "float32":
        raise ConfigError(f"layout_epoch needs Y as a (dims, M) float32 array, got {Y.dtype} {Y.shape}")
    if not (head.shape == tail.shape == rate.shape) or head.ndim != 1:
        raise ConfigError(f"head {head.shape}, tail {tail.shape} and rate {rate.shape} must be 1-D and equal")


def _clip(x: Any, xp: ModuleType) -> Any:
    return xp.clip(x, -CLIP, CLIP)


def _norm2(diff: list) -> Any:
    out = diff[0] * diff[0]
    for g in diff[1:]:
        out += g * g
    return out


def _quantise(x: Any, xp: ModuleType) -> Any:
    return xp.rint(x.astype(xp.float64) * FIXED_SCALE)


def layout_epoch_reference(Y: Any, head: Any, tail: Any, rate: Any, *, epoch: int, alpha: float, a: float,
                           b: float, gamma: float = 1.0, negative_rate: int = 5, seed: int = 0,
                           edge_offset: int = 0, block_edges: int = 1 << 20, xp: ModuleType = np) -> Any:
    """The moves of one epoch, as a ``(dims, M)`` float64 array of multiples of FIXED_STEP.

    Parameters
    ----------
    Y : (dims, M) float32, the map at the start of the epoch (not modified).
    head, tail : (E,) int32/int64 rows of each directed edge of the fuzzy graph.
    rate : (E,) float32 in (0, 1], the edge's weight over the largest weight (its sampling rate).
    epoch : 0-based epoch number (the schedule and the negative samples' key).
    alpha : learning rate of this epoch.
    a, b : the map's curve ``1 / (1 + a d^(2b))``; gamma: repulsion weight.
    negative_rate : negative samples per fired edge.
    seed : the seed of the negative samples.
    edge_offset : id of ``head[0]``'s edge in the whole graph (the negative samples are keyed by
        the global edge id, so an epoch cut into parts draws what the whole epoch would).
    block_edges : fired edges per vectorised block (bounds the temporaries to about
        ``block_edges * (negative_rate + 2) * dims * 12`` bytes).
    """
    _check(Y, head, tail, rate)
    dims, m = int(Y.shape[0]), int(Y.shape[1])
    key = epoch_key(seed, epoch)
    a32, b32, one, zero = np.float32(a), np.float32(b), np.float32(1.0), np.float32(0.0)
    alpha32 = np.float32(alpha)
    axes = [Y[d] for d in range(dims)]          # 1-D gathers are several times faster than Y[:, idx]
    acc = xp.zeros((dims, m), dtype=xp.float64)
    fired = fired_edges(rate, epoch, xp)
    for start in range(0, int(fired.shape[0]), block_edges):
        e = fired[start:start + block_edges]
        h, t = head[e], tail[e]
        yh = [axis[h] for axis in axes]
        diff = [yh[d] - axes[d][t] for d in range(dims)]
        d2 = _norm2(diff)
        pos = d2 > zero
        safe = xp.where(pos, d2, one)
        pw = safe ** b32
        coef = xp.where(pos, np.float32(-2.0) * a32 * b32 * pw / safe / (a32 * pw + one), zero)
        attract = [_clip(coef * g, xp) * alpha32 for g in diff]
        push = [xp.zeros_like(g) for g in attract]
        for s in range(negative_rate):
            j = negative_rows(e + edge_offset, s, key, m, negative_rate, xp)
            diff = [yh[d] - axes[d][j] for d in range(dims)]
            d2 = _norm2(diff)
            pos = d2 > zero
            safe = xp.where(pos, d2, one)
            coef = xp.where(pos, np.float32(2.0 * gamma) * b32 / ((np.float32(0.001) + safe) * (a32 * safe ** b32 + one)),
                            zero)
            for d in range(dims):
                push[d] += _clip(coef * diff[d], xp) * alpha32
        for d in range(dims):
            q_tail = _quantise(attract[d], xp)
            acc[d] += xp.bincount(h, weights=q_tail + _quantise(push[d], xp), minlength=m)
            acc[d] -= xp.bincount(t, weights=q_tail, minlength=m)
    return acc * FIXED_STEP


# One thread per edge of the graph (grid-stride). A thread whose edge fires this epoch computes
# its attraction and its negative samples exactly as the reference does (float32, the same hash),
# rounds each move to a multiple of 2**-24 and adds it to a 64-bit integer accumulator with
# atomicAdd: integer addition is associative, so the sum is the same for any scheduling. dims is
# a template parameter (2 or 3) so the coordinates live in registers.
CUDA_SOURCE = r"""
__device__ __forceinline__ unsigned int tamis_lowbias32(unsigned int x) {
    x ^= x >> 16; x *= 0x7feb352dU; x ^= x >> 15; x *= 0x846ca68bU; x ^= x >> 16;
    return x;
}

__device__ __forceinline__ float tamis_clip4(float v) { return fminf(4.0f, fmaxf(-4.0f, v)); }

__device__ __forceinline__ long long tamis_fixed(float v) {
    return __double2ll_rn((double)v * 16777216.0);
}

template <int D>
__global__ void tamis_layout_epoch(
        const float* __restrict__ Y, const long long m, const long long* __restrict__ head,
        const long long* __restrict__ tail, const float* __restrict__ rate, const long long n_edges,
        const long long edge_offset, const int epoch, const float alpha, const float a, const float b, const float gamma,
        const int negative_rate, const unsigned int key, unsigned long long* __restrict__ acc) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n_edges; e += stride) {
        const double r = (double)rate[e];
        if (!(floor((epoch + 1) * r) > floor(epoch * r))) continue;
        const long long h = head[e], t = tail[e];
        float yh[D], g[D], p[D];
        float d2 = 0.0f;
        #pragma unroll
        for (int d = 0; d < D; ++d) {
            yh[d] = Y[d * m + h];
            g[d] = yh[d] - Y[d * m + t];
            d2 += g[d] * g[d];
            p[d] = 0.0f;
        }
        float coef = 0.0f;
        if (d2 > 0.0f) {
            const float pw = powf(d2, b);
            coef = -2.0f * a * b * pw / d2 / (a * pw + 1.0f);
        }
        #pragma unroll
        for (int d = 0; d < D; ++d) g[d] = tamis_clip4(coef * g[d]) * alpha;
        for (int s = 0; s < negative_rate; ++s) {
            const unsigned int c = (unsigned int)(e + edge_offset) * (unsigned int)negative_rate + (unsigned int)s;
            const unsigned int hs = tamis_lowbias32(c ^ key);
            const long long j = (long long)(((unsigned long long)hs * (unsigned long long)m) >> 32);
            float diff[D];
            float q2 = 0.0f;
            #pragma unroll
            for (int d = 0; d < D; ++d) { diff[d] = yh[d] - Y[d * m + j]; q2 += diff[d] * diff[d]; }
            float rc = 0.0f;
            if (q2 > 0.0f) rc = 2.0f * gamma * b / ((0.001f + q2) * (a * powf(q2, b) + 1.0f));
            #pragma unroll
            for (int d = 0; d < D; ++d) p[d] += tamis_clip4(rc * diff[d]) * alpha;
        }
        #pragma unroll
        for (int d = 0; d < D; ++d) {
            const long long qa = tamis_fixed(g[d]);
            const long long qh = qa + tamis_fixed(p[d]);
            atomicAdd(acc + d * m + h, (unsigned long long)qh);
            atomicAdd(acc + d * m + t, (unsigned long long)(-qa));
        }
    }
}
"""

_KERNEL_NAMES = {2: "tamis_layout_epoch<2>", 3: "tamis_layout_epoch<3>"}
_THREADS = 256


def layout_epoch(Y: Any, head: Any, tail: Any, rate: Any, *, epoch: int, alpha: float, a: float, b: float,
                 gamma: float = 1.0, negative_rate: int = 5, seed: int = 0, edge_offset: int = 0,
                 block_edges: int = 1 << 20, xp: ModuleType = np) -> Any:
    """:func:`layout_epoch_reference` on NumPy; the CUDA kernel on CuPy (same moves, see above)."""
    if xp is np or int(Y.shape[0]) not in _KERNEL_NAMES:
        return layout_epoch_reference(Y, head, tail, rate, epoch=epoch, alpha=alpha, a=a, b=b, gamma=gamma,
                                      negative_rate=negative_rate, seed=seed, edge_offset=edge_offset,
                                      block_edges=block_edges, xp=xp)
    return _layout_epoch_cuda(Y, head, tail, rate, epoch=epoch, alpha=alpha, a=a, b=b, gamma=gamma,
                              negative_rate=negative_rate, seed=seed, edge_offset=edge_offset, xp=xp)


def _layout_epoch_cuda(Y: Any, head: Any, tail: Any, rate: Any, *, epoch: int, alpha: float, a: float,
                       b: float, gamma: float, negative_rate: int, seed: int, edge_offset: int,
                       xp: ModuleType) -> Any:
    _check(Y, head, tail, rate)
    dims, m = int(Y.shape[0]), int(Y.shape[1])
    Y = xp.ascontiguousarray(Y)
    head = xp.ascontiguousarray(head, dtype=xp.int64)
    tail = xp.ascontiguousarray(tail, dtype=xp.int64)
    rate = xp.ascontiguousarray(rate, dtype=xp.float32)
    acc = xp.zeros((dims, m), dtype=xp.uint64)
    n_edges = int(head.shape[0])
    if n_edges:
        # no fused multiply-adds: NumPy rounds after each multiply and add, so must the kernel
        kernel = cuda_function(CUDA_SOURCE, tuple(_KERNEL_NAMES.values()), _KERNEL_NAMES[dims], xp.cuda.Device().id,
                               options=("--fmad=false",))
        grid = (min(65535 * 8, -(-n_edges // _THREADS)),)
        kernel(grid, (_THREADS,),
               (Y, np.int64(m), head, tail, rate, np.int64(n_edges), np.int64(edge_offset), np.int32(epoch),
                np.float32(alpha),
                np.float32(a), np.float32(b), np.float32(gamma), np.int32(negative_rate),
                np.uint32(epoch_key(seed, epoch)), acc))
    return acc.view(xp.int64).astype(xp.float64) * FIXED_STEP
