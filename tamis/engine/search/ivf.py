"""The ``ivf`` engine: tamis' inverted-file search, one k-means shared by pairs and neighbours.

One spherical k-means per scan (:func:`centroids`, kept in ``SearchOptions.state``) splits the
rows into buckets. The same tiles, kernels and canonical rescoring as the exact engine run
inside them, so a pair or neighbour it reports has exactly the similarity the exact engine
gives; it can miss, never invent, and it measures what it misses on a seeded sample.

Pairs (the slack rule of :func:`~tamis.engine.search.kmeans.bucket_members`): every row is
compared with the rows of its home bucket and of the buckets it is probed into. The recall
on a sample of 1,000 rows (:func:`~tamis.engine.search.recall.pair_recall`) must reach
:data:`~tamis.engine.search.registry.PAIR_RECALL` (0.99); otherwise the rule widens
(slack 0.3, 24 probes -> 0.6, 48 -> 1.0 and every bucket, which is proven exact).

Neighbours: every row is compared with the rows of its ``p`` nearest buckets, ``p``
doubling from 8 to 64 (each round searches only the buckets added) until recall@k on a
sample of 1,000 rows (exact, certified) reaches the target (0.95) + 0.01; if 64 do not, the
exact engine runs. Rows left with fewer than k candidates are searched exactly.

Cost: the fit ``2 iters * sample * B * d`` (B buckets, 1.6 sqrt(N) on a CPU, N / 8192 on a
GPU), the assignment ``N B d``, the buckets ``sum_b |home_b| |probed_b| d`` (pairs) and
``N p (N / B) d`` (neighbours), and the samples' exact searches ``2 * 1,000 N d``. Memory
beyond ``X``: one bucket's rows, ``N * probes`` bucket ids, the ``(N, c)`` lists, the
tiles within ``memory_bytes``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from ...kernels.topk import empty_topk, merge_topk
from ..backend import to_host
from .exact import exact_neighbours, sort_pairs
from .kmeans import bucket_members, nearest_centroid, probe_order, spherical_kmeans
from .recall import knn_recall, pair_recall, recall_sample
from .refine import refine_neighbours, rescore_pairs
from .registry import (
    KNN_RECALL,
    PAIR_RECALL,
    SearchEngine,
    SearchOptions,
    check_positive_int,
    check_unit,
    register,
)
from .rows import canonical_dot, tile_dtype, tile_margin
from .tiles import PairBudget, pair_strip, parallel_map, plan_for, spans

log = logging.getLogger("tamis")

__all__ = ["IvfEngine", "centroids", "PAIR_ROUNDS", "KNN_PROBES"]

#: (slack, probes) of the pair search's rounds; probes None: every bucket
PAIR_ROUNDS = ((0.3, 24), (0.6, 48), (1.0, None))
#: first and largest number of buckets a row's neighbours are searched in
KNN_PROBES = (8, 64)
KMEANS_ITERS = 4
#: candidates beyond k kept for the canonical re-ranking (near-ties in the tiles)
APPROXIMATE_EXTRA = 2
SAMPLE_ROWS = 1000


def centroids(X: Any, opt: SearchOptions) -> Any:
    """The scan's k-means centroids (fitted once, cached in ``opt.state``)."""
    xp, plan = opt.xp, plan_for(opt.xp)
    n = int(X.shape[0])
    n_buckets = check_positive_int("n_buckets", opt.params.get("n_buckets"), "e.g. 500 for 100,000 rows")
    n_buckets = min(n_buckets or plan.default_buckets(n), max(n, 1))
    iters = check_positive_int("kmeans_iters", opt.params.get("kmeans_iters"), "e.g. 4") or KMEANS_ITERS
    key = ("ivf_centroids", n, n_buckets, iters, opt.seed)
    if key not in opt.state:
        opt.state[key] = spherical_kmeans(X, n_buckets, iters, opt.seed, plan,
                                          opt.memory_bytes or plan.memory_bytes, xp)
    return opt.state[key]


