"""A new batch against a scanned store: the reference's index, and the two searches between them.

A scan saved with ``--save-index`` leaves its normalised valid rows and, for large stores, a
quantiser (:mod:`tamis.io.index_file`). :class:`Reference` is that index as the search sees it:
the memory-mapped rows (any number of segments), their bucket and each row's cosine to its
bucket's centroid. A scan ``--against`` it searches only between the batch's rows ``Q`` (stored
at the index's precision, so every similarity is the one a full scan of reference + batch gives)
and the reference:

* :func:`pairs_against` -- every (batch row, reference row) with canonical similarity
  ``>= threshold``. ``exact``: the batch against blocks of the reference, ``B N d``
  multiply-adds, memory one block plus the tiles. ``buckets``: exact too, by the triangle
  inequality on the sphere. A reference row ``x`` in bucket ``g`` makes an angle ``theta_x`` with
  the centroid ``c_g``, a batch row ``y`` an angle ``theta_y``; their angle is at least
  ``|theta_x - theta_y|``, so ``x . y >= t`` needs ``|theta_x - theta_y| <= acos(t / (|x| |y|))``.
  The rows of a bucket are kept sorted by ``cos theta_x``, so the rows a batch row must see in a
  bucket are one contiguous range (an annulus around the centroid), empty for the buckets far
  from it. One stray row far from its centroid would widen its bucket for every batch row, so the
  rows beyond their bucket's angle fence (``Q3 + 3 IQR``, or that of all rows), the *halo*, are
  compared with every batch row instead. Cost: ``B N_b d`` (float32) for the centroid angles
  (``N_b`` buckets), ``B H d`` for the halo's ``H`` rows, and the products with the rows of the
  annuli (for a batch row, about the rows of its own class at the threshold 0.95 on the bench
  stores); no pair is ever missed (tests/test_against.py compares it with a full exact scan; on
  bench_against.py's 1M-row reference, 1,500 batch rows gave the exact search's pairs at 0.90 and 0.95).
* :func:`neighbours_against` -- the ``k`` most similar reference rows of each batch row.
  ``exact``: certified top-k over blocks of the reference (the exact engine's ``exact_rows``).
  ``buckets``: each batch row is compared with the rows of its ``p`` nearest buckets, ``p``
  doubling from 8 to 64 until the recall@k measured on a seeded sample of 128 batch rows (against
  their exact lists) reaches 0.96; if 64 do not, the exact search runs. Cost ``B p (N / N_b) d``
  (``N / N_b`` the rows of a probed bucket: buckets near many rows are large) plus the sample's
  ``128 N d``.

``auto`` runs ``exact`` while ``B N d`` is at most the exact engine's budget for the task and
device (:data:`~tamis.engine.search.registry.EXACT_WORK`) or the index has no quantiser, else
``buckets``. Every similarity reported is :func:`~tamis.engine.search.rows.canonical_dot` of the
two stored rows; ties go to the smaller reference position.

:func:`index_data` turns a finished run into what ``--save-index`` writes, :func:`assign` puts rows
into buckets (for the save and for ``tamis index add``), :func:`merge_neighbours` joins a batch
row's neighbours in the reference and in the batch into one list.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import ConfigError
from ..io.index_file import IndexData, OpenIndex
from ..kernels.pairs import compact_pairs
from ..kernels.topk import empty_topk
from .backend import to_host
from .search.exact import exact_rows
from .search.kmeans import nearest_centroid, probe_order, spherical_kmeans
from .search.probing import probe_buckets
from .search.recall import knn_recall, recall_sample
from .search.refine import rank_rows, refine_neighbours, rescore_pairs
from .search.registry import EXACT_WORK, KNN_RECALL
from .search.rows import NORM_TOLERANCE, canonical_dot, tile_dtype, tile_margin
from .search.tiles import PairBudget, pair_strip, parallel_map, plan_for, spans

log = logging.getLogger("tamis")

__all__ = ["Reference", "pairs_against", "neighbours_against", "merge_neighbours", "index_data", "assign",
           "choose_strategy", "QUANTISER_MIN_ROWS"]

#: ``--save-index`` fits a quantiser from this many valid rows on (below it a batch is searched
#: exactly in a blink), or whenever the scan's ivf engine already fitted one or was asked for
QUANTISER_MIN_ROWS = 20_000
#: batch rows whose exact neighbour lists measure the recall of the bucketed neighbour search (their
#: exact search reads the whole reference, ~3 s for 1M x 512 on this project's 2-core CPU; 128 rows
#: x k = 10 slots give a standard error of ~0.5 % at recall 0.97)
SAMPLE_ROWS = 128
#: first and largest number of buckets a batch row's neighbours are searched in
PROBES = (8, 64)
#: candidates beyond k kept for the canonical re-ranking (as the ivf engine)
EXTRA = 2
#: canonical similarities are exact to ~1e-15; the angle bounds widen by this much
ANGLE_SLACK = 1e-9
#: query rows per block when comparing them with every centroid (~8 bytes an entry in all)
ANGLE_BLOCK_BYTES = 64 << 20
#: pairs scored per call of canonical_dot (gathered reference rows: 64 MiB at d = 512, float16)
SCORE_CHUNK = 1 << 16
#: a row whose angle to its bucket's centroid lies this many IQRs above the bucket's third quartile
#: is in the halo (searched against every batch row), so that one outlier does not widen its bucket
HALO_IQR = 3.0
#: the halo holds at most this share of the rows (the farthest beyond their fences)
HALO_MAX_SHARE = 0.05


class Reference:
    """An opened index (:class:`~tamis.io.index_file.OpenIndex`) on the run's device.

    Rows are *positions* ``0 .. n - 1``: segment 0 (the scanned store's valid rows, in input order),
    then each appended batch. The rows stay memory-mapped on the host; the searches copy the
    blocks and buckets they touch to ``xp``.
    """

    def __init__(self, index: OpenIndex, xp: Any = np):
        self.index = index
        self.xp = xp
        self.segments = index.vectors
        self.starts = np.cumsum([0] + [len(v) for v in self.segments]).astype(np.int64)
        self.n = int(self.starts[-1])
        self.d = index.dim
        self.dtype = index.dtype
        self.centroids = None
        if index.centroids is not None:
            self._buckets(index)

    def _buckets(self, index: OpenIndex) -> None:
        """Each bucket's rows by ascending cosine to its centroid (``perm``, ``offsets``,
        ``sorted_cos``), and its halo: the rows whose angle to the centroid lies beyond the
        bucket's fence ``Q3 + HALO_IQR x IQR`` of its angles, or beyond that fence of all rows'
        angles (outliers that sit far from every centroid, and the small loose buckets k-means
        gives them), at most :data:`HALO_MAX_SHARE` of all rows, a prefix of each bucket
        (``halo_count``). O(N log N) on the host when the index is opened."""
        bucket = np.asarray(index.column("bucket").to_numpy(), dtype=np.int64)
        cos = np.asarray(index.column("bucket_cos").to_numpy(), dtype=np.float64)
        k = int(index.centroids.shape[0])
        self.centroids = index.centroids
        self.perm = np.lexsort((np.arange(self.n), cos, bucket))
        self.offsets = np.concatenate([[0], np.cumsum(np.bincount(bucket, minlength=k))]).astype(np.int64)
        self.sorted_cos = cos[self.perm]
        angle = np.arccos(np.clip(self.sorted_cos, -1.0, 1.0))        # descending within a bucket
        size = np.diff(self.offsets)
        last = np.maximum(size - 1, 0)
        q3 = angle[np.minimum(self.offsets[:-1] + last // 4, max(self.n - 1, 0))] if self.n else np.zeros(k)
        q1 = angle[np.minimum(self.offsets[:-1] + (3 * last + 3) // 4, max(self.n - 1, 0))] if self.n else np.zeros(k)
        fence = np.where(size >= 4, q3 + HALO_IQR * (q3 - q1), np.inf)
        if self.n >= 4:   # and the fence of all rows: a bucket of a few stray rows has no quartiles to speak of
            g1, g3 = np.quantile(angle, [0.25, 0.75])
            fence = np.minimum(fence, g3 + HALO_IQR * (g3 - g1))
        owner = np.repeat(np.arange(k), size)
        excess = angle - fence[owner]
        halo = excess > 0
        cap = int(HALO_MAX_SHARE * self.n)
        if halo.sum() > cap:   # the largest excesses; still a prefix of each bucket (excess falls within one)
            halo &= excess >= (np.partition(excess[halo], -cap)[-cap] if cap else np.inf)
        self.halo_count = np.bincount(owner[halo], minlength=k).astype(np.int64)
        self.halo = np.sort(self.perm[halo])
        core_first = self.offsets[:-1] + self.halo_count
        empty = core_first >= self.offsets[1:]
        #: the angles the core of each bucket spans (empty cores: an interval no row reaches)
        self.core_high = np.where(empty, -np.inf, angle[np.minimum(core_first, max(self.n - 1, 0))])
        self.core_low = np.where(empty, np.inf, angle[np.maximum(self.offsets[1:] - 1, 0)])

    @property
    def n_buckets(self) -> int:
        return 0 if self.centroids is None else int(self.centroids.shape[0])

    @property
    def fingerprint(self) -> str:
        return self.index.fingerprint

    def column(self, name: str) -> pa.ChunkedArray | None:
        return self.index.column(name)

    def blocks(self, rows: int) -> Iterator[tuple[int, Any]]:
        """``(position, rows)`` of consecutive blocks of at most ``rows`` rows, on ``xp``."""
        for s, seg in enumerate(self.segments):
            for a, b in spans(len(seg), rows):
                yield int(self.starts[s]) + a, self.xp.asarray(seg[a:b])

    def take(self, positions: np.ndarray) -> Any:
        """The rows at host ``positions`` (any order), on ``xp``."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(self.segments) == 1:
            return self.xp.asarray(self.segments[0][positions])
        out = np.empty((len(positions), self.d), dtype=self.dtype)
        seg = np.searchsorted(self.starts, positions, side="right") - 1
        for s in np.unique(seg):
            sel = seg == s
            out[sel] = self.segments[s][positions[sel] - self.starts[s]]
        return self.xp.asarray(out)

    def score(self, Q: Any, q: Any, positions: Any) -> Any:
        """Canonical similarities of ``Q[q[t]]`` and reference row ``positions[t]`` (float64, ``xp``)."""
        xp = self.xp
        q, positions = xp.asarray(q, dtype=xp.int64), to_host(positions)
        out = xp.empty(len(positions), dtype=xp.float64)
        for a, b in spans(len(positions), SCORE_CHUNK):
            rows = self.take(positions[a:b])
            out[a:b] = canonical_dot(Q, rows, q[a:b], xp.arange(b - a), xp)
        return out


