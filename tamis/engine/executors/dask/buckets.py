"""The ``ivf`` engine on the workers: bucketed pairs and neighbours for large stores.

The exact plan costs ``M**2 d`` multiply-adds: minutes at 100k rows on a CPU, days at 10M.
This plan restricts the same blocks of partitions to k-means buckets, with the ivf engine's
own pieces (:mod:`tamis.engine.search`): its k-means, probe rules, tile loops, defaults and
canonical rescoring, so what it reports are true pairs and neighbours with the exact
similarity; it can miss, never invent, and it measures what it misses.

1. The client draws a seeded sample of ``max(32 B, 10,000)`` valid rows (``B`` buckets, the
   ivf engine's default for the device), the workers return those rows, and the client fits
   :func:`~tamis.engine.search.kmeans.spherical_kmeans` (4 rounds); the centroids are
   broadcast.
2. One task per partition assigns its rows (:func:`assign_partition`): the home bucket and
   the slack rule's probe buckets (:func:`~tamis.engine.search.kmeans.bucket_members`, the
   first round of :data:`~tamis.engine.search.ivf.PAIR_ROUNDS`). The assignments stay on
   the workers as Dask futures (8 bytes per probe and 4 per row).
3. Pairs: one task per pair of partitions ``i <= j`` (:func:`bucket_pair_block`) compares,
   bucket by bucket, the home rows of one partition with every row probed into that bucket
   in the other (:func:`~tamis.engine.search.exact.pairs_in_block`). The recall is measured
   on 1,000 sampled rows (:func:`~tamis.engine.executors.dask.tasks.sample_pairs`) and reported; a
   warning says when it is below 0.99 (the local engine widens its rule instead; here use
   ``engine="exact"``).
4. Neighbours (buckets as lists): one task per partition (:func:`bucket_knn_partition`)
   compares each of its rows with the home rows, in every partition, of its nearest lists,
   in rounds of 8, 16, 32 then 64 lists (each searching only the lists it adds) until
   recall@k on a seeded sample of 1,000 rows against their certified exact neighbours
   reaches 0.95 + 0.01; rows left with fewer than k neighbours are searched exactly.

Cost, with ``P`` partitions: k-means ``~128 B**2 d`` on the client; assignment ``M B d`` (plus
``M B d`` per kNN round for the probe lists); pairs ``~M (M / B) probes d``; neighbours
``M probes (M / B) d`` plus one rescoring pass over the partitions per round; plus
``P**2 B`` small-tile calls, so keep partitions large (a few hundred thousand rows).
Memory per task: two partitions at the scan's precision (float16 halves it), one permuted
copy, the (n_i, c) lists and the tiles (256 MiB).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from ....io.readers import Partition
from ....kernels.topk import empty_topk
from ...search.exact import n_candidates, pairs_in_block, sort_pairs
from ...search.ivf import KMEANS_ITERS, KNN_PROBES, PAIR_ROUNDS, SAMPLE_ROWS
from ...search.kmeans import bucket_members, probe_order, spherical_kmeans
from ...search.probing import probe_buckets, self_entries
from ...search.recall import knn_recall, recall_against, recall_sample
from ...search.refine import block_scorer, refine_neighbours
from ...search.registry import KNN_RECALL, PAIR_RECALL
from ...search.tiles import PairBudget, plan_for
from .tasks import (
    TASK_MEMORY_BYTES,
    ReadSpec,
    knn_partition,
    load_partition,
    partition_loader,
    sample_pairs,
    sample_rows,
    worker_backend,
)

log = logging.getLogger("tamis")

SEED = 0
PROBE_SLACK, PROBES = PAIR_ROUNDS[0]


# ---------------------------------------------------------------------------- worker tasks
def assign_partition(spec: ReadSpec, part: Partition, n_valid: int, centroids: np.ndarray,
                     threshold: float) -> dict[str, Any]:
    """Bucket assignment of one partition's valid rows (local positions).

    ``members``/``home_count``/``starts``: rows probed into each bucket, home rows first;
    ``home``: each row's bucket (its nearest centroid).
    """
    backend = worker_backend(spec.device)
    xp = backend.xp
    plan = plan_for(xp)
    x = xp.asarray(load_partition(spec, part, n_valid))
    slack = PROBE_SLACK * math.sqrt(2.0 - 2.0 * threshold)
    members, home_count, starts = bucket_members(x, xp.asarray(centroids), min(PROBES, len(centroids)), slack,
                                                 plan, plan.memory_bytes, xp)
    members = backend.to_host(members)
    home = np.empty(n_valid, dtype=np.int32)
    for b, (s, h) in enumerate(zip(starts[:-1], home_count)):
        home[members[s:s + h]] = b
    return {"members": members, "home_count": np.asarray(home_count, dtype=np.int64),
            "starts": np.asarray(starts, dtype=np.int64), "home": home}


def bucket_pair_block(spec: ReadSpec, a: Partition, b: Partition, n_valid: tuple[int, int],
                      offsets: tuple[int, int], assigned: tuple[dict, dict],
                      threshold: float, max_pairs: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (valid-row ids, ``row_a < row_b``) between partitions ``a`` and ``b`` found inside buckets."""
    backend = worker_backend(spec.device)
    xp = backend.xp
    xa = xp.asarray(load_partition(spec, a, n_valid[0]))
    same = a.index == b.index
    xb = xa if same else xp.asarray(load_partition(spec, b, n_valid[1]))
    ea, eb = assigned
    found = []
    for k in range(len(ea["home_count"])):
        ha, ma = _bucket(ea, k)
        hb, mb = _bucket(eb, k)
        if same:
            if len(ha) and len(ma) > 1:
                r, c, s = pairs_in_block(xa[xp.asarray(ha)], xa[xp.asarray(ma)], 0, 0, threshold, xp, upper=True,
                                         max_pairs=max_pairs)
                found.append((ma[backend.to_host(r)], ma[backend.to_host(c)], backend.to_host(s)))
            continue
        for rows_a, rows_b in ((ha, mb), (ma, hb)):
            if len(rows_a) and len(rows_b):
                r, c, s = pairs_in_block(xa[xp.asarray(rows_a)], xb[xp.asarray(rows_b)], 0, len(rows_a), threshold,
                                         xp, max_pairs=max_pairs)
                r, c, s = backend.to_host(r), backend.to_host(c), backend.to_host(s)
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
                         memory_bytes: int = TASK_MEMORY_BYTES) -> dict[str, np.ndarray]:
    """Partition ``i``'s running top-``c`` tile lists after searching the home rows of its probe
    lists ``probes[0] .. probes[1] - 1`` in every partition, and their canonical top-k.

    ``start``: the (indices, similarities) tile lists of the rounds before, or None. Returns
    host ``raw_idx``/``raw_sim`` (n_i, c) to continue from, and ``idx``/``sim`` (n_i, k): the
    candidates rescored canonically (-1 where fewer than k were found).
    """
    backend = worker_backend(spec.device)
    xp = backend.xp
    load = partition_loader(spec, parts, n_valid, xp)
    queries = load(i)
    m, n_lists = n_valid[i], len(centroids)
    c = n_candidates(k, sum(n_valid) - 1)
    lists = backend.to_host(probe_order(queries, xp.asarray(centroids), probes[0], probes[1], xp, memory_bytes))
    if start is None:
        best_sim, best_idx = empty_topk(m, c, xp)
    else:
        best_idx, best_sim = xp.asarray(start[0]), xp.asarray(start[1])
    for j in range(len(parts)):
        home = homes[j]
        perm = np.argsort(home, kind="stable")                        # rows of j grouped by list
        where = np.empty(n_valid[j], dtype=np.int64)
        where[perm] = np.arange(n_valid[j])
        h_start = np.concatenate([[0], np.cumsum(np.bincount(home, minlength=n_lists))])
        columns = load(j)[xp.asarray(perm)]
        ours = (best_idx >= offsets[j]) & (best_idx < offsets[j] + n_valid[j])   # j's ids -> positions in perm
        best_idx[ours] = offsets[j] + xp.asarray(where)[best_idx[ours] - offsets[j]]
        # the local engine's bucket scan over this partition's lists (one implementation)
        best_sim, best_idx, _ = probe_buckets(
            queries, lists, h_start + offsets[j],
            lambda b, h_start=h_start, columns=columns: columns[int(h_start[b]):int(h_start[b + 1])].astype(
                xp.float32, copy=False),
            (best_sim, best_idx), c, xp, memory_bytes, "float32",
            self_entries(xp.asarray(where), h_start, xp) if j == i else None)   # a row is not its own neighbour
        ours = (best_idx >= offsets[j]) & (best_idx < offsets[j] + n_valid[j])   # positions in perm -> j's ids
        best_idx[ours] = offsets[j] + xp.asarray(perm)[best_idx[ours] - offsets[j]]
    score = block_scorer(queries, list(offsets), list(n_valid), load, xp)
    idx, sims, _ = refine_neighbours(best_idx, k, score, xp)
    return {"raw_idx": backend.to_host(best_idx), "raw_sim": backend.to_host(best_sim), "idx": idx, "sim": sims}


