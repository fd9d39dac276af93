"""All pairs of rows with cosine similarity at or above a threshold, never N x N at once.

The rows of ``X`` (N x d, float32, L2-normalised) are embeddings; the duplicate,
conflicting-label and leakage checks need every pair ``(i, j)``, ``i < j``, with
``x_i . x_j >= threshold``. Two engines, one result format:

* :func:`exact_pairs` -- blocked all-pairs over the upper triangle. Exact.
* :func:`partitioned_pairs` -- spherical k-means buckets with multi-probe assignment,
  all-pairs inside buckets. Approximate (it can miss pairs, never invents one), and
  much faster for large N.
* :func:`find_pairs` -- picks one of the two (rule in its docstring).
* :func:`pairs_in_block` -- the unit of work (one block of rows against another), so a
  scheduler can spread blocks over workers.

The similarity contract
-----------------------
Every engine reports the same number for the same pair: ``sim = float32(s)`` where ``s``
is the dot product of the two float32 rows evaluated in float64 (the products are exact in
float64, the sum is off by ~1e-14), and a pair is reported iff ``s >= threshold``. The
matmul tiles only *select candidates* with the lower cutoff ``threshold - margin``; every
candidate is then re-checked with that float64 dot product. So results do not depend on
the device, the matmul precision, the tile sizes or the BLAS summation order.

The margin is a proven bound on the matmul error for rows of norm <= 1 (the inputs are
validated to have norm <= 1 + 1e-3; the factor ~1.3 below covers that):

* float32 BLAS (CPU): any summation order of d products errs by at most
  ``gamma_d ~ d * 2**-24``; margin ``2 * d * 2**-24 + 2**-24 sqrt(d) + 2**-22``
  (6.3e-5 at d=512).
* float16 tensor cores (GPU, CuPy's fp16 GEMM accumulates in float32 and rounds the
  result to float16): rounding each input to float16 moves ``x . y`` by at most
  ``(2u + u**2) |x||y|`` with ``u = 2**-11`` (plus ``2**-24 sqrt(d)`` for underflowed
  components), accumulation adds ``d * 2**-24``, rounding the output to float16 adds
  ``u |s|``: at most ``3u + d * 2**-24 + 2**-24 sqrt(d)`` = 1.5e-3 at d=512. The margin is
  ``4u + 2 * d * 2**-24 + 2**-24 sqrt(d)`` (2.0e-3 at d=512). A true pair therefore
  always scores ``>= threshold - margin`` in the tile and is never lost to rounding.
  (This assumes CuPy's default float32 compute type for float16 GEMMs; forcing the
  float16 compute type with ``cupy._core.set_compute_type`` would void it.)

Both engines accept NumPy or CuPy arrays and return host NumPy arrays
``(row_a int64, row_b int64, similarity float32)`` with ``row_a < row_b``, sorted by
``(row_a, row_b)``, identical from run to run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Iterator

import numpy as np

from .._optional import optional_import
from ..errors import ConfigError, InputError
from ..kernels.pairs import compact_pairs
from .backend import to_host

log = logging.getLogger("tamis")

__all__ = ["ENGINES", "exact_pairs", "find_pairs", "pairs_in_block", "partitioned_pairs",
           "plan_for", "spherical_kmeans", "bucket_members"]

ENGINES = ("auto", "exact", "partitioned")
NORM_TOLERANCE = 1e-3          # rows may have norm up to 1 + NORM_TOLERANCE
MIN_MEMORY_BYTES = 1 << 20
Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]
Progress = Callable[[int], Any] | None


# --------------------------------------------------------------------------------------
# The device plan: the one place where CPU and GPU differ (matmul precision and sizes).
# --------------------------------------------------------------------------------------

def _cpu_count() -> int:
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else (os.cpu_count() or 1)


@dataclass(frozen=True)
class _Plan:
    matmul_dtype: str        # dtype of the matmul operands and tile
    unit_roundoff: float     # u of matmul_dtype (float32: 2**-24, float16: 2**-11)
    memory_bytes: int        # default working-memory budget
    tile_rows: int           # default rows per tile
    max_tile_elements: int   # cap on tile rows * cols (cache size on CPU)
    bucket_rows: int         # partitioned engine: home rows per bucket (0: 1.6 sqrt(N) buckets)
    exact_work: float        # find_pairs(engine="auto") runs exact while N*N*d <= this
    workers: int             # threads that run strips / buckets concurrently

    def margin(self, d: int) -> float:
        """Proven bound (with a safety factor) on |tile value - x.y| for rows of norm <= 1."""
        accumulate = 2.0 * d * 2.0**-24 + 2.0**-24 * math.sqrt(d)
        if self.matmul_dtype == "float32":
            return accumulate + 2.0**-22
        return 4.0 * self.unit_roundoff + accumulate

    def default_buckets(self, n: int) -> int:
        """Partitioned engine: balances bucket work (~1/B) against k-means work (~B)."""
        if self.bucket_rows:
            return max(1, round(n / self.bucket_rows))
        return max(1, round(1.6 * math.sqrt(n)))

    def assign_block(self, k: int, memory_bytes: int) -> int:
        """Rows per block when comparing rows with ``k`` centroids (about 16 bytes per
        row-centroid entry for the similarities and the selection, per worker)."""
        elements = min(self.max_tile_elements, memory_bytes // (16 * self.workers))
        return max(1, elements // max(k, 1))

    def tile_shape(self, memory_bytes: int, block_rows: int | None) -> tuple[int, int]:
        """(rows, cols) of one similarity tile: each worker's tile and mask take at most
        half of its share of the budget (the other half is for candidates and re-checks)."""
        per_element = np.dtype(self.matmul_dtype).itemsize + 1       # tile + mask
        elements = memory_bytes // (2 * self.workers * per_element)
        elements = max(1, min(self.max_tile_elements, elements))
        rows = min(block_rows or self.tile_rows, elements)
        return rows, max(1, elements // rows)


_CPU_PLAN = _Plan(matmul_dtype="float32", unit_roundoff=2.0**-24, memory_bytes=256 << 20,
                  tile_rows=1024, max_tile_elements=1 << 22, bucket_rows=0,
                  exact_work=2.1e11, workers=_cpu_count())
_GPU_PLAN = _Plan(matmul_dtype="float16", unit_roundoff=2.0**-11, memory_bytes=2 << 30,
                  tile_rows=16384, max_tile_elements=1 << 29, bucket_rows=8192,
                  exact_work=1.3e14, workers=1)


def plan_for(xp: ModuleType) -> _Plan:
    return _CPU_PLAN if xp is np else _GPU_PLAN


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------

def find_pairs(X: Any, threshold: float, *, engine: str = "auto", xp: ModuleType | None = None,
               memory_bytes: int | None = None, block_rows: int | None = None,
               n_buckets: int | None = None, probes: int | None = None, seed: int = 0,
               progress: Progress = None) -> Pairs:
    """All pairs ``i < j`` with cosine similarity ``>= threshold``, by the chosen engine.

    ``engine="auto"`` runs :func:`exact_pairs` while the all-pairs work ``N * N * d`` is at
    most 2.1e11 on CPU (N <= ~20,000 at d=512, ~1.5 s on two cores) or 1.3e14 on GPU
    (N <= ~500,000 at d=512), and :func:`partitioned_pairs` above that. The choice is logged.
    ``block_rows`` is used by the exact engine, ``n_buckets``, ``probes`` and ``seed`` by
    the partitioned one (with "auto" they apply when it runs); ``engine="exact"`` with
    partitioned-only options is an error.

    Returns host arrays ``(row_a int64, row_b int64, similarity float32)``, sorted.
    """
    if engine not in ENGINES:
        raise ConfigError(f"engine={engine!r} is not one of {', '.join(ENGINES)}; "
                          "use 'auto' to let tamis choose")
    if engine == "exact" and (n_buckets is not None or probes is not None):
        raise ConfigError("n_buckets and probes only apply to engine='partitioned'; "
                          "drop them or pass engine='partitioned'")
    X, xp = _prepare(X, xp)
    if engine == "auto":
        n, d = X.shape
        engine = "exact" if float(n) * n * d <= plan_for(xp).exact_work else "partitioned"
        log.info("pair search: %s engine for %d rows x %d dims", engine, n, d)
    if engine == "exact":
        return exact_pairs(X, threshold, xp=xp, block_rows=block_rows,
                           memory_bytes=memory_bytes, progress=progress)
    return partitioned_pairs(X, threshold, xp=xp, n_buckets=n_buckets, probes=probes,
                             seed=seed, memory_bytes=memory_bytes, progress=progress)


def exact_pairs(X: Any, threshold: float, *, xp: ModuleType | None = None,
                block_rows: int | None = None, memory_bytes: int | None = None,
                progress: Progress = None) -> Pairs:
    """Every pair ``i < j`` with ``x_i . x_j >= threshold``: blocked all-pairs, exact.

    Row strips of ``block_rows`` rows are multiplied against the columns to their right
    (the upper triangle only), one tile at a time; tile entries ``>= threshold - margin``
    are compacted (:func:`tamis.kernels.pairs.compact_pairs`) and re-checked in float64
    (see the module docstring). CPU: float32 BLAS tiles (1024 x 4096 by default, sized for
    the cache), one strip per core, each on a single-threaded BLAS; GPU: float16
    tensor-core tiles (16384 x 21845 by default), one strip at a time.

    Complexity: ``N**2 d`` multiply-adds (half of the N x N product) plus ``O(K d)`` for the
    re-check of ``K`` candidates. Peak memory beyond ``X``: ``memory_bytes`` (default
    256 MiB on CPU, 2 GiB on GPU; the tiles and masks in flight take at most half of it,
    the re-check chunks the other half), a float16 copy of ``X`` on GPU (``2 N d`` bytes),
    and ``O(K)`` for the candidates.

    Parameters
    ----------
    X : (N, d) float array, rows L2-normalised (NumPy or CuPy)
    threshold : float in (0, 1]
    xp : numpy or cupy; inferred from ``X`` when None
    block_rows : rows per strip; default 1024 on CPU, 16384 on GPU
    memory_bytes : working-memory budget in bytes
    progress : called with the number of rows finished after each strip (sums to N)
    """
    X, xp = _prepare(X, xp)
    threshold = _check_threshold(threshold)
    block_rows = _check_positive_int("block_rows", block_rows, "e.g. 1024")
    plan, memory = _plan_and_memory(xp, memory_bytes)
    _check_progress(progress)
    n, d = X.shape
    tile = plan.tile_shape(memory, block_rows)
    Xm = X.astype(plan.matmul_dtype, copy=False)
    cutoff = threshold - plan.margin(d)
    share = memory // plan.workers

    def strip(span: tuple[int, int]) -> tuple[int, tuple[Any, Any, Any]]:
        rows, cols = _strip(Xm, Xm, span, 0, 0, cutoff, True, tile[1], xp)
        return span[1] - span[0], _recheck(X, X, rows, cols, threshold, share, xp)

    found = []
    for rows_done, pairs in _map(strip, _spans(n, tile[0]), plan):
        found.append(pairs)
        if progress is not None:
            progress(rows_done)
    return _finalise(found, n, xp)


def pairs_in_block(Xa: Any, Xb: Any, offset_a: int, offset_b: int, threshold: float, *,
                   xp: ModuleType | None = None, upper: bool = False,
                   memory_bytes: int | None = None) -> Pairs:
    """Pairs between two blocks of rows: the unit of work of the exact engine.

    ``Xa[k]`` is global row ``offset_a + k`` and ``Xb[k]`` global row ``offset_b + k``.
    Returns every pair ``(offset_a + a, offset_b + b)`` with similarity ``>= threshold``;
    with ``upper=True`` only those with global column > global row (use it for blocks on
    the diagonal, e.g. ``pairs_in_block(X[s], X[s], s.start, s.start, t, upper=True)``).
    Without ``upper`` the two row ranges must not overlap and ``offset_b`` must be past the
    end of block a, so every pair comes out once with ``row_a < row_b``.

    Same contract, precision, complexity (``len(Xa) * len(Xb) * d``) and memory bound as
    :func:`exact_pairs`. Returns sorted host arrays.
    """
    Xa, xp = _prepare(Xa, xp, name="Xa")
    Xb, _ = _prepare(Xb, xp, name="Xb")
    threshold = _check_threshold(threshold)
    offset_a = _check_offset("offset_a", offset_a)
    offset_b = _check_offset("offset_b", offset_b)
    if Xa.shape[1] != Xb.shape[1]:
        raise InputError(f"Xa has {Xa.shape[1]} columns but Xb has {Xb.shape[1]}; "
                         "both blocks must come from the same embedding matrix")
    if not upper and offset_b < offset_a + Xa.shape[0] and Xb.shape[0] and Xa.shape[0]:
        raise ConfigError(f"without upper=True block b (offset_b={offset_b}) must start after "
                          f"block a ends (offset_a + len(Xa) = {offset_a + Xa.shape[0]}); pass "
                          "upper=True for blocks on the diagonal, or swap the blocks")
    plan, memory = _plan_and_memory(xp, memory_bytes)
    tile = plan.tile_shape(memory, None)
    Am = Xa.astype(plan.matmul_dtype, copy=False)
    Bm = Xb.astype(plan.matmul_dtype, copy=False)
    cutoff = threshold - plan.margin(Xa.shape[1])
    share = memory // plan.workers

    def strip(span: tuple[int, int]) -> tuple[Any, Any, Any]:
        rows, cols = _strip(Am, Bm, span, offset_a, offset_b, cutoff, upper, tile[1], xp)
        r, c, sims = _recheck(Xa, Xb, rows - offset_a, cols - offset_b, threshold, share, xp)
        return r + offset_a, c + offset_b, sims

    found = list(_map(strip, _spans(Xa.shape[0], tile[0]), plan))
    n = max(offset_a + Xa.shape[0], offset_b + Xb.shape[0])
    return _finalise(found, n, xp)


def partitioned_pairs(X: Any, threshold: float, *, xp: ModuleType | None = None,
                      n_buckets: int | None = None, probes: int | None = None,
                      probe_slack: float = 0.3, seed: int = 0, kmeans_iters: int = 4,
                      memory_bytes: int | None = None, progress: Progress = None) -> Pairs:
    """Pairs ``i < j`` with similarity ``>= threshold``, searched inside k-means buckets.

    1. Spherical k-means with ``n_buckets`` centroids, fitted on a seeded sample of
       ``max(32 * n_buckets, 10,000)`` rows (or all of them) for ``kmeans_iters`` iterations.
    2. Every row ``y`` gets a home bucket ``h`` (its nearest centroid) and is also probed
       into every bucket ``c`` with
       ``y.c_h - y.c_c <= probe_slack * sqrt(2 - 2 * threshold) * |c_h - c_c|``, at most
       ``probes`` of them (those with the smallest ratio of the two sides).
    3. In each bucket the home rows are compared with every row probed into it (home
       rows with each other once) using the tiles, margin and float64 re-check of
       :func:`exact_pairs`; a pair found in two buckets is reported once.

    Why the probe rule: if ``x.y >= threshold`` then ``|x - y| <= sqrt(2 - 2 threshold)``,
    and with ``h = home(x)``, ``g = home(y)``:
    ``y.c_g - y.c_h = x.(c_g - c_h) + (y - x).(c_g - c_h) <= |x - y| |c_g - c_h|``.
    So with ``probe_slack=1`` and ``probes=n_buckets`` no pair can be missed (the search is
    exact); smaller slacks bet that ``y - x`` is not aligned with ``c_g - c_h``, which holds
    for near duplicates in high dimensions. Reported pairs are always true pairs.
    Measured with the defaults on 50,000-100,000 x 512 embeddings with 3 % planted near
    duplicates (bench/bench_pairs.py; 25 to 2,500 clusters, and no clusters at all):
    pair recall 0.991-1.0 at threshold 0.9, 1.0 at 0.95, 0.986-1.0 at 0.85. Lower
    thresholds widen the probe rule by themselves, and cost more.

    Defaults: ``n_buckets = round(1.6 * sqrt(N))`` on CPU, ``round(N / 8192)`` on GPU (large
    buckets keep the GPU busy), at least 1 (one bucket is the exact search);
    ``probes = 24`` (at most ``n_buckets``; the cap binds only for rows that sit between
    many buckets, as in data without cluster structure).

    Complexity: ``sum_b |home_b| * |probed_b| * d`` multiply-adds for the buckets
    (about ``avg_probes * N**2 * d / n_buckets`` when balanced; 0.5-15 % of the exact
    engine's work on the data above), plus ``N * n_buckets * d`` for the assignment and
    ``2 * kmeans_iters * sample * n_buckets * d`` for the fit. Peak memory beyond ``X``:
    ``memory_bytes`` for the tiles, one bucket's probed rows (``|probed_b| * d`` floats),
    ``N * probes`` bucket ids, a float16 copy of ``X`` on GPU, and the candidate pairs.
    ``progress`` is called with the home rows of each finished bucket (sums to N).
    """
    X, xp = _prepare(X, xp)
    threshold = _check_threshold(threshold)
    plan, memory = _plan_and_memory(xp, memory_bytes)
    n, d = X.shape
    n_buckets = _check_positive_int("n_buckets", n_buckets, "e.g. 500 for 100,000 rows")
    n_buckets = min(n_buckets or plan.default_buckets(n), max(n, 1))
    probes = _check_positive_int("probes", probes, "e.g. 24")
    probes = min(probes or 24, n_buckets)
    probe_slack = _check_slack(probe_slack)
    kmeans_iters = _check_positive_int("kmeans_iters", kmeans_iters, "e.g. 4")
    seed = _check_seed(seed)
    _check_progress(progress)
    if n < 2:
        return _finalise([], n, xp)
    tile = plan.tile_shape(memory, None)
    centroids = spherical_kmeans(X, n_buckets, kmeans_iters, seed, plan, memory, xp)
    slack = probe_slack * math.sqrt(2.0 - 2.0 * threshold)
    probe_rows, home_count, probe_start = bucket_members(X, centroids, probes, slack, plan, memory, xp)
    Xm = X.astype(plan.matmul_dtype, copy=False)
    cutoff = threshold - plan.margin(d)

    def bucket(b: int) -> tuple[int, Any, Any]:
        h = home_count[b]
        members = probe_rows[probe_start[b]:probe_start[b + 1]]   # home rows first
        Pm = Xm[members]
        rows, cols = [], []
        for span in _spans(h, tile[0]):
            r, c = _strip(Pm, Pm, span, 0, 0, cutoff, True, tile[1], xp)
            rows.append(members[r])
            cols.append(members[c])
        return h, rows, cols

    # biggest buckets first, so that parallel workers finish together
    work = [b for b in range(n_buckets) if home_count[b]]
    work.sort(key=lambda b: -home_count[b] * (probe_start[b + 1] - probe_start[b]))
    found_rows, found_cols = [], []
    for h, rows, cols in _map(bucket, work, plan):
        found_rows += rows
        found_cols += cols
        if progress is not None:
            progress(h)
    if found_rows:
        rows, cols = xp.concatenate(found_rows), xp.concatenate(found_cols)
        key = xp.unique(xp.minimum(rows, cols) * n + xp.maximum(rows, cols))
        found = [_recheck(X, X, key // n, key % n, threshold, memory, xp)]
    else:
        found = []
    return _finalise(found, n, xp)


# --------------------------------------------------------------------------------------
# Shared machinery
# --------------------------------------------------------------------------------------

def _spans(n: int, step: int) -> list[tuple[int, int]]:
    return [(start, min(n, start + step)) for start in range(0, n, step)]


def _strip(Am: Any, Bm: Any, span: tuple[int, int], offset_a: int, offset_b: int,
           cutoff: float, upper: bool, tile_cols: int, xp: ModuleType) -> tuple[Any, Any]:
    """Global (rows, cols) of the entries ``>= cutoff`` of ``Am[r0:r1] @ Bm.T``, computed one
    tile of ``tile_cols`` columns at a time; with ``upper``, only global col > global row."""
    r0, r1 = span
    n_b = Bm.shape[0]
    g0 = offset_a + r0
    first = min(n_b, max(0, g0 + 1 - offset_b)) if upper else 0    # skip the lower triangle
    rows = [xp.empty(0, dtype=xp.int64)]
    cols = [xp.empty(0, dtype=xp.int64)]
    for c0 in range(first, n_b, tile_cols):
        S = Am[r0:r1] @ Bm[c0:c0 + tile_cols].T
        touches_diagonal = upper and offset_b + c0 < offset_a + r1
        r, c, _ = compact_pairs(S, g0, offset_b + c0, cutoff, touches_diagonal, xp)
        rows.append(r)
        cols.append(c)
        del S
    return xp.concatenate(rows), xp.concatenate(cols)


def _map(fn: Callable[[Any], Any], items: list, plan: _Plan) -> Iterator[Any]:
    """``map(fn, items)`` in order; on CPU spread over ``plan.workers`` threads, each with a
    single-threaded BLAS (NumPy releases the GIL in matmuls and ufuncs). Small matmuls
    scale far better this way than one call at a time on a multi-threaded BLAS, above all
    when other processes compete for the cores."""
    if plan.workers <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    with _blas_threads(1), ThreadPoolExecutor(plan.workers) as pool:
        yield from pool.map(fn, items)


def _blas_threads(n: int) -> Any:
    try:
        from threadpoolctl import threadpool_limits   # installed with scikit-learn
    except ImportError:                                # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def _recheck(Xa: Any, Xb: Any, ia: Any, ib: Any, threshold: float, memory: int,
             xp: ModuleType) -> tuple[Any, Any, Any]:
    """Keep candidates whose float64 dot product is ``>= threshold``; (ia, ib, float32 sim)."""
    d = Xa.shape[1]
    chunk = max(1, memory // (4 * 8 * d))
    sims = xp.empty(ia.shape[0], dtype=xp.float64)
    for s in range(0, ia.shape[0], chunk):
        a = Xa[ia[s:s + chunk]].astype(xp.float64)
        b = Xb[ib[s:s + chunk]].astype(xp.float64)
        sims[s:s + chunk] = (a * b).sum(axis=1)
    keep = sims >= threshold
    return ia[keep], ib[keep], sims[keep].astype(xp.float32)


def _finalise(found: list, n: int, xp: ModuleType) -> Pairs:
    """Concatenate, sort by (row_a, row_b) and move to the host."""
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    rows = xp.concatenate([f[0] for f in found]).astype(xp.int64)
    cols = xp.concatenate([f[1] for f in found]).astype(xp.int64)
    sims = xp.concatenate([f[2] for f in found])
    order = xp.argsort(rows * max(n, 1) + cols)
    return to_host(rows[order]), to_host(cols[order]), to_host(sims[order])


def spherical_kmeans(X: Any, k: int, iters: int, seed: int, plan: _Plan, memory: int,
                      xp: ModuleType) -> Any:
    """(k, d) unit centroids fitted on a seeded sample of rows.

    Deterministic on both devices: the segment sums run over label-sorted rows, one slice
    per centroid (no scattered atomic adds, whose order varies on a GPU).
    """
    n = X.shape[0]
    rng = np.random.default_rng(seed)
    m = min(n, max(32 * k, 10_000))
    sample = X[xp.asarray(np.sort(rng.choice(n, m, replace=False)))]
    centroids = sample[xp.asarray(np.sort(rng.choice(m, k, replace=False)))]
    block = plan.assign_block(k, memory)
    for _ in range(iters):
        labels, best = _nearest(sample, centroids, block, plan, xp)
        order = xp.argsort(labels * m + xp.arange(m))       # unique keys: any sort agrees
        grouped = sample[order]
        bounds = to_host(xp.searchsorted(labels[order], xp.arange(k + 1))).tolist()
        sums = xp.stack([grouped[bounds[c]:bounds[c + 1]].sum(axis=0, dtype=xp.float64)
                         for c in range(k)])
        norms = xp.sqrt((sums * sums).sum(axis=1))
        empty = xp.flatnonzero(norms < 1e-12)
        if empty.shape[0]:                    # re-seed with the worst-fitting sample rows
            worst = xp.argsort(best)[:empty.shape[0]]
            sums[empty] = sample[worst]
            norms[empty] = xp.sqrt((sums[empty] ** 2).sum(axis=1))
        centroids = (sums / xp.maximum(norms, 1e-30)[:, None]).astype(xp.float32)
    return centroids


def _nearest(Y: Any, centroids: Any, block: int, plan: _Plan,
             xp: ModuleType) -> tuple[Any, Any]:
    """Index and similarity of the nearest centroid of every row of ``Y`` (blocked)."""
    def nearest(span: tuple[int, int]) -> tuple[Any, Any]:
        sims = Y[span[0]:span[1]] @ centroids.T
        label = sims.argmax(axis=1)
        return label, sims[xp.arange(sims.shape[0]), label]

    parts = list(_map(nearest, _spans(Y.shape[0], block), plan))
    return xp.concatenate([p[0] for p in parts]), xp.concatenate([p[1] for p in parts])


def bucket_members(X: Any, centroids: Any, probes: int, slack: float, plan: _Plan, memory: int,
             xp: ModuleType) -> tuple[Any, list[int], list[int]]:
    """The rows probed into each bucket, each bucket's home rows first.

    Row ``y`` with home bucket ``h`` (nearest centroid, lowest id among ties) is probed into
    bucket ``c`` when ``y.c_h - y.c_c <= slack * |c_h - c_c|``; when more than ``probes``
    buckets pass, it keeps those with the smallest ``(y.c_h - y.c_c) / |c_h - c_c|`` (the
    ones a near duplicate of ``y`` is likeliest to call home). Returns ``probe_rows``
    grouped by bucket (home rows first, ascending row id within both parts) and host lists
    ``home_count[b]`` and ``probe_start[b]`` (length n_buckets + 1).
    """
    n, k = X.shape[0], centroids.shape[0]
    centroid_sims = centroids @ centroids.T

    def assign(span: tuple[int, int]) -> tuple[Any, Any, Any]:
        sims = X[span[0]:span[1]] @ centroids.T
        home = sims.argmax(axis=1)
        best = sims[xp.arange(sims.shape[0]), home]
        # |c_h - c_c| <= 2, so only buckets within 2 * slack of the best can pass the rule
        flat = xp.flatnonzero(sims >= (best - 2.0 * slack)[:, None])
        r, c = flat // k, flat % k
        value = sims.reshape(-1)[flat]
        spread = xp.sqrt(xp.maximum(2.0 - 2.0 * centroid_sims[home[r], c], 0.0))
        ratio = (best[r] - value) / xp.maximum(spread, 1e-12)        # the rule: ratio <= slack
        keep = xp.flatnonzero(ratio <= slack)
        r, c, ratio = r[keep], c[keep], ratio[keep]
        ratio = xp.where(c == home[r], -1.0, ratio)                  # home first, always
        rank = xp.empty_like(r)
        rank[xp.argsort(ratio)] = xp.arange(r.shape[0])
        order = xp.argsort(r * r.shape[0] + rank)                # by row, then by ratio
        r, c = r[order], c[order]
        rank = xp.arange(r.shape[0]) - xp.searchsorted(r, r, side="left")
        keep = rank < probes
        return r[keep] + span[0], c[keep], home

    parts = list(_map(assign, _spans(n, plan.assign_block(k, memory)), plan))
    rows = [p[0] for p in parts]
    buckets = [p[1] for p in parts]
    homes = [p[2] for p in parts]
    row = xp.concatenate(rows).astype(xp.int64)
    bucket = xp.concatenate(buckets).astype(xp.int64)
    home = xp.concatenate(homes).astype(xp.int64)
    foreign = (bucket != home[row]).astype(xp.int64)
    order = xp.argsort((bucket * 2 + foreign) * n + row)
    home_count = to_host(xp.bincount(home, minlength=k)).tolist()
    probe_start = [0] + np.cumsum(to_host(xp.bincount(bucket, minlength=k))).tolist()
    return row[order], home_count, probe_start


# --------------------------------------------------------------------------------------
# Validation and array-module plumbing
# --------------------------------------------------------------------------------------

def _is_cupy_array(a: Any) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def _resolve_xp(X: Any, xp: ModuleType | None) -> ModuleType:
    if xp is None:
        if _is_cupy_array(X):
            return optional_import("cupy").get_array_module(X)
        return np
    if xp is np or getattr(xp, "__name__", None) == "cupy":
        return xp
    raise ConfigError(f"xp={getattr(xp, '__name__', xp)!r} is not numpy or cupy; "
                      "pass xp=numpy, xp=cupy, or leave it None to follow X")


def _to_xp(a: Any, xp: ModuleType) -> Any:
    if xp is np:
        return a.get() if _is_cupy_array(a) else np.asarray(a)
    return xp.asarray(a)



def _prepare(X: Any, xp: ModuleType | None, name: str = "X") -> tuple[Any, ModuleType]:
    """``X`` as a C-contiguous float32 array of ``xp``, checked to be 2-D, finite, unit rows."""
    xp = _resolve_xp(X, xp)
    X = _to_xp(X, xp)
    if X.ndim != 2:
        raise InputError(f"{name} must be a 2-D (rows x dims) embedding matrix, got shape "
                         f"{tuple(X.shape)}; reshape it to (n_rows, n_dims)")
    if X.dtype.kind != "f":
        raise InputError(f"{name} has dtype {X.dtype}; pass float embeddings "
                         "(they are used as float32)")
    if X.shape[1] == 0:
        raise InputError(f"{name} has 0 columns; embeddings need at least one dimension")
    X = xp.ascontiguousarray(X, dtype=xp.float32)
    if X.shape[0] == 0:
        return X, xp
    norms2 = xp.einsum("ij,ij->i", X, X)
    bad = xp.flatnonzero(~xp.isfinite(norms2))
    if bad.shape[0]:
        raise InputError(f"{name} row {int(bad[0])} has NaN or infinite values; "
                         "drop or repair those rows before the pair search")
    worst = int(norms2.argmax())
    norm = math.sqrt(float(norms2[worst]))
    if norm > 1.0 + NORM_TOLERANCE:
        raise InputError(f"{name} row {worst} has L2 norm {norm:.6g}, expected rows of norm 1 "
                         "(cosine similarity needs L2-normalised rows); normalise first: "
                         "X / np.linalg.norm(X, axis=1, keepdims=True)")
    return X, xp


def _check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise ConfigError(f"threshold={threshold!r} is not a number; pass a cosine similarity "
                          "in (0, 1], e.g. 0.95")
    value = float(threshold)
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"threshold={threshold!r} is outside (0, 1]; pass a cosine "
                          "similarity in (0, 1], e.g. 0.95")
    return value


def _check_positive_int(name: str, value: Any, example: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{name}={value!r} is not a positive integer; pass one ({example}) "
                          "or None for the default")
    return int(value)


def _check_offset(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ConfigError(f"{name}={value!r} is not a non-negative integer; pass the global "
                          "row index of the block's first row")
    return int(value)


def _check_slack(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ConfigError(f"probe_slack={value!r} is outside [0, 1]; pass e.g. 0.3 (1 probes "
                          "every bucket that could hold a pair, 0 only the home bucket)")
    return float(value)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ConfigError(f"seed={seed!r} is not a non-negative integer; pass e.g. seed=0")
    return int(seed)


def _check_progress(progress: Any) -> None:
    if progress is not None and not callable(progress):
        raise ConfigError(f"progress={progress!r} is not callable; pass a function taking an "
                          "int (rows done) or None")


def _plan_and_memory(xp: ModuleType, memory_bytes: Any) -> tuple[_Plan, int]:
    plan = plan_for(xp)
    if memory_bytes is None:
        return plan, plan.memory_bytes
    if (isinstance(memory_bytes, bool) or not isinstance(memory_bytes, numbers.Integral)
            or memory_bytes < MIN_MEMORY_BYTES):
        raise ConfigError(f"memory_bytes={memory_bytes!r} is not an integer >= "
                          f"{MIN_MEMORY_BYTES} (1 MiB); pass a budget such as 256 * 2**20")
    return plan, int(memory_bytes)
