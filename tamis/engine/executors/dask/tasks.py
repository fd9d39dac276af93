"""The work a Dask worker does: pure functions of (partitions, parameters), safe to re-run.

Every task reads the partitions it needs itself (:func:`load_partition`): the raw rows
through the store's reader (:meth:`tamis.io.readers.base.Reader.read_partition`,
converted as a local load converts them), then the same validity test and normalisation as
a single-process scan (:func:`tamis.engine.context.row_scales`,
:func:`~tamis.engine.context.scaled_rows`), so a partition's valid rows are bit for bit the
rows of ``ctx.embeddings`` at the partition's valid-row offset. The normalised rows are cached twice on the worker: the last
two partitions in memory, and every partition it has read in a file under the worker's
local directory (written to a temporary name and renamed, so a killed task never leaves a
broken file); both are keyed by the scan's token and dropped at the end of the scan
(:func:`drop_cache`).

Units of work, all returning small host arrays:

* :func:`pair_block` -- the near-duplicate pairs between two partitions
  (:func:`tamis.engine.search.exact.pairs_in_block`, the local exact engine's unit of work;
  upper triangle on the diagonal);
* :func:`knn_partition` -- the certified exact top-k of one partition's rows against every
  partition (:func:`tamis.engine.search.exact.exact_rows`, the local engine's tile loop
  and canonical refinement, with the partitions as the column blocks);
* :func:`sample_pairs` -- the true pairs of sampled rows, for the bucketed pair search's recall;
* :func:`sample_rows` -- rows for the ivf engine's k-means (whose tasks are in
  :mod:`tamis.engine.executors.dask.buckets`).

The worker's device is chosen once per process from the scan's ``device`` (``auto``: its
GPU when CuPy sees one).
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ....errors import InputError
from ....io.atomic import atomic_path
from ....io.readers import Partition
from ...backend import Backend, resolve_backend
from ...context import NORMALISE_BLOCK_BYTES, row_scales, scaled_rows, usable
from ...search.exact import exact_rows, pairs_in_block
from ...search.recall import true_pairs
from ...search.refine import block_scorer
from ...search.rows import tile_dtype

#: partitions kept in memory per worker process (the two a pair block needs)
MEMORY_CACHE = 2
#: working memory of one task's tiles (the local CPU engine's budget)
TASK_MEMORY_BYTES = 256 << 20


@dataclass(frozen=True)
class ReadSpec:
    """How every task reads and prepares partitions in one scan."""

    token: str          # unique per scan: cache keys and task keys
    column: str         # the embedding column, as the reader names it
    dim: int
    precision: str      # dtype of the normalised rows, as ctx.embeddings
    device: str         # "auto", "cpu" or "gpu": the worker's backend


@functools.lru_cache(maxsize=None)
def worker_backend(device: str) -> Backend:
    return resolve_backend(device)


# ---------------------------------------------------------------------------- partitions
_memory: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
_lock = threading.Lock()


def load_partition(spec: ReadSpec, part: Partition, n_valid: int) -> np.ndarray:
    """The normalised valid rows of ``part`` (host, ``spec.precision``), from the caches when there.

    ``n_valid`` is what the client counted; a different count means the store changed
    during the scan, which is an :class:`InputError`.
    """
    key = (spec.token, part.index)
    with _lock:
        if key in _memory:
            _memory.move_to_end(key)
            return _memory[key]
    folder = _cache_folder(spec.token)
    path = None if folder is None else os.path.join(folder, f"p{part.index}.npy")
    if path is not None and os.path.exists(path):
        rows = np.load(path)
    else:   # piece by piece (Parquet: row group by row group): one raw piece in memory at a time
        rows = np.concatenate([normalise_partition(piece.reader.read_partition(piece, spec.column, spec.dim), spec.precision)
                               for piece in part.pieces()])
        if path is not None:
            _atomic_save(path, rows)
    if len(rows) != n_valid:
        raise InputError(f"{part.where} hold {len(rows)} usable embeddings on a worker but {n_valid} when the "
                         "scan started; the store changed during the scan")
    with _lock:
        _memory[key] = rows
        while len(_memory) > MEMORY_CACHE:
            _memory.popitem(last=False)
    return rows


def normalise_partition(raw: np.ndarray, precision: str) -> np.ndarray:
    """The valid rows of ``raw``, L2-normalised, as :class:`~tamis.engine.context.RunContext` does it
    (the same per-row operations, so the same bits), in blocks of 64 MiB of float64."""
    block = max(1, NORMALISE_BLOCK_BYTES // (8 * max(1, raw.shape[1])))
    parts = []
    for start in range(0, len(raw), block):
        chunk = raw[start:start + block]
        m, r = row_scales(chunk, np)
        valid = usable(m, r, np)
        rows = chunk if valid.all() else chunk[valid]
        parts.append(scaled_rows(rows, m[valid], r[valid], np).astype(precision, copy=False))
    return np.concatenate(parts) if parts else np.empty((0, raw.shape[1]), dtype=precision)


def drop_cache(token: str) -> None:
    """Forget the scan ``token``'s partitions (run on every worker at the end of a scan)."""
    with _lock:
        for key in [k for k in _memory if k[0] == token]:
            del _memory[key]
    folder = _cache_folder(token, create=False)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def _cache_folder(token: str, create: bool = True) -> str | None:
    """``<worker local directory>/tamis-<token>``, or None outside a Dask worker."""
    try:
        from distributed import get_worker

        base = get_worker().local_directory
    except (ImportError, ValueError):
        return None
    folder = os.path.join(base, f"tamis-{token}")
    if create:
        os.makedirs(folder, exist_ok=True)
    return folder