# ---------------------------------------------------------------------------- client side
def _centroids(builder, ctx, parts, counts, offsets, threshold: float):
    """Per-partition assignment futures for one k-means fit, made once per run."""
    m = len(ctx.valid_rows)
    key = ("buckets", m)
    if key in builder.state:
        return builder.state[key]
    plan = plan_for(np) if builder.spec.device != "gpu" else plan_for(_GpuMarker)
    n_buckets = min(m, plan.default_buckets(m))
    rng = np.random.default_rng(SEED)
    wanted = np.sort(rng.choice(m, min(m, max(32 * n_buckets, 10_000)), replace=False))
    bounds = np.searchsorted(wanted, np.asarray(offsets + [m]))
    jobs = [(sample_rows, (builder.spec, p, n, wanted[bounds[t]:bounds[t + 1]] - o), f"sample-{p.index}")
            for t, (p, n, o) in enumerate(zip(parts, counts, offsets)) if bounds[t + 1] > bounds[t]]
    sample = np.concatenate(builder.run(jobs, "k-means sample"))
    with ctx.timed("distributed:kmeans"):
        # the sample is all the rows k-means sees: seed 0 draws it whole, as locally
        centroids = spherical_kmeans(sample, n_buckets, KMEANS_ITERS, SEED, plan_for(np), plan_for(np).memory_bytes,
                                     np)
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
    return builder.state[key]