def _bucket_pairs(X: Any, threshold: float, cents: Any, probes: int, slack: float, opt: SearchOptions,
                  progress: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xp, plan = opt.xp, plan_for(opt.xp)
    memory = opt.memory_bytes or plan.memory_bytes
    n, d = (int(v) for v in X.shape)
    dtype = tile_dtype(X, xp, plan.pair_dtype == "float16")
    rows_per_tile, cols = plan.tile_shape(memory, None, np.dtype(dtype).itemsize)
    members_all, home_count, start = bucket_members(X, cents, probes, slack, plan, memory, xp)
    cutoff = threshold - tile_margin(d, dtype)
    budget = PairBudget(opt.max_pairs, threshold)

    def bucket(b: int) -> tuple[int, Any, Any]:
        h = home_count[b]
        members = members_all[start[b]:start[b + 1]]            # home rows first
        P = X[members]
        rows, cols_found = [], []
        for span in spans(h, rows_per_tile):
            r, c = pair_strip(P, P, span, 0, 0, cutoff, True, cols, dtype, xp, budget)
            rows.append(members[r])
            cols_found.append(members[c])
        return h, rows, cols_found

    work = [b for b in range(len(home_count)) if home_count[b]]
    work.sort(key=lambda b: -home_count[b] * (start[b + 1] - start[b]))   # biggest first
    found_r, found_c = [], []
    for h, r, c in parallel_map(bucket, work, plan):
        found_r += r
        found_c += c
        if progress is not None:
            progress(h)
    if not found_r:
        return sort_pairs([], n, xp)
    r, c = xp.concatenate(found_r), xp.concatenate(found_c)
    key = xp.unique(xp.minimum(r, c) * n + xp.maximum(r, c))
    return sort_pairs([rescore_pairs(X, X, key // n, key % n, threshold, xp)], n, xp)


def _probed_round(X: Any, cents: Any, perm: Any, offsets: np.ndarray, lo: int, hi: int, best: tuple,
                  c: int, opt: SearchOptions, dtype: str) -> tuple[Any, Any]:
    """Merge the buckets ranked ``lo .. hi - 1`` of every row into its top-``c`` lists
    (indices are positions in ``perm``: each bucket a contiguous range). One bucket at a
    time, each tile on the whole BLAS (measured faster on a CPU than buckets spread over
    threads: the merges are short NumPy calls that contend for the interpreter)."""
    xp = opt.xp
    memory = opt.memory_bytes or plan_for(xp).memory_bytes
    best_sim, best_idx = best
    probes = probe_order(X, cents, lo, hi, xp, memory)
    p = hi - lo
    flat = probes.reshape(-1)
    queries = xp.argsort(flat, kind="stable") // p            # grouped by bucket, rows ascending
    counts = to_host(xp.bincount(flat, minlength=len(offsets) - 1))
    qstart = np.concatenate([[0], np.cumsum(counts)])
    for b in range(len(offsets) - 1):
        c0, c1 = int(offsets[b]), int(offsets[b + 1])
        if c1 == c0 or not counts[b]:
            continue
        ids = perm[c0:c1]                                     # ascending row ids
        M = X[ids].astype(dtype, copy=False)
        chunk = max(1, memory // (6 * (c1 - c0)))
        for q0 in range(int(qstart[b]), int(qstart[b + 1]), chunk):
            q = queries[q0:min(q0 + chunk, int(qstart[b + 1]))]
            S = (X[q].astype(dtype, copy=False) @ M.T).astype(xp.float32, copy=True)
            at = xp.minimum(xp.searchsorted(ids, q), c1 - c0 - 1)
            own = xp.flatnonzero(ids[at] == q)
            S[own, at[own]] = -np.inf                          # a row is not its own neighbour
            best_sim[q], best_idx[q] = merge_topk(S, c0, None, best_sim[q], best_idx[q], c, xp)
        if opt.progress is not None:
            opt.progress(0)
    return best_sim, best_idx


@register
class IvfEngine(SearchEngine):
    """Inverted-file search over one k-means of the scan (NumPy or CuPy)."""

    name = "ivf"
    exact = False
    parameters = ("n_buckets", "kmeans_iters", "probes", "probe_slack", "n_probe")

    def pairs(self, X: Any, threshold: float, opt: SearchOptions):
        xp = opt.xp
        n = int(X.shape[0])
        target = opt.target_recall or PAIR_RECALL
        if n < 2:
            a, b, s = sort_pairs([], n, xp)
            return a, b, s, {"engine": self.name, "exact": False, "recall": 1.0}
        cents = centroids(X, opt)
        n_buckets = int(cents.shape[0])
        probes = check_positive_int("probes", opt.params.get("probes"), "e.g. 24")
        slack = opt.params.get("probe_slack")
        rounds = PAIR_ROUNDS if probes is None and slack is None else \
            ((check_unit("probe_slack", 0.3 if slack is None else slack, "0.3", closed_low=True), probes or 24),)
        sample = recall_sample(n, SAMPLE_ROWS, opt.seed)
        for number, (sl, pr) in enumerate(rounds):
            pr = min(pr or n_buckets, n_buckets)
            a, b, s = _bucket_pairs(X, threshold, cents, pr, sl * math.sqrt(2.0 - 2.0 * threshold), opt,
                                    opt.progress if number == 0 else None)
            recall, n_true = pair_recall(X, a, b, threshold, sample, xp, opt.memory_bytes)
            log.info("ivf pairs: %d buckets, slack %.2f, %d probes: sample recall %.4f (%d pairs)",
                     n_buckets, sl, pr, recall, n_true)
            if recall >= target:
                break
        if recall < target:
            log.warning("ivf pairs: sample recall %.4f < %.2f with the widest rule", recall, target)
        return a, b, s, {"engine": self.name, "exact": False, "recall": recall, "recall_target": target,
                         "recall_sample_rows": int(len(sample)), "recall_sample_pairs": n_true,
                         "buckets": n_buckets, "probes": pr, "probe_slack": sl}

    def neighbours(self, X: Any, k: int, opt: SearchOptions):
        xp = opt.xp
        n = int(X.shape[0])
        target = opt.target_recall or KNN_RECALL
        cents = centroids(X, opt)
        n_lists = int(cents.shape[0])
        fixed = check_positive_int("n_probe", opt.params.get("n_probe"), "e.g. 16")
        top = min(n_lists, fixed or KNN_PROBES[1])
        memory = opt.memory_bytes or plan_for(xp).memory_bytes
        home, _ = nearest_centroid(X, cents, plan_for(xp).assign_block(n_lists, memory), plan_for(xp), xp)
        perm = xp.argsort(home, kind="stable")
        offsets = to_host(xp.concatenate([xp.zeros(1, dtype=xp.int64),
                                          xp.cumsum(xp.bincount(home, minlength=n_lists))]))
        c = min(n - 1, k + APPROXIMATE_EXTRA)
        dtype = tile_dtype(X, xp, False)
        best = empty_topk(n, c, xp)
        sample = recall_sample(n, SAMPLE_ROWS, opt.seed)
        truth = None if fixed else exact_neighbours(X, k, opt, rows=sample)[1]

        def score(rows: Any) -> Any:
            return lambda pos, other: canonical_dot(X, X, rows[pos], other, xp)

        def candidates(best_idx: Any) -> Any:
            return xp.where(best_idx >= 0, perm[xp.maximum(best_idx, 0)], -1)

        lo, hi = 0, (top if fixed else min(KNN_PROBES[0], top))
        recall = None
        while True:
            best = _probed_round(X, cents, perm, offsets, lo, hi, best, c, opt, dtype)
            if truth is None:
                break
            ids = xp.asarray(sample)
            s_idx, s_sim, _ = refine_neighbours(candidates(best[1][ids]), k, score(ids), xp)
            recall = knn_recall(s_idx, s_sim, truth)
            log.info("ivf neighbours: %d of %d buckets probed, sample recall@%d %.4f", hi, n_lists, k, recall)
            if recall >= min(1.0, target + 0.01) or hi == top:
                break
            lo, hi = hi, min(2 * hi, top)
        if recall is not None and recall < target:
            log.warning("ivf neighbours: recall %.4f < target %.2f with %d probes; using the exact engine",
                        recall, target, hi)
            idx, sims, collected = exact_neighbours(X, k, opt)
            return idx, sims, {"engine": "exact", "asked": self.name, "exact": True, "recall": 1.0,
                               "ivf_recall": recall, "rows_rechecked": collected}
        all_rows = xp.arange(n, dtype=xp.int64)
        idx, sims, _ = refine_neighbours(candidates(best[1]), k, score(all_rows), xp)
        short = np.flatnonzero((idx < 0).any(axis=1))
        if short.size:
            idx[short], sims[short], _ = exact_neighbours(X, k, opt, rows=short)
        return idx, sims, {"engine": self.name, "exact": False,
                           "recall": 1.0 if recall is None and hi >= n_lists else recall,
                           "recall_target": target, "recall_sample_rows": int(len(sample)),
                           "buckets": n_lists, "probes": hi, "rows_completed_exactly": int(short.size)}
