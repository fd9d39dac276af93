"""Spherical k-means and the two probe rules of the inverted-file engine (one of each).

The ``ivf`` engine (and the bucketed Dask plan) fits one set of centroids per scan and
uses it twice: pairs by the *slack rule* (:func:`bucket_members`), neighbours by the
*nearest-centroids rule* (:func:`probe_order`). Written once against ``xp``; a float16
matrix is widened one block at a time.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from ..backend import to_host
from .rows import tile_margin
from .tiles import Plan, parallel_map, plan_for, spans

__all__ = ["spherical_kmeans", "nearest_centroid", "bucket_members", "probe_order"]


def spherical_kmeans(X: Any, k: int, iters: int, seed: int, plan: Plan, memory: int,
                     xp: ModuleType) -> Any:
    """(k, d) float32 unit centroids fitted on a seeded sample of ``max(32 k, 10,000)`` rows.

    Deterministic on both devices: the segment sums run over label-sorted rows, one slice
    per centroid (no scattered atomic adds, whose order varies on a GPU); an emptied
    centroid is re-seeded with the worst-fitting sample row. O(iters * sample * k * d).
    """
    n = int(X.shape[0])
    rng = np.random.default_rng(seed)
    m = min(n, max(32 * k, 10_000))
    sample = X[xp.asarray(np.sort(rng.choice(n, m, replace=False)))].astype(xp.float32, copy=False)
    centroids = sample[xp.asarray(np.sort(rng.choice(m, k, replace=False)))]
    block = plan.assign_block(k, memory)
    for _ in range(iters):
        labels, best = nearest_centroid(sample, centroids, block, plan, xp)
        order = xp.argsort(labels * m + xp.arange(m))       # unique keys: any sort agrees
        bounds = to_host(xp.searchsorted(labels[order], xp.arange(k + 1))).tolist()
        # each centroid's rows gathered on their own (a sorted copy of the whole sample, each
        # iteration, page-faulted in: ~50 ms a copy at 16k x 512)
        sums = xp.stack([sample[order[bounds[c]:bounds[c + 1]]].sum(axis=0, dtype=xp.float64)
                         for c in range(k)])
        norms = xp.sqrt((sums * sums).sum(axis=1))
        empty = xp.flatnonzero(norms < 1e-12)
        if empty.shape[0]:
            worst = xp.argsort(best)[:empty.shape[0]]
            sums[empty] = sample[worst]
            norms[empty] = xp.sqrt((sums[empty] ** 2).sum(axis=1))
        centroids = (sums / xp.maximum(norms, 1e-30)[:, None]).astype(xp.float32)
    return centroids


def nearest_centroid(Y: Any, centroids: Any, block: int, plan: Plan,
                     xp: ModuleType) -> tuple[Any, Any]:
    """Index (lowest among ties) and similarity of the nearest centroid of every row."""
    def nearest(span: tuple[int, int]) -> tuple[Any, Any]:
        sims = Y[span[0]:span[1]].astype(xp.float32, copy=False) @ centroids.T
        label = sims.argmax(axis=1)
        return label, sims[xp.arange(sims.shape[0]), label]

    parts = list(parallel_map(nearest, spans(int(Y.shape[0]), block), plan))
    return xp.concatenate([p[0] for p in parts]), xp.concatenate([p[1] for p in parts])


def bucket_members(X: Any, centroids: Any, probes: int, slack: float, plan: Plan, memory: int,
                   xp: ModuleType) -> tuple[Any, list[int], list[int]]:
    """The rows probed into each bucket, each bucket's home rows first (the slack rule).

    Row ``y`` with home bucket ``h`` is probed into bucket ``c`` when
    ``y.c_h - y.c_c - 2 margin <= slack * |c_h - c_c|`` (``margin``: the float32 tile bound,
    as the products are float32 tiles; ``|c_h - c_c|`` in float64); when more than ``probes`` buckets pass it keeps
    those with the smallest ``(y.c_h - y.c_c) / |c_h - c_c|``. If ``x.y >= t`` then
    ``|x - y| <= sqrt(2 - 2t)`` and ``y.c_g - y.c_h <= |x - y| |c_g - c_h|``, so slack
    ``sqrt(2 - 2t)`` with every bucket allowed misses no pair. Returns ``probe_rows``
    grouped by bucket (home rows first, ascending within both parts) and host lists
    ``home_count[b]`` and ``probe_start[b]`` (length k + 1).
    """
    n, k = int(X.shape[0]), int(centroids.shape[0])
    C64 = centroids.astype(xp.float64)
    # |c_h - c_c| in float64 from the centroids themselves: 2 - 2 cos in float32 rounds to 0 for
    # near-twin centroids (two centroids on one cluster of copies), which would never probe them
    spread_of = xp.sqrt(xp.maximum((C64 * C64).sum(axis=1)[:, None] + (C64 * C64).sum(axis=1)[None, :]
                                   - 2.0 * (C64 @ C64.T), 0.0))
    # the row-centroid products are float32 tiles: each side of the rule may be off by the margin
    slop = 2.0 * tile_margin(int(X.shape[1]), "float32")

    def assign(span: tuple[int, int]) -> tuple[Any, Any, Any]:
        sims = X[span[0]:span[1]].astype(xp.float32, copy=False) @ centroids.T
        home = sims.argmax(axis=1)
        best = sims[xp.arange(sims.shape[0]), home]
        # |c_h - c_c| <= 2, so only buckets within 2 * slack (+ the slop) of the best can pass
        flat = xp.flatnonzero(sims >= (best - 2.0 * slack - slop)[:, None])
        r, c = flat // k, flat % k
        value = sims.reshape(-1)[flat]
        gap = (best[r] - value).astype(xp.float64) - slop
        ratio = gap / xp.maximum(spread_of[home[r], c], 1e-300)        # the rule: ratio <= slack
        ratio = xp.where(gap <= 0, 0.0, ratio)
        keep = xp.flatnonzero(ratio <= slack)
        r, c, ratio = r[keep], c[keep], ratio[keep]
        ratio = xp.where(c == home[r], -1.0, ratio)                  # home first, always
        rank = xp.empty_like(r)
        rank[xp.argsort(ratio, kind="stable")] = xp.arange(r.shape[0])
        order = xp.argsort(r * r.shape[0] + rank)                    # by row, then by ratio
        r, c = r[order], c[order]
        rank = xp.arange(r.shape[0]) - xp.searchsorted(r, r, side="left")
        keep = rank < probes
        return r[keep] + span[0], c[keep], home

    parts = list(parallel_map(assign, spans(n, plan.assign_block(k, memory)), plan))
    row = xp.concatenate([p[0] for p in parts]).astype(xp.int64)
    bucket = xp.concatenate([p[1] for p in parts]).astype(xp.int64)
    home = xp.concatenate([p[2] for p in parts]).astype(xp.int64)
    foreign = (bucket != home[row]).astype(xp.int64)
    order = xp.argsort((bucket * 2 + foreign) * n + row)
    home_count = to_host(xp.bincount(home, minlength=k)).tolist()
    probe_start = [0] + np.cumsum(to_host(xp.bincount(bucket, minlength=k))).tolist()
    return row[order], home_count, probe_start


def probe_order(X: Any, centroids: Any, lo: int, hi: int, xp: ModuleType, memory_bytes: int) -> Any:
    """(n, hi - lo) xp int64: each row's centroids ranked ``lo .. hi - 1`` by similarity
    (descending, ties to the lower centroid), in blocks of ``memory_bytes``."""
    n, k = int(X.shape[0]), int(centroids.shape[0])
    plan = plan_for(xp)
    block = plan.assign_block(k, memory_bytes)      # cache-sized on a CPU: blocks of fresh memory page-fault in

    def ranked(span: tuple[int, int]) -> Any:
        r0, r1 = span
        sims = X[r0:r1].astype(xp.float32, copy=False) @ centroids.T
        if hi < k:
            # the hi-th largest value of each row (a value partition: ~10x an argpartition), the
            # centroids at or above it in id order; a row with ties at that value (more than hi
            # of them) is ranked fully, so that every round's ranks come from one total order
            # (similarity, then centroid id)
            edge = xp.partition(sims, k - hi, axis=1)[:, k - hi]
            above = sims >= edge[:, None]
            tied = xp.flatnonzero(above.sum(axis=1) != hi)
            if tied.shape[0]:
                above[tied] = False
            flat = xp.flatnonzero(above)
            top = xp.empty((sims.shape[0], hi), dtype=xp.int64)
            plain = xp.flatnonzero(above.any(axis=1))
            top[plain] = (flat % k).reshape(-1, hi)
            if tied.shape[0]:
                top[tied] = xp.argsort(-sims[tied], axis=1, kind="stable")[:, :hi]
        else:
            top = xp.broadcast_to(xp.arange(k), sims.shape)
        top_sims = xp.take_along_axis(sims, top, axis=1)
        first = xp.argsort(top, axis=1, kind="stable")        # ties: lower centroid first
        top, top_sims = xp.take_along_axis(top, first, axis=1), xp.take_along_axis(top_sims, first, axis=1)
        order = xp.argsort(-top_sims, axis=1, kind="stable")
        return xp.take_along_axis(top, order, axis=1)[:, lo:hi]

    parts = list(parallel_map(ranked, spans(n, block), plan))
    return xp.concatenate(parts) if parts else xp.empty((0, hi - lo), dtype=xp.int64)
