"""The shared artefacts of a run: the near-duplicate pairs and the neighbour graph, built once.

Every duplicate-family check asks :func:`pairs_at` for the threshold it needs: pairs are
searched once per run, at the lowest threshold asked for first (the near-duplicate check's
sweep starts at 0.90), and a higher threshold filters them. Every neighbour-based check
(label errors, outliers, split shift, the projection) asks :func:`neighbours` for its k: a
graph built for a larger k is sliced, never rebuilt. Both are built by the run's executor
(:mod:`tamis.engine.executors`) and cached in the run context under ``("pairs", threshold)``
and ``("knn", k)``; this module is the only one that knows those keys.

Row spaces: pairs are kept in input-row space (``row_a < row_b``, sorted); the graph lives
in the valid-row space of ``ctx.embeddings`` (indices into it). With a group column (the image
an object crop comes from), pairs within one group are dropped: crops of one image are never
each other's duplicates or leaks.

Against a reference (``ctx.reference``, ``--against``): :func:`pairs_at` stays the batch's own
pairs, :func:`reference_pairs` gives the (batch row, reference position) pairs, and the graph of
:func:`neighbours` reaches into the reference: index ``i < M`` is valid row ``i`` of the batch,
``M + p`` reference position ``p`` (:func:`neighbour_codes` reads their labels or splits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import DEFAULT_K
from ..errors import ConfigError, PairLimitError
from .reference import merge_neighbours, neighbours_against, pairs_against


@dataclass(frozen=True)
class Pairs:
    """Pairs of input rows with their cosine similarity; ``row_a < row_b``, sorted."""

    row_a: np.ndarray
    row_b: np.ndarray
    similarity: np.ndarray
    threshold: float

    def at(self, threshold: float) -> "Pairs":
        if threshold == self.threshold:
            return self
        keep = self.similarity >= np.float32(threshold)
        return Pairs(self.row_a[keep], self.row_b[keep], self.similarity[keep], threshold)

    def __len__(self) -> int:
        return len(self.row_a)


def resolve_threshold(ctx, threshold: float | None) -> float:
    """A check's own threshold, else the scan's ``--threshold``."""
    return float(threshold) if threshold is not None else float(ctx.config.threshold)


def pairs_at(ctx, threshold: float) -> Pairs:
    """All pairs of valid rows with similarity >= ``threshold``, searched once per run."""
    for built, pairs in sorted(ctx.built("pairs").items()):
        if built <= threshold:
            return pairs.at(threshold)

    def build() -> Pairs:
        a, b, sim, info = ctx.executor.pairs(ctx, threshold)
        ctx.search_info["pairs"] = {"threshold": float(threshold), **info}
        rows = ctx.valid_rows
        ra, rb = rows[a], rows[b]
        keep = ctx.across_groups(ra, rb)   # two crops of one image are no duplicates of each other
        return Pairs(ra[keep], rb[keep], sim.astype(np.float32)[keep], threshold)

    return ctx.artifact(("pairs", float(threshold)), build)


def choose_threshold(ctx, fraction: float, candidates: tuple[float, ...]) -> dict:
    """The lowest of ``candidates`` at which at most ``fraction`` of the valid rows have a near
    duplicate (the highest when none qualifies), from one pair search at the lowest candidate;
    returns ``{"threshold", "fraction", "shares": {t: share}, "reason"}``."""
    candidates = tuple(sorted(candidates))
    while True:   # a candidate that gives more pairs than the budget is no choice: try the next
        try:
            pairs = pairs_at(ctx, candidates[0])
            break
        except PairLimitError:
            if len(candidates) == 1:
                raise
            candidates = candidates[1:]
    m = max(1, len(ctx.valid_rows))
    shares = {}
    for t in candidates:
        at = pairs.at(t)
        shares[t] = float(len(np.union1d(at.row_a, at.row_b)) / m)
    fits = [t for t in candidates if shares[t] <= fraction]
    chosen = fits[0] if fits else candidates[-1]
    reason = (f"the lowest threshold with at most {fraction:.2%} of the rows in a pair ({shares[chosen]:.2%})"
              if fits else f"no threshold up to {chosen:g} flags at most {fraction:.2%} ({shares[chosen]:.2%} "
              "at the highest)")
    return {"threshold": chosen, "fraction": fraction, "shares": {f"{t:g}": s for t, s in shares.items()},
            "reason": reason}


def _rows_to_search(ctx) -> int:
    """The rows a valid row's neighbours come from: the valid rows, and the reference's."""
    return len(ctx.valid_rows) + (ctx.reference.n if ctx.reference is not None else 0)


def resolve_k(ctx, k: int | None) -> int:
    """The k a check uses: its own, else the scan's, else :data:`~tamis.config.DEFAULT_K` capped
    at M - 1. A k that was asked for is never lowered: :func:`neighbours` refuses one >= M."""
    chosen = k if k is not None else ctx.config.k
    if chosen is not None:
        return int(chosen)
    m = _rows_to_search(ctx)
    if m < 2:
        raise ConfigError(f"{ctx.store.source}: neighbour-based checks need at least 2 valid rows, and the store "
                          f"has {m}; leave them out with --checks")
    return min(DEFAULT_K, m - 1)


def neighbours(ctx, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, similarities), each (M, k), of the valid rows: self excluded, most similar first
    (against a reference, among the batch's and the reference's rows: indices ``M + p`` name
    reference position ``p``)."""
    m = _rows_to_search(ctx)
    if k >= m:
        raise ConfigError(f"k={k} neighbours need at least {k + 1} valid rows, and the store has {m}; "
                          f"lower k (--k {max(1, m - 1)}) or scan more rows")
    for built, (idx, sim) in sorted(ctx.built("knn").items()):
        if built >= k:
            return idx[:, :k], sim[:, :k]

    def build():
        if ctx.reference is not None:
            return _against(ctx, k)
        idx, sims, info = ctx.executor.knn(ctx, k)
        ctx.search_info["neighbours"] = {"k": int(k), **info}
        return idx, sims

    return ctx.artifact(("knn", int(k)), build)


