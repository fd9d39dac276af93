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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import DEFAULT_K
from ..errors import ConfigError, PairLimitError


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


def resolve_k(ctx, k: int | None) -> int:
    """The k a check uses: its own, else the scan's, else :data:`~tamis.config.DEFAULT_K` capped
    at M - 1. A k that was asked for is never lowered: :func:`neighbours` refuses one >= M."""
    chosen = k if k is not None else ctx.config.k
    if chosen is not None:
        return int(chosen)
    m = len(ctx.valid_rows)
    if m < 2:
        raise ConfigError(f"{ctx.store.source}: neighbour-based checks need at least 2 valid rows, and the store "
                          f"has {m}; leave them out with --checks")
    return min(DEFAULT_K, m - 1)


def neighbours(ctx, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, similarities), each (M, k), of the valid rows: self excluded, most similar first."""
    m = len(ctx.valid_rows)
    if k >= m:
        raise ConfigError(f"k={k} neighbours need at least {k + 1} valid rows, and the store has {m}; "
                          f"lower k (--k {max(1, m - 1)}) or scan more rows")
    for built, (idx, sim) in sorted(ctx.built("knn").items()):
        if built >= k:
            return idx[:, :k], sim[:, :k]

    def build():
        idx, sims, info = ctx.executor.knn(ctx, k)
        ctx.search_info["neighbours"] = {"k": int(k), **info}
        return idx, sims

    return ctx.artifact(("knn", int(k)), build)


def largest_graph(ctx):
    """The graph with the largest k built in this run, or None."""
    graphs = ctx.built("knn")
    return graphs[max(graphs)] if graphs else None


__all__ = ["Pairs", "pairs_at", "resolve_threshold", "choose_threshold", "neighbours", "resolve_k", "largest_graph"]
