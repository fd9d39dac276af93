"""2-D / 3-D maps of the embeddings for the report: UMAP, t-SNE or PCA.

:func:`project` maps the L2-normalised valid-row matrix (``ctx.embeddings``, M x d) to
M x ``dims`` float32 coordinates on the host.

- ``"umap"``: tamis' own UMAP layout (:mod:`tamis.engine.layout`), no extra package, on the
  run's device (NumPy or CuPy), deterministic for a seed. It lays out the run's neighbour graph
  (``knn``), or one it searches with :func:`tamis.engine.search.knn_graph` when none is given.
  Above ``max_fit`` rows it fits a sample and places the rest on the graph (no ``transform``).
- ``"umap-learn"``: umap-learn's UMAP (optional, ``pip install umap-learn``), for comparison
  and for those who want it. When the run's neighbour graph is given (``knn``) umap-learn uses
  it instead of searching again.
- ``"tsne"``: openTSNE (optional, ``pip install openTSNE``): Barnes-Hut, or FFT-accelerated
  for 10k rows and more in 2-D.
- ``"pca"``: the top principal components, computed with ``xp`` (NumPy or CuPy) and no
  extra package; the fallback when umap-learn is missing (:func:`project_or_fallback`).

More than ``max_fit`` rows: the method is fitted on a deterministic random sample of
``max_fit`` rows and the rest are placed with the fitted model's ``transform``, in blocks of
:data:`TRANSFORM_BLOCK` rows. Every random step is seeded by ``seed``: one store, one map.
A method whose package is missing raises :class:`~tamis.errors.ConfigError` with the pip
command that installs it.

The scan stores a map as the samples' ``<method>_x``, ``_y`` (and ``_z``) columns.
"""

from __future__ import annotations

import importlib
import logging
import time
import warnings
from types import ModuleType
from typing import Any

import numpy as np

from .._optional import has_module
from ..config import PROJECTIONS
from ..errors import ConfigError, InputError
from .backend import to_host

log = logging.getLogger("tamis")

#: the map methods of :data:`tamis.config.PROJECTIONS` (without "auto" and "none")
METHODS = tuple(m for m in PROJECTIONS if m not in ("auto", "none"))
#: where each optional method comes from: (module, pip package)
PACKAGES = {"umap-learn": ("umap", "umap-learn"), "tsne": ("openTSNE", "openTSNE")}
#: rows placed per ``transform`` call when M > max_fit
TRANSFORM_BLOCK = 65_536
#: rows per block when PCA accumulates the covariance (bounds the float64 copy to ~64 MiB)
PCA_BLOCK_BYTES = 64 << 20
#: UMAP neighbourhood size (umap-learn's default; tamis' layout takes the run's graph, k = 10 by
#: default, and searches 15 neighbours only when it has none) and t-SNE perplexity
N_NEIGHBORS = 15
PERPLEXITY = 30.0
#: openTSNE runs multi-threaded from this many fitted rows (results do not depend on the threads)
TSNE_THREADS_FROM = 20_000
#: fewer rows than this and UMAP / t-SNE have no neighbourhood to speak of
MIN_ROWS_MANIFOLD = 8


def project(embeddings: Any, *, method: str = "umap", dims: int = 2, knn: tuple | None = None,
            max_fit: int = 200_000, seed: int = 0, xp: ModuleType = np) -> np.ndarray:
    """Coordinates (M x ``dims`` float32, on the host) of the rows of ``embeddings``.

    Parameters
    ----------
    embeddings : (M, d) array (NumPy or CuPy), rows L2-normalised.
    method : "umap", "tsne" or "pca".
    dims : 2 or 3.
    knn : optional ``(indices, distances)``, both (M, k): each row's nearest other rows
        (self excluded, indices into ``embeddings``, -1 = none) and their cosine distances
        (1 - similarity), ascending. Used by UMAP (umap-learn) and t-SNE when all M rows are
        fitted; ignored when a sample is fitted (the graph is over all rows).
    max_fit : most rows fitted; the others are placed with the fitted model's ``transform``.
    seed : seed of the sample and of the method.
    xp : the array module of ``embeddings`` (``numpy`` or ``cupy``).

    Cost: PCA O(M d^2) time and O(d^2 + block x d) memory; UMAP and t-SNE as their packages
    (roughly O(M log M) with a kNN search), on at most ``max_fit`` rows plus a transform.
    """
    return project_with_info(embeddings, method=method, dims=dims, knn=knn, max_fit=max_fit, seed=seed,
                             xp=xp)[0]


