"""The UMAP layout tamis owns: from the run's neighbour graph to a 2-D or 3-D map.

Steps (McInnes, Healy & Melville 2018, as umap-learn implements them, re-written here so the
map needs no extra package, runs on the GPU and is deterministic):

1. :func:`fuzzy_graph`: each row's membership strengths to its k neighbours,
   ``exp(-(d - rho_i) / sigma_i)`` with ``rho_i`` the distance to its nearest neighbour and
   ``sigma_i`` set by bisection so that the strengths sum to ``log2(k + 1)``; symmetrised by
   the fuzzy union ``A + A^T - A o A^T``. O(M k) time and memory (the graph has <= 2 M k edges).
2. :func:`curve_params`: the ``a``, ``b`` of ``1 / (1 + a d^(2b))`` fitted to ``min_dist``.
3. :func:`initial_layout`: the graph's spectral start (the leading non-trivial eigenvectors of
   its normalised adjacency, found by a fixed number of block power iterations started from
   the data's principal components: O(iterations * E * dims)), scaled to [-10, 10].
4. :func:`optimise`: ``n_epochs`` epochs of :func:`tamis.kernels.layout.layout_epoch`, each in
   :data:`EPOCH_PARTS` parts applied one after the other, with a learning rate falling linearly
   to 0; every part is exact-integer summed, so the map is the same for a seed whatever the
   threads, blocks or GPU scheduling.

For very large stores, :func:`umap_layout` is given a sample of the rows and the sample's own
neighbour graph (the caller searches it: a sample's neighbours are not in the full graph): it
lays out the sample, places every other row at the weighted mean of its already placed
neighbours in the full graph (rounds of propagation), then runs :data:`REFINE_EPOCHS` epochs
over the whole graph with the sample held where it is.

Memory: the graph (about 2 M k edges x 16 bytes), the map, and one epoch block
(``block_edges``; see :func:`~tamis.kernels.layout.layout_epoch_reference`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from ..errors import ConfigError, InputError
from ..kernels.layout import layout_epoch
from .backend import to_host

log = logging.getLogger("tamis")

#: umap-learn's defaults
MIN_DIST = 0.1
SPREAD = 1.0
NEGATIVE_RATE = 5
LEARNING_RATE = 1.0
#: bisection steps for each row's sigma (umap-learn: 64 with an early exit; 2**-48 relative here)
SIGMA_STEPS = 48
#: power iterations of the spectral start
SPECTRAL_ITERATIONS = 60
#: epochs over the whole graph after a sample was fitted and the rest placed
REFINE_EPOCHS = 30
#: each epoch is applied in this many parts, in edge order (heads ascending), each part seeing the
#: moves of the parts before it: closer to umap-learn's edge-by-edge sweep than one batch step
#: (measured on the realistic 100k store: neighbourhood preservation 0.042 with 1 part, 0.055 with
#: 8, umap-learn 0.053), at the cost of a few more passes over the map
EPOCH_PARTS = 8


@dataclass
class Graph:
    """The symmetric fuzzy graph as directed edges (both directions of each pair), sorted."""

    head: np.ndarray   # (E,) int64
    tail: np.ndarray   # (E,) int64
    weight: np.ndarray  # (E,) float32 in (0, 1]
    n_vertices: int


@dataclass
class LayoutInfo:
    """What drew the map: the summary's ``projection`` entry gets these fields."""

    n_epochs: int = 0
    n_edges: int = 0
    init: str = "spectral"
    a: float = 0.0
    b: float = 0.0
    seconds: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"implementation": "tamis", "n_epochs": self.n_epochs, "n_edges": self.n_edges,
                "init": self.init, "a": round(self.a, 6), "b": round(self.b, 6), "min_dist": MIN_DIST,
                "negative_rate": NEGATIVE_RATE,
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


def default_epochs(m: int) -> int:
    """umap-learn's rule: 500 epochs up to 10,000 rows, 200 above (the graph is larger, each
    epoch does more work, and the layout settles in fewer)."""
    return 500 if m <= 10_000 else 200