def _atomic_save(path: str, rows: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, rows)


# ---------------------------------------------------------------------------- exact engines
def pair_block(spec: ReadSpec, a: Partition, b: Partition, n_valid: tuple[int, int], offsets: tuple[int, int],
               threshold: float, max_pairs: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (valid-row ids) between partitions ``a`` and ``b`` with similarity >= ``threshold``.

    ``offsets`` are the partitions' valid-row offsets; ``a == b`` searches the upper triangle.
    Cost: ``n_a n_b d`` multiply-adds (half on the diagonal); memory: the two partitions plus
    the engine's 256 MiB (CPU) / 2 GiB (GPU) working budget.
    """
    xp = worker_backend(spec.device).xp
    xa = xp.asarray(load_partition(spec, a, n_valid[0]))
    xb = xa if a.index == b.index else xp.asarray(load_partition(spec, b, n_valid[1]))
    r, c, s = pairs_in_block(xa, xb, offsets[0], offsets[1], threshold, xp, upper=a.index == b.index,
                             max_pairs=max_pairs)
    return _host(r), _host(c), _host(s)


def partition_loader(spec: ReadSpec, parts: tuple[Partition, ...], n_valid: tuple[int, ...], xp: Any):
    """``load(j)``: partition ``j``'s normalised rows on the worker's device."""
    return lambda j: xp.asarray(load_partition(spec, parts[j], n_valid[j]))


def knn_partition(spec: ReadSpec, parts: tuple[Partition, ...], n_valid: tuple[int, ...],
                  offsets: tuple[int, ...], i: int, k: int, memory_bytes: int = TASK_MEMORY_BYTES,
                  local: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Certified exact top-k (valid-row ids, canonical similarities) of partition ``i``'s rows
    (or of its rows ``local``) against all partitions.

    The local exact engine's code (:func:`~tamis.engine.search.exact.exact_rows`) with the
    partitions as column blocks, so the lists are identical to a single-process scan's.
    Cost: ``n_i M d`` multiply-adds plus ``O(n_i c d)`` float64; memory: two partitions, one
    tile, the (n_i, c) lists. Each pass over the columns reads the partitions once.
    """
    xp = worker_backend(spec.device).xp
    load = partition_loader(spec, parts, n_valid, xp)
    own = load(i)
    queries = own if local is None else own[xp.asarray(local)]
    ids = xp.arange(offsets[i], offsets[i] + n_valid[i], dtype=xp.int64) if local is None else \
        xp.asarray(np.asarray(local, dtype=np.int64) + offsets[i])
    live = [j for j in range(len(parts)) if n_valid[j]]
    score_rows = block_scorer(queries, list(offsets), list(n_valid), load, xp)
    idx, sims, _ = exact_rows(queries, ids, lambda: ((offsets[j], load(j)) for j in live), k, xp, memory_bytes,
                              score_rows, sum(n_valid) - 1, tile_dtype(queries, xp, False))
    return idx, sims


def sample_pairs(spec: ReadSpec, part: Partition, n_valid: int, offset: int, queries: np.ndarray,
                 query_ids: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The true pairs ``(query id, row id)`` between sampled rows and partition ``part``'s rows
    (:func:`tamis.engine.search.recall.true_pairs`, as the local recall measures them)."""
    xp = worker_backend(spec.device).xp
    x = xp.asarray(load_partition(spec, part, n_valid))
    return true_pairs(xp.asarray(queries), query_ids, x, offset, threshold, xp)


def sample_rows(spec: ReadSpec, part: Partition, n_valid: int, local: np.ndarray) -> np.ndarray:
    """Rows ``local`` (positions among the partition's valid rows) as float32."""
    return np.asarray(load_partition(spec, part, n_valid)[local], dtype=np.float32)


def _host(a: Any) -> np.ndarray:
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)