def project_with_info(embeddings: Any, *, method: str = "umap", dims: int = 2, knn: tuple | None = None,
                      max_fit: int = 200_000, seed: int = 0, xp: ModuleType = np,
                      progress: Any = None) -> tuple[np.ndarray, dict]:
    """:func:`project`, and what drew the map (``summary.json -> projection``): ``method``,
    ``dims``, ``n_points``, ``n_fitted``, ``seed``, ``seconds`` and, for tamis' UMAP, its
    parameters (``layout``). ``progress`` is called with the epochs done (tamis' UMAP)."""
    _validate(embeddings, method, dims, knn, max_fit)
    clock = time.perf_counter()
    m = int(embeddings.shape[0])
    info: dict = {"method": method, "dims": dims, "n_points": m, "seed": int(seed)}
    if method == "pca":
        coords = _pca(embeddings, dims, xp)
        info.update(n_fitted=m, seconds=round(time.perf_counter() - clock, 3))
        return coords, _described(info)
    if m < MIN_ROWS_MANIFOLD:
        raise InputError(f"{method} needs at least {MIN_ROWS_MANIFOLD} rows with a valid embedding to map, "
                         f"and there are {m}; use method='pca'")
    if method == "umap":
        coords, layout = _umap_tamis(embeddings, dims, knn, max_fit, seed, xp, progress)
        info.update(n_fitted=min(m, max_fit), layout=layout, seconds=round(time.perf_counter() - clock, 3))
        return coords, _described(info)
    module = _require(method)
    host = _to_host(embeddings)
    sample = _fit_sample(m, max_fit, seed)
    if sample is not None:
        log.info("%s: fitting on %d of %d rows, placing the rest with transform", method, len(sample), m)
        knn = None
    fit_rows = host if sample is None else host[sample]
    if method == "umap-learn":
        model, coords = _umap_fit(module, fit_rows, dims, knn, seed)
    else:
        model, coords = _tsne_fit(module, fit_rows, dims, knn, seed)
    if sample is not None:
        coords = _place_rest(model, host, sample, coords, dims)
    info.update(n_fitted=min(m, max_fit), seconds=round(time.perf_counter() - clock, 3))
    return np.ascontiguousarray(coords, dtype=np.float32), _described(info)


def _described(info: dict) -> dict:
    """``info["description"]``: one line saying what drew the map, how, and how long it took."""
    names = {"umap": "UMAP (tamis)", "umap-learn": "UMAP (umap-learn)", "tsne": "t-SNE (openTSNE)", "pca": "PCA"}
    parts = [f"{names.get(info['method'], info['method'])}, {info['dims']}-D, {info['n_points']:,} points"]
    layout = info.get("layout")
    if layout:
        parts.append(f"{layout['n_epochs']} epochs from a {layout['init']} start, min_dist {layout['min_dist']}, "
                     f"{layout['n_edges']:,} graph edges")
    if info.get("n_fitted", info["n_points"]) < info["n_points"]:
        parts.append(f"fitted on {info['n_fitted']:,} rows, the rest placed")
    if info["method"] != "pca":
        parts.append(f"seed {info['seed']}")
    parts.append(f"{info['seconds']:.1f} s")
    info["description"] = "; ".join(parts)
    return info


def column_prefix(method: str) -> str:
    """The samples' map columns are ``<prefix>_x``, ``_y`` (``_z``): "umap" for either UMAP."""
    return "umap" if method.startswith("umap") else method


def project_or_fallback(embeddings: Any, *, method: str = "umap", **kwargs: Any) -> tuple[np.ndarray, dict]:
    """:func:`project_with_info`, with PCA instead of a manifold map when the store is tiny, and
    tamis' UMAP instead of umap-learn's when umap-learn is missing.

    Returns ``(coords, info)``: ``info`` (see :func:`project_with_info`) plus ``requested``
    and, after a fallback, ``fallback_reason``. t-SNE is never replaced by another method:
    asking for it without openTSNE is an error.
    """
    m = int(embeddings.shape[0])
    reason = None
    chosen = method
    if method == "umap-learn" and not has_module(PACKAGES["umap-learn"][0]):
        reason = f"umap-learn is not installed (pip install {PACKAGES['umap-learn'][1]}); tamis' own UMAP drew the map"
        chosen = "umap"
    if chosen in ("umap", "umap-learn", "tsne") and m < MIN_ROWS_MANIFOLD:
        reason = f"only {m} rows with a valid embedding (UMAP and t-SNE need {MIN_ROWS_MANIFOLD})"
        chosen = "pca"
    if reason is not None:
        log.warning("projection: %s; using %s instead", reason, chosen)
    coords, info = project_with_info(embeddings, method=chosen, **kwargs)
    info["requested"] = method
    if reason is not None:
        info["fallback_reason"] = reason
    return coords, info