def _against(ctx, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each batch row's k nearest among the other batch rows and the reference's rows, merged."""
    m, ref = len(ctx.valid_rows), ctx.reference
    own = min(k, m - 1)
    if own >= 1:
        b_idx, b_sim, b_info = ctx.executor.knn(ctx, own)
    else:
        b_idx, b_sim, b_info = np.empty((m, 0), np.int64), np.empty((m, 0), np.float32), {"exact": True,
                                                                                        "recall": 1.0}
    with ctx.progress.task(f"neighbours in the reference (k={k})", total=None) as advance:
        r_idx, r_sim, r_info = neighbours_against(ctx.embeddings, ref, k, xp=ctx.xp, engine=ctx.config.engine,
                                                  progress=lambda done: advance(0))
    idx, sims = merge_neighbours(b_idx, b_sim, r_idx, r_sim, ref.n, k)
    ctx.search_info["neighbours"] = {"k": int(k), "engine": r_info.get("engine"),
                                     "exact": bool(b_info.get("exact") and r_info.get("exact")),
                                     "recall": min(float(b_info.get("recall", 1.0)), float(r_info.get("recall", 1.0))),
                                     "batch": b_info, "reference": r_info}
    return idx, sims


def neighbour_codes(ctx, idx: np.ndarray, kind: str = "labels") -> np.ndarray:
    """The label (``kind`` "labels") or split ("split") code of every neighbour in ``idx`` (a graph
    of :func:`neighbours`): a valid row's own, and against a reference a reference row's, in the
    run's numbering. Same shape as ``idx``."""
    own = (ctx.label_codes if kind == "labels" else ctx.split_codes)[ctx.valid_rows]
    if ctx.reference is None:
        return own[idx]
    m = len(own)
    inside = idx < m
    out = np.empty(idx.shape, dtype=np.int64)
    out[inside] = own[idx[inside]]
    out[~inside] = ctx.reference_codes(kind)[idx[~inside] - m]
    return out


@dataclass(frozen=True)
class ReferencePairs:
    """(batch input row, reference position) pairs with similarity >= ``threshold``, sorted by
    (row, position); ``exact`` where the two stored rows are bit-identical."""

    row: np.ndarray
    position: np.ndarray
    similarity: np.ndarray
    exact: np.ndarray
    threshold: float

    def at(self, threshold: float) -> "ReferencePairs":
        if threshold == self.threshold:
            return self
        keep = self.similarity >= np.float32(threshold)
        return ReferencePairs(self.row[keep], self.position[keep], self.similarity[keep], self.exact[keep], threshold)

    def __len__(self) -> int:
        return len(self.row)


def reference_pairs(ctx, threshold: float) -> ReferencePairs:
    """Every (batch valid row, reference row) pair with similarity >= ``threshold`` (a scan against
    a reference only), searched once per run at the lowest threshold asked for first."""
    for built, pairs in sorted(ctx.built("reference_pairs").items()):
        if built <= threshold:
            return pairs.at(threshold)

    def build() -> ReferencePairs:
        ref, xp = ctx.reference, ctx.xp
        with ctx.progress.task("pairs with the reference", total=None) as advance:
            q, p, sim, info = pairs_against(ctx.embeddings, ref, threshold, xp=xp, engine=ctx.config.engine,
                                            max_pairs=ctx.max_pairs, progress=lambda done: advance(0))
        ctx.search_info["reference_pairs"] = {"threshold": float(threshold), **info}
        exact = np.zeros(len(q), dtype=bool)
        for a, b in ((a, min(len(q), a + (1 << 16))) for a in range(0, len(q), 1 << 16)):
            ours = ctx.backend.to_host(ctx.embeddings[xp.asarray(q[a:b])])
            theirs = ctx.backend.to_host(ref.take(p[a:b]))
            exact[a:b] = (ours.view(np.uint8).reshape(b - a, -1) == theirs.view(np.uint8).reshape(b - a, -1)).all(1)
        return ReferencePairs(ctx.valid_rows[q], p, sim, exact, threshold)

    return ctx.artifact(("reference_pairs", float(threshold)), build)


def largest_graph(ctx):
    """The graph with the largest k built in this run, or None."""
    graphs = ctx.built("knn")
    return graphs[max(graphs)] if graphs else None


__all__ = ["Pairs", "pairs_at", "resolve_threshold", "choose_threshold", "neighbours", "resolve_k", "largest_graph",
           "ReferencePairs", "reference_pairs", "neighbour_codes"]