# ---------------------------------------------------------------------- 1. graph
def fuzzy_graph(ind: np.ndarray, dist: np.ndarray) -> Graph:
    """The fuzzy union of each row's k-neighbour membership strengths.

    ``ind`` (M, k) are each row's neighbours (self excluded, -1 = none), ``dist`` their
    distances (ascending per row). Rows with no neighbour get no edge.
    """
    ind = np.asarray(ind, dtype=np.int64)
    dist = np.asarray(dist, dtype=np.float64)
    m, k = ind.shape
    valid = (ind >= 0) & (ind != np.arange(m)[:, None]) & np.isfinite(dist)
    d = np.where(valid, np.maximum(dist, 0.0), np.inf)
    positive = np.where(valid & (d > 0), d, np.inf)
    rho = positive.min(axis=1)
    rho = np.where(np.isfinite(rho), rho, 0.0)
    shifted = np.where(valid, np.maximum(d - rho[:, None], 0.0), np.inf)
    target = math.log2(k + 1)
    lo = np.zeros(m)
    hi = np.full(m, np.inf)
    mid = np.ones(m)
    for _ in range(SIGMA_STEPS):
        psum = np.exp(-shifted / mid[:, None]).sum(axis=1)
        big = psum > target
        hi = np.where(big, mid, hi)
        lo = np.where(big, lo, mid)
        mid = np.where(np.isfinite(hi), (lo + hi) / 2.0, mid * 2.0)
    mean_row = np.where(valid, d, 0.0).sum(axis=1) / np.maximum(valid.sum(axis=1), 1)
    mean_all = float(np.where(valid, d, 0.0).sum() / max(int(valid.sum()), 1))
    floor = 1e-3 * np.where(rho > 0, mean_row, mean_all)
    sigma = np.maximum(mid, floor)
    with np.errstate(invalid="ignore", divide="ignore"):
        strength = np.where(shifted > 0, np.exp(-shifted / sigma[:, None]), 1.0)
    rows = np.repeat(np.arange(m), k)[valid.ravel()]
    cols = ind.ravel()[valid.ravel()]
    vals = strength.ravel()[valid.ravel()]
    A = sp.csr_matrix((vals, (rows, cols)), shape=(m, m))
    A.sum_duplicates()
    At = A.T.tocsr()
    P = (A + At - A.multiply(At)).tocoo()
    keep = P.data > 0
    order = np.lexsort((P.col[keep], P.row[keep]))
    return Graph(head=P.row[keep][order].astype(np.int64), tail=P.col[keep][order].astype(np.int64),
                 weight=P.data[keep][order].astype(np.float32), n_vertices=m)


# ---------------------------------------------------------------------- 2. curve
def curve_params(min_dist: float = MIN_DIST, spread: float = SPREAD) -> tuple[float, float]:
    """``a``, ``b`` so that ``1 / (1 + a x^(2b))`` fits 1 below ``min_dist`` and
    ``exp(-(x - min_dist) / spread)`` above, by least squares on 300 points (umap-learn's fit)."""
    from scipy.optimize import curve_fit

    x = np.linspace(0, spread * 3, 300)
    y = np.where(x < min_dist, 1.0, np.exp(-(x - min_dist) / spread))
    params, _ = curve_fit(lambda x, a, b: 1.0 / (1.0 + a * x ** (2 * b)), x, y)
    return float(params[0]), float(params[1])


# ---------------------------------------------------------------------- 3. start
def initial_layout(graph: Graph, start: np.ndarray, dims: int, seed: int) -> np.ndarray:
    """(dims, M) float32: the spectral start, or the given ``start`` where the graph has none.

    ``start`` (M, >= dims) are the data's leading principal components. Block power iteration
    on ``I + D^-1/2 W D^-1/2`` (the shift keeps it positive semi-definite), deflating the trivial
    eigenvector ``D^1/2 1``, orthonormalised each step (Gram-Schmidt, BLAS-free): a fixed number of steps, so the
    result is a deterministic function of the graph and ``start``.
    """
    m = graph.n_vertices
    W = sp.csr_matrix((graph.weight.astype(np.float64), (graph.head, graph.tail)), shape=(m, m))
    deg = np.asarray(W.sum(axis=1)).ravel()
    connected = deg > 0
    root = np.sqrt(np.where(connected, deg, 0.0))
    inv = np.where(connected, 1.0 / np.where(connected, root, 1.0), 0.0)
    N = sp.diags(inv) @ W @ sp.diags(inv)
    trivial = root / max(np.linalg.norm(root), 1e-300)
    V = np.asarray(start[:, :dims], dtype=np.float64)
    if V.shape[1] < dims:
        V = np.concatenate([V, np.zeros((m, dims - V.shape[1]))], axis=1)
    V = _grid(V - V.mean(axis=0))
    for _ in range(SPECTRAL_ITERATIONS):
        V = _orthonormal(V + N @ V, trivial)
    V = _orthonormal(V, trivial)
    V = inv[:, None] * V  # D^-1/2: the random-walk eigenvectors, as umap-learn's spectral start
    V[~connected] = np.asarray(start[~connected, :dims], dtype=np.float64) if dims <= start.shape[1] else 0.0
    return _scaled(V, seed)


def _dot(u: np.ndarray, v: np.ndarray) -> float:
    """u . v by NumPy's pairwise sum (no BLAS: the same bits for any thread count)."""
    return float(np.multiply(u, v).sum())


