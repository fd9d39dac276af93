"""The tile loops: one for pairs, one for neighbours, one for collecting rows above a cutoff.

Every engine and executor (local, Dask) runs these; they differ only in which blocks of rows
meet. A tile is ``A[r0:r1] @ B[c0:c1].T`` in the tile dtype of :mod:`.rows` (float32 on a
CPU, float16 tensor cores for pairs on a GPU) and only selects candidates; the final
similarities come from :func:`~tamis.engine.search.rows.canonical_dot` (:mod:`.refine`).

Memory: a tile and its mask take at most half of a worker's share of ``memory_bytes``;
the device plan (:class:`Plan`) gives the default budget, tile shape and worker count.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ...errors import PairLimitError
from ...kernels.pairs import compact_pairs
from ...kernels.topk import empty_topk, merge_topk

__all__ = ["Plan", "plan_for", "as_tile", "spans", "parallel_map", "run_blocks", "pair_strip", "topk_tiles", "collect_above"]


def _cpu_count() -> int:
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else (os.cpu_count() or 1)


@dataclass(frozen=True)
class Plan:
    """What differs between a CPU and a GPU: tile precision and sizes, budget, threads."""

    pair_dtype: str          # dtype of the pair tiles
    memory_bytes: int        # default working-memory budget
    tile_rows: int           # default rows per pair strip
    max_tile_elements: int   # cap on tile rows * cols (cache size on a CPU)
    bucket_rows: int         # ivf: home rows per bucket (0: 1.6 sqrt(N) buckets)
    workers: int             # threads that run strips / buckets concurrently

    def tile_shape(self, memory_bytes: int, block_rows: int | None, itemsize: int) -> tuple[int, int]:
        """(rows, cols) of one tile: a worker's tile and mask take half of its share."""
        elements = memory_bytes // (2 * self.workers * (itemsize + 1))
        elements = max(1, min(self.max_tile_elements, elements))
        rows = min(block_rows or self.tile_rows, elements)
        return rows, max(1, elements // rows)

    def assign_block(self, k: int, memory_bytes: int) -> int:
        """Rows per block when comparing rows with ``k`` centroids (~16 bytes an entry)."""
        elements = min(self.max_tile_elements, memory_bytes // (16 * self.workers))
        return max(1, elements // max(k, 1))

    def default_buckets(self, n: int) -> int:
        if self.bucket_rows:
            return max(1, round(n / self.bucket_rows))
        return max(1, round(1.6 * math.sqrt(n)))


CPU_PLAN = Plan(pair_dtype="float32", memory_bytes=256 << 20, tile_rows=1024,
                max_tile_elements=1 << 22, bucket_rows=0, workers=_cpu_count())
GPU_PLAN = Plan(pair_dtype="float16", memory_bytes=2 << 30, tile_rows=16384,
                max_tile_elements=1 << 29, bucket_rows=8192, workers=1)


def plan_for(xp: ModuleType) -> Plan:
    return CPU_PLAN if xp is np else GPU_PLAN


def as_tile(X: Any, start: int, stop: int, dtype: str) -> Any:
    """Rows ``start:stop`` of ``X`` as ``dtype`` (no copy when they already are)."""
    return X[start:stop].astype(dtype, copy=False)


def spans(n: int, step: int) -> list[tuple[int, int]]:
    return [(start, min(n, start + step)) for start in range(0, n, max(1, step))]


def parallel_map(fn: Callable[[Any], Any], items: list, plan: Plan) -> Iterator[Any]:
    """``map(fn, items)`` in order; on a CPU over ``plan.workers`` threads, each with a
    single-threaded BLAS (NumPy releases the GIL in matmuls and ufuncs). At most
    ``2 * workers`` items are in flight, so results a slower consumer has not taken yet do
    not pile up in memory (``Executor.map`` would start every item at once)."""
    if plan.workers <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    pending = iter(items)
    with _blas_threads(1), ThreadPoolExecutor(plan.workers) as pool:
        running = collections.deque(pool.submit(fn, item) for item in itertools.islice(pending, 2 * plan.workers))
        try:
            while running:
                result = running.popleft().result()
                for item in itertools.islice(pending, 1):
                    running.append(pool.submit(fn, item))
                yield result
        finally:
            for future in running:
                future.cancel()


def run_blocks(fn: Callable[[int], Any], n: int, block: int, xp: ModuleType = np) -> None:
    """``fn(start)`` for every row block ``start = 0, block, 2 block, ...`` below ``n``, on the
    CPU's threads (one after another on a GPU): for block loops whose blocks write disjoint
    parts of their output, so the result is the same however the blocks are run."""
    for _ in parallel_map(fn, list(range(0, n, max(1, block))), plan_for(xp)):
        pass


def _blas_threads(n: int) -> Any:
    controller = _blas_controller()
    return contextlib.nullcontext() if controller is None else controller.limit(limits=n, user_api="blas")


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS libraries, found once (``threadpool_limits`` looks
    for them again at every call: ~0.4-3 ms, and parallel_map runs hundreds of times a scan)."""
    try:
        from threadpoolctl import ThreadpoolController  # installed with scikit-learn
    except ImportError:                                   # pragma: no cover
        return None
    return ThreadpoolController()


# ------------------------------------------------------------------------------ pairs
class PairBudget:
    """The most candidate pairs one search may hold (``None``: no limit), counted as the tiles
    yield them (thread-safe: strips run on several threads), so a threshold that gives too
    many pairs stops with a :class:`~tamis.errors.PairLimitError` long before memory runs out."""

    def __init__(self, limit: int | None, threshold: float, sides: int = 1):
        self.limit = limit
        self.threshold = threshold
        #: how many times the search may see one pair (the bucket scan sees it from both rows)
        self.sides = sides
        self.taken = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        if self.limit is None or not n:
            return
        with self._lock:
            self.taken += int(n)
            over = self.taken > self.limit * self.sides
        if over:
            raise PairLimitError(
                f"threshold {self.threshold:g} gives more than {self.limit:,} pairs (the scan's pair budget, "
                "max_pairs; each pair costs about 100 bytes on the way through the checks): raise the threshold "
                "(--threshold, or the check's own), or raise the budget (--max-pairs) on a machine with the memory",
                self.threshold, self.limit)


def pair_strip(A: Any, B: Any, span: tuple[int, int], offset_a: int, offset_b: int, cutoff: float,
               upper: bool, tile_cols: int, dtype: str, xp: ModuleType,
               budget: PairBudget | None = None) -> tuple[Any, Any]:
    """Global (rows, cols) of the entries ``>= cutoff`` of ``A[r0:r1] @ B.T`` (one tile of
    ``tile_cols`` columns at a time); with ``upper``, only global col > global row. Each
    tile's candidates are counted against ``budget``."""
    r0, r1 = span
    n_b = int(B.shape[0])
    g0 = offset_a + r0
    first = min(n_b, max(0, g0 + 1 - offset_b)) if upper else 0    # skip the lower triangle
    rows = [xp.empty(0, dtype=xp.int64)]
    cols = [xp.empty(0, dtype=xp.int64)]
    Am = as_tile(A, r0, r1, dtype)
    for c0 in range(first, n_b, tile_cols):
        S = Am @ as_tile(B, c0, c0 + tile_cols, dtype).T
        touches_diagonal = upper and offset_b + c0 < offset_a + r1
        r, c, _ = compact_pairs(S, g0, offset_b + c0, cutoff, touches_diagonal, xp)
        del S
        if budget is not None:
            budget.take(int(r.shape[0]))
        rows.append(r)
        cols.append(c)
    return xp.concatenate(rows), xp.concatenate(cols)


# ------------------------------------------------------------------------------ neighbours
def topk_tiles(Q: Any, q_ids: Any, columns: Iterable[tuple[int, Any]], c: int, dtype: str,
               xp: ModuleType, memory_bytes: int, *, symmetric: bool = False,
               best: tuple[Any, Any] | None = None, side: int | None = None,
               progress: Callable[[], Any] | None = None, pair_cutoff: float | None = None,
               pairs_out: list | None = None) -> tuple[Any, Any]:
    """Running top-``c`` tile similarities of the query rows ``Q`` against blocks of columns.

    ``columns`` yields ``(offset, block)``: rows ``offset ..`` of the column set. ``q_ids``
    (xp int64, one per query) are the queries' global ids; the entry whose column id equals
    the query's id is never selected. ``symmetric=True`` says the columns are ``Q`` itself
    (``q_ids == arange``): each tile of the upper triangle then serves its rows and,
    transposed, its columns, so half of the products are computed. ``best`` continues
    earlier lists; ``side`` sets the tile's rows (default: the largest square tile the budget
    allows with ``symmetric``, 4096 query rows without). Returns xp ``(sim float32, idx int64)`` of shape (m, c), best first,
    ties to the smaller id; empty slots are (-inf, -1). With ``pair_cutoff`` (not
    ``symmetric``), the ``(query position, column id)`` of every tile entry at or above it
    are appended to ``pairs_out`` from the same tiles (a recall sample's true pairs and
    neighbours in one pass).

    Without ``symmetric`` the query rows are cut into spans run on the CPU's threads (each
    span owns its rows of the lists, so the lists do not depend on the cut).

    Time ``m n d`` (half with ``symmetric``); memory: one tile per thread within
    ``memory_bytes`` (6 bytes an element: the float32 tile, its mask, the merge's scratch) plus
    the lists.
    """
    m = int(Q.shape[0])
    best_sim, best_idx = best if best is not None else empty_topk(m, c, xp)
    if m == 0:
        return best_sim, best_idx
    plan = plan_for(xp)
    cap = plan.max_tile_elements                         # cache-sized tiles on a CPU
    if symmetric:
        side = side or max(64, math.isqrt(min(memory_bytes // 6, cap)))
        for i0, i1 in spans(m, side):
            Qi = as_tile(Q, i0, i1, dtype)
            for j0, j1 in spans(m, side)[i0 // side:]:
                S = (Qi @ as_tile(Q, j0, j1, dtype).T).astype(xp.float32, copy=False)
                best_sim[i0:i1], best_idx[i0:i1] = merge_topk(S, j0, i0, best_sim[i0:i1],
                                                              best_idx[i0:i1], c, xp)
                if j0 != i0:
                    best_sim[j0:j1], best_idx[j0:j1] = merge_topk(S.T, i0, j0, best_sim[j0:j1],
                                                                  best_idx[j0:j1], c, xp)
                if progress is not None:
                    progress()
        return best_sim, best_idx
    # query spans on the threads (each owns its rows of the lists): a span per thread at least
    rows = min(m, side or 4096, -(-m // plan.workers))
    for offset, block in columns:
        n = int(block.shape[0])
        cols = max(64, min(memory_bytes // (6 * plan.workers), cap) // rows)

        def span(q: tuple[int, int]) -> list:
            q0, q1 = q
            Qq = as_tile(Q, q0, q1, dtype)
            ids = q_ids[q0:q1]
            found = []
            for c0, c1 in spans(n, cols):
                S = (Qq @ as_tile(block, c0, c1, dtype).T).astype(xp.float32, copy=False)
                own = xp.flatnonzero((ids >= offset + c0) & (ids < offset + c1))
                if own.shape[0]:
                    S[own, ids[own] - (offset + c0)] = -np.inf
                if pair_cutoff is not None:
                    r, col, _ = compact_pairs(S, q0, offset + c0, pair_cutoff, False, xp)
                    found.append((r, col))
                best_sim[q0:q1], best_idx[q0:q1] = merge_topk(S, offset + c0, None, best_sim[q0:q1],
                                                              best_idx[q0:q1], c, xp)
            return found

        for found in parallel_map(span, spans(m, rows), plan):
            if pairs_out is not None:
                pairs_out.extend(found)
        if progress is not None:
            progress()
    return best_sim, best_idx


def collect_above(Q: Any, q_ids: Any, columns: Iterable[tuple[int, Any]], cutoffs: Any, dtype: str,
                  xp: ModuleType, memory_bytes: int) -> tuple[Any, Any]:
    """Every (query position, global column id) whose tile similarity is ``>= cutoffs[q]``,
    the query's own id left out. The exact fallback of :func:`refine.refine_neighbours`:
    a row whose top-k the candidates could not certify gets all rows that can still beat
    its k-th neighbour. Time ``m n d``; memory one tile within ``memory_bytes``."""
    m = int(Q.shape[0])
    out_q, out_c = [xp.empty(0, dtype=xp.int64)], [xp.empty(0, dtype=xp.int64)]
    rows = max(1, min(m, 4096))
    cut = xp.asarray(cutoffs, dtype=xp.float32)
    cap = plan_for(xp).max_tile_elements
    for offset, block in columns:
        n = int(block.shape[0])
        cols = max(64, min(memory_bytes // 6, cap) // rows)
        for q0, q1 in spans(m, rows):
            Qq = as_tile(Q, q0, q1, dtype)
            for c0, c1 in spans(n, cols):
                S = (Qq @ as_tile(block, c0, c1, dtype).T).astype(xp.float32, copy=False)
                flat = xp.flatnonzero(S >= cut[q0:q1, None])     # (2-D nonzero is ~10x slower)
                r = flat // S.shape[1]
                col = flat - r * S.shape[1] + (offset + c0)
                r = r + q0
                keep = col != q_ids[r]
                out_q.append(r[keep])
                out_c.append(col[keep])
    return xp.concatenate(out_q), xp.concatenate(out_c)
