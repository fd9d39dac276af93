"""Probing inverted lists: the rows of each query's probed buckets merged into its top-c lists.

The neighbour search of the ``ivf`` engine (whose tiles also give the pair search's pairs when
a graph follows), of ``--against`` and of the Dask bucketed graph compares every query row
with the rows of the buckets it probes. :func:`probe_buckets` groups that
work by bucket: one product ``queries of b x rows of b`` per bucket (``R R^T`` with one operand,
which BLAS computes as a symmetric product in ~0.65x the time, when the queries are the bucket's
own rows: the ivf scan's home step), on the CPU's threads (single-threaded BLAS each) or the
GPU's stream, and keeps, per query, only the tile entries that can still enter its list:

* the lower bound of a query is its running ``c``-th best similarity (``-inf`` while the
  list is not full), read when the tile is made (it only ever rises, so a stale value
  keeps more entries, never fewer);
* a query with more than ``c`` entries at or above its bound keeps those at or above the
  ``c``-th largest of its row of the tile (every entry tied with it included, so what is
  kept does not depend on how a selection breaks ties).

The entries kept are appended to a per-query buffer of ``width`` slots; a full buffer, and
every buffer at the end, is merged into the running lists by one sort of packed
``(similarity, index)`` keys (:func:`~tamis.kernels.topk.topk_rows`: similarity descending,
then index ascending), so the lists are the exact top-``c`` of the tile entries seen, in
the total order of :func:`~tamis.kernels.topk.merge_topk`.

Cost: the products (``sum_b |queries of b| |b| d``), one comparison pass over each tile, a
partition of the rows that still hold more than ``c`` candidates (most rows, in the first
bucket they meet; few afterwards). Memory: one tile per thread within ``memory_bytes``, the
buffers ``m * width * 12`` bytes (``width`` shrinks to ``c`` when that would pass a quarter
of the budget).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable

import numpy as np

from ...kernels.pairs import compact_pairs
from ...kernels.topk import topk_rows
from ..backend import to_host
from .tiles import parallel_map, plan_for, spans

__all__ = ["probe_buckets", "self_entries"]

#: buffer slots per query beyond the running lists (at most; see the module docstring)
BUFFER_WIDTH = 16
_LOWEST = np.float32(np.finfo(np.float32).min)


def probe_buckets(Q: Any, probes: Any, offsets: np.ndarray, bucket_rows: Callable[[int], Any],
                  best: tuple[Any, Any], c: int, xp: ModuleType, memory: int, dtype: str,
                  own: Callable[[Any, int], tuple[Any, Any]] | None = None,
                  tick: Callable[[], Any] | None = None, pair_cutoff: float | None = None,
                  budget: Any = None) -> tuple[Any, Any, tuple[Any, Any] | None]:
    """Merge into the running top-``c`` lists of the rows of ``Q`` the rows of the buckets
    ``probes`` names (``(m, p)`` bucket ids, each row's distinct).

    ``offsets`` (host, ``B + 1``): bucket ``b``'s rows have the list indices ``offsets[b] ..
    offsets[b + 1] - 1``, and ``bucket_rows(b)`` gives them (in the tile ``dtype``).
    ``own(q, b)`` gives the ``(query position in q, column in b)`` entries to leave out
    (a row is not its own neighbour), or None. ``best``: ``(sim float32 (m, c), idx int64
    (m, c))`` running lists (index ``-1`` empty); returns the new lists, and with
    ``pair_cutoff`` every ``(query position, list index)`` whose tile entry is ``>= pair_cutoff``
    (the pairs the same tiles hold; ``budget``, a :class:`~.tiles.PairBudget`, counts them).
    """
    plan = plan_for(xp)
    m = int(Q.shape[0])
    best_sim, best_idx = best
    no_pairs = None if pair_cutoff is None else (xp.empty(0, dtype=xp.int64), xp.empty(0, dtype=xp.int64))
    if m == 0 or probes.shape[1] == 0:
        return best_sim, best_idx, no_pairs
    probes = xp.asarray(probes)
    n_buckets = len(offsets) - 1
    p = int(probes.shape[1])
    flat = probes.reshape(-1)
    queries = xp.argsort(flat, kind="stable") // p              # grouped by bucket, rows ascending
    qstart = np.concatenate([[0], np.cumsum(to_host(xp.bincount(flat, minlength=n_buckets)))])
    sizes = np.diff(np.asarray(offsets, dtype=np.int64))
    work = [b for b in range(n_buckets) if sizes[b] and qstart[b + 1] > qstart[b]]
    work.sort(key=lambda b: -int(qstart[b + 1] - qstart[b]) * int(sizes[b]))   # biggest first
    workers = max(1, plan.workers)
    extra = BUFFER_WIDTH if m * (c + BUFFER_WIDTH) * 12 <= memory // 4 else c
    # read by the threads while the main thread raises it: either value is a lower bound
    bound = xp.maximum(best_sim[:, c - 1], _LOWEST)

    def tile(b: int) -> tuple[list[tuple[Any, Any, Any]], list[tuple[Any, Any]]]:
        h = int(sizes[b])
        R = bucket_rows(b)
        q_all = queries[int(qstart[b]):int(qstart[b + 1])]
        out, pairs = [], []
        for a, z in spans(int(q_all.shape[0]), max(1, memory // (6 * h * workers))):
            q = q_all[a:z]
            r, col = own(q, b) if own is not None else (None, None)
            if r is not None and r.shape[0] == q.shape[0] == h and bool((col == xp.arange(h)).all()):
                S = R @ R.T      # the queries are the bucket's rows, in order: one operand, a symmetric product
            else:
                S = Q[q].astype(dtype, copy=False) @ R.T
            S = S.astype(xp.float32, copy=False)
            if r is not None:
                S[r, col] = -np.inf
            if pair_cutoff is not None:
                r, col, _ = compact_pairs(S, 0, int(offsets[b]), pair_cutoff, False, xp)
                if budget is not None:
                    budget.take(int(r.shape[0]))
                pairs.append((q[r], col))
            keep = S >= bound[q][:, None]
            counts = keep.sum(axis=1)
            heavy = xp.flatnonzero(counts > c)
            if 2 * heavy.shape[0] > q.shape[0]:
                # most rows: the c-th largest of every row (a row with at most c entries at or
                # above its bound keeps them all: that value is then at most the smallest)
                kth = xp.partition(S, h - c, axis=1)[:, h - c]
                keep = S >= xp.maximum(bound[q], kth)[:, None]
                counts = keep.sum(axis=1)
            elif heavy.shape[0]:
                sub = S[heavy]
                kth = xp.partition(sub, h - c, axis=1)[:, h - c]
                keep[heavy] = sub >= kth[:, None]
                counts[heavy] = keep[heavy].sum(axis=1)
            flat = xp.flatnonzero(keep)                          # (2-D nonzero is ~10x slower)
            r = flat // h
            # each entry's rank among its row's (the rows come in order): the main thread's slots
            starts = xp.cumsum(counts) - counts
            out.append((q[r], flat - r * h + int(offsets[b]), S.reshape(-1)[flat], xp.arange(flat.shape[0]) - starts[r],
                        q[counts > 0], counts[counts > 0]))
        return out, pairs

    # one buffer per query: its running list in the first c slots, new entries after them
    width = c + extra
    buf_sim = xp.full((m, width), -np.inf, dtype=xp.float32)
    buf_idx = xp.full((m, width), -1, dtype=xp.int64)
    buf_sim[:, :c], buf_idx[:, :c] = best_sim, best_idx
    fill = (best_idx >= 0).sum(axis=1).astype(xp.int64)

    def settle(rows: Any, sims: Any, ids: Any) -> None:
        """The ``c`` best of the entries ``sims`` / ``ids`` (one row each of ``rows``) become those
        rows' lists, in the first slots of emptied buffers, and raise their bounds."""
        top_sim, top_idx = topk_rows(sims, ids, c, xp, ordered=False)
        buf_sim[rows] = -np.inf
        buf_idx[rows] = -1
        buf_sim[rows, :c], buf_idx[rows, :c] = top_sim, top_idx
        fill[rows] = (top_idx >= 0).sum(axis=1)
        bound[rows] = xp.maximum(top_sim.min(axis=1), _LOWEST)

    def merge_wide(which: Any, counts: Any, rows: Any, ids: Any, sims: Any, rank: Any) -> None:
        """Merge straight into the lists of the rows ``which`` (just compacted) their entries of
        one tile, more than their buffers hold (many ties): one dense ``(rows, c + count)`` array."""
        at = xp.full(m, -1, dtype=xp.int64)
        at[which] = xp.arange(which.shape[0])
        sel = xp.flatnonzero(at[rows] >= 0)
        s_ = xp.full((which.shape[0], c + int(counts.max())), -np.inf, dtype=xp.float32)
        i_ = xp.full(s_.shape, -1, dtype=xp.int64)
        s_[:, :c], i_[:, :c] = buf_sim[which, :c], buf_idx[which, :c]
        s_[at[rows[sel]], c + rank[sel]] = sims[sel]
        i_[at[rows[sel]], c + rank[sel]] = ids[sel]
        settle(which, s_, i_)

    found_q, found_i = [], []
    for parts, pairs in parallel_map(tile, work, plan):
        found_q += [q for q, _ in pairs]
        found_i += [i for _, i in pairs]
        for rows, ids, sims, rank, tail, count in parts:
            if not rows.shape[0]:
                continue
            if bool((fill[tail] + count > width).any()):
                full = tail[fill[tail] + count > width]
                settle(full, buf_sim[full], buf_idx[full])          # keep each full buffer's c best
                wide = fill[tail] + count > width                  # more than a buffer in one tile (ties)
                if bool(wide.any()):
                    merge_wide(tail[wide], count[wide], rows, ids, sims, rank)
                    keep = ~xp.isin(rows, tail[wide])
                    rows, ids, sims = rows[keep], ids[keep], sims[keep]
                    if not rows.shape[0]:
                        continue
                    rank, tail, count = _runs(rows, xp)
            slot = fill[rows] + rank
            buf_sim[rows, slot] = sims
            buf_idx[rows, slot] = ids
            fill[tail] += count
            # a first bound for the later tiles: the c-th largest entry so far
            fresh = tail[(bound[tail] <= _LOWEST) & (fill[tail] >= c)]
            if fresh.shape[0]:
                bound[fresh] = xp.partition(buf_sim[fresh], width - c, axis=1)[:, width - c]
        if tick is not None:
            tick()
    # the final lists, in row blocks on the threads (the packed keys of every buffer at once were
    # ~0.3 GB at 1M rows; one thread took 0.18 s at 100k)
    best_sim = xp.empty((m, c), dtype=xp.float32)
    best_idx = xp.empty((m, c), dtype=xp.int64)

    def final(span: tuple[int, int]) -> None:
        r0, r1 = span
        best_sim[r0:r1], best_idx[r0:r1] = topk_rows(buf_sim[r0:r1], buf_idx[r0:r1], c, xp)

    for _ in parallel_map(final, spans(m, max(1, (1 << 18) // width)), plan):
        pass
    if pair_cutoff is None:
        return best_sim, best_idx, None
    if not found_q:
        return best_sim, best_idx, no_pairs
    return best_sim, best_idx, (xp.concatenate(found_q), xp.concatenate(found_i))


def _runs(rows: Any, xp: ModuleType) -> tuple[Any, Any, Any]:
    """For ``rows`` sorted ascending: each entry's rank in its run, each run's row, its length."""
    n = int(rows.shape[0])
    starts = xp.flatnonzero(xp.concatenate([xp.ones(1, dtype=bool), rows[1:] != rows[:-1]]))
    lengths = xp.diff(xp.concatenate([starts, xp.asarray([n], dtype=starts.dtype)]))
    rank = xp.arange(n) - xp.repeat(starts, lengths)
    return rank, rows[starts], lengths


def self_entries(place: Any, offsets: Any, xp: ModuleType) -> Callable[[Any, int], tuple[Any, Any]]:
    """``own`` for :func:`probe_buckets` when the queries are the bucketed rows themselves:
    ``place[q]`` is query row ``q``'s list index; returns the queries that sit in bucket ``b``
    and their columns there (a row is not its own neighbour)."""
    def own(q: Any, b: int) -> tuple[Any, Any]:
        at = place[q]
        mine = xp.flatnonzero((at >= int(offsets[b])) & (at < int(offsets[b + 1])))
        return mine, at[mine] - int(offsets[b])
    return own
