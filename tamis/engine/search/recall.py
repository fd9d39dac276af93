"""Recall of an approximate search, measured on a seeded sample of rows against the exact
canonical answer (what ``summary.json`` records for every approximate engine)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import to_host
from .refine import rescore_pairs
from .rows import tile_dtype, tile_margin
from .tiles import pair_strip, plan_for

__all__ = ["knn_recall", "pair_recall", "recall_sample", "true_pairs", "recall_against"]


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


def true_pairs(Q: Any, q_ids: np.ndarray, X: Any, offset: int, threshold: float, xp: Any,
               memory_bytes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Host ``(query id, row id)`` of every pair between the rows ``Q`` (global ids ``q_ids``)
    and the rows ``X`` (global ids from ``offset``) with canonical similarity >= ``threshold``,
    a row never with itself. The exact answer a sampled recall is measured against (locally
    ``X`` is the whole matrix; on Dask one partition)."""
    plan = plan_for(xp)
    memory = memory_bytes or plan.memory_bytes
    dtype = tile_dtype(X, xp, plan.pair_dtype == "float16")
    _, cols = plan.tile_shape(memory, None, np.dtype(dtype).itemsize)
    r, c = pair_strip(Q, X, (0, int(Q.shape[0])), 0, 0, threshold - tile_margin(int(X.shape[1]), dtype),
                      False, cols, dtype, xp)
    r, c, _ = rescore_pairs(Q, X, r, c, threshold, xp)
    qa, cb = np.asarray(q_ids)[to_host(r)], to_host(c) + offset
    keep = qa != cb
    return qa[keep], cb[keep]


def recall_against(truth_a: np.ndarray, truth_b: np.ndarray, row_a: np.ndarray, row_b: np.ndarray,
                   n: int) -> tuple[float, int]:
    """``(recall, true pairs)``: the fraction of the true pairs (either order) found among
    ``row_a < row_b``; 1.0 when there are none."""
    truth = np.unique(np.minimum(truth_a, truth_b) * n + np.maximum(truth_a, truth_b))
    if truth.size == 0:
        return 1.0, 0
    found = np.asarray(row_a, np.int64) * n + np.asarray(row_b, np.int64)
    return float(np.isin(truth, found).mean()), int(truth.size)


def pair_recall(X: Any, row_a: np.ndarray, row_b: np.ndarray, threshold: float, sample: np.ndarray,
                xp: Any, memory_bytes: int | None = None) -> tuple[float, int]:
    """``(recall, true pairs)``: of the pairs (>= ``threshold``) that touch a sampled row,
    the fraction found in ``row_a``/``row_b``. 1.0 when the sample touches no pair."""
    qa, qb = true_pairs(X[xp.asarray(sample)], sample, X, 0, threshold, xp, memory_bytes)
    return recall_against(qa, qb, row_a, row_b, int(X.shape[0]))
