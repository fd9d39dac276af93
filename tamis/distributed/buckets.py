"""Bucketed (k-means) pair search and neighbour graph on the workers, for large stores.

The exact engines cost ``M**2 d`` multiply-adds: minutes at 100k rows on a CPU, days at
10M. These engines restrict the same blocks of partitions to k-means buckets, with the
rules of the single-process approximate engines:

1. The client draws a seeded sample of ``max(32 B, 10,000)`` valid rows (``B`` buckets,
   ``1.6 sqrt(M)``), the workers return those rows, and the client fits spherical k-means on
   them (the k-means of :mod:`tamis.engine.pairsearch`, 4 rounds); the centroids are
   broadcast to the workers.
2. One task per partition assigns its rows (:func:`assign_partition`): the home bucket and
   the probe buckets of :func:`~tamis.engine.pairsearch.partitioned_pairs` (a row is probed
   into bucket ``c`` when a pair of it at the threshold could have ``c`` as home). The
   assignments stay on the workers as Dask futures (8 bytes per probe and 4 per row).
3. Pairs: one task per pair of partitions ``i <= j`` (:func:`bucket_pair_block`) compares,
   bucket by bucket, the home rows of one partition with every row probed into that bucket
   in the other, with :func:`~tamis.engine.pairsearch.pairs_in_block` (same margin and
   float64 re-check as the exact engine: every pair reported is a true pair with its exact
   similarity). Like ``partitioned_pairs`` it can miss a pair, never invent one.
4. Neighbours (inverted file, buckets as lists): one task per partition ``i``
   (:func:`bucket_knn_partition`) compares each of its rows with the home rows, in every
   partition, of the lists of its most similar centroids, merging tiles with
   :func:`~tamis.kernels.topk.merge_topk`. As in
   :func:`~tamis.engine.knn.approximate_knn`, rounds probe 8, 16, 32 then 64 lists (each
   round searches only the lists it adds, starting from the previous round's lists) until
   recall@k measured on a seeded sample of 1,000 rows against their exact neighbours
   reaches 0.95 + 0.01; the recall and probes are reported (summary
   ``distributed.engines``), a warning says when 64 lists fall short, and rows left with
   fewer than k neighbours are searched exactly.

Cost, with ``P`` partitions: k-means ``~128 B**2 d`` on the client; assignment ``M B d``
(plus ``M B d`` per kNN round for the probe lists); pairs ``~M (M / B) probes d``;
neighbours ``M probes (M / B) d``; plus ``P**2 B`` small-tile calls, so keep partitions
large (a few hundred thousand rows). Memory per task: two partitions at the scan's precision
(float16 halves it), one permuted copy, and the tiles (256 MiB).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from ..engine.knn import DEFAULT_MEMORY_BYTES, knn_recall
from ..engine.pairsearch import bucket_members, pairs_in_block, plan_for, spherical_kmeans
from ..kernels.topk import empty_topk, merge_topk
from .partitions import Partition
from .tasks import ReadSpec, knn_partition, load_partition, sample_rows, worker_backend

log = logging.getLogger("tamis")

#: defaults of the single-process partitioned engine (tamis.engine.pairsearch)
PROBES, PROBE_SLACK, KMEANS_ITERS, SEED = 24, 0.3, 4, 0
#: lists each row searches for its neighbours in the first round and at most, rows whose recall is
#: measured, and the recall asked for (the single-process approximate engine's rules)
KNN_PROBES, MAX_PROBES, RECALL_SAMPLE, TARGET_RECALL = 8, 64, 1000, 0.95


# ---------------------------------------------------------------------------- worker tasks
def assign_partition(spec: ReadSpec, part: Partition, n_valid: int, centroids: np.ndarray,
                     threshold: float) -> dict[str, Any]:
    """Bucket assignment of one partition's valid rows (local positions).

    ``members``/``home_count``/``starts``: rows probed into each bucket, home rows first
    (:func:`tamis.engine.pairsearch.bucket_members` with the probe rule at ``threshold``);
    ``home``: each row's bucket (its nearest centroid).
    """
    backend = worker_backend(spec.device)
    xp = backend.xp
    plan = plan_for(xp)
    x = xp.asarray(load_partition(spec, part, n_valid))          # float16 rows are widened block by block
    slack = PROBE_SLACK * math.sqrt(2.0 - 2.0 * threshold)
    members, home_count, starts = bucket_members(x, xp.asarray(centroids), min(PROBES, len(centroids)), slack, plan,
                                           plan.memory_bytes, xp)
    members = backend.to_host(members)
    home = np.empty(n_valid, dtype=np.int32)
    for b, (s, h) in enumerate(zip(starts[:-1], home_count)):
        home[members[s:s + h]] = b
    return {"members": members, "home_count": np.asarray(home_count, dtype=np.int64),
            "starts": np.asarray(starts, dtype=np.int64), "home": home}


def probe_lists(x: Any, centroids: Any, lo: int, hi: int, xp: Any, memory_bytes: int) -> np.ndarray:
    """(n, hi - lo) host int64: each row's centroids ranked ``lo .. hi - 1`` by similarity (blocked)."""
    k = int(centroids.shape[0])
    out = np.empty((int(x.shape[0]), hi - lo), dtype=np.int64)
    block = max(1, memory_bytes // (8 * k))
    for r0 in range(0, int(x.shape[0]), block):
        sims = xp.asarray(x[r0:r0 + block], dtype=xp.float32) @ centroids.T
        top = xp.argpartition(-sims, hi - 1, axis=1)[:, :hi] if hi < k else \
            xp.broadcast_to(xp.arange(k), sims.shape)
        order = xp.argsort(-xp.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        ranked = xp.take_along_axis(top, order, axis=1)[:, lo:hi]
        out[r0:r0 + block] = ranked.get() if hasattr(ranked, "get") else ranked
    return out


def bucket_pair_block(spec: ReadSpec, a: Partition, b: Partition, n_valid: tuple[int, int],
                      offsets: tuple[int, int], assigned: tuple[dict, dict],
                      threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (valid-row ids, ``row_a < row_b``) between partitions ``a`` and ``b`` found inside buckets."""
    xp = worker_backend(spec.device).xp
    xa = xp.asarray(load_partition(spec, a, n_valid[0]))        # gathered per bucket, widened by pairs_in_block
    same = a.index == b.index
    xb = xa if same else xp.asarray(load_partition(spec, b, n_valid[1]))
    ea, eb = assigned
    found = []
    for k in range(len(ea["home_count"])):
        ha, ma = _bucket(ea, k)
        hb, mb = _bucket(eb, k)
        if same:
            if len(ha) and len(ma) > 1:
                r, c, s = pairs_in_block(xa[xp.asarray(ha)], xa[xp.asarray(ma)], 0, 0, threshold, xp=xp, upper=True)
                found.append((ma[r], ma[c], s))
            continue
        for rows_a, rows_b in ((ha, mb), (ma, hb)):
            if len(rows_a) and len(rows_b):
                r, c, s = pairs_in_block(xa[xp.asarray(rows_a)], xb[xp.asarray(rows_b)], 0, len(rows_a), threshold,
                                         xp=xp)
                found.append((rows_a[r], rows_b[c - len(rows_a)], s))
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    ra = np.concatenate([f[0] for f in found]) + offsets[0]
    rb = np.concatenate([f[1] for f in found]) + offsets[1]
    sims = np.concatenate([f[2] for f in found])
    lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
    _, first = np.unique(lo * (offsets[1] + n_valid[1]) + hi, return_index=True)   # sorted by (lo, hi)
    return lo[first], hi[first], sims[first]


def _bucket(assigned: dict, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(home rows, all member rows with home rows first) of bucket ``k``."""
    s, e, h = assigned["starts"][k], assigned["starts"][k + 1], assigned["home_count"][k]
    members = assigned["members"][s:e]
    return members[:h], members


def bucket_knn_partition(spec: ReadSpec, parts: tuple[Partition, ...], n_valid: tuple[int, ...],
                         offsets: tuple[int, ...], i: int, k: int, homes: tuple[np.ndarray, ...],
                         centroids: np.ndarray, probes: tuple[int, int], start: tuple[np.ndarray, np.ndarray] | None,
                         memory_bytes: int = DEFAULT_MEMORY_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Partition ``i``'s running top-k after searching the home rows of its probe lists
    ``probes[0] .. probes[1] - 1`` (centroids ranked by similarity) in every partition.

    ``start``: the (indices, similarities) of the rounds before, or None. Returns host
    (n_i, k) valid-row ids (-1 where fewer than k were found) and similarities, each row
    sorted by similarity descending, then index ascending.
    """
    backend = worker_backend(spec.device)
    xp = backend.xp
    queries = xp.asarray(load_partition(spec, parts[i], n_valid[i]))   # widened to float32 tile by tile
    m, n_lists = n_valid[i], len(centroids)
    lists = probe_lists(queries, xp.asarray(centroids), probes[0], probes[1], xp, memory_bytes)
    flat = lists.reshape(-1)
    q_of = np.argsort(flat, kind="stable") // lists.shape[1]        # query rows grouped by list
    q_start = np.concatenate([[0], np.cumsum(np.bincount(flat, minlength=n_lists))])
    if start is None:
        best_sim, best_idx = empty_topk(m, k, xp)
    else:
        best_idx, best_sim = xp.asarray(start[0]), xp.asarray(start[1])
    for j, part in enumerate(parts):
        home = homes[j]
        perm = np.argsort(home, kind="stable")                        # rows of j grouped by list
        where = np.empty(n_valid[j], dtype=np.int64)
        where[perm] = np.arange(n_valid[j])
        h_start = np.concatenate([[0], np.cumsum(np.bincount(home, minlength=n_lists))])
        columns = xp.asarray(load_partition(spec, part, n_valid[j]))[xp.asarray(perm)]
        ours = (best_idx >= offsets[j]) & (best_idx < offsets[j] + n_valid[j])   # j's ids -> positions in perm
        best_idx[ours] = offsets[j] + xp.asarray(where)[best_idx[ours] - offsets[j]]
        for lst in range(n_lists):
            c0, c1 = int(h_start[lst]), int(h_start[lst + 1])
            q = q_of[q_start[lst]:q_start[lst + 1]]
            if c1 == c0 or not len(q):
                continue
            chunk = max(1, memory_bytes // (6 * (c1 - c0)))
            for s in range(0, len(q), chunk):
                rows = q[s:s + chunk]
                tile = xp.asarray(queries[xp.asarray(rows)], dtype=xp.float32) @ \
                    xp.asarray(columns[c0:c1], dtype=xp.float32).T
                if j == i:                                            # a row is not its own neighbour
                    own = (where[rows] >= c0) & (where[rows] < c1)
                    tile[xp.asarray(np.flatnonzero(own)), xp.asarray(where[rows[own]] - c0)] = -np.inf
                idx = xp.asarray(rows)
                best_sim[idx], best_idx[idx] = merge_topk(tile, offsets[j] + c0, None, best_sim[idx], best_idx[idx],
                                                          k, xp)
        ours = (best_idx >= offsets[j]) & (best_idx < offsets[j] + n_valid[j])   # positions in perm -> j's ids
        best_idx[ours] = offsets[j] + xp.asarray(perm)[best_idx[ours] - offsets[j]]
    sims, idx = backend.to_host(best_sim), backend.to_host(best_idx)
    order = np.lexsort((np.where(idx < 0, np.iinfo(np.int64).max, idx), -sims), axis=1)
    return np.take_along_axis(idx, order, 1), np.take_along_axis(sims, order, 1)


# ---------------------------------------------------------------------------- client side
def _centroids(builder, ctx, parts, counts, offsets, threshold: float):
    """Per-partition assignment futures for one k-means fit, made once per run."""
    m = len(ctx.valid_rows)
    key = ("buckets", m)
    if key in builder.state:
        return builder.state[key]
    n_buckets = max(1, round(1.6 * math.sqrt(m)))
    rng = np.random.default_rng(SEED)
    wanted = np.sort(rng.choice(m, min(m, max(32 * n_buckets, 10_000)), replace=False))
    bounds = np.searchsorted(wanted, np.asarray(offsets + [m]))
    jobs = [(sample_rows, (builder.spec, p, n, wanted[bounds[t]:bounds[t + 1]] - o), f"sample-{p.index}")
            for t, (p, n, o) in enumerate(zip(parts, counts, offsets)) if bounds[t + 1] > bounds[t]]
    sample = np.concatenate(builder.run(jobs, "k-means sample"))
    with ctx.timed("distributed:kmeans"):
        centroids = spherical_kmeans(sample, n_buckets, KMEANS_ITERS, SEED, plan_for(np),
                                      plan_for(np).memory_bytes, np)
    client, token = builder.client, builder.spec.token
    scattered = client.scatter(centroids, broadcast=True)
    futures = {}
    for p, n in zip(parts, counts):   # one assignment per partition, then its parts as separate futures
        whole = client.submit(assign_partition, builder.spec, p, n, scattered, float(threshold),
                              key=f"tamis-{token}-assign-{threshold}-{p.index}", pure=False)
        for part, names in (("pairs", ("members", "home_count", "starts")), ("home", ("home",))):
            futures.setdefault(part, []).append(client.submit(
                _pick, whole, names, key=f"tamis-{token}-assign-{part}-{threshold}-{p.index}", pure=False))
    futures["centroids"] = scattered
    builder.state[key] = (n_buckets, threshold, futures)
    builder.engines["buckets"] = n_buckets
    return builder.state[key]


def _pick(assigned: dict, names: tuple[str, ...]) -> Any:
    return assigned[names[0]] if len(names) == 1 else {name: assigned[name] for name in names}


def bucket_pairs_on(builder, ctx, parts, counts, offsets, threshold: float):
    """The bucketed pair search; ``(row_a, row_b, similarity)`` in valid-row space, sorted."""
    from .cluster import _sorted_pairs

    _, probe_threshold, assigned = _centroids(builder, ctx, parts, counts, offsets, threshold)
    if threshold < probe_threshold:   # probes were made for a higher threshold: too few for this one
        builder.state.pop(("buckets", len(ctx.valid_rows)))
        _, probe_threshold, assigned = _centroids(builder, ctx, parts, counts, offsets, threshold)
    jobs = [(bucket_pair_block, (builder.spec, parts[i], parts[j], (counts[i], counts[j]), (offsets[i], offsets[j]),
                                 (assigned["pairs"][i], assigned["pairs"][j]), float(threshold)),
             f"pairs-{threshold}-{parts[i].index}-{parts[j].index}")
            for i in range(len(parts)) for j in range(i, len(parts))]
    return _sorted_pairs(builder.run(jobs, "pair search"), len(ctx.valid_rows))


def bucket_knn_on(builder, ctx, parts, counts, offsets, k: int):
    """The bucketed neighbour graph: rounds of 8, 16, 32, 64 probed lists (each round searches only
    the lists it adds) until recall@k on a seeded sample of rows reaches the target, as the
    single-process approximate engine does; rows left with fewer than k neighbours are filled exactly."""
    n_lists, _, assigned = _centroids(builder, ctx, parts, counts, offsets, ctx.options["threshold"])
    m = len(ctx.valid_rows)
    rng = np.random.default_rng(SEED)
    sample = np.sort(rng.choice(m, min(m, RECALL_SAMPLE), replace=False))
    truth = None
    lists: list[Any] = [None] * len(parts)
    top = min(MAX_PROBES, n_lists)
    lo, hi = 0, min(KNN_PROBES, top)
    while True:
        jobs = [(bucket_knn_partition, (builder.spec, tuple(parts), tuple(counts), tuple(offsets), t, int(k),
                                        tuple(assigned["home"]), assigned["centroids"], (lo, hi), lists[t]),
                 f"knn-{k}-{hi}-{parts[t].index}") for t in range(len(parts))]
        lists = builder.run(jobs, "neighbour graph")
        idx = np.concatenate([r[0] for r in lists])
        sims = np.concatenate([r[1] for r in lists])
        if truth is None:
            truth = _exact_rows(builder, parts, counts, offsets, sample, k)[1]
        recall = knn_recall(idx[sample], sims[sample], truth)
        log.info("distributed approximate kNN: %d of %d lists probed, sample recall@%d %.4f", hi, n_lists, k, recall)
        if recall >= min(1.0, TARGET_RECALL + 0.01) or hi == top:
            break
        lo, hi = hi, min(2 * hi, top)
    builder.engines.update({"knn_probes": hi, "knn_recall_sample": recall})
    if recall < TARGET_RECALL:
        log.warning("distributed approximate kNN: recall@%d %.3f on %d sampled rows with %d probes is below %.2f; "
                    "use knn_engine='exact' for exact neighbours", k, recall, len(sample), hi, TARGET_RECALL)
    short = np.flatnonzero((idx < 0).any(axis=1))
    if len(short):
        idx[short], sims[short] = _exact_rows(builder, parts, counts, offsets, short, k)
    return idx, sims


def _exact_rows(builder, parts, counts, offsets, rows: np.ndarray, k: int):
    """Exact top-k of the valid rows ``rows`` (sorted), one task per partition holding some."""
    bounds = np.searchsorted(rows, np.asarray(offsets + [offsets[-1] + counts[-1]]))
    jobs = [(knn_partition, (builder.spec, tuple(parts), tuple(counts), tuple(offsets), t, int(k),
                             DEFAULT_MEMORY_BYTES, rows[bounds[t]:bounds[t + 1]] - offsets[t]), f"knn-exact-{t}")
            for t in range(len(parts)) if bounds[t + 1] > bounds[t]]
    out = builder.run(jobs, "neighbour check")
    return np.concatenate([r[0] for r in out]), np.concatenate([r[1] for r in out])
