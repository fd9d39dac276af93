"""The kNN graph as a file and in the shapes other tools take.

The graph itself is built by :func:`tamis.engine.search.knn_graph` (one search engine for
every check); here it is exported: :func:`to_csr` (cleanlab's ``knn_graph=``, scikit-learn's
precomputed graphs), :func:`to_umap_precomputed` (umap-learn's ``precomputed_knn``), and
written or read as ``knn.npz`` (:func:`save_knn`, :func:`load_knn`, :func:`load_knn_rows`).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.backend import to_host
from ..errors import InputError
from .atomic import atomic_path

__all__ = ["METRIC", "KNN_FILE", "to_csr", "to_umap_precomputed", "save_knn", "load_knn", "load_knn_rows"]

METRIC = "cosine"
KNN_FILE = "knn.npz"


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
             rows: Any = None, extra: dict[str, str] | None = None) -> Path:
    """Write the graph to ``path`` (a directory gets ``knn.npz``) atomically.

    The file holds ``indices`` (int64, N x k), ``distances`` (float32 cosine distances,
    clipped at 0), ``k`` and ``metric``. With ``rows`` (the input row of each graph row,
    ascending, when some input rows have no graph row, e.g. invalid embeddings),
    ``indices`` are input-row numbers and ``rows`` is stored too. It is written to a
    temporary file in the same directory and moved into place, so a reader never sees a
    partial file. ``extra``: strings stored beside them (the report's ``report_id``).
    Returns the path written.
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
    arrays = {} if rows_arr is None else {"rows": rows_arr}
    arrays.update({key: np.str_(value) for key, value in (extra or {}).items()})
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        np.savez(f, indices=indices, distances=_distances(similarities),
                 k=np.int64(indices.shape[1]), metric=np.str_(METRIC), **arrays)
    return target


def _positions(indices: np.ndarray, rows: np.ndarray, what: str) -> np.ndarray:
    """Input-row numbers in ``indices`` as positions in ``rows`` (ascending input rows)."""
    if rows.ndim != 1 or (len(rows) > 1 and (np.diff(rows) <= 0).any()):
        raise InputError("rows must be ascending input-row numbers, one per graph row")
    if len(rows) and rows[0] == 0 and rows[-1] == len(rows) - 1:   # ascending: every row 0 .. n - 1 (no search)
        pos, inside = indices, (indices >= 0) & (indices < len(rows))
    else:
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
