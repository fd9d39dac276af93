"""The ``ivf`` engine: tamis' inverted-file search, one k-means shared by pairs and neighbours.

One spherical k-means per scan (:func:`centroids`, kept in ``SearchOptions.state``) splits the
rows into buckets. The same tiles, kernels and canonical rescoring as the exact engine run
inside them, so a pair or neighbour it reports has exactly the similarity the exact engine
gives; it can miss, never invent, and it measures what it misses on a seeded sample.

The nearest-buckets scan (:class:`_Scan`, :mod:`.probing`): every row is compared with the
rows of its ``p`` nearest buckets (by centroid similarity), keeping its running top-``k + 2``
tile lists. One scan serves both searches of a run: the pair search runs its first round
(``p`` = 8) and keeps, from the same tiles, every entry at or above the threshold; the
neighbour graph goes on from those lists.

Pairs: the scan's pairs, if the recall on a sample of 1,000 rows (their exact pairs, found
in the same pass as their exact neighbours) reaches
:data:`~tamis.engine.search.registry.PAIR_RECALL` (0.99); otherwise the slack rule of
:func:`~tamis.engine.search.kmeans.bucket_members` (every row against its home bucket and
the buckets it is probed into; slack 0.3, 24 probes -> 0.6, 48 -> 1.0 and every bucket,
which is proven exact), widening until the sample's recall is reached. ``probes`` or
``probe_slack`` given: the slack rule alone.

Neighbours: ``p`` doubles from 8 to 64 (each round searches only the buckets added) until
recall@k on the sample (exact, certified) reaches the target (0.95) + 0.01; if 64 do not, the
exact engine runs. Rows left with fewer than k candidates are searched exactly.

Cost: the fit ``iters * sample * B * d`` (4 iterations) (B buckets, 1.6 sqrt(N) on a CPU, N / 8192 on a
GPU), the ranking ``N B d``, the scan ``sum_b |queries of b| |b| d`` (about ``N p (N / B) d``;
measured 1.2x that on a realistic store: big buckets are probed more), the slack rule when it
runs ``sum_b |home_b| |probed_b| d``, and the sample's exact search ``1,000 N d``. Memory
beyond ``X``: the ``(N, k + 2)`` lists and ``(N, 16)`` buffers, ``N * p`` bucket ids, one
tile per thread within ``memory_bytes``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from ...kernels.topk import empty_topk
from ..backend import to_host
from .exact import exact_neighbours, sort_pairs
from .kmeans import bucket_members, probe_order, spherical_kmeans
from .probing import probe_buckets, self_entries
from .recall import knn_recall, pair_recall, recall_against, recall_sample
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
from .rows import canonical_dot, canonical_dot_rows, tile_dtype, tile_margin
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
    return _canonical_pairs(X, xp.concatenate(found_r), xp.concatenate(found_c), threshold, xp)


def _canonical_pairs(X: Any, r: Any, c: Any, threshold: float, xp: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate row pairs (either order, repeats allowed) -> the sorted pairs ``a < b`` whose
    canonical similarity is ``>= threshold``, on the host."""
    n = int(X.shape[0])
    key = xp.unique(xp.minimum(r, c) * n + xp.maximum(r, c))
    return sort_pairs([rescore_pairs(X, X, key // n, key % n, threshold, xp)], n, xp)


class _Scan:
    """The nearest-buckets scan of one matrix: every row against the rows of the buckets its
    centroid ranks ``0 .. hi - 1``, as running top-``c`` tile lists (indices: positions in
    ``perm``, each bucket a contiguous range). Kept in ``opt.state`` so that a scan's pair
    search and neighbour graph share its tiles."""

    def __init__(self, X: Any, cents: Any, c: int, first: int, opt: SearchOptions):
        xp = self.xp = opt.xp
        self.X, self.cents, self.c, self.opt = X, cents, c, opt
        self.memory = opt.memory_bytes or plan_for(xp).memory_bytes
        self.dtype = tile_dtype(X, xp, False)
        n, n_lists = int(X.shape[0]), int(cents.shape[0])
        self.ranks = probe_order(X, cents, 0, first, xp, self.memory)
        home = self.ranks[:, 0]                               # the nearest centroid, lowest id on ties
        self.perm = xp.argsort(home, kind="stable")
        self.offsets = to_host(xp.concatenate([xp.zeros(1, dtype=xp.int64),
                                               xp.cumsum(xp.bincount(home, minlength=n_lists))]))
        self.best = empty_topk(n, c, xp)
        self.first, self.hi = first, 0

    def rows_of(self, b: int) -> Any:
        return self.X[self.perm[int(self.offsets[b]):int(self.offsets[b + 1])]].astype(self.dtype, copy=False)

    def extend(self, hi: int, pair_cutoff: float | None = None, budget: Any = None) -> Any:
        """Search the buckets ranked ``self.hi .. hi - 1``; with ``pair_cutoff``, also return the
        ``(row ids, row ids)`` of every tile entry at or above it (a pair may come twice)."""
        xp, opt = self.xp, self.opt
        ranks = self.ranks if self.hi == 0 else probe_order(self.X, self.cents, self.hi, hi, xp, self.memory)
        tick = (lambda: opt.progress(0)) if opt.progress is not None else None
        place = xp.empty_like(self.perm)
        place[self.perm] = xp.arange(self.perm.shape[0])           # each row's list index
        own = self_entries(place, self.offsets, xp)
        # the home buckets first, alone: every row then has a bound (its c-th best at home) before
        # the other buckets' tiles are made, so those keep few entries and rarely need a partition
        # (tiles come in bucket order, not row order: without it most rows met several tiles
        # before their first bound)
        cuts = [0, 1, ranks.shape[1]] if self.hi == 0 and ranks.shape[1] > 1 else [0, ranks.shape[1]]
        found = []
        for lo, up in zip(cuts, cuts[1:]):
            best_sim, best_idx, got = probe_buckets(self.X, ranks[:, lo:up], self.offsets, self.rows_of, self.best,
                                                    self.c, xp, self.memory, self.dtype, own, tick, pair_cutoff, budget)
            self.best = (best_sim, best_idx)
            found.append(got)
        self.hi, self.ranks = hi, None
        if pair_cutoff is None:
            return None
        q, pos = (xp.concatenate(parts) for parts in zip(*found))
        return q, self.perm[pos]

    def candidates(self, rows: Any = None) -> Any:
        """Global ids of the running lists (of ``rows``, default all), -1 where empty."""
        xp = self.xp
        idx = self.best[1] if rows is None else self.best[1][rows]
        return xp.where(idx >= 0, self.perm[xp.maximum(idx, 0)], -1)


def _first_probes(n_lists: int, opt: SearchOptions) -> tuple[int, int, bool]:
    """(first round's probes, most probes, fixed): ``n_probe`` fixes both."""
    fixed = check_positive_int("n_probe", opt.params.get("n_probe"), "e.g. 16")
    top = min(n_lists, fixed or KNN_PROBES[1])
    return (top if fixed else min(KNN_PROBES[0], top)), top, fixed is not None


def _scan(X: Any, opt: SearchOptions, c: int) -> _Scan:
    """The scan of ``opt.state`` when it keeps lists of at least ``c`` and has not gone past its
    first round, else a new one (kept there)."""
    cents = centroids(X, opt)
    first, _, _ = _first_probes(int(cents.shape[0]), opt)
    key = _scan_key(X, cents, opt)
    scan = opt.state.get(key)
    if scan is None or scan.c < c or scan.X is not X:
        scan = opt.state[key] = _Scan(X, cents, c, first, opt)
    return scan


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
        if probes is None and slack is None and opt.state.get("neighbours_k"):
            # a graph will follow (the caller says so): first the neighbour scan's tiles (each row
            # against its nearest buckets), which the graph then goes on from: the pairs they
            # hold, if the sample finds them all (alone, the slack rule is the faster search)
            k = min(n - 1, int(opt.state["neighbours_k"]))
            scan = _scan(X, opt, min(n - 1, k + APPROXIMATE_EXTRA))
            if scan.hi == 0:
                r, c = scan.extend(scan.first, threshold - tile_margin(int(X.shape[1]), scan.dtype),
                                   PairBudget(opt.max_pairs, threshold, sides=2))   # seen from both rows
                a, b, s = _canonical_pairs(X, r, c, threshold, xp)
                if opt.progress is not None:
                    opt.progress(n)
                # the sample's true pairs and its exact neighbours (for the graph) in one pass
                _, truth, _, (qa, qb) = exact_neighbours(X, k, opt, rows=sample, pair_threshold=threshold)
                opt.state[_truth_key(n, opt, k)] = truth
                recall, n_true = recall_against(qa, qb, a, b, n)
                log.info("ivf pairs: the neighbour scan's %d nearest of %d buckets: sample recall %.4f (%d pairs)",
                         scan.first, n_buckets, recall, n_true)
                if recall >= target:
                    return a, b, s, {"engine": self.name, "exact": False, "recall": recall, "recall_target": target,
                                     "recall_sample_rows": int(len(sample)), "recall_sample_pairs": n_true,
                                     "buckets": n_buckets, "rule": "nearest buckets", "probes": scan.first}
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
                         "buckets": n_buckets, "rule": "slack", "probes": pr, "probe_slack": sl}

    def neighbours(self, X: Any, k: int, opt: SearchOptions):
        xp = opt.xp
        n = int(X.shape[0])
        target = opt.target_recall or KNN_RECALL
        cents = centroids(X, opt)
        n_lists = int(cents.shape[0])
        first, top, fixed = _first_probes(n_lists, opt)
        c = min(n - 1, k + APPROXIMATE_EXTRA)
        scan = _scan(X, opt, c)
        opt.state.pop(_scan_key(X, cents, opt), None)                # the graph is its last use
        sample = recall_sample(n, SAMPLE_ROWS, opt.seed)
        truth = opt.state.pop(_truth_key(n, opt, k), None)       # measured with the pairs
        if fixed:
            truth = None
        elif truth is None:
            truth = exact_neighbours(X, k, opt, rows=sample)[1]

        def score(rows: Any) -> Any:
            return lambda pos, other: canonical_dot(X, X, rows[pos], other, xp)

        def rows_score(rows: Any) -> Any:
            return lambda cand: canonical_dot_rows(X, X, rows, cand, xp)

        hi = max(scan.hi, first)
        recall = None
        while True:
            if hi > scan.hi:
                scan.extend(hi)
            if truth is None:
                break
            ids = xp.asarray(sample)
            cand = scan.candidates(ids)[:, :c]
            s_idx, s_sim, _ = refine_neighbours(cand, k, score(ids), xp, score_rows=rows_score(ids))
            recall = knn_recall(s_idx, s_sim, truth)
            log.info("ivf neighbours: %d of %d buckets probed, sample recall@%d %.4f", hi, n_lists, k, recall)
            if recall >= min(1.0, target + 0.01) or hi == top:
                break
            hi = min(2 * hi, top)
        if recall is not None and recall < target:
            log.warning("ivf neighbours: recall %.4f < target %.2f with %d probes; using the exact engine",
                        recall, target, hi)
            idx, sims, collected = exact_neighbours(X, k, opt)
            return idx, sims, {"engine": "exact", "asked": self.name, "exact": True, "recall": 1.0,
                               "ivf_recall": recall, "rows_rechecked": collected}
        # in bucket order: consecutive rows share most candidates, which stay in the caches
        order = scan.perm
        got_idx, got_sims, _ = refine_neighbours(scan.candidates(order)[:, :c], k, score(order), xp,
                                                 score_rows=rows_score(order))
        idx, sims = np.empty_like(got_idx), np.empty_like(got_sims)
        where = to_host(order)
        idx[where], sims[where] = got_idx, got_sims
        short = np.flatnonzero((idx < 0).any(axis=1))
        if short.size:
            idx[short], sims[short], _ = exact_neighbours(X, k, opt, rows=short)
        return idx, sims, {"engine": self.name, "exact": False,
                           "recall": 1.0 if recall is None and hi >= n_lists else recall,
                           "recall_target": target, "recall_sample_rows": int(len(sample)),
                           "buckets": n_lists, "probes": hi, "rows_completed_exactly": int(short.size)}


def _scan_key(X: Any, cents: Any, opt: SearchOptions) -> tuple:
    return ("ivf_scan", int(X.shape[0]), int(cents.shape[0]), opt.seed)


def _truth_key(n: int, opt: SearchOptions, k: int) -> tuple:
    """Where the pair search leaves the sample's exact k-neighbour similarities for the graph."""
    return ("ivf_sample_truth", n, opt.seed, k)