def _validate(embeddings: Any, method: str, dims: int, knn: tuple | None, max_fit: int) -> None:
    if method not in METHODS:
        raise ConfigError(f"projection method {method!r} is not known; use one of: {', '.join(METHODS)}")
    if dims not in (2, 3):
        raise ConfigError(f"projection dims={dims!r}; use 2 or 3")
    if not isinstance(max_fit, (int, np.integer)) or isinstance(max_fit, bool) or max_fit < MIN_ROWS_MANIFOLD:
        raise ConfigError(f"max_fit={max_fit!r}; give an integer >= {MIN_ROWS_MANIFOLD} (rows fitted at most)")
    shape = getattr(embeddings, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] == 0:
        raise InputError(f"projection needs a non-empty 2-D matrix of embeddings, got shape {shape}")
    if knn is not None:
        if not (isinstance(knn, tuple) and len(knn) == 2):
            raise InputError("knn must be a tuple (indices, distances) of two (M, k) arrays")
        ind, dist = knn
        if np.shape(ind) != np.shape(dist) or len(np.shape(ind)) != 2 or np.shape(ind)[0] != shape[0]:
            raise InputError(f"knn indices {np.shape(ind)} and distances {np.shape(dist)} must both be "
                             f"({shape[0]}, k), one row per embedding")


def _require(method: str) -> ModuleType:
    module, package = PACKAGES[method]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"projection {method!r} needs the optional package {package!r} ({exc}); install it "
                          f"with: pip install {package} (or choose --projection pca)") from exc



def _to_host(a: Any) -> np.ndarray:
    return np.ascontiguousarray(to_host(a), dtype=np.float32)


def _fit_sample(m: int, max_fit: int, seed: int) -> np.ndarray | None:
    """Sorted rows fitted when M > max_fit (deterministic in ``seed``), else None."""
    if m <= max_fit:
        return None
    return np.sort(np.random.default_rng(seed).choice(m, size=max_fit, replace=False))


def _place_rest(model: Any, host: np.ndarray, sample: np.ndarray, fitted: np.ndarray, dims: int) -> np.ndarray:
    out = np.empty((host.shape[0], dims), dtype=np.float32)
    out[sample] = fitted
    rest = np.setdiff1d(np.arange(host.shape[0]), sample, assume_unique=True)
    for start in range(0, len(rest), TRANSFORM_BLOCK):
        take = rest[start:start + TRANSFORM_BLOCK]
        out[take] = np.asarray(model.transform(host[take]), dtype=np.float32)
    return out


def _with_self(knn: tuple) -> tuple[np.ndarray, np.ndarray]:
    """tamis' graph (self excluded) as umap-learn wants it: self first, at distance 0.

    Missing neighbours (-1) stay -1, which umap-learn skips; their distance is set to inf.
    """
    ind = np.asarray(to_host(knn[0]), dtype=np.int64)
    dist = np.asarray(to_host(knn[1]), dtype=np.float32)
    m = ind.shape[0]
    dist = np.where(ind < 0, np.inf, np.maximum(dist, 0.0)).astype(np.float32)
    ind_full = np.concatenate([np.arange(m, dtype=np.int64)[:, None], ind], axis=1)
    dist_full = np.concatenate([np.zeros((m, 1), dtype=np.float32), dist], axis=1)
    return ind_full.astype(np.int32), dist_full



