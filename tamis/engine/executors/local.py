"""The executor of a single-process scan: the search engine runs here, on the run's backend."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..search import find_pairs, knn_graph
from . import Executor


class LocalExecutor(Executor):
    """Pairs and neighbours from :mod:`tamis.engine.search` on ``ctx.embeddings`` (host or device),
    with the scan's engine and search parameters and a progress bar each."""

    name = "local"

    def pairs(self, ctx: Any, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        config = ctx.config
        with ctx.progress.task("pair search", total=len(ctx.valid_rows)) as advance:
            result = find_pairs(ctx.embeddings, threshold, engine=config.engine, xp=ctx.xp, progress=advance,
                                state=ctx.search_state, max_pairs=ctx.max_pairs, **config.search_params)
        return result.row_a, result.row_b, result.similarity, result.info

    def knn(self, ctx: Any, k: int) -> tuple[np.ndarray, np.ndarray, dict]:
        config = ctx.config
        with ctx.progress.task(f"neighbours (k={k})", total=None) as advance:
            result = knn_graph(ctx.embeddings, k, engine=config.engine, xp=ctx.xp, progress=lambda done: advance(0),
                               state=ctx.search_state, **config.search_params)
        return result.indices, result.similarities, result.info


__all__ = ["LocalExecutor"]
