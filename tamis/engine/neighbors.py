"""The neighbour graph artefact: k nearest neighbours by cosine, built once per run.

Every check that needs neighbours (label errors, outliers, split shift, later the
projection) asks :func:`neighbours` for the k it needs; a graph built for a larger k is
sliced, never rebuilt. The graph lives in the valid-row space of ``ctx.embeddings``
(indices into it); :func:`graph_in_input_rows` maps it to input rows for ``knn.npz``.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .search import knn_graph


#: neighbours per row when neither the check nor the scan names k
DEFAULT_K = 10


def resolve_k(ctx, k: int | None) -> int:
    """The k a check uses: its own, else the scan's, else :data:`DEFAULT_K` capped at M - 1.

    A k that was asked for is never lowered: :func:`neighbours` refuses one >= M.
    """
    chosen = k if k is not None else ctx.options.get("k")
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
    for key in sorted((key for key in ctx._cache if isinstance(key, tuple) and key[0] == "knn"),
                      key=lambda key: key[1]):
        if key[1] >= k:
            idx, sim = ctx._cache[key]
            return idx[:, :k], sim[:, :k]

    def build():
        if ctx.cluster is not None:  # built on the cluster's workers, same result format
            idx, sims, info = ctx.cluster.knn(ctx, k)
        else:
            with ctx.progress.task(f"neighbours (k={k})", total=None) as advance:
                idx, sims, info = _local(ctx, k, advance)
        ctx.search_info["neighbours"] = {"k": int(k), **info}
        return idx, sims

    return ctx.artifact(("knn", int(k)), build)


def _local(ctx, k: int, advance) -> tuple[np.ndarray, np.ndarray, dict]:
    result = knn_graph(ctx.embeddings, k, engine=ctx.options["engine"], xp=ctx.xp,
                       progress=lambda done: advance(0), state=ctx.search_state,
                       **ctx.options.get("search_params", {}))
    return result.indices, result.similarities, result.info


def largest_graph(ctx):
    """The graph with the largest k built in this run, or None."""
    keys = [key for key in ctx._cache if isinstance(key, tuple) and key[0] == "knn"]
    return ctx._cache[max(keys, key=lambda key: key[1])] if keys else None