# ------------------------------------------------------------------------------ strategy
def choose_strategy(task: str, engine: str, ref: Reference, n_batch: int, xp: Any) -> str:
    """``exact`` or ``buckets`` for the scan's ``engine`` (``auto``, ``exact`` or ``ivf``)."""
    if engine == "exact":
        return "exact"
    if engine == "ivf":
        if ref.centroids is None:
            raise ConfigError(f"{ref.index.folder}: the index has no buckets (its store had fewer than "
                              f"{QUANTISER_MIN_ROWS:,} rows and the ivf engine did not run), so --engine ivf cannot "
                              "search it: use --engine auto or exact")
        return "buckets"
    work = float(n_batch) * float(ref.n) * float(ref.d)
    device = "cpu" if xp is np else "gpu"
    return "exact" if ref.centroids is None or work <= EXACT_WORK[(device, task)] else "buckets"


# ------------------------------------------------------------------------------ pairs
def pairs_against(Q: Any, ref: Reference, threshold: float, *, xp: Any, engine: str = "auto",
                  memory_bytes: int | None = None, max_pairs: int | None = None,
                  progress: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Every (batch row ``q``, reference position ``p``) with canonical similarity ``>= threshold``,
    host ``(q, p, similarity float32, info)`` sorted by ``(q, p)``; exact with either strategy."""
    strategy = choose_strategy("pairs", engine, ref, int(Q.shape[0]), xp)
    budget = PairBudget(max_pairs, threshold)
    Q = Q.astype(xp.float32)   # float16 rows widened once: the same values, so the same canonical similarities
    if int(Q.shape[0]) == 0 or ref.n == 0:
        found, stats = [], {}
    elif strategy == "exact":
        found, stats = _exact_pairs(Q, ref, threshold, xp, memory_bytes, budget, progress)
    else:
        found, stats = _bucket_pairs(Q, ref, threshold, xp, memory_bytes, budget, progress)
    q, p, s = _sorted(found, ref.n, xp)
    return q, p, s, {"engine": strategy, "exact": True, "recall": 1.0, **stats}


def _sorted(found: list, n: int, xp: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    found = [f for f in found if int(f[0].shape[0])]
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    q = to_host(xp.concatenate([f[0] for f in found])).astype(np.int64)
    p = to_host(xp.concatenate([f[1] for f in found])).astype(np.int64)
    s = to_host(xp.concatenate([f[2] for f in found])).astype(np.float32)
    _, first = np.unique(q * max(n, 1) + p, return_index=True)
    return q[first], p[first], s[first]


def _exact_pairs(Q, ref, threshold, xp, memory_bytes, budget, progress):
    plan = plan_for(xp)
    memory = memory_bytes or plan.memory_bytes
    dtype = tile_dtype(Q, xp, plan.pair_dtype == "float16")
    rows, cols = plan.tile_shape(memory, None, np.dtype(dtype).itemsize)
    cutoff = threshold - tile_margin(ref.d, dtype)
    found = []
    for offset, R in ref.blocks(max(4096, memory // (ref.d * np.dtype(ref.dtype).itemsize))):
        def strip(span, R=R, offset=offset):
            r, c = pair_strip(Q, R, span, 0, 0, cutoff, False, cols, dtype, xp, budget)
            r, c, s = rescore_pairs(Q, R, r, c, threshold, xp)
            return r, c + offset, s

        found += list(parallel_map(strip, spans(int(Q.shape[0]), rows), plan))
        if progress is not None:
            progress(0)
    return found, {"rows_compared": float(ref.n)}


def _annuli(Q: Any, ref: Reference, q0: int, q1: int, threshold: float) -> tuple[Any, Any, Any, Any]:
    """The (batch row, bucket) pairs of rows ``q0 .. q1 - 1`` whose annulus meets the bucket's core,
    and each annulus as a range of ``cos theta_x``: host ``(rows, buckets, cos_low, cos_high)``.

    The angle of a row ``y`` to a centroid comes from a float32 product widened by its proven error
    bound (``tile_margin``); ``x . y >= threshold`` needs ``|theta_x - theta_y| <= alpha`` with
    ``alpha = acos(threshold / ((1 + NORM_TOLERANCE) |y|))`` (``|x| <= 1 + NORM_TOLERANCE``). The
    test against every bucket compares cosines with per-bucket bounds at the block's largest
    ``alpha`` (no arccos over the block x buckets matrix); the ranges use each row's own."""
    xp = ref.xp
    Y = Q[q0:q1]
    norm = xp.sqrt((Y.astype(xp.float64) ** 2).sum(axis=1))
    C = xp.asarray(ref.centroids, dtype=xp.float32)
    c_norm = xp.sqrt((C.astype(xp.float64) ** 2).sum(axis=1))
    dots = Y.astype(xp.float32, copy=False) @ C.T
    margin = tile_margin(ref.d, "float32")
    alpha = xp.arccos(xp.clip(threshold / ((1.0 + NORM_TOLERANCE) * norm), -1.0, 1.0)) + ANGLE_SLACK
    widest = float(alpha.max())
    # theta_y - alpha <= core_high  <=>  cos(theta_y) >= cos(core_high + alpha), and
    # theta_y + alpha >= core_low   <=>  cos(theta_y) <= cos(core_low - alpha)
    empty = ~np.isfinite(ref.core_high)          # a bucket whose rows are all in the halo: no row needs it
    reach_high = np.where(empty, 0.0, ref.core_high + widest)
    reach_low = np.where(empty, 0.0, ref.core_low - widest)
    need_above = np.where(reach_high >= math.pi, -np.inf, np.cos(np.minimum(reach_high, math.pi)))
    need_below = np.where(reach_low <= 0, np.inf, np.cos(np.maximum(reach_low, 0.0)))
    need_above = xp.asarray(np.where(empty, np.inf, need_above))
    need_below = xp.asarray(need_below)
    scale = (norm[:, None] * c_norm[None, :]).astype(xp.float32)
    top = dots + xp.float32(margin)
    bottom = dots - xp.float32(margin)
    r, b = xp.nonzero((top >= (need_above[None, :] - 1e-6) * scale) & (bottom <= (need_below[None, :] + 1e-6) * scale))
    s = scale[r, b].astype(xp.float64)
    low = xp.arccos(xp.clip((top[r, b].astype(xp.float64) + 1e-6) / s, -1.0, 1.0)) - alpha[r]    # theta_y - alpha
    high = xp.arccos(xp.clip((bottom[r, b].astype(xp.float64) - 1e-6) / s, -1.0, 1.0)) + alpha[r]  # theta_y + alpha
    cos_low = xp.cos(xp.minimum(high, math.pi)) - ANGLE_SLACK
    cos_high = xp.cos(xp.maximum(low, 0.0)) + ANGLE_SLACK
    return to_host(r + q0), to_host(b), to_host(cos_low), to_host(cos_high)


def _bucket_pairs(Q, ref, threshold, xp, memory_bytes, budget, progress):
    """The pairs of the halo (every batch row against every halo row, exactly) and of the buckets'
    cores (each batch row against the rows of its annulus in each bucket it can reach)."""
    plan = plan_for(xp)
    memory = memory_bytes or plan.memory_bytes
    dtype = tile_dtype(Q, xp, plan.pair_dtype == "float16")
    cutoff = threshold - tile_margin(ref.d, dtype)
    nb, B = ref.n_buckets, int(Q.shape[0])
    found = []
    if len(ref.halo):
        H = ref.take(ref.halo)
        halo_found, _ = _exact_pairs(Q, _Rows(H, ref), threshold, xp, memory_bytes, budget, None)
        found += [(q, xp.asarray(ref.halo)[c], s) for q, c, s in halo_found]
    parts = [_annuli(Q, ref, q0, q1, threshold) for q0, q1 in spans(B, max(1, ANGLE_BLOCK_BYTES // (8 * max(nb, 1))))]
    probe_q, probe_b, probe_lo, probe_hi = ([p[i] for p in parts] for i in range(4))
    pq, pb, plo, phi = (np.concatenate(v) for v in (probe_q, probe_b, probe_lo, probe_hi))
    order = np.argsort(pb, kind="stable")
    pq, pb, plo, phi = pq[order], pb[order], plo[order], phi[order]
    cuts = np.flatnonzero(np.r_[True, pb[1:] != pb[:-1], True]) if len(pb) else np.zeros(1, np.int64)

    def bucket(g: int) -> tuple[Any, Any, int]:
        s, e = int(cuts[g]), int(cuts[g + 1])
        b = int(pb[s])
        o0, o1 = int(ref.offsets[b] + ref.halo_count[b]), int(ref.offsets[b + 1])
        members_cos = ref.sorted_cos[o0:o1]
        first = np.searchsorted(members_cos, plo[s:e], side="left")
        stop = np.searchsorted(members_cos, phi[s:e], side="right")
        live = stop > first
        if not live.any():
            return xp.empty(0, xp.int64), xp.empty(0, xp.int64), 0
        a, z = o0 + int(first[live].min()), o0 + int(stop[live].max())
        positions = ref.perm[a:z]
        members = ref.take(positions).astype(dtype).T
        qs_all = xp.asarray(pq[s:e][live])
        # tiles of at most ~memory / workers bytes: a bucket reached by many batch rows stays bounded
        rows_per_tile = max(1, memory // (8 * max(z - a, 1) * max(plan.workers, 1)))
        got_q, got_c = [], []
        for t0 in range(0, int(qs_all.shape[0]), rows_per_tile):
            qs = qs_all[t0:t0 + rows_per_tile]
            S = (Q[qs].astype(dtype, copy=False) @ members).astype(xp.float32, copy=False)
            r, c, _ = compact_pairs(S, 0, 0, cutoff, False, xp)
            budget.take(int(r.shape[0]))
            got_q.append(qs[r])
            got_c.append(c)
        c = xp.concatenate(got_c)
        return xp.concatenate(got_q), xp.asarray(positions)[c], int(live.sum()) * (z - a)

    cand_q, cand_p, compared = [], [], 0
    for r, c, products in parallel_map(bucket, list(range(len(cuts) - 1)), plan):
        cand_q.append(r)
        cand_p.append(c)
        compared += products
    if progress is not None:
        progress(0)
    if cand_q:
        q, p = xp.concatenate(cand_q), xp.concatenate(cand_p)
        sims = ref.score(Q, q, p)
        keep = xp.flatnonzero(sims >= threshold)
        found.append((q[keep], p[keep], sims[keep].astype(xp.float32)))
    return found, {"buckets": nb, "buckets_probed": float(len(pq) / max(B, 1)), "halo_rows": int(len(ref.halo)),
                   "rows_compared": float(compared / max(B, 1) + len(ref.halo))}


class _Rows:
    """A matrix already on the device, as :func:`_exact_pairs` reads a reference (one block)."""

    def __init__(self, X: Any, like: Reference):
        self.X, self.d, self.dtype, self.n = X, like.d, like.dtype, int(X.shape[0])

    def blocks(self, rows: int) -> Iterator[tuple[int, Any]]:
        yield 0, self.X


# ------------------------------------------------------------------------------ neighbours
def neighbours_against(Q: Any, ref: Reference, k: int, *, xp: Any, engine: str = "auto",
                       memory_bytes: int | None = None, seed: int = 0,
                       progress: Any = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """The ``min(k, n)`` most similar reference rows of every batch row: host ``(positions (B, k'),
    similarities (B, k') float32, info)``, most similar first, ties to the smaller position."""
    B = int(Q.shape[0])
    k = min(int(k), ref.n)
    if B == 0 or k == 0:
        return np.empty((B, k), np.int64), np.empty((B, k), np.float32), {"engine": "exact", "exact": True,
                                                                           "recall": 1.0}
    strategy = choose_strategy("neighbours", engine, ref, B, xp)
    Q = Q.astype(xp.float32)   # float16 rows widened once: the same values, so the same canonical similarities
    if strategy == "exact":
        idx, sims, rechecked = _exact_neighbours(Q, ref, k, xp, memory_bytes, progress)
        return idx, sims, {"engine": "exact", "exact": True, "recall": 1.0, "rows_rechecked": rechecked}
    return _bucket_neighbours(Q, ref, k, xp, memory_bytes, seed, progress)


def _exact_neighbours(Q, ref, k, xp, memory_bytes, progress, rows=None):
    memory = memory_bytes or plan_for(xp).memory_bytes
    Qs = Q if rows is None else Q[xp.asarray(rows)]
    dtype = tile_dtype(Qs, xp, False)
    # a block is widened to float32 a tile at a time, and a tile of few queries spans the whole
    # block: a quarter of the budget for it
    block = max(4096, memory // (16 * ref.d))
    ids = xp.arange(int(Qs.shape[0]), dtype=xp.int64) + ref.n          # never a reference position
    tick = (lambda: progress(0)) if progress is not None else None
    return exact_rows(Qs, ids, lambda: ref.blocks(block), k, xp, memory,
                      lambda pos, other: ref.score(Qs, pos, other), ref.n, dtype, progress=tick)


def _probe(Q, ref, lo, hi, best, c, xp, memory):
    """Merge the buckets ranked ``lo .. hi - 1`` (by centroid similarity) of every batch row into
    its running top-``c`` lists (indices: places in ``ref.perm``): the ivf engine's bucket scan
    (:func:`~tamis.engine.search.probing.probe_buckets`), each bucket read once and widened to
    the tile dtype, on the CPU's threads."""
    dtype = tile_dtype(Q, xp, False)
    probes = probe_order(Q, xp.asarray(ref.centroids), lo, hi, xp, memory)

    def rows_of(b: int) -> Any:
        return ref.take(ref.perm[int(ref.offsets[b]):int(ref.offsets[b + 1])]).astype(dtype, copy=False)

    best_sim, best_idx, _ = probe_buckets(Q, probes, np.asarray(ref.offsets), rows_of, best, c, xp, memory, dtype)
    return best_sim, best_idx


def _bucket_neighbours(Q, ref, k, xp, memory_bytes, seed, progress):
    memory = memory_bytes or plan_for(xp).memory_bytes
    B = int(Q.shape[0])
    c = min(ref.n, k + EXTRA)
    top = min(ref.n_buckets, PROBES[1])
    perm = xp.asarray(ref.perm)
    sample = recall_sample(B, SAMPLE_ROWS, seed)
    truth = _exact_neighbours(Q, ref, k, xp, memory_bytes, None, rows=sample)[1]
    best = empty_topk(B, c, xp)
    everyone = np.arange(B)

    def candidates(best_idx):
        return xp.where(best_idx >= 0, perm[xp.maximum(best_idx, 0)], -1)

    def score(rows):
        rows = xp.asarray(rows)
        return lambda pos, other: ref.score(Q, rows[pos], other)

    lo, hi = 0, min(PROBES[0], top)
    while True:
        best = _probe(Q, ref, lo, hi, best, c, xp, memory)
        if progress is not None:
            progress(0)
        s_idx, s_sim, _ = refine_neighbours(candidates(best[1][xp.asarray(sample)]), k, score(sample), xp)
        recall = knn_recall(s_idx, s_sim, truth)
        log.info("against: %d of %d buckets probed, sample recall@%d %.4f", hi, ref.n_buckets, k, recall)
        if recall >= min(1.0, KNN_RECALL + 0.01) or hi == top:
            break
        lo, hi = hi, min(2 * hi, top)
    if recall < KNN_RECALL:
        log.warning("against: neighbour recall %.4f < %.2f with %d buckets; searching exactly", recall, KNN_RECALL, hi)
        idx, sims, rechecked = _exact_neighbours(Q, ref, k, xp, memory_bytes, progress)
        return idx, sims, {"engine": "exact", "asked": "buckets", "exact": True, "recall": 1.0,
                           "buckets_recall": recall, "rows_rechecked": rechecked}
    idx, sims, _ = refine_neighbours(candidates(best[1]), k, score(everyone), xp)
    short = np.flatnonzero((idx < 0).any(axis=1))
    if short.size:
        idx[short], sims[short], _ = _exact_neighbours(Q, ref, k, xp, memory_bytes, None, rows=short)
    return idx, sims, {"engine": "buckets", "exact": False, "recall": recall, "recall_target": KNN_RECALL,
                       "recall_sample_rows": int(len(sample)), "buckets": ref.n_buckets, "probes": hi,
                       "rows_completed_exactly": int(short.size)}


def merge_neighbours(batch_idx: np.ndarray, batch_sim: np.ndarray, ref_idx: np.ndarray, ref_sim: np.ndarray,
                     n_ref: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One list per batch row from its neighbours among the batch (``batch_idx``: valid-row
    positions) and in the reference (``ref_idx``: positions): the ``k`` best by similarity, ties
    in the order of a full scan of reference + batch (reference rows first). Returns ``(indices,
    similarities)`` with batch rows as ``i`` and reference position ``p`` as ``M + p``."""
    m = ref_idx.shape[0]
    key = np.concatenate([np.where(ref_idx >= 0, ref_idx, -1), np.where(batch_idx >= 0, batch_idx + n_ref, -1)],
                         axis=1).astype(np.int64)
    sims = np.concatenate([ref_sim, batch_sim], axis=1).astype(np.float64)
    sims, key = rank_rows(sims, key, np)
    sims, key = sims[:, :k], key[:, :k]
    out = np.where(key < 0, -1, np.where(key < n_ref, key + m, key - n_ref))
    return out.astype(np.int64), sims.astype(np.float32)


# ------------------------------------------------------------------------------ building an index
def assign(X: Any, centroids: Any, xp: Any, memory_bytes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Host ``(bucket int32, cos float64)`` of every row: its nearest centroid, and ``x . c / |x|``
    computed in float64 (the angle the bucketed pair search relies on)."""
    plan = plan_for(xp)
    memory = memory_bytes or plan.memory_bytes
    C = xp.asarray(centroids, dtype=xp.float32)
    bucket, _ = nearest_centroid(X, C, plan.assign_block(int(C.shape[0]), memory), plan, xp)
    cos = np.empty(int(X.shape[0]), dtype=np.float64)
    C64 = C.astype(xp.float64)
    for a, b in spans(int(X.shape[0]), max(1, (16 << 20) // max(1, int(X.shape[1])))):
        Y = X[a:b].astype(xp.float64)
        c = C64[bucket[a:b]]
        cos[a:b] = to_host((Y * c).sum(axis=1) / (xp.sqrt((Y * Y).sum(axis=1)) * xp.sqrt((c * c).sum(axis=1))))
    return to_host(bucket).astype(np.int32), cos


def index_data(ctx: Any) -> IndexData:
    """What ``--save-index`` writes for the run ``ctx``: the normalised valid rows (host), their
    row, id, label, split and path, and a quantiser where the ivf engine fitted one, or the store
    has at least :data:`QUANTISER_MIN_ROWS` valid rows, or the scan asked for ``engine="ivf"``
    (seed 0, the ivf engine's bucket count and 4 k-means iterations, or its ``n_buckets`` and
    ``kmeans_iters``)."""
    X = ctx.embeddings
    rows = ctx.valid_rows
    store = ctx.store
    take = pa.array(rows)
    columns = {"row": take, "id": store.ids.take(take) if store.ids is not None else take}
    for name, value in (("label", store.labels), ("split", store.split), ("path", store.paths)):
        if value is not None:
            columns[name] = value.take(take)
    table = pa.table(columns)
    m = len(rows)
    centroids = next((v for key, v in ctx.search_state.items()
                      if isinstance(key, tuple) and key[:2] == ("ivf_centroids", m)), None)
    plan = plan_for(ctx.xp)
    if centroids is None and m >= 2 and (m >= QUANTISER_MIN_ROWS or ctx.config.engine == "ivf"):
        params = ctx.config.search_params
        n_buckets = min(m, int(params.get("n_buckets") or plan.default_buckets(m)))
        with ctx.timed("index:kmeans"):
            centroids = spherical_kmeans(X, n_buckets, int(params.get("kmeans_iters") or 4), 0, plan,
                                         plan.memory_bytes, ctx.xp)
    bucket = cos = None
    if centroids is not None:
        with ctx.timed("index:assign"):
            bucket, cos = assign(X, centroids, ctx.xp)
        centroids = to_host(centroids)
    return IndexData(vectors=to_host(X), rows=table, buckets=bucket, bucket_cos=cos, centroids=centroids,
                     source=str(store.source))
