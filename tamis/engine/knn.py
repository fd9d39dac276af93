"""The k-nearest-neighbour graph: built once per run, shared by every check that needs it.

Rows of ``X`` are L2-normalised float32 embeddings, so the cosine similarity of rows ``i``
and ``j`` is ``X[i] @ X[j]``. Every search here returns, per row, the ``k`` most similar
OTHER rows (a row is never its own neighbour, although its exact duplicates are), as two
host NumPy arrays ``indices`` (int64, N x k) and ``similarities`` (float32, N x k), each
row sorted by similarity descending, then index ascending (ties go to the smaller index).

Engines
-------
:func:`exact_knn`
    Blocked matmul over square tiles of the upper triangle (each tile serves both its
    rows and, transposed, its columns, so half of the N x N products are computed), with
    the running top-k merge of :mod:`tamis.kernels.topk` (a CUDA kernel on CuPy).
:func:`approximate_knn`
    An inverted-file search written with the same matmul + merge: spherical k-means puts
    every row in one of ``n_lists`` lists, and each row is compared with the rows of the
    lists of its ``n_probe`` most similar centroids. ``n_probe`` doubles until the recall
    measured against exact neighbours of a random sample reaches ``target_recall``.
:func:`knn_graph`
    Picks one of the two (the rule is in its docstring).

:func:`knn_block` is the unit of work (one block of query rows against all rows) that a
distributed scheduler can hand out. :func:`to_csr` and :func:`to_umap_precomputed` export
the graph in the shapes cleanlab and umap-learn accept; :func:`save_knn` and
:func:`load_knn` write and read ``knn.npz``.

Array code is written once against ``xp`` (``numpy`` or ``cupy``); the only device
choice is the top-k kernel, picked in :func:`tamis.kernels.topk.merge_topk`.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .._optional import optional_import
from ..errors import ConfigError, InputError
from .atomic import default_file_mode
from .backend import to_host
from ..kernels.topk import empty_topk, merge_topk

log = logging.getLogger("tamis")

__all__ = [
    "DEFAULT_MEMORY_BYTES", "APPROXIMATE_MIN_ROWS", "ENGINES", "METRIC", "KNN_FILE",
    "knn_block", "exact_knn", "approximate_knn", "knn_graph", "knn_recall",
    "to_csr", "to_umap_precomputed", "save_knn", "load_knn", "load_knn_rows",
]

DEFAULT_MEMORY_BYTES = 256 * 2**20
"""Budget for the similarity tiles and their scratch (not counting X and the results)."""

APPROXIMATE_MIN_ROWS = 30_000
"""``knn_graph(engine="auto")`` searches approximately on the CPU from this many rows."""

ENGINES = ("auto", "exact", "approximate")
METRIC = "cosine"
KNN_FILE = "knn.npz"

Progress = Callable[[int, int], Any]

# bytes per tile element: the float32 similarity, its boolean candidate mask, and slack
# for the partition and the candidate keys of the CPU merge
_BYTES_PER_TILE_ELEMENT = 6
_MIN_TILE = 64
_NORM_TOLERANCE = 1e-3
_MAX_ROWS = 0xFFFFFFFF - 1       # indices are packed into 32 bits by the top-k merge
_RECALL_ATOL = 1e-5              # a neighbour within this of the true k-th counts as found
_RECALL_MARGIN = 0.01            # the sample estimate must clear target_recall by this much


# --------------------------------------------------------------------------- validation

def _namespace(X: Any, xp: ModuleType | None) -> ModuleType:
    """``xp`` if given, else the array module of ``X`` (CuPy only when X is a CuPy array)."""
    if xp is not None:
        return xp
    if type(X).__module__.split(".")[0] == "cupy":
        return optional_import("cupy")
    return np



def _as_embeddings(X: Any, xp: ModuleType) -> Any:
    """``X`` as a C-contiguous float32 ``xp`` matrix of finite, unit-norm rows."""
    X = xp.asarray(X)
    if X.ndim != 2:
        raise InputError(f"the embeddings must be a 2-D (rows x dims) matrix, got shape "
                         f"{tuple(X.shape)}; reshape them to (N, d)")
    if X.dtype.kind not in "fiu":
        raise InputError(f"the embeddings must be numeric, got dtype {X.dtype}")
    n, d = (int(v) for v in X.shape)
    if n == 0 or d == 0:
        raise InputError(f"the embeddings are empty (shape {(n, d)}); the store has no "
                         "rows or no dimensions")
    if n > _MAX_ROWS:
        raise InputError(f"the kNN search supports at most {_MAX_ROWS} rows, got {n}; "
                         "split the store")
    X = xp.ascontiguousarray(X, dtype=xp.float32)
    norms = xp.sqrt(xp.einsum("ij,ij->i", X, X))
    bad = ~(xp.abs(norms - 1) <= _NORM_TOLERANCE)          # also catches NaN and inf
    if bool(bad.any()):
        i = int(xp.flatnonzero(bad)[0])
        raise InputError(f"the kNN search needs finite, L2-normalised rows; row {i} has norm "
                         f"{float(norms[i]):.6g} ({int(bad.sum())} such rows); normalise "
                         "X / ||X|| and drop invalid (zero, NaN) rows first")
    return X


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ConfigError(f"{name}={value!r} must be an integer >= {low}")
    return int(value)


def _check_k(k: Any, n_rows: int, *, self_excluded: bool = True) -> int:
    k = _check_int("k", k, 1)
    need = k + 1 if self_excluded else k
    if n_rows < need:
        raise ConfigError(f"k={k} needs at least {need} valid rows, the store has {n_rows}; "
                          f"lower k (at most {max(n_rows - (need - k), 0)})")
    return k


def _check_memory(memory_bytes: Any) -> int:
    floor = _BYTES_PER_TILE_ELEMENT * _MIN_TILE * _MIN_TILE
    if isinstance(memory_bytes, bool) or not isinstance(memory_bytes, numbers.Integral) \
            or memory_bytes < floor:
        raise ConfigError(f"memory_bytes={memory_bytes!r} must be an integer >= {floor} "
                          f"(the default is {DEFAULT_MEMORY_BYTES}); raise it")
    return int(memory_bytes)


def _tile_side(n: int, block_rows: Any, memory_bytes: Any) -> int:
    """Rows (= columns) of one square tile: block_rows, else the largest the budget allows."""
    if block_rows is not None:
        return min(n, _check_int("block_rows", block_rows, 1))
    side = math.isqrt(_check_memory(memory_bytes) // _BYTES_PER_TILE_ELEMENT)
    return min(n, max(_MIN_TILE, side - side % _MIN_TILE))


def _check_progress(progress: Any) -> None:
    if progress is not None and not callable(progress):
        raise ConfigError(f"progress={progress!r} must be a callable(done, total) or None")


# --------------------------------------------------------------------------- exact search

def _scan(Xq: Any, X: Any, self_ids: Any, k: int, xp: ModuleType,
          tile_cols: int) -> tuple[Any, Any]:
    """Top-k of the rows ``Xq`` against every row of ``X``, never ``X[self_ids[r]]`` for
    query ``r`` (``self_ids`` None: no exclusion). Returns ``xp`` arrays."""
    m, n = int(Xq.shape[0]), int(X.shape[0])
    best_sim, best_idx = empty_topk(m, k, xp)
    rows = xp.arange(m)
    for c0 in range(0, n, tile_cols):
        c1 = min(n, c0 + tile_cols)
        S = Xq @ X[c0:c1].T
        if self_ids is not None:
            inside = (self_ids >= c0) & (self_ids < c1)
            S[rows[inside], self_ids[inside] - c0] = -np.inf
        best_sim, best_idx = merge_topk(S, c0, None, best_sim, best_idx, k, xp)
    return best_sim, best_idx


def knn_block(Xq: Any, X: Any, row0: int | None, k: int, *, xp: ModuleType | None = None,
              memory_bytes: int = DEFAULT_MEMORY_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of a block of query rows against all rows: the unit of distributed work.

    Parameters
    ----------
    Xq : (m, d) array
        The query rows, L2-normalised; ``Xq[r]`` is row ``row0 + r`` of ``X``.
    X : (N, d) array
        All rows, L2-normalised.
    row0 : int or None
        Global index of ``Xq[0]`` (its own row is excluded); ``None`` when the queries are
        not rows of ``X`` (nothing excluded, and ``k <= N`` suffices).
    k : int
    xp : module, optional
        ``numpy`` or ``cupy``; default: the module of ``X``.
    memory_bytes : int
        Budget for one (m x tile) similarity tile and its scratch.

    Returns
    -------
    (indices, similarities) : host (m, k) int64 and float32 arrays, sorted as the module
        describes.

    Notes
    -----
    O(m N d) time; peak memory ``memory_bytes`` plus O(m k) (tiles are m x
    ``memory_bytes / (6 m)`` columns, at least 64).
    """
    xp = _namespace(X, xp)
    X = _as_embeddings(X, xp)
    Xq = _as_embeddings(Xq, xp)
    n, m = int(X.shape[0]), int(Xq.shape[0])
    if Xq.shape[1] != X.shape[1]:
        raise InputError(f"the query block has {Xq.shape[1]} dimensions and X has "
                         f"{X.shape[1]}; pass rows of the same embedding")
    if row0 is not None:
        row0 = _check_int("row0", row0, 0)
        if row0 + m > n:
            raise ConfigError(f"row0={row0} with {m} query rows runs past the {n} rows of X; "
                              "pass the global index of the first query row")
    k = _check_k(k, n, self_excluded=row0 is not None)
    tile_cols = max(_MIN_TILE, _check_memory(memory_bytes) // (_BYTES_PER_TILE_ELEMENT * m))
    self_ids = None if row0 is None else xp.arange(row0, row0 + m)
    best_sim, best_idx = _scan(Xq, X, self_ids, k, xp, tile_cols)
    return to_host(best_idx), to_host(best_sim)


def exact_knn(X: Any, k: int, *, xp: ModuleType | None = None, block_rows: int | None = None,
              memory_bytes: int = DEFAULT_MEMORY_BYTES,
              progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours (cosine) of every row, self excluded.

    Parameters
    ----------
    X : (N, d) array
        L2-normalised rows (NumPy or CuPy).
    k : int
        Neighbours per row, ``1 <= k <= N - 1``.
    xp : module, optional
        ``numpy`` or ``cupy``; default: the module of ``X``.
    block_rows : int, optional
        Side of the square tiles; default: the largest that fits ``memory_bytes``.
    memory_bytes : int
        Budget for one tile and its scratch: tiles have side ``sqrt(memory_bytes / 6)``
        (6,656 for the 256 MiB default).
    progress : callable(done, total), optional
        Called after each tile.

    Returns
    -------
    (indices, similarities) : host (N, k) int64 and float32 arrays, each row sorted by
        similarity descending, then index ascending.

    Notes
    -----
    Time: N (N + b) d / 2 multiply-adds for tile side b (the tiles of the upper triangle,
    each used for its rows and, transposed, its columns), plus O(N^2) for the selection.
    Peak memory: ``memory_bytes`` (one b x b float32 tile, its boolean mask, candidates)
    plus 2 N k 12 bytes for the running lists, besides X itself. The N x N matrix is
    never formed.
    """
    xp = _namespace(X, xp)
    X = _as_embeddings(X, xp)
    n = int(X.shape[0])
    k = _check_k(k, n)
    side = _tile_side(n, block_rows, memory_bytes)
    _check_progress(progress)
    best_sim, best_idx = empty_topk(n, k, xp)
    buffer = xp.empty(side * side, dtype=xp.float32)
    starts = range(0, n, side)
    total, done = len(starts) * (len(starts) + 1) // 2, 0
    for i0 in starts:
        i1 = min(n, i0 + side)
        for j0 in range(i0, n, side):
            j1 = min(n, j0 + side)
            S = buffer[:(i1 - i0) * (j1 - j0)].reshape(i1 - i0, j1 - j0)
            xp.matmul(X[i0:i1], X[j0:j1].T, out=S)
            best_sim[i0:i1], best_idx[i0:i1] = merge_topk(
                S, j0, i0, best_sim[i0:i1], best_idx[i0:i1], k, xp)
            if j0 != i0:
                best_sim[j0:j1], best_idx[j0:j1] = merge_topk(
                    S.T, i0, j0, best_sim[j0:j1], best_idx[j0:j1], k, xp)
            done += 1
            if progress is not None:
                progress(done, total)
    return to_host(best_idx), to_host(best_sim)


# --------------------------------------------------------------------------- approximate

def knn_recall(indices: Any, similarities: Any, exact_similarities: Any,
               atol: float = _RECALL_ATOL) -> float:
    """Recall@k of a neighbour list against the exact one, counting ties as found.

    A returned neighbour counts when its similarity is at least the exact k-th
    similarity of its row minus ``atol``; with distinct similarities that is the usual
    ``|found & true| / k``, and a tie with the k-th neighbour is not counted as a miss.
    ``similarities`` must be the true similarities of the returned ``indices``.
    """
    sims = np.asarray(to_host(similarities), dtype=np.float64)
    exact = np.asarray(to_host(exact_similarities), dtype=np.float64)
    found = (np.asarray(to_host(indices)) >= 0) & (sims >= exact[:, -1:] - atol)
    return float(found.mean()) if found.size else 1.0


def _spherical_kmeans(X: Any, n_lists: int, xp: ModuleType, rng: np.random.Generator,
                      rows_per_block: int, iterations: int = 8) -> Any:
    """Unit-norm centroids of ``n_lists`` clusters of a sample of 32 rows per list."""
    n = int(X.shape[0])
    sample = X[xp.asarray(np.sort(rng.choice(n, min(n, 32 * n_lists), replace=False)))]
    ns = int(sample.shape[0])
    centroids = sample[xp.asarray(rng.choice(ns, n_lists, replace=False))]
    for _ in range(iterations):
        sums = xp.zeros_like(centroids)
        for r0 in range(0, ns, rows_per_block):
            block = sample[r0:r0 + rows_per_block]
            assign = xp.argmax(block @ centroids.T, axis=1)
            onehot = xp.zeros((n_lists, int(block.shape[0])), dtype=xp.float32)
            onehot[assign, xp.arange(int(block.shape[0]))] = 1
            sums += onehot @ block
        norms = xp.linalg.norm(sums, axis=1)
        keep = norms > 0                     # an emptied list keeps its old centroid
        centroids[keep] = sums[keep] / norms[keep][:, None]
    return centroids


def _probe_order(X: Any, centroids: Any, n_probe_max: int, xp: ModuleType,
                 rows_per_block: int) -> Any:
    """(N, n_probe_max) list ids per row, most similar centroid first."""
    n, n_lists = int(X.shape[0]), int(centroids.shape[0])
    out = xp.empty((n, n_probe_max), dtype=xp.int32)
    for r0 in range(0, n, rows_per_block):
        D = X[r0:r0 + rows_per_block] @ centroids.T
        if n_probe_max < n_lists:
            top = xp.argpartition(-D, n_probe_max - 1, axis=1)[:, :n_probe_max]
        else:
            top = xp.broadcast_to(xp.arange(n_lists), D.shape)
        order = xp.argsort(-xp.take_along_axis(D, top, axis=1), axis=1)
        out[r0:r0 + rows_per_block] = xp.take_along_axis(top, order, axis=1)
    return out


def approximate_knn(X: Any, k: int, *, xp: ModuleType | None = None,
                    target_recall: float = 0.95, n_lists: int | None = None,
                    n_probe: int | None = None, sample_size: int = 1000, seed: int = 0,
                    memory_bytes: int = DEFAULT_MEMORY_BYTES,
                    progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Approximate k nearest neighbours (cosine) by an inverted-file search, self excluded.

    Spherical k-means (8 rounds on 32 sampled rows per list) splits the rows into
    ``n_lists`` lists; every row is compared exactly with the rows of the lists of its
    ``n_probe`` most similar centroids (matmul + the top-k merge of :func:`exact_knn`,
    one list at a time, so the same code runs on NumPy and CuPy). Unless ``n_probe`` is
    given, it starts at 4 and doubles, each round searching only the lists added, until
    the recall measured on ``sample_size`` random rows against their exact neighbours
    (:func:`knn_recall`) reaches ``target_recall`` + 0.01; when 64 probes (or all lists)
    do not reach ``target_recall``, the exact search runs instead.

    Parameters
    ----------
    X, k, xp, memory_bytes, progress : as :func:`exact_knn` (progress counts lists).
    target_recall : float in (0, 1]
    n_lists : int, optional
        Default ``round(sqrt(N))``, at most N // 16.
    n_probe : int, optional
        Fixed number of probed lists (no recall measurement).
    sample_size : int
        Rows whose exact neighbours measure the recall.
    seed : int
        Seeds the k-means and the sample, so the result is reproducible.

    Returns
    -------
    (indices, similarities) : as :func:`exact_knn`; the similarities are exact for the
        neighbours found, and each row is sorted the same way.

    Notes
    -----
    Time: N p (N / n_lists) d multiply-adds for p probes (about 2 p / sqrt(N) of the
    exact work with the default n_lists), plus the k-means (512 n_lists^2 d) and the
    sample's exact search (sample_size N d). Peak memory: a permuted copy of X, N x 64
    int32 probe ids, the running lists, and one tile within ``memory_bytes``.
    """
    xp = _namespace(X, xp)
    X = _as_embeddings(X, xp)
    n, d = (int(v) for v in X.shape)
    k = _check_k(k, n)
    if not isinstance(target_recall, numbers.Real) or not 0 < target_recall <= 1:
        raise ConfigError(f"target_recall={target_recall!r} must be a number in (0, 1], "
                          "e.g. 0.95")
    memory_bytes = _check_memory(memory_bytes)
    sample_size = _check_int("sample_size", sample_size, 1)
    seed = _check_int("seed", seed, 0)
    _check_progress(progress)
    default_lists = max(1, min(round(math.sqrt(n)), n // 16))
    n_lists = default_lists if n_lists is None else _check_int("n_lists", n_lists, 1)
    if n_lists > n:
        raise ConfigError(f"n_lists={n_lists} exceeds the {n} rows; lower it "
                          f"(default {default_lists})")
    probe_max = min(n_lists, 64)
    if n_probe is not None:
        probe_max = _check_int("n_probe", n_probe, 1)
        if probe_max > n_lists:
            raise ConfigError(f"n_probe={probe_max} exceeds n_lists={n_lists}; lower it")

    rng = np.random.default_rng(seed)
    rows_per_block = max(1, memory_bytes // (_BYTES_PER_TILE_ELEMENT * max(n_lists, d)))
    centroids = _spherical_kmeans(X, n_lists, xp, rng, rows_per_block)
    probes = _probe_order(X, centroids, probe_max, xp, rows_per_block)
    # permute the rows so that every list is a contiguous range of columns
    perm = xp.argsort(probes[:, 0], kind="stable")
    Xp, probes = X[perm], probes[perm]
    sizes = xp.bincount(probes[:, 0].astype(xp.int64), minlength=n_lists)
    offsets = to_host(xp.concatenate([xp.zeros(1, dtype=sizes.dtype), xp.cumsum(sizes)]))
    position = xp.empty(n, dtype=xp.int64)
    position[perm] = xp.arange(n)

    sample = xp.asarray(np.sort(rng.choice(n, min(n, sample_size), replace=False)))
    truth = None
    if n_probe is None:
        truth_sim, _ = _scan(X[sample], X, sample, k, xp,
                             max(_MIN_TILE, memory_bytes // (_BYTES_PER_TILE_ELEMENT
                                                             * int(sample.shape[0]))))
        truth = to_host(truth_sim)

    best_sim, best_idx = empty_topk(n, k, xp)
    lo, hi = 0, (probe_max if n_probe is not None else min(4, probe_max))
    while True:
        _probe_lists(Xp, probes[:, lo:hi], offsets, best_sim, best_idx, k, xp,
                     memory_bytes, progress)
        if truth is None:
            break
        recall = knn_recall(best_idx[position[sample]], best_sim[position[sample]], truth)
        log.info("approximate kNN: %d of %d lists probed, sample recall@%d %.4f",
                 hi, n_lists, k, recall)
        if recall >= min(1.0, target_recall + _RECALL_MARGIN) or hi == probe_max:
            break
        lo, hi = hi, min(2 * hi, probe_max)

    if truth is not None and recall < target_recall:
        log.warning("approximate kNN reached recall %.4f < target %.4f with %d probes; "
                    "using the exact search", recall, target_recall, hi)
        return exact_knn(X, k, xp=xp, memory_bytes=memory_bytes, progress=progress)
    # back to the caller's row order and row ids
    host_position, found = to_host(position), to_host(best_idx)[to_host(position)]
    indices = np.where(found >= 0, to_host(perm)[found], -1)
    sims = to_host(best_sim)[host_position]
    return _complete_and_sort(X, indices, sims, k, xp, memory_bytes)


def _probe_lists(Xp: Any, probes: Any, offsets: np.ndarray, best_sim: Any, best_idx: Any,
                 k: int, xp: ModuleType, memory_bytes: int,
                 progress: Progress | None) -> None:
    """Compare every row with the rows of the lists in its ``probes`` columns (in place)."""
    n_lists = len(offsets) - 1
    p = int(probes.shape[1])
    flat = probes.reshape(-1).astype(xp.int64)
    order = xp.argsort(flat, kind="stable")
    queries = order // p                      # grouped by list, rows ascending
    counts = to_host(xp.bincount(flat, minlength=n_lists))
    starts = np.concatenate([[0], np.cumsum(counts)])
    for lst in range(n_lists):
        c0, c1 = int(offsets[lst]), int(offsets[lst + 1])
        if c1 > c0 and counts[lst]:
            members = Xp[c0:c1]
            chunk = max(1, memory_bytes // (_BYTES_PER_TILE_ELEMENT * (c1 - c0)))
            for q0 in range(int(starts[lst]), int(starts[lst + 1]), chunk):
                q = queries[q0:min(q0 + chunk, int(starts[lst + 1]))]
                S = Xp[q] @ members.T
                own = (q >= c0) & (q < c1)
                S[xp.flatnonzero(own), q[own] - c0] = -np.inf
                best_sim[q], best_idx[q] = merge_topk(S, c0, None, best_sim[q], best_idx[q],
                                                      k, xp)
        if progress is not None:
            progress(lst + 1, n_lists)


def _complete_and_sort(X: Any, indices: np.ndarray, sims: np.ndarray, k: int,
                       xp: ModuleType, memory_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Search rows left with fewer than k neighbours exactly; sort rows by index in ties."""
    short = np.flatnonzero((indices < 0).any(axis=1))
    if short.size:
        ids = xp.asarray(short)
        tile = max(_MIN_TILE, memory_bytes // (_BYTES_PER_TILE_ELEMENT * short.size))
        s, i = _scan(X[ids], X, ids, k, xp, tile)
        sims[short], indices[short] = to_host(s), to_host(i)
    # the permuted search broke ties by permuted position: restore index order in ties
    order = np.lexsort((indices, -sims), axis=1)
    return np.take_along_axis(indices, order, 1), np.take_along_axis(sims, order, 1)


# --------------------------------------------------------------------------- the graph

def knn_graph(X: Any, k: int = 10, *, engine: str = "auto", xp: ModuleType | None = None,
              memory_bytes: int = DEFAULT_MEMORY_BYTES, progress: Progress | None = None,
              **approximate_options: Any) -> tuple[np.ndarray, np.ndarray]:
    """The kNN graph of ``X`` with the engine chosen by ``engine``.

    ``engine="auto"`` uses :func:`exact_knn` on the GPU (``xp`` is CuPy: the tiles are
    matmul-bound there), and on the CPU below :data:`APPROXIMATE_MIN_ROWS` rows;
    :func:`approximate_knn` on the CPU from that many rows. The choice is logged.
    ``approximate_options`` (``target_recall``, ``n_lists``, ``n_probe``, ``sample_size``,
    ``seed``) go to :func:`approximate_knn` and are an error with ``engine="exact"``.

    Returns ``(indices, similarities)`` as :func:`exact_knn`.
    """
    if engine not in ENGINES:
        raise ConfigError(f"engine={engine!r} is not one of {', '.join(ENGINES)}; "
                          "use 'auto' to let tamis choose")
    unknown = set(approximate_options) - {"target_recall", "n_lists", "n_probe",
                                          "sample_size", "seed"}
    if unknown:
        raise ConfigError(f"knn_graph got unknown options {sorted(unknown)}; the approximate "
                          "engine takes target_recall, n_lists, n_probe, sample_size, seed")
    xp = _namespace(X, xp)
    X = xp.asarray(X)
    n = int(X.shape[0]) if X.ndim >= 1 else 0
    if engine == "auto":
        engine = "exact" if xp is not np or n < APPROXIMATE_MIN_ROWS else "approximate"
        log.info("kNN graph: %s search of %d rows on %s (engine=auto)", engine, n,
                 xp.__name__)
    if engine == "exact":
        if approximate_options:
            raise ConfigError(f"options {sorted(approximate_options)} apply to the "
                              "approximate engine only; drop them or use "
                              "engine='approximate'")
        return exact_knn(X, k, xp=xp, memory_bytes=memory_bytes, progress=progress)
    return approximate_knn(X, k, xp=xp, memory_bytes=memory_bytes, progress=progress,
                           **approximate_options)


# --------------------------------------------------------------------------- export

def _check_graph(indices: Any, similarities: Any, n: int | None = None) -> tuple[np.ndarray,
                                                                                   np.ndarray]:
    indices, similarities = to_host(indices), to_host(similarities)
    if indices.ndim != 2 or indices.shape != similarities.shape:
        raise InputError(f"indices and similarities must be two (N, k) arrays of the same "
                         f"shape, got {indices.shape} and {similarities.shape}")
    if indices.dtype.kind not in "iu":
        raise InputError(f"indices must be integers, got dtype {indices.dtype}")
    if n is not None and indices.shape[0] != n:
        raise InputError(f"the graph has {indices.shape[0]} rows but n={n}; pass the number "
                         "of rows of X")
    rows = indices.shape[0]
    if indices.size and (indices.min() < 0 or indices.max() >= rows):
        raise InputError(f"neighbour indices must lie in [0, {rows}), got "
                         f"[{indices.min()}, {indices.max()}]; the graph is incomplete or "
                         "belongs to another store")
    return indices.astype(np.int64, copy=False), similarities.astype(np.float32, copy=False)


def _distances(similarities: np.ndarray) -> np.ndarray:
    return np.maximum(np.float32(1) - similarities, np.float32(0))


def to_csr(indices: Any, similarities: Any, n: int | None = None):
    """The graph as an (N, N) ``scipy.sparse.csr_matrix`` of cosine distances.

    Row ``i`` holds its k neighbours in neighbour order (distance ``1 - similarity``,
    clipped at 0, ascending), exactly k stored entries per row: ``nnz == N k``. Zero
    distances (exact duplicates) are stored explicitly, so ``nnz // N`` stays k; this is
    the layout of scikit-learn's ``kneighbors_graph(mode="distance")`` and what cleanlab's
    ``knn_graph`` argument expects. Column indices are NOT sorted within a row; do not
    call ``sort_indices()`` or ``eliminate_zeros()`` on it.
    """
    from scipy.sparse import csr_matrix

    indices, similarities = _check_graph(indices, similarities, n)
    rows, k = indices.shape
    index_dtype = np.int32 if rows < 2**31 else np.int64
    indptr = np.arange(0, rows * k + 1, k, dtype=index_dtype)
    return csr_matrix((_distances(similarities).reshape(-1),
                       indices.reshape(-1).astype(index_dtype), indptr), shape=(rows, rows))


def to_umap_precomputed(indices: Any, similarities: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(knn_indices, knn_dists)`` for umap-learn's ``precomputed_knn``.

    umap counts each point as its own first neighbour, so the arrays are (N, k + 1): row
    ``i`` starts with ``i`` at distance 0, then the k neighbours (cosine distances,
    clipped at 0). Use ``n_neighbors <= k + 1`` and ``metric="cosine"``.
    """
    indices, similarities = _check_graph(indices, similarities)
    rows = indices.shape[0]
    knn_indices = np.concatenate([np.arange(rows, dtype=np.int64)[:, None], indices], axis=1)
    knn_dists = np.concatenate([np.zeros((rows, 1), np.float32), _distances(similarities)],
                               axis=1)
    return knn_indices, knn_dists


def _knn_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / KNN_FILE if path.is_dir() else path


def save_knn(path: str | os.PathLike, indices: Any, similarities: Any, *,
             rows: Any = None) -> Path:
    """Write the graph to ``path`` (a directory gets ``knn.npz``) atomically.

    The file holds ``indices`` (int64, N x k), ``distances`` (float32 cosine distances,
    clipped at 0), ``k`` and ``metric``. With ``rows`` (the input row of each graph row,
    ascending, when some input rows have no graph row, e.g. invalid embeddings),
    ``indices`` are input-row numbers and ``rows`` is stored too. It is written to a
    temporary file in the same directory and moved into place, so a reader never sees a
    partial file. Returns the path written.
    """
    rows_arr = None if rows is None else np.asarray(to_host(rows), dtype=np.int64)
    if rows_arr is not None:
        indices = _positions(np.asarray(to_host(indices)), rows_arr, "indices")
    indices, similarities = _check_graph(indices, similarities)
    if rows_arr is not None:
        indices = rows_arr[indices]
    target = _knn_file(path)
    if not target.parent.is_dir():
        raise InputError(f"cannot write {target}: the directory {target.parent} does not "
                         "exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    extra = {} if rows_arr is None else {"rows": rows_arr}
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, indices=indices, distances=_distances(similarities),
                     k=np.int64(indices.shape[1]), metric=np.str_(METRIC), **extra)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def _positions(indices: np.ndarray, rows: np.ndarray, what: str) -> np.ndarray:
    """Input-row numbers in ``indices`` as positions in ``rows`` (ascending input rows)."""
    if rows.ndim != 1 or (len(rows) > 1 and (np.diff(rows) <= 0).any()):
        raise InputError("rows must be ascending input-row numbers, one per graph row")
    pos = np.searchsorted(rows, indices)
    inside = (pos < len(rows)) & (rows[np.minimum(pos, len(rows) - 1)] == indices)
    if not inside.all():
        raise InputError(f"{what} name input rows that have no graph row (e.g. "
                         f"{int(indices[~inside][0])}); every neighbour must be one of `rows`")
    return pos


def load_knn_rows(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read ``knn.npz`` as ``(rows, indices, similarities)`` with indices in input rows.

    ``rows`` is the input row of each graph row (``arange(N)`` when every row has one).
    """
    target = _knn_file(path)
    rows = None
    if target.is_file():
        try:
            with np.load(target, allow_pickle=False) as data:
                if "rows" in data.files:
                    rows = np.asarray(data["rows"], dtype=np.int64)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            pass  # load_knn below names the problem
    indices, similarities = load_knn(path)
    if rows is None:
        return np.arange(indices.shape[0]), indices, similarities
    return rows, rows[indices], similarities


def load_knn(path: str | os.PathLike, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a graph written by :func:`save_knn`: ``(indices, similarities)``.

    Indices are graph-row positions (for a file with ``rows``: positions in ``rows``, the
    shape cleanlab and umap-learn take); :func:`load_knn_rows` gives input rows instead.

    ``similarities`` are ``1 - distances``. With ``n``, the graph must have n rows.
    Raises :class:`~tamis.errors.InputError` naming what is wrong when the file is
    missing, unreadable, lacks an array, or its arrays disagree.
    """
    target = _knn_file(path)
    if not target.is_file():
        raise InputError(f"no kNN graph at {target}; build it with knn_graph and save_knn")
    try:
        with np.load(target, allow_pickle=False) as data:
            missing = sorted({"indices", "distances", "k", "metric"} - set(data.files))
            if missing:
                raise InputError(f"{target} is not a tamis kNN graph: missing "
                                 f"{', '.join(missing)}; rebuild it")
            indices, distances = data["indices"], data["distances"]
            k, metric = data["k"], data["metric"]
            rows = np.asarray(data["rows"], dtype=np.int64) if "rows" in data.files else None
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"cannot read the kNN graph {target} ({exc}); the file is corrupt "
                         "or truncated: delete it and rebuild") from exc
    if metric.shape != () or str(metric) != METRIC:
        raise InputError(f"{target} holds a {metric} graph, tamis uses {METRIC}; rebuild it")
    if indices.ndim != 2 or distances.shape != indices.shape:
        raise InputError(f"{target}: indices {indices.shape} and distances "
                         f"{distances.shape} must be two (N, k) arrays of the same shape")
    if k.shape != () or int(k) != indices.shape[1]:
        raise InputError(f"{target}: k={k} but the arrays have {indices.shape[1]} columns")
    if distances.dtype.kind != "f" or not np.isfinite(distances).all() \
            or (distances < 0).any():
        raise InputError(f"{target}: distances must be finite and >= 0; rebuild the graph")
    if distances.shape[1] > 1 and (np.diff(distances, axis=1) < 0).any():
        raise InputError(f"{target}: distances are not sorted ascending within rows")
    if rows is not None:
        if rows.shape != (indices.shape[0],):
            raise InputError(f"{target}: rows has shape {rows.shape}, expected ({indices.shape[0]},)")
        indices = _positions(indices, rows, f"{target}: indices")
    indices, similarities = _check_graph(indices, np.float32(1) - distances.astype(np.float32),
                                         n)
    if (indices == np.arange(indices.shape[0])[:, None]).any():
        raise InputError(f"{target}: a row lists itself as a neighbour; rebuild the graph")
    return indices, similarities
