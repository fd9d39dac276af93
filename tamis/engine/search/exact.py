"""The ``exact`` engine: blocked all-pairs and blocked top-k, on NumPy or CuPy.

Pairs: row strips against the columns to their right (the upper triangle), tiles in the
plan's dtype, entries ``>= threshold - margin`` compacted by :mod:`tamis.kernels.pairs`,
then rescored canonically. Neighbours: square tiles of the upper triangle, each serving its
rows and (transposed) its columns, merged into running top-``c`` lists by
:mod:`tamis.kernels.topk` (``c = k + max(8, k // 2)``), then certified and rescored by
:func:`~tamis.engine.search.refine.refine_neighbours`. Both are exact: identical pairs and
neighbour lists on every device, BLAS kernel and block shape.

Cost: pairs ``N**2 d / 2`` multiply-adds plus ``O(K d)`` float64 for ``K`` candidates;
neighbours ``N (N + b) d / 2`` for tile side ``b`` plus ``O(N c d)`` float64. Memory beyond
``X``: ``memory_bytes`` (default 256 MiB on a CPU, 2 GiB on a GPU) for the tiles, the
``(N, c)`` lists and the candidates.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ...errors import ConfigError, InputError
from ..backend import to_host
from .refine import refine_neighbours, rescore_pairs
from .registry import SearchEngine, SearchOptions, check_positive_int, register
from .rows import canonical_dot, tile_dtype, tile_margin
from .tiles import (
    PairBudget,
    collect_above,
    pair_strip,
    parallel_map,
    plan_for,
    spans,
    topk_tiles,
)

__all__ = ["ExactEngine", "pairs_in_block", "exact_pairs", "exact_neighbours", "exact_rows",
           "n_candidates", "sort_pairs"]


def n_candidates(k: int, n_other: int) -> int:
    """Candidates per query kept by the tiles: k plus a margin for near-ties (<= the
    CUDA kernel's 32 for k <= 21)."""
    return min(n_other, k + max(8, k // 2))


def sort_pairs(found: list, n: int, xp: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate (a, b, sim) parts, drop repeats, sort by (a, b), move to the host."""

    found = [f for f in found if f[0].shape[0]]
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    a = xp.concatenate([f[0] for f in found]).astype(xp.int64)
    b = xp.concatenate([f[1] for f in found]).astype(xp.int64)
    s = xp.concatenate([f[2] for f in found]).astype(xp.float32)
    _, first = xp.unique(a * max(n, 1) + b, return_index=True)
    return to_host(a[first]), to_host(b[first]), to_host(s[first])


def pairs_in_block(Xa: Any, Xb: Any, offset_a: int, offset_b: int, threshold: float, xp: Any, *,
                   upper: bool = False, memory_bytes: int | None = None, block_rows: int | None = None,
                   progress: Callable[[int], Any] | None = None,
                   max_pairs: int | None = None) -> tuple[Any, Any, Any]:
    """Pairs between two blocks of rows: the unit of work of the exact engine (local and Dask).

    ``Xa[r]`` is global row ``offset_a + r``, ``Xb[r]`` global row ``offset_b + r``. With
    ``upper`` (a block against itself, ``offset_a == offset_b``) only global b > global a;
    without it the blocks must not overlap and ``offset_b`` must follow block a. Returns xp
    ``(a, b, similarity)`` (unsorted) of every pair with canonical similarity ``>= threshold``.
    """
    if Xa.shape[1] != Xb.shape[1]:
        raise InputError(f"Xa has {Xa.shape[1]} columns but Xb has {Xb.shape[1]}; both blocks "
                         "must come from the same embedding matrix")
    if not upper and offset_b < offset_a + Xa.shape[0] and Xb.shape[0] and Xa.shape[0]:
        raise ConfigError(f"without upper=True block b (offset_b={offset_b}) must start after block a "
                          f"ends (offset_a + len(Xa) = {offset_a + Xa.shape[0]}); pass upper=True "
                          "for blocks on the diagonal, or swap the blocks")
    plan = plan_for(xp)
    memory = memory_bytes or plan.memory_bytes
    dtype = tile_dtype(Xa, xp, plan.pair_dtype == "float16")
    rows, cols = plan.tile_shape(memory, block_rows, np.dtype(dtype).itemsize)
    cutoff = threshold - tile_margin(int(Xa.shape[1]), dtype)
    budget = PairBudget(max_pairs, threshold)

    def strip(span: tuple[int, int]) -> tuple[Any, Any, Any]:
        r, c = pair_strip(Xa, Xb, span, offset_a, offset_b, cutoff, upper, cols, dtype, xp, budget)
        ra, cb, s = rescore_pairs(Xa, Xb, r - offset_a, c - offset_b, threshold, xp)
        if progress is not None:
            progress(span[1] - span[0])
        return ra + offset_a, cb + offset_b, s

    found = list(parallel_map(strip, spans(int(Xa.shape[0]), rows), plan))
    if not found:
        return xp.empty(0, xp.int64), xp.empty(0, xp.int64), xp.empty(0, xp.float32)
    return tuple(xp.concatenate([f[t] for f in found]) for t in range(3))


def exact_pairs(X: Any, threshold: float, opt: SearchOptions,
                block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b, s = pairs_in_block(X, X, 0, 0, threshold, opt.xp, upper=True, memory_bytes=opt.memory_bytes,
                             block_rows=block_rows, progress=opt.progress, max_pairs=opt.max_pairs)
    return sort_pairs([(a, b, s)], int(X.shape[0]), opt.xp)


def exact_rows(Q: Any, q_ids: Any, columns: Callable[[], Any], k: int, xp: Any, memory: int,
               score: Callable[[Any, Any], Any], n_other: int, dtype: str,
               symmetric: bool = False, progress: Callable[[], Any] | None = None,
               side: int | None = None, pair_cutoff: float | None = None,
               pairs_out: list | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Certified canonical top-k of the queries ``Q`` (global ids ``q_ids``) against the
    column blocks ``columns()`` yields (called once per pass), with ``score`` the canonical
    similarity of (query positions, global ids). Shared by the local engine and the Dask
    tasks. Returns host ``(indices, similarities, rows that needed the fallback)``;
    ``pair_cutoff`` / ``pairs_out``: see :func:`~.tiles.topk_tiles`."""
    c = n_candidates(k, n_other)
    best_sim, best_idx = topk_tiles(Q, q_ids, columns(), c, dtype, xp, memory, symmetric=symmetric,
                                    side=side, progress=progress, pair_cutoff=pair_cutoff, pairs_out=pairs_out)
    bound = best_sim[:, c - 1] if c < n_other else xp.full(int(Q.shape[0]), -np.inf, dtype=xp.float32)
    margin = tile_margin(int(Q.shape[1]), dtype)

    def collect(positions: Any, cutoffs: Any) -> tuple[Any, Any]:
        return collect_above(Q[positions], q_ids[positions], columns(), cutoffs, dtype, xp, memory)

    return refine_neighbours(best_idx, k, score, xp, bound=bound, margin=margin, collect=collect)


def exact_neighbours(X: Any, k: int, opt: SearchOptions, rows: Any = None,
                     pair_threshold: float | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Certified exact neighbours of every row (or of the rows ``rows``) of ``X``; the tile side
    is ``opt.params["block_rows"]`` when given. With ``rows`` and ``pair_threshold``, also the
    rows' true pairs from the same tiles: returns ``(indices, similarities, n, (row ids, other
    ids))``, every pair with canonical similarity ``>= pair_threshold`` (either order)."""
    xp = opt.xp
    memory = opt.memory_bytes or plan_for(xp).memory_bytes
    n = int(X.shape[0])
    dtype = tile_dtype(X, xp, False)
    if rows is None:
        ids = xp.arange(n, dtype=xp.int64)
        Q, symmetric = X, True
    else:
        ids = xp.asarray(rows, dtype=xp.int64)
        Q, symmetric = X[ids], False
    tick = (lambda: opt.progress(0)) if opt.progress is not None else None
    found: list = []
    cutoff = None if pair_threshold is None or rows is None else pair_threshold - tile_margin(int(X.shape[1]), dtype)
    result = exact_rows(Q, ids, lambda: [(0, X)], k, xp, memory,
                        lambda pos, other: canonical_dot(X, X, ids[pos], other, xp), n - 1, dtype,
                        symmetric=symmetric, progress=tick,
                        side=check_positive_int("block_rows", opt.params.get("block_rows"), "e.g. 1024"),
                        pair_cutoff=cutoff, pairs_out=found)
    if cutoff is None:
        return result
    pos = xp.concatenate([f[0] for f in found] or [xp.empty(0, dtype=xp.int64)])
    other = xp.concatenate([f[1] for f in found] or [xp.empty(0, dtype=xp.int64)])
    pos, other, _ = rescore_pairs(X, X, ids[pos], other, pair_threshold, xp)
    return (*result, (to_host(pos), to_host(other)))


@register
class ExactEngine(SearchEngine):
    """Blocked exact search (NumPy BLAS on a CPU, CuPy tiles and kernels on a GPU)."""

    name = "exact"
    exact = True
    parameters = ("block_rows",)

    def pairs(self, X: Any, threshold: float, opt: SearchOptions):
        block_rows = check_positive_int("block_rows", opt.params.get("block_rows"), "e.g. 1024")
        a, b, s = exact_pairs(X, threshold, opt, block_rows)
        return a, b, s, {"engine": self.name, "exact": True, "recall": 1.0}

    def neighbours(self, X: Any, k: int, opt: SearchOptions):
        idx, sims, collected = exact_neighbours(X, k, opt)
        return idx, sims, {"engine": self.name, "exact": True, "recall": 1.0,
                           "rows_rechecked": collected}