class _GpuMarker:
    """Stands for CuPy in :func:`plan_for` on a client that has none (the GPU plan's sizes)."""


def _pick(assigned: dict, names: tuple[str, ...]) -> Any:
    return assigned[names[0]] if len(names) == 1 else {name: assigned[name] for name in names}


def bucket_pairs_on(builder, ctx, parts, counts, offsets, threshold: float):
    """The bucketed pair search: ``(row_a, row_b, similarity, info)`` in valid-row space, sorted."""
    n_buckets, probe_threshold, assigned = _centroids(builder, ctx, parts, counts, offsets, threshold)
    if threshold < probe_threshold:   # probes were made for a higher threshold: too few for this one
        builder.state.pop(("buckets", len(ctx.valid_rows)))
        n_buckets, probe_threshold, assigned = _centroids(builder, ctx, parts, counts, offsets, threshold)
    jobs = [(bucket_pair_block, (builder.spec, parts[i], parts[j], (counts[i], counts[j]), (offsets[i], offsets[j]),
                                 (assigned["pairs"][i], assigned["pairs"][j]), float(threshold), ctx.max_pairs),
             f"pairs-{threshold}-{parts[i].index}-{parts[j].index}")
            for i in range(len(parts)) for j in range(i, len(parts))]
    found = builder.run(jobs, "pair search", budget=PairBudget(ctx.max_pairs, threshold))
    a, b, s = sort_pairs(found, len(ctx.valid_rows), np)
    recall, n_true = _pair_recall(builder, parts, counts, offsets, a, b, threshold)
    if recall < PAIR_RECALL:
        log.warning("distributed ivf pairs: sample recall %.4f < %.2f; use engine='exact' for every pair",
                    recall, PAIR_RECALL)
    return a, b, s, {"engine": "ivf", "exact": False, "recall": recall, "recall_target": PAIR_RECALL,
                     "recall_sample_pairs": n_true, "buckets": n_buckets, "probes": PROBES,
                     "probe_slack": PROBE_SLACK}