def _orthonormal(V: np.ndarray, trivial: np.ndarray) -> np.ndarray:
    """Gram-Schmidt of V's columns against ``trivial`` and each other, with BLAS-free dot products."""
    out = np.empty_like(V)
    for j in range(V.shape[1]):
        col = V[:, j] - _dot(trivial, V[:, j]) * trivial
        for i in range(j):
            col = col - _dot(out[:, i], col) * out[:, i]
        norm = math.sqrt(max(_dot(col, col), 0.0))
        out[:, j] = col / norm if norm > 0 else 0.0
    return out


def _grid(V: np.ndarray) -> np.ndarray:
    """V rounded to 2**-12 of its largest entry: the principal components come from BLAS, whose last
    bits vary with the CPU and its threads; the rounded start does not. (The epochs' float32 power
    is NumPy's vectorised one, whose last bit may differ between instruction sets: the map is the
    same for a seed on one machine whatever its threads and blocks, not across CPU kinds.)"""
    big = float(np.abs(V).max()) if V.size else 0.0
    if big == 0.0:
        return V
    step = 2.0 ** (math.floor(math.log2(big)) - 12)
    return np.rint(V / step) * step


def _scaled(V: np.ndarray, seed: int) -> np.ndarray:
    """Scaled to [-10, 10] per map, with 1e-4 noise (breaks exact ties), as umap-learn does."""
    big = float(np.abs(V).max())
    V = V * (10.0 / big) if big > 0 else V
    noise = np.random.default_rng([seed, 17]).normal(scale=1e-4, size=V.shape)
    return np.ascontiguousarray((V + noise).T, dtype=np.float32)