# ---------------------------------------------------------------------- methods
def _pca(embeddings: Any, dims: int, xp: ModuleType) -> np.ndarray:
    """Top-``dims`` principal components, signs fixed so the largest loading is positive."""
    m, d = int(embeddings.shape[0]), int(embeddings.shape[1])
    block = max(1, PCA_BLOCK_BYTES // (8 * max(d, 1)))
    total = xp.zeros(d, dtype=xp.float64)
    gram = xp.zeros((d, d), dtype=xp.float64)
    for start in range(0, m, block):
        part = xp.asarray(embeddings[start:start + block], dtype=xp.float64)
        total += part.sum(axis=0)
        gram += part.T @ part
    mean = total / m
    cov = gram / m - xp.outer(mean, mean)
    _, vecs = xp.linalg.eigh(cov)  # ascending eigenvalues
    k = min(dims, d)
    comps = vecs[:, ::-1][:, :k]
    big = xp.argmax(xp.abs(comps), axis=0)
    signs = xp.sign(comps[big, xp.arange(k)])
    comps = comps * xp.where(signs == 0, 1.0, signs)[None, :]
    out = np.zeros((m, dims), dtype=np.float32)
    comps32 = comps.astype(xp.float32)
    mean32 = mean.astype(xp.float32)
    for start in range(0, m, block):
        part = xp.asarray(embeddings[start:start + block], dtype=xp.float32)
        out[start:start + len(part), :k] = to_host((part - mean32) @ comps32)
    return out


def _umap_fit(umap: ModuleType, x: np.ndarray, dims: int, knn: tuple | None, seed: int) -> tuple[Any, np.ndarray]:
    m = x.shape[0]
    n_neighbors = min(N_NEIGHBORS, m - 1)
    kwargs: dict = {}
    if knn is not None:
        ind, dist = _with_self(knn)
        if ind.shape[1] >= 2:
            n_neighbors = min(n_neighbors, ind.shape[1])
            kwargs["precomputed_knn"] = (ind[:, :n_neighbors], dist[:, :n_neighbors])
    model = umap.UMAP(n_components=dims, n_neighbors=n_neighbors, metric="cosine", random_state=seed,
                      n_jobs=1, **kwargs)  # a seed makes umap-learn single-threaded anyway; say so, no warning
    with warnings.catch_warnings():
        # precomputed_knn without a search index (we never transform then), and tiny-graph notes
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")
        warnings.filterwarnings("ignore", message=".*spectral initialisation failed.*")
        warnings.filterwarnings("ignore", message=".*Graph is not fully connected.*")
        coords = model.fit_transform(x)
    return model, np.asarray(coords, dtype=np.float32)


def _tsne_fit(open_tsne: ModuleType, x: np.ndarray, dims: int, knn: tuple | None, seed: int) -> tuple[Any, np.ndarray]:
    m = x.shape[0]
    perplexity = float(min(PERPLEXITY, max(1.0, (m - 1) / 3.0)))
    # openTSNE's own choice in 2-D (Barnes-Hut below 10k rows, FFT above); FFT is 2-D at most
    method = "auto" if dims == 2 else "bh"
    # threads pay off on big inputs only; on small ones they spin and, on a busy machine, cost 10-100x
    n_jobs = -1 if m >= TSNE_THREADS_FROM else 1
    tsne = open_tsne.TSNE(n_components=dims, perplexity=perplexity, metric="cosine", random_state=seed,
                          negative_gradient_method=method, n_jobs=n_jobs, verbose=False)
    affinities = None
    if knn is not None:
        ind = np.asarray(to_host(knn[0]), dtype=np.int64)
        k_needed = min(m - 1, int(3 * perplexity))
        if (ind >= 0).all() and ind.shape[1] >= k_needed:
            from openTSNE.affinity import PerplexityBasedNN
            from openTSNE.nearest_neighbors import PrecomputedNeighbors

            dist = np.asarray(to_host(knn[1]), dtype=np.float64)
            index = PrecomputedNeighbors(ind[:, :k_needed], np.maximum(dist[:, :k_needed], 0.0))
            affinities = PerplexityBasedNN(knn_index=index, perplexity=perplexity, random_state=seed,
                                           verbose=False)
    embedding = tsne.fit(x, affinities=affinities) if affinities is not None else tsne.fit(x)
    return embedding, np.asarray(embedding, dtype=np.float32)


def _umap_tamis(embeddings: Any, dims: int, knn: tuple | None, max_fit: int, seed: int, xp: ModuleType,
                progress: Any) -> tuple[np.ndarray, dict]:
    """tamis' UMAP layout of the run's graph (or of one searched here), started from the PCA."""
    from .layout import umap_layout
    from .search import knn_graph

    def search(rows: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        found = knn_graph(rows, min(k, int(rows.shape[0]) - 1), xp=xp, seed=seed)
        return to_host(found[0]), np.clip(1.0 - np.asarray(to_host(found[1]), dtype=np.float64), 0.0, None)

    m = int(embeddings.shape[0])
    if knn is None:
        knn = search(embeddings, N_NEIGHBORS - 1)
    start = _pca(embeddings, dims, xp)
    sample = _fit_sample(m, max_fit, seed)
    sample_graph = None
    if sample is not None:
        log.info("umap: fitting on %d of %d rows, placing the rest on the graph", len(sample), m)
        clock = time.perf_counter()
        sample_graph = search(embeddings[xp.asarray(sample)], int(np.shape(knn[0])[1]))
        searched = time.perf_counter() - clock
    coords, info = umap_layout(knn[0], knn[1], start, dims=dims, seed=seed, sample=sample, sample_graph=sample_graph,
                               xp=xp, progress=progress)
    if sample is not None:
        info.seconds["sample_search"] = searched
    return coords.astype(np.float32), info.as_dict()


__all__ = ["project", "project_with_info", "project_or_fallback", "column_prefix", "METHODS"]