def _pair_recall(builder, parts, counts, offsets, a, b, threshold: float) -> tuple[float, int]:
    m = offsets[-1] + counts[-1]
    sample = recall_sample(m, SAMPLE_ROWS, SEED)
    rows = _gather(builder, parts, counts, offsets, sample)
    jobs = [(sample_pairs, (builder.spec, p, n, o, rows, sample, float(threshold)), f"sample-pairs-{threshold}-{p.index}")
            for p, n, o in zip(parts, counts, offsets)]
    found = builder.run(jobs, "pair recall")
    return recall_against(np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found]), a, b, m)


def _gather(builder, parts, counts, offsets, rows: np.ndarray) -> np.ndarray:
    bounds = np.searchsorted(rows, np.asarray(offsets + [offsets[-1] + counts[-1]]))
    jobs = [(sample_rows, (builder.spec, parts[t], counts[t], rows[bounds[t]:bounds[t + 1]] - offsets[t]),
             f"gather-{len(rows)}-{parts[t].index}") for t in range(len(parts)) if bounds[t + 1] > bounds[t]]
    return np.concatenate(builder.run(jobs, "sample rows"))


def bucket_knn_on(builder, ctx, parts, counts, offsets, k: int):
    """The bucketed neighbour graph, as the local ivf engine searches it: ``(idx, sims, info)``."""
    n_lists, _, assigned = _centroids(builder, ctx, parts, counts, offsets, ctx.config.threshold)
    m = len(ctx.valid_rows)
    sample = recall_sample(m, SAMPLE_ROWS, SEED)
    truth = _exact_rows(builder, parts, counts, offsets, sample, k)[1]
    lists: list[Any] = [None] * len(parts)
    top = min(KNN_PROBES[1], n_lists)
    lo, hi = 0, min(KNN_PROBES[0], top)
    while True:
        jobs = [(bucket_knn_partition, (builder.spec, tuple(parts), tuple(counts), tuple(offsets), t, int(k),
                                        tuple(assigned["home"]), assigned["centroids"], (lo, hi),
                                        None if lists[t] is None else (lists[t]["raw_idx"], lists[t]["raw_sim"])),
                 f"knn-{k}-{hi}-{parts[t].index}") for t in range(len(parts))]
        lists = builder.run(jobs, "neighbour graph")
        idx = np.concatenate([r["idx"] for r in lists])
        sims = np.concatenate([r["sim"] for r in lists])
        recall = knn_recall(idx[sample], sims[sample], truth)
        log.info("distributed ivf neighbours: %d of %d lists probed, sample recall@%d %.4f", hi, n_lists, k, recall)
        if recall >= min(1.0, KNN_RECALL + 0.01) or hi == top:
            break
        lo, hi = hi, min(2 * hi, top)
    if recall < KNN_RECALL:
        log.warning("distributed ivf neighbours: recall@%d %.3f on %d sampled rows with %d lists is below %.2f; "
                    "use engine='exact' for exact neighbours", k, recall, len(sample), hi, KNN_RECALL)
    short = np.flatnonzero((idx < 0).any(axis=1))
    if len(short):
        idx[short], sims[short] = _exact_rows(builder, parts, counts, offsets, short, k)
    return idx, sims, {"engine": "ivf", "exact": False, "recall": recall, "recall_target": KNN_RECALL,
                       "recall_sample_rows": int(len(sample)), "buckets": n_lists, "probes": hi,
                       "rows_completed_exactly": int(len(short))}


def _exact_rows(builder, parts, counts, offsets, rows: np.ndarray, k: int):
    """Certified exact top-k of the valid rows ``rows`` (sorted), one task per partition holding some."""
    bounds = np.searchsorted(rows, np.asarray(offsets + [offsets[-1] + counts[-1]]))
    jobs = [(knn_partition, (builder.spec, tuple(parts), tuple(counts), tuple(offsets), t, int(k),
                             TASK_MEMORY_BYTES, rows[bounds[t]:bounds[t + 1]] - offsets[t]), f"knn-exact-{len(rows)}-{t}")
            for t in range(len(parts)) if bounds[t + 1] > bounds[t]]
    out = builder.run(jobs, "neighbour check")
    return np.concatenate([r[0] for r in out]), np.concatenate([r[1] for r in out])