# ---------------------------------------------------------------------- 4. optimise
def optimise(Y: Any, graph: Graph, n_epochs: int, *, a: float, b: float, seed: int, xp: ModuleType = np,
             frozen: np.ndarray | None = None, first_epoch: int = 0, alpha0: float = LEARNING_RATE,
             parts: int = EPOCH_PARTS, progress: Callable[[int], Any] | None = None) -> Any:
    """``n_epochs`` epochs on ``Y`` ((dims, M) float32 on ``xp``): returns the new ``Y``.

    Each epoch is applied in ``parts`` consecutive ranges of edges (:data:`EPOCH_PARTS`); each
    range is one exact-integer step (:func:`~tamis.kernels.layout.layout_epoch`) from the map the
    ranges before it left. O(n_epochs * E * negative rate) time.

    Edges of weight below ``max / n_epochs`` never fire (umap-learn drops them too).
    ``frozen`` (M,) bool: rows that keep their place. ``first_epoch`` offsets the epochs'
    sampling keys (a refinement after a fit draws other negatives).
    """
    w = graph.weight
    keep = w >= w.max() / max(n_epochs, 1)
    head = xp.asarray(graph.head[keep])
    tail = xp.asarray(graph.tail[keep])
    rate = xp.asarray((w[keep] / w.max()).astype(np.float32))
    still = None if frozen is None else xp.asarray(~frozen)
    e = int(head.shape[0])
    cuts = [e * i // parts for i in range(parts + 1)]
    for n in range(n_epochs):
        alpha = alpha0 * (1.0 - n / n_epochs)
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            move = layout_epoch(Y, head[lo:hi], tail[lo:hi], rate[lo:hi], epoch=first_epoch + n, alpha=alpha, a=a,
                                b=b, negative_rate=NEGATIVE_RATE, seed=seed, edge_offset=lo, xp=xp)
            if still is not None:
                move = move * still[None, :]
            Y = (Y + move).astype(xp.float32)
        if progress is not None:
            progress(1)
    return Y


# ---------------------------------------------------------------------- the whole map
def umap_layout(ind: np.ndarray, dist: np.ndarray, start: np.ndarray, *, dims: int = 2, seed: int = 0,
                n_epochs: int | None = None, sample: np.ndarray | None = None, sample_graph: tuple | None = None,
                xp: ModuleType = np, progress: Callable[[int], Any] | None = None) -> tuple[np.ndarray, LayoutInfo]:
    """The map ((M, dims) float32 on the host) of a neighbour graph, and what drew it.

    Parameters
    ----------
    ind, dist : (M, k) each row's nearest other rows (-1 = none) and their distances, ascending.
    start : (M, >= dims) the data's principal components (the spectral start's seed vectors,
        and the place of rows with no edge).
    dims : 2 or 3.  seed : negative samples and the start's noise.
    n_epochs : None: :func:`default_epochs` of the rows fitted.
    sample, sample_graph : to fit a sample only: its sorted rows (S,) and its own neighbour
        graph ``(ind, dist)``, (S, k') with indices into the sample; the other rows are placed.
    xp : where the epochs run (numpy or cupy); the graph is built on the host.
    progress : called with the number of epochs done, as they are done.
    """
    ind = np.asarray(to_host(ind))
    dist = np.asarray(to_host(dist))
    m = int(ind.shape[0])
    if ind.ndim != 2 or dist.shape != ind.shape or m < 2:
        raise InputError(f"the UMAP layout needs (M, k) neighbour indices and distances with M >= 2, "
                         f"got {ind.shape} and {dist.shape}")
    if dims not in (2, 3):
        raise ConfigError(f"dims={dims!r}; the map has 2 or 3 dimensions")
    if n_epochs is not None and (not isinstance(n_epochs, (int, np.integer)) or n_epochs < 1):
        raise ConfigError(f"n_epochs={n_epochs!r}; give an integer >= 1 (or None for the default)")
    if (sample is None) != (sample_graph is None):
        raise ConfigError("give both sample and sample_graph (the sample's own neighbour graph), or neither")
    info = LayoutInfo()
    info.a, info.b = curve_params()
    clock = time.perf_counter()
    graph = fuzzy_graph(ind, dist)
    info.n_edges = int(graph.head.shape[0])
    info.seconds["graph"] = time.perf_counter() - clock
    if sample is None:
        Y = _fit(graph, start, dims, seed, n_epochs, info, xp, progress)
        return np.ascontiguousarray(to_host(Y).T), info
    sample = np.asarray(sample, dtype=np.int64)
    clock = time.perf_counter()
    sub = fuzzy_graph(np.asarray(to_host(sample_graph[0])), np.asarray(to_host(sample_graph[1])))
    info.seconds["sample_graph"] = time.perf_counter() - clock
    fitted = to_host(_fit(sub, start[sample], dims, seed, n_epochs, info, xp, progress))
    Y = place(graph, sample, fitted, start, seed, info)
    clock = time.perf_counter()
    in_sample = np.zeros(m, dtype=bool)
    in_sample[sample] = True
    Y = optimise(xp.asarray(Y), graph, REFINE_EPOCHS, a=info.a, b=info.b, seed=seed, xp=xp, frozen=in_sample,
                 first_epoch=info.n_epochs, alpha0=0.25 * LEARNING_RATE, progress=progress)
    info.seconds["refine"] = time.perf_counter() - clock
    return np.ascontiguousarray(to_host(Y).T), info


def _fit(graph: Graph, start: np.ndarray, dims: int, seed: int, n_epochs: int | None, info: LayoutInfo,
         xp: ModuleType, progress: Callable[[int], Any] | None) -> Any:
    epochs = default_epochs(graph.n_vertices) if n_epochs is None else int(n_epochs)
    info.n_epochs = epochs
    clock = time.perf_counter()
    Y0 = initial_layout(graph, start, dims, seed)
    info.seconds["init"] = time.perf_counter() - clock
    clock = time.perf_counter()
    Y = optimise(xp.asarray(Y0), graph, epochs, a=info.a, b=info.b, seed=seed, xp=xp, progress=progress)
    info.seconds["optimise"] = time.perf_counter() - clock
    return Y


def place(graph: Graph, sample: np.ndarray, fitted: np.ndarray, start: np.ndarray, seed: int,
          info: LayoutInfo) -> np.ndarray:
    """(dims, M) float32: the sample where it was fitted, every other row at the weighted mean of its
    placed neighbours, in rounds (a row placed in one round places its neighbours in the next);
    rows with no path to the sample at their scaled principal components. O(rounds * E)."""
    clock = time.perf_counter()
    m = graph.n_vertices
    dims = int(fitted.shape[0])
    Y = np.zeros((dims, m), dtype=np.float64)
    Y[:, sample] = fitted
    placed = np.zeros(m, dtype=bool)
    placed[sample] = True
    W = sp.csr_matrix((graph.weight.astype(np.float64), (graph.head, graph.tail)), shape=(m, m))
    while not placed.all():
        mass = W @ placed.astype(np.float64)
        ready = (~placed) & (mass > 0)
        if not ready.any():
            rest = ~placed
            Y[:, rest] = _scaled(np.asarray(start[rest, :dims], dtype=np.float64), seed)
            break
        pulled = W @ (Y * placed[None, :]).T
        Y[:, ready] = (pulled[ready] / mass[ready][:, None]).T
        placed |= ready
    info.seconds["place"] = time.perf_counter() - clock
    return Y.astype(np.float32)


__all__ = ["umap_layout", "fuzzy_graph", "curve_params", "initial_layout", "optimise", "place", "default_epochs",
           "Graph", "LayoutInfo"]
