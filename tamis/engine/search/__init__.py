"""One similarity search behind every check: pairs above a threshold and the kNN graph.

Contract: L2-normalised rows (an ``xp`` matrix, float32 or float16; checked once by
:func:`~.rows.prepare`) in; out

* :func:`find_pairs` -- every pair ``a < b`` with cosine similarity ``>= threshold``, as host
  ``(row_a int64, row_b int64, similarity float32)`` sorted by ``(row_a, row_b)``;
* :func:`knn_graph` -- the ``k`` most similar other rows of every row, as host
  ``(indices int64 (N, k), similarities float32 (N, k))``, each row by similarity
  descending, then index ascending.

Both return a result that unpacks as those tuples and carries ``.info``: the engine that
ran, whether it is exact, and the recall measured where it is not (``summary.json`` records
it). Every similarity is the canonical one (:mod:`.rows`), so exact engines give identical
answers on every device, BLAS kernel, block shape and executor, and approximate ones can
miss but never invent.

Engines (:mod:`.registry`; one module each): ``exact`` (:mod:`.exact`), ``ivf``
(:mod:`.ivf`), ``faiss`` (:mod:`.faiss_engine`, when installed). ``engine="auto"`` is
:func:`~.registry.choose`. The Dask executor (:mod:`tamis.engine.executors.dask`) runs the same tile
loops and refinement per partition.
"""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

import numpy as np

from ...errors import ConfigError

# every engine module registers its class (with the registry) on import, in listing order
from . import exact, faiss_engine, ivf  # noqa: F401
from .registry import (
    SearchOptions,
    check_unit,
    choose,
    engine_names,
    get_engine,
)
from .rows import prepare

log = logging.getLogger("tamis")

__all__ = ["find_pairs", "knn_graph", "PairResult", "NeighbourResult", "engine_names", "choose",
           "SearchOptions", "prepare"]

MIN_MEMORY_BYTES = 1 << 20


@dataclass
class PairResult:
    """Pairs ``row_a < row_b`` sorted, their canonical similarity, and what ran (``info``);
    unpacks and indexes as the tuple ``(row_a, row_b, similarity)``."""

    row_a: np.ndarray
    row_b: np.ndarray
    similarity: np.ndarray
    info: dict = field(default_factory=dict)

    def __iter__(self):
        return iter((self.row_a, self.row_b, self.similarity))

    def __getitem__(self, i: int) -> np.ndarray:
        return (self.row_a, self.row_b, self.similarity)[i]

    def __len__(self) -> int:
        return 3


@dataclass
class NeighbourResult:
    """(N, k) neighbour ids and canonical similarities, and what ran (``info``); unpacks and
    indexes as the tuple ``(indices, similarities)``."""

    indices: np.ndarray
    similarities: np.ndarray
    info: dict = field(default_factory=dict)

    def __iter__(self):
        return iter((self.indices, self.similarities))

    def __getitem__(self, i: int) -> np.ndarray:
        return (self.indices, self.similarities)[i]

    def __len__(self) -> int:
        return 2


def _options(xp: ModuleType, engine: Any, memory_bytes: Any, progress: Any, seed: Any, target_recall: Any,
             state: dict | None, params: dict) -> SearchOptions:
    if memory_bytes is not None and (isinstance(memory_bytes, bool) or not isinstance(memory_bytes, numbers.Integral)
                                     or memory_bytes < MIN_MEMORY_BYTES):
        raise ConfigError(f"memory_bytes={memory_bytes!r} is not an integer >= {MIN_MEMORY_BYTES} (1 MiB); "
                          "pass a budget such as 256 * 2**20")
    if progress is not None and not callable(progress):
        raise ConfigError(f"progress={progress!r} is not callable; pass a function taking an int or None")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ConfigError(f"seed={seed!r} is not a non-negative integer; pass e.g. seed=0")
    if target_recall is not None:
        target_recall = check_unit("target_recall", target_recall, "0.95")
    unknown = sorted(set(params) - set(engine.parameters))
    if unknown:
        accepted = ", ".join(engine.parameters) or "none"
        raise ConfigError(f"engine {engine.name!r} takes no parameter {', '.join(unknown)} (it takes: "
                          f"{accepted}); drop it or choose the engine it belongs to")
    return SearchOptions(xp=xp, memory_bytes=None if memory_bytes is None else int(memory_bytes),
                         progress=progress, seed=int(seed), target_recall=target_recall,
                         state={} if state is None else state, params=dict(params))


