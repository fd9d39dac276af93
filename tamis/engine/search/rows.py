"""The rows every search takes, and the one way a similarity is computed.

Every engine of :mod:`tamis.engine.search` takes the same input, checked once by
:func:`prepare`: an ``xp`` (NumPy or CuPy) matrix of finite, L2-normalised float32 or
float16 rows. Its dtype is kept (a float16 matrix is widened one tile at a time, never as a
whole), so ``--precision float16`` halves the memory of the search too.

The canonical similarity
------------------------
Tiles (BLAS float32 on a CPU, float16 tensor cores on a GPU, FAISS, cuVS) only *select
candidates*. Every similarity an engine returns, and every comparison with a threshold or
between neighbours, uses :func:`canonical_dot`: the products of the two stored rows in
float64 (exact: a float32 times a float32 fits in float64's 53 bits) summed by a fixed
binary tree (columns padded with zeros to a power of two, then halves added until one
column is left). Each step is one correctly rounded IEEE float64 add, done by the same
elementwise ufuncs on NumPy and CuPy, so the value is bit-identical on every CPU, BLAS,
GPU, block shape and partitioning. Ties break by row id. So the answers of an exact engine
do not depend on how the work was cut, and an approximate engine can miss a pair or a
neighbour but never report a different similarity.

:func:`tile_margin` is the proven bound on ``|tile value - x.y|`` for rows of norm <= 1
(inputs are checked to norm <= 1 + 1e-3; the factor 2 covers that), so a tile entry below
``threshold - margin`` cannot be a pair:

* float32 tiles: any summation order of d products errs by at most ``d 2**-24``; margin
  ``2 d 2**-24 + 2**-24 sqrt(d) + 2**-22`` (6.3e-5 at d=512);
* float16 tiles (CuPy's float16 GEMM accumulates in float32 and rounds the output to
  float16): rounding inputs moves ``x.y`` by at most ``(2u + u**2)`` with ``u = 2**-11``,
  accumulation adds ``d 2**-24``, the output rounding ``u``; margin
  ``4u + 2 d 2**-24 + 2**-24 sqrt(d)`` (2.0e-3 at d=512). This assumes CuPy's default
  float32 compute type for float16 GEMMs.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from ..._optional import optional_import
from ...errors import ConfigError, InputError
from .tiles import parallel_map, plan_for, spans

__all__ = ["NORM_TOLERANCE", "prepare", "resolve_xp", "canonical_dot", "canonical_dot_rows", "tile_margin",
           "tile_dtype"]

NORM_TOLERANCE = 1e-3          # rows may have norm 1 +- NORM_TOLERANCE
MAX_ROWS = 0xFFFFFFFF - 1      # indices are packed into 32 bits by the top-k merge
#: float64 products of one canonical_dot chunk: cache-sized on a CPU, large on a GPU
CPU_CHUNK_ELEMENTS = 1 << 18
GPU_CHUNK_ELEMENTS = 1 << 23
#: rows per block when prepare() checks norms
CHECK_BLOCK_ELEMENTS = 1 << 20


def is_cupy_array(a: Any) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def resolve_xp(X: Any, xp: ModuleType | None) -> ModuleType:
    """``xp`` if given (numpy or cupy), else the array module of ``X``."""
    if xp is None:
        return optional_import("cupy") if is_cupy_array(X) else np
    if xp is np or getattr(xp, "__name__", None) == "cupy":
        return xp
    raise ConfigError(f"xp={getattr(xp, '__name__', xp)!r} is not numpy or cupy; "
                      "pass xp=numpy, xp=cupy, or leave it None to follow X")


def _to_xp(a: Any, xp: ModuleType) -> Any:
    if xp is np:
        return a.get() if is_cupy_array(a) else np.asarray(a)
    return xp.asarray(a)


def prepare(X: Any, xp: ModuleType | None = None, name: str = "X",
            allow_empty: bool = True) -> tuple[Any, ModuleType]:
    """``X`` as a C-contiguous float32 (or float16, kept) ``xp`` matrix of finite unit rows.

    Raises :class:`InputError` naming the row and what is wrong: not 2-D, not float, no
    columns, NaN/inf, a norm off 1 by more than :data:`NORM_TOLERANCE` (zero rows included).
    """
    xp = resolve_xp(X, xp)
    X = _to_xp(X, xp)
    if X.ndim != 2:
        raise InputError(f"{name} must be a 2-D (rows x dims) embedding matrix, got shape "
                         f"{tuple(X.shape)}; reshape it to (n_rows, n_dims)")
    if X.dtype.kind != "f":
        raise InputError(f"{name} has dtype {X.dtype}; pass float embeddings, L2-normalised")
    if X.shape[1] == 0 or (X.shape[0] == 0 and not allow_empty):
        raise InputError(f"{name} is empty (shape {tuple(X.shape)}); the store has no rows or no "
                         "dimensions")
    if X.shape[0] > MAX_ROWS:
        raise InputError(f"{name} has {X.shape[0]} rows; the search supports at most {MAX_ROWS}: "
                         "split the store")
    dtype = xp.float16 if X.dtype == xp.float16 else xp.float32
    X = xp.ascontiguousarray(X, dtype=dtype)
    if X.shape[0] == 0:
        return X, xp
    block = max(1, CHECK_BLOCK_ELEMENTS // X.shape[1])
    for start in range(0, X.shape[0], block):
        part = X[start:start + block].astype(xp.float32, copy=False)
        norms = xp.sqrt(xp.einsum("ij,ij->i", part, part))
        bad = xp.flatnonzero(~(xp.abs(norms - 1) <= NORM_TOLERANCE))   # NaN and inf fail too
        if bad.shape[0]:
            i = int(bad[0])
            raise InputError(f"{name} row {start + i} has L2 norm {float(norms[i]):.6g}; the search "
                             "needs finite rows of norm 1 (cosine similarity): normalise with "
                             "X / np.linalg.norm(X, axis=1, keepdims=True) and drop zero, NaN or "
                             "inf rows first")
    return X, xp


def canonical_dot(A: Any, B: Any, ia: Any, ib: Any, xp: ModuleType) -> Any:
    """float64 ``A[ia[t]] . B[ib[t]]`` for every t, bit-identical on every device: each pair as
    :func:`canonical_dot_rows` of one candidate (the one implementation of the fixed tree;
    measured as fast as a loop of its own). O(len(ia) d); the chunking changes nothing."""
    return canonical_dot_rows(A, B, ia, ib.reshape(-1, 1), xp)[:, 0]


def canonical_dot_rows(A: Any, B: Any, ia: Any, ib: Any, xp: ModuleType) -> Any:
    """``(m, c)`` float64 ``A[ia[i]] . B[ib[i, j]]``: the canonical similarity of every row with
    each of its ``c`` candidates (entries of ``ib`` < 0 give 0; the caller masks them).

    Products in float64 (exact), summed by the fixed tree of the module docstring; each row
    of ``A`` is read once for its candidates, and the tree's first level is added as the two
    halves of the products are made. In chunks: :data:`CPU_CHUNK_ELEMENTS` (2 MiB, within a
    core's caches; measured fastest, 1.3x 512 KiB; spread over the CPU's threads) or
    :data:`GPU_CHUNK_ELEMENTS` (64 MiB) float64 products at a time. O(m c d); the chunking
    changes nothing in the result."""
    m, c = (int(v) for v in ib.shape)
    d = int(A.shape[1])
    width = 1 << max(0, (d - 1).bit_length())
    out = xp.empty((m, c), dtype=xp.float64)
    if m == 0 or c == 0:
        return out
    elements = CPU_CHUNK_ELEMENTS if xp is np else GPU_CHUNK_ELEMENTS
    chunk = max(1, elements // (width * c))
    half = width // 2

    def run(span: tuple[int, int]) -> None:
        s, e = span
        a = A[ia[s:e]][:, None, :]
        b = B[xp.maximum(ib[s:e], 0)]
        if width == 1:
            out[s:e] = xp.multiply(a[..., 0], b[..., 0], dtype=xp.float64)
            return
        P = xp.multiply(a[..., :half], b[..., :half], dtype=xp.float64)
        # the first level of the tree: column j + half of the padded products (zero past d)
        upper = xp.multiply(a[..., half:], b[..., half:], dtype=xp.float64)
        xp.add(P[..., :d - half], upper, out=P[..., :d - half])
        if d - half < half:
            xp.add(P[..., d - half:], 0.0, out=P[..., d - half:])
        h = half
        while h > 1:
            h //= 2
            xp.add(P[..., :h], P[..., h:2 * h], out=P[..., :h])
        out[s:e] = P[..., 0]

    work = spans(m, chunk)
    groups = [work[g:g + 64] for g in range(0, len(work), 64)]
    for _ in parallel_map(lambda group: [run(span) for span in group], groups, plan_for(xp)):
        pass
    return out


def tile_dtype(X: Any, xp: ModuleType, low_precision: bool) -> str:
    """dtype of the matmul tiles: float16 on a GPU when asked (pairs) or when X is float16,
    float32 otherwise (a CPU has no fast float16 matmul)."""
    if xp is not np and (low_precision or X.dtype == xp.float16):
        return "float16"
    return "float32"


def tile_margin(d: int, dtype: str) -> float:
    """Proven bound (with a safety factor) on |tile value - x.y| for rows of norm <= 1."""
    accumulate = 2.0 * d * 2.0**-24 + 2.0**-24 * math.sqrt(d)
    if dtype == "float32":
        return accumulate + 2.0**-22
    return 4.0 * 2.0**-11 + accumulate
