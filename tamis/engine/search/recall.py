"""Recall of an approximate search, measured on a seeded sample of rows against the exact
canonical answer (what ``summary.json`` records for every approximate engine)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import to_host
from .refine import rescore_pairs
from .rows import tile_dtype, tile_margin
from .tiles import pair_strip, plan_for

__all__ = ["knn_recall", "pair_recall", "recall_sample"]


def recall_sample(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted host ids of ``min(n, size)`` rows drawn with ``seed``."""
    rng = np.random.default_rng(seed + 7919)
    return np.sort(rng.choice(n, min(n, size), replace=False)).astype(np.int64)


def knn_recall(indices: Any, similarities: Any, exact_similarities: Any, atol: float = 0.0) -> float:
    """Recall@k of neighbour lists against the exact ones, counting ties as found.

    A returned neighbour counts when its similarity is at least the exact k-th similarity
    of its row minus ``atol`` (with canonical similarities on both sides ``atol=0`` is
    right); with distinct similarities that is ``|found & true| / k``.
    """
    sims = np.asarray(to_host(similarities), dtype=np.float64)
    exact = np.asarray(to_host(exact_similarities), dtype=np.float64)
    found = (np.asarray(to_host(indices)) >= 0) & (sims >= exact[:, -1:] - atol)
    return float(found.mean()) if found.size else 1.0


def pair_recall(X: Any, row_a: np.ndarray, row_b: np.ndarray, threshold: float, sample: np.ndarray,
                xp: Any, memory_bytes: int | None = None) -> tuple[float, int]:
    """``(recall, true pairs)``: of the pairs (>= ``threshold``) that touch a sampled row,
    the fraction found in ``row_a``/``row_b``. 1.0 when the sample touches no pair."""
    plan = plan_for(xp)
    memory = memory_bytes or plan.memory_bytes
    dtype = tile_dtype(X, xp, plan.pair_dtype == "float16")
    _, cols = plan.tile_shape(memory, None, np.dtype(dtype).itemsize)
    Q = X[xp.asarray(sample)]
    r, c = pair_strip(Q, X, (0, int(Q.shape[0])), 0, 0, threshold - tile_margin(int(X.shape[1]), dtype),
                      False, cols, dtype, xp)
    ids = xp.asarray(sample)[r]
    keep = c != ids
    ia, ib, _ = rescore_pairs(X, X, ids[keep], c[keep], threshold, xp)
    ia, ib = to_host(ia), to_host(ib)
    n = int(X.shape[0])
    truth = np.unique(np.minimum(ia, ib) * n + np.maximum(ia, ib))
    if truth.size == 0:
        return 1.0, 0
    found = np.asarray(row_a, np.int64) * n + np.asarray(row_b, np.int64)
    return float(np.isin(truth, found).mean()), int(truth.size)
