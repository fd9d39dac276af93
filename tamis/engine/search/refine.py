"""Canonical answers from candidates: the one place final similarities are computed.

Whatever found a candidate (a float32 or float16 tile, an inverted list, a FAISS or cuVS
index, a Dask partition), :func:`rescore_pairs` and :func:`refine_neighbours` score it with
:func:`~tamis.engine.search.rows.canonical_dot` and break ties by row id, so block shapes,
partitions, BLAS kernels and devices change only the speed.

Certified neighbours
--------------------
An exact engine hands over, per query, its ``c > k`` best candidates by tile similarity and
the tile similarity of the last one (``bound``): no other row scored higher in the tile,
so no other row's true similarity exceeds ``bound + margin``. After rescoring, let ``t`` be
the k-th best canonical similarity among the candidates. If ``t > bound + margin`` the
top-k is proven to be the canonical top-k of all rows. Otherwise (near-ties, or more than
``c`` rows with the same vector) the query goes to ``collect``: every row whose tile
similarity is ``>= t - margin`` (a set that must hold the true top-k, since ``t`` is a
lower bound on the true k-th best), rescored and ranked the same way.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable

import numpy as np

from ..backend import to_host
from .rows import canonical_dot

__all__ = ["rescore_pairs", "refine_neighbours", "rank_rows", "block_scorer"]

Score = Callable[[Any, Any], Any]           # (query positions, global ids) -> float64 xp array


def rescore_pairs(A: Any, B: Any, ia: Any, ib: Any, threshold: float,
                  xp: ModuleType) -> tuple[Any, Any, Any]:
    """Candidates ``(A[ia], B[ib])`` whose canonical similarity is ``>= threshold``;
    returns ``(ia, ib, float32 similarity)`` of those kept."""
    sims = canonical_dot(A, B, ia, ib, xp)
    keep = sims >= threshold
    return ia[keep], ib[keep], sims[keep].astype(xp.float32)


def block_scorer(Q: Any, offsets: list[int], counts: list[int], load: Callable[[int], Any],
                 xp: ModuleType) -> Score:
    """``score(positions, ids)`` for rows held in blocks (``load(j)`` gives the rows
    ``offsets[j] .. offsets[j] + counts[j] - 1``): each block is loaded once per call and
    its candidates scored with :func:`canonical_dot`. One block is the in-memory case."""
    starts = np.asarray(offsets, dtype=np.int64)

    def score(positions: Any, ids: Any) -> Any:
        out = xp.empty(int(ids.shape[0]), dtype=xp.float64)
        order = xp.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        cuts = to_host(xp.searchsorted(sorted_ids, xp.asarray(np.r_[starts, starts[-1] + counts[-1]])))
        for j in range(len(starts)):
            if cuts[j + 1] > cuts[j]:
                sel = order[int(cuts[j]):int(cuts[j + 1])]
                out[sel] = canonical_dot(Q, load(j), positions[sel], ids[sel] - int(starts[j]), xp)
        return out

    return score


def rank_rows(sims: Any, idx: Any, xp: ModuleType) -> tuple[Any, Any]:
    """Each row of (m, c) ``sims``/``idx`` sorted by similarity descending, then id
    ascending; empty slots (id -1) last."""
    key_idx = xp.where(idx < 0, xp.iinfo(xp.int64).max, idx)
    first = xp.argsort(key_idx, axis=1, kind="stable")
    s1 = xp.take_along_axis(sims, first, axis=1)
    s1 = xp.where(xp.take_along_axis(idx, first, axis=1) < 0, -np.inf, s1)
    second = xp.argsort(-s1, axis=1, kind="stable")
    order = xp.take_along_axis(first, second, axis=1)
    return xp.take_along_axis(sims, order, axis=1), xp.take_along_axis(idx, order, axis=1)


def refine_neighbours(cand_idx: Any, k: int, score: Score, xp: ModuleType, *,
                      bound: Any = None, margin: float = 0.0,
                      collect: Callable[[Any, Any], tuple[Any, Any]] | None = None,
                      score_rows: Callable[[Any], Any] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, int]:
    """Canonical top-``k`` of each query from its candidates.

    ``cand_idx``: (m, c) global ids (-1 empty, no duplicates in a row, never the query
    itself); ``score(positions, ids)``: canonical similarities of query ``positions`` with
    rows ``ids``; ``score_rows(cand_idx)``, when given, gives the same values as one ``(m, c)``
    array at once (empty slots ignored). With ``bound`` ((m,) tile similarity of each query's c-th candidate, -inf
    where the candidates are every other row) and ``collect(positions, cutoffs)`` (all
    (position, id) with tile similarity >= cutoff), the result is certified exact (module
    docstring); without them it is the candidates' best k, rescored.

    Returns host ``(indices int64 (m, k), similarities float32 (m, k), n_collected)``;
    slots with no candidate hold (-1, -inf).
    """
    m, c = (int(v) for v in cand_idx.shape)
    if m == 0:
        return np.empty((0, k), np.int64), np.empty((0, k), np.float32), 0
    if score_rows is not None:
        sims = xp.where(cand_idx >= 0, score_rows(cand_idx), -np.inf)
    else:
        flat = cand_idx.reshape(-1)
        pos = xp.repeat(xp.arange(m), c)
        have = flat >= 0
        sims = xp.full(m * c, -np.inf, dtype=xp.float64)
        sims[have] = score(pos[have], flat[have])
        sims = sims.reshape(m, c)
    sims, idx = rank_rows(sims, cand_idx, xp)
    if c < k:   # fewer candidates than k: pad
        sims = xp.concatenate([sims, xp.full((m, k - c), -np.inf)], axis=1)
        idx = xp.concatenate([idx, xp.full((m, k - c), -1, dtype=xp.int64)], axis=1)
    sims, idx = sims[:, :k], idx[:, :k]
    n_collected = 0
    if bound is not None and collect is not None:
        t = sims[:, k - 1]
        b = xp.asarray(bound, dtype=xp.float64)
        unsure = xp.flatnonzero(~(t > b + margin) & xp.isfinite(b))
        n_collected = int(unsure.shape[0])
        if n_collected:
            cut = (t[unsure] - margin).astype(xp.float32)
            # a float32 cutoff must not round above t - margin
            cut = xp.where(cut.astype(xp.float64) > t[unsure] - margin,
                           xp.nextafter(cut, xp.float32(-np.inf)), cut)
            j, ids = collect(unsure, cut)          # j: positions in ``unsure``
            new_idx, new_sim = _rank_ragged(to_host(j), to_host(ids), to_host(score(unsure[j], ids)),
                                            k, n_collected)
            rows = to_host(unsure)
            host_idx, host_sim = to_host(idx).copy(), to_host(sims).copy()
            host_idx[rows], host_sim[rows] = new_idx, new_sim
            return host_idx, host_sim.astype(np.float32), n_collected
    return to_host(idx), to_host(sims).astype(np.float32), n_collected


def _rank_ragged(row: np.ndarray, ids: np.ndarray, sims: np.ndarray, k: int,
                 m: int) -> tuple[np.ndarray, np.ndarray]:
    """(m, k) top-k per query of the triples (row, id, sim), ranked like :func:`rank_rows`."""
    out_idx = np.full((m, k), -1, np.int64)
    out_sim = np.full((m, k), -np.inf)
    order = np.lexsort((ids, -sims, row))
    row, ids, sims = row[order], ids[order], sims[order]
    rank = np.arange(len(row)) - np.searchsorted(row, row, side="left")
    keep = rank < k
    out_idx[row[keep], rank[keep]] = ids[keep]
    out_sim[row[keep], rank[keep]] = sims[keep]
    return out_idx, out_sim