def _resolve(engine: str, task: str, X: Any, xp: ModuleType, workers: int = 1) -> Any:
    if not isinstance(engine, str) or engine not in engine_names():
        raise ConfigError(f"engine={engine!r} is not one of {', '.join(engine_names())}; use 'auto' to let "
                          "tamis choose")
    if engine == "auto":
        n, d = (int(v) for v in X.shape)
        engine = choose(task, n, d, "cpu" if xp is np else "gpu", workers)
        log.info("%s search: %s engine for %d rows x %d dims on %s (engine=auto)", task, engine, n, d,
                 xp.__name__)
    return get_engine(engine, xp)


def find_pairs(X: Any, threshold: float, *, engine: str = "auto", xp: ModuleType | None = None,
               memory_bytes: int | None = None, progress: Callable[[int], Any] | None = None,
               seed: int = 0, target_recall: float | None = None, state: dict | None = None,
               max_pairs: int | None = None, **params: Any) -> PairResult:
    """Every pair ``i < j`` of rows of ``X`` with cosine similarity ``>= threshold``.

    ``engine``: ``auto``, ``exact``, ``ivf`` or ``faiss``; ``params`` go to that engine
    (``block_rows``; ``n_buckets``, ``probes``, ``probe_slack``; ``index``, ``nlist``,
    ``nprobe``) and are an error for any other. ``progress`` is called with rows done.
    ``state`` (a dict) lets several calls of one scan share an index or a k-means.
    """
    X, xp = prepare(X, xp)
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 < threshold <= 1:
        raise ConfigError(f"threshold={threshold!r} is outside (0, 1]; pass a cosine similarity in (0, 1], "
                          "e.g. 0.95")
    chosen = _resolve(engine, "pairs", X, xp)
    opt = _options(xp, chosen, memory_bytes, progress, seed, target_recall, state, params)
    if max_pairs is not None:
        if isinstance(max_pairs, bool) or not isinstance(max_pairs, numbers.Integral) or max_pairs < 1:
            raise ConfigError(f"max_pairs={max_pairs!r} is not a positive integer; pass e.g. 50_000_000")
        opt.max_pairs = int(max_pairs)
    if X.shape[0] < 2:
        empty = np.empty(0, np.int64)
        return PairResult(empty, empty.copy(), np.empty(0, np.float32),
                          {"engine": chosen.name, "exact": True, "recall": 1.0})
    a, b, s, info = chosen.pairs(X, float(threshold), opt)
    return PairResult(a, b, s, info)


def knn_graph(X: Any, k: int = 10, *, engine: str = "auto", xp: ModuleType | None = None,
              memory_bytes: int | None = None, progress: Callable[[int], Any] | None = None,
              seed: int = 0, target_recall: float | None = None, state: dict | None = None,
              **params: Any) -> NeighbourResult:
    """The ``k`` nearest other rows (cosine) of every row of ``X``; see the module docstring."""
    X, xp = prepare(X, xp, allow_empty=False)
    n = int(X.shape[0])
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ConfigError(f"k={k!r} must be an integer >= 1")
    if n < k + 1:
        raise ConfigError(f"k={k} needs at least {k + 1} rows, the store has {n}; lower k (at most "
                          f"{max(n - 1, 0)})")
    chosen = _resolve(engine, "neighbours", X, xp)
    opt = _options(xp, chosen, memory_bytes, progress, seed, target_recall, state, params)
    idx, sims, info = chosen.neighbours(X, int(k), opt)
    return NeighbourResult(idx, sims, info)


