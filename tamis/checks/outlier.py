"""Outliers: rows far from their nearest neighbours.

A row's distance is its mean cosine distance to its k nearest neighbours (the shared
graph, ``k`` from the scan's ``--k``, 10 by default). A row is flagged when that distance
exceeds ``Q3 + iqr_factor x IQR`` of the distances of all valid rows (Tukey's fence). The
default 2.0 sits between Tukey's 1.5 and his "far out" 3.0, chosen on three stores with
planted outliers (precision / recall): the bench store, 100k x 512, 1.5: 1.0/1.0, 2.0:
1.0/1.0, 3.0: 1.0/0.56 (its classes differ in spread, which widens the IQR); the demo,
1.5: 0.12/1.0, 2.0: 0.67/1.0, 3.0: 1.0/0.75; the test store, 1.5: 0.43/1.0, 2.0: 0.83/1.0,
3.0: 1.0/1.0. Score: the mean similarity to the k neighbours, clipped to [0, 1]
(lower = more isolated). With labels, a second score ``outlier_class_score`` is the
similarity to the row's own class centroid, clipped to [0, 1]: a row far from its own class
(the summary counts those below its class's fence). Flagged rows are excluded with reason
``outlier``. Time: the graph, then O(N k); memory O(N k).
"""

from __future__ import annotations

import numpy as np

from ..config import Interval
from ..engine.artifacts import neighbours, resolve_k
from ..engine.search.tiles import run_blocks
from .base import Check, CheckResult
from .shared.centroids import class_centroids


class Outlier(Check):
    name = "outlier"
    requires = ("embeddings",)
    uses_neighbours = True
    description = "rows far from their nearest neighbours (and from their own class)"
    _parameter_constraints = {
        "k": Interval(int, 1, None, none_ok=True),
        "iqr_factor": Interval(float, 0, None, closed="neither"),
    }

    def __init__(self, k: int | None = None, iqr_factor: float = 2.0) -> None:
        self.k = k
        self.iqr_factor = iqr_factor

    def _run(self, ctx) -> CheckResult:
        k = resolve_k(ctx, self.k)
        _, sims = neighbours(ctx, k)
        mean_sim = sims.astype(np.float64).mean(axis=1)
        distance = 1.0 - mean_sim
        q1, median, q3 = np.quantile(distance, [0.25, 0.5, 0.75])
        fence = q3 + self.iqr_factor * (q3 - q1)
        flag_valid = distance > fence
        flags = ctx.to_rows(flag_valid, fill=False, dtype=bool)
        scores = ctx.to_rows(np.clip(mean_sim, 0.0, 1.0), fill=np.nan, dtype=np.float64)
        summary = {"k": int(k), "fence_distance": float(fence), "median_distance": float(median),
                   "iqr": float(q3 - q1), "n_outliers": int(flag_valid.sum())}
        columns = {}
        if ctx.store.labels is not None:
            class_sim = _class_similarity(ctx)
            columns["outlier_class_score"] = ctx.to_rows(np.clip(class_sim, 0.0, 1.0), fill=np.nan,
                                                         dtype=np.float64)
            summary["n_far_from_class"] = int(_below_class_fence(ctx, class_sim, self.iqr_factor).sum())
        return CheckResult(flags=flags, scores=scores, summary=summary, exclude=np.flatnonzero(flags),
                           columns=columns)


def _class_similarity(ctx) -> np.ndarray:
    """Cosine similarity of each valid row to its class's mean direction (xp, blocked by rows)."""
    xp = ctx.xp
    codes_dev = xp.asarray(ctx.label_codes[ctx.valid_rows])
    emb = ctx.embeddings
    centroids = class_centroids(ctx)
    block = max(256, (1 << 20) // max(int(centroids.shape[0]), emb.shape[1]))   # ~8 MiB float64 blocks
    out = np.empty(emb.shape[0], dtype=np.float64)

    def one(start: int) -> None:
        part = emb[start:start + block].astype(xp.float64)
        out[start:start + block] = ctx.backend.to_host((part * centroids[codes_dev[start:start + block]]).sum(axis=1))

    run_blocks(one, emb.shape[0], block, xp)
    return out


def _below_class_fence(ctx, class_sim: np.ndarray, factor: float) -> np.ndarray:
    codes = ctx.label_codes[ctx.valid_rows]
    out = np.zeros(len(class_sim), dtype=bool)
    for c in np.unique(codes):
        sel = codes == c
        if sel.sum() < 4:
            continue
        q1, q3 = np.quantile(class_sim[sel], [0.25, 0.75])
        out[sel] = class_sim[sel] < q1 - factor * (q3 - q1)
    return out
