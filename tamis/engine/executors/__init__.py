"""Executors: what builds a run's two quadratic artefacts, the pair list and the neighbour graph.

The run context is handed one executor and never asks which: checks call
:func:`tamis.engine.artifacts.pairs_at` / :func:`~tamis.engine.artifacts.neighbours`, which
call ``ctx.executor``. Both executors run the one search engine (:mod:`tamis.engine.search`)
and return the same shapes, so a check cannot tell them apart:

- :class:`~.local.LocalExecutor`: in this process, on the run's backend (NumPy or CuPy);
- :class:`~.dask.DaskExecutor`: on a Dask cluster's workers, the client holding no embedding
  matrix (:mod:`tamis.engine.executors.dask`, which imports Dask only when a Dask scan starts).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Executor:
    """The interface every executor implements (the local one is the reference)."""

    #: "local" or "dask", for the summary
    name: str = ""

    def pairs(self, ctx: Any, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """``(row_a, row_b, similarity, info)``: every pair of valid rows (indices into
        ``ctx.embeddings``) with canonical similarity >= ``threshold``, ``row_a < row_b``, sorted;
        ``info`` says which engine ran, whether it is exact and its measured recall."""
        raise NotImplementedError

    def knn(self, ctx: Any, k: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """``(indices, similarities, info)``, each (M, k): the k most similar other valid rows
        of every valid row, most similar first, ties by index."""
        raise NotImplementedError

    def allocate(self, shape: tuple, dtype: str, xp: Any) -> Any:
        """The array the normalised embedding matrix is written into."""
        return xp.empty(shape, dtype)

    def describe(self) -> dict:
        """What ran where, for ``summary.json``."""
        return {"executor": self.name}


__all__ = ["Executor"]
