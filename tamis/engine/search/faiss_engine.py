"""The ``faiss`` engine: FAISS flat (exact) and IVF-Flat (approximate) indexes.

faiss-cpu, or faiss-gpu where it is installed and sees a GPU, imported only when the engine
runs (``pip install faiss-cpu``). Rows go to FAISS as host float32; what it returns are
candidates, rescored canonically (:mod:`.refine`), so its pairs and neighbours have the
same similarities as every other engine's.

* ``index="flat"`` (``IndexFlatIP``): exact. Neighbours: the ``c + 1`` best by FAISS'
  float32 inner products, certified like the exact engine's (FAISS' float32 GEMM obeys the
  same error bound; the float16 bound is used for faiss-gpu); pairs: ``range_search`` at
  ``threshold - margin``.
* ``index="ivf"`` (``IndexIVFFlat``, ``nlist = 4 sqrt(N)``, trained on ``64 nlist`` sampled
  rows): ``nprobe`` doubles from 8 until the sample recall reaches the target (pairs 0.99,
  neighbours 0.95 + 0.01), at most ``nlist``; neighbours fall back to the exact engine
  when that is not enough.
* ``index="auto"`` (default): flat while ``N * N * d`` is within the CPU's exact budget
  (:data:`~tamis.engine.search.registry.EXACT_WORK`), else ivf.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from ..._optional import has_module, optional_import
from ...errors import ConfigError
from ..backend import to_host
from .exact import exact_neighbours, n_candidates, sort_pairs
from .recall import knn_recall, pair_recall, recall_sample
from .refine import refine_neighbours, rescore_pairs
from .registry import (
    EXACT_WORK,
    KNN_RECALL,
    PAIR_RECALL,
    SearchEngine,
    SearchOptions,
    check_positive_int,
    register,
)
from .rows import canonical_dot, tile_margin
from .tiles import PairBudget, collect_above, plan_for

log = logging.getLogger("tamis")

__all__ = ["FaissEngine"]

INDEXES = ("auto", "flat", "ivf")
QUERY_BLOCK = 16384
SAMPLE_ROWS = 1000


def _faiss() -> Any:
    return optional_import("faiss")


def _on_gpu(faiss: Any, xp: Any) -> bool:
    return xp is not np and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def _build(X: np.ndarray, kind: str, nlist: int, seed: int, gpu: bool) -> Any:
    faiss = _faiss()
    d = X.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    else:
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        train = X[np.sort(rng.choice(len(X), min(len(X), 64 * nlist), replace=False))]
        index.cp.seed = seed
        index.train(train)
    if gpu:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(X)
    return index


def _set_nprobe(index: Any, nprobe: int) -> None:
    faiss = _faiss()
    try:
        faiss.extract_index_ivf(index).nprobe = nprobe
    except (AttributeError, RuntimeError):   # a GPU index
        index.nprobe = nprobe


@register
class FaissEngine(SearchEngine):
    """FAISS indexes as candidate generators, canonical answers."""

    name = "faiss"
    exact = False        # per index: flat is exact (info["exact"])
    parameters = ("index", "nlist", "nprobe")

    def unavailable(self, xp: Any) -> str | None:
        if not has_module("faiss"):
            return "the faiss package is not installed; pip install faiss-cpu (or faiss-gpu)"
        return None

    def _setup(self, X: Any, opt: SearchOptions, task: str) -> tuple[Any, str, int, np.ndarray, bool]:
        kind = opt.params.get("index", "auto")
        if kind not in INDEXES:
            raise ConfigError(f"faiss index={kind!r} is not one of {', '.join(INDEXES)}; e.g. --param "
                              "search.index=ivf")
        n, d = (int(v) for v in X.shape)
        if kind == "auto":
            kind = "flat" if float(n) * n * d <= EXACT_WORK[("cpu", task)] else "ivf"
        default_nlist = max(1, min(round(4 * math.sqrt(n)), n // 39 or 1))
        nlist = check_positive_int("nlist", opt.params.get("nlist"), "e.g. 1024") or default_nlist
        if kind == "ivf" and nlist > n:
            raise ConfigError(f"nlist={nlist} exceeds the {n} rows (FAISS trains one list per centroid on the "
                              f"rows); lower it, e.g. the default {default_nlist}")
        faiss = _faiss()
        gpu = _on_gpu(faiss, opt.xp)
        if ("faiss_rows", n) not in opt.state:   # one host float32 copy per scan (FAISS reads host rows)
            opt.state[("faiss_rows", n)] = np.ascontiguousarray(to_host(X), dtype=np.float32)
        host = opt.state[("faiss_rows", n)]
        key = ("faiss_index", kind, n, nlist, opt.seed, gpu)
        if key not in opt.state:
            opt.state[key] = _build(host, kind, nlist, opt.seed, gpu)
        return opt.state[key], kind, nlist, host, gpu

    def neighbours(self, X: Any, k: int, opt: SearchOptions):
        xp = opt.xp
        n, d = (int(v) for v in X.shape)
        index, kind, nlist, host, gpu = self._setup(X, opt, "neighbours")
        c = n_candidates(k, n - 1)
        margin = tile_margin(d, "float16" if gpu else "float32")
        all_rows = xp.arange(n, dtype=xp.int64)

        def search(rows: np.ndarray) -> tuple[Any, Any]:
            D = np.empty((len(rows), c + 1), np.float32)
            I = np.empty((len(rows), c + 1), np.int64)
            for s in range(0, len(rows), QUERY_BLOCK):
                D[s:s + QUERY_BLOCK], I[s:s + QUERY_BLOCK] = index.search(host[rows[s:s + QUERY_BLOCK]], c + 1)
                if opt.progress is not None:
                    opt.progress(0)
            I = np.where(I == rows[:, None], -1, I)            # never the row itself
            return xp.asarray(I), xp.asarray(D[:, c])

        def score(ids: Any) -> Any:
            return lambda pos, other: canonical_dot(X, X, ids[pos], other, xp)

        if kind == "flat":
            I, bound = search(np.arange(n))
            bound = xp.where(xp.asarray(c + 1 >= n), -np.inf, bound)
            memory = opt.memory_bytes or plan_for(xp).memory_bytes

            def collect(positions: Any, cutoffs: Any) -> tuple[Any, Any]:
                return collect_above(X[positions], positions, [(0, X)], cutoffs, "float32", xp, memory)

            idx, sims, rechecked = refine_neighbours(I, k, score(all_rows), xp, bound=bound, margin=margin,
                                                     collect=collect)
            return idx, sims, {"engine": self.name, "index": "flat", "exact": True, "recall": 1.0,
                               "rows_rechecked": rechecked, "faiss_gpu": gpu}
        target = opt.target_recall or KNN_RECALL
        sample = recall_sample(n, SAMPLE_ROWS, opt.seed)
        truth = exact_neighbours(X, k, opt, rows=sample)[1]
        fixed = check_positive_int("nprobe", opt.params.get("nprobe"), "e.g. 16")
        nprobe = min(nlist, fixed or 8)
        while True:
            _set_nprobe(index, nprobe)
            I, _ = search(sample)
            s_idx, s_sim, _ = refine_neighbours(I, k, score(xp.asarray(sample)), xp)
            recall = knn_recall(s_idx, s_sim, truth)
            log.info("faiss ivf neighbours: nlist %d, nprobe %d, sample recall@%d %.4f", nlist, nprobe, k, recall)
            if fixed or recall >= min(1.0, target + 0.01) or nprobe >= nlist:
                break
            nprobe = min(nlist, 2 * nprobe)
        if recall < target:
            log.warning("faiss ivf neighbours: recall %.4f < %.2f at nprobe %d; using the exact engine",
                        recall, target, nprobe)
            idx, sims, rechecked = exact_neighbours(X, k, opt)
            return idx, sims, {"engine": "exact", "asked": self.name, "exact": True, "recall": 1.0,
                               "faiss_recall": recall}
        I, _ = search(np.arange(n))
        idx, sims, _ = refine_neighbours(I, k, score(all_rows), xp)
        short = np.flatnonzero((idx < 0).any(axis=1))
        if short.size:
            idx[short], sims[short], _ = exact_neighbours(X, k, opt, rows=short)
        return idx, sims, {"engine": self.name, "index": "ivf", "exact": False, "recall": recall,
                           "recall_target": target, "nlist": nlist, "nprobe": nprobe, "faiss_gpu": gpu,
                           "rows_completed_exactly": int(short.size)}

    def pairs(self, X: Any, threshold: float, opt: SearchOptions):
        xp = opt.xp
        n, d = (int(v) for v in X.shape)
        index, kind, nlist, host, gpu = self._setup(X, opt, "pairs")
        if gpu:   # GPU indexes have no range search: run it on a CPU copy
            faiss = _faiss()
            index = faiss.index_gpu_to_cpu(index)
        radius = threshold - tile_margin(d, "float16" if gpu else "float32")

        def search() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            found = []
            budget = PairBudget(opt.max_pairs, threshold)
            for s in range(0, n, QUERY_BLOCK):
                lims, _, I = index.range_search(host[s:s + QUERY_BLOCK], radius)
                rows = np.repeat(np.arange(s, min(n, s + QUERY_BLOCK)), np.diff(lims.astype(np.int64)))
                keep = I > rows                                      # each pair once, never self
                budget.take(int(keep.sum()))
                a, b = xp.asarray(rows[keep]), xp.asarray(I[keep].astype(np.int64))
                found.append(rescore_pairs(X, X, a, b, threshold, xp))
                if opt.progress is not None:
                    opt.progress(min(n, s + QUERY_BLOCK) - s)
            return sort_pairs(found, n, xp)

        if kind == "flat":
            a, b, s = search()
            return a, b, s, {"engine": self.name, "index": "flat", "exact": True, "recall": 1.0}
        target = opt.target_recall or PAIR_RECALL
        sample = recall_sample(n, SAMPLE_ROWS, opt.seed)
        fixed = check_positive_int("nprobe", opt.params.get("nprobe"), "e.g. 16")
        nprobe = min(nlist, fixed or 8)
        while True:
            _set_nprobe(index, nprobe)
            a, b, s = search()
            recall, n_true = pair_recall(X, a, b, threshold, sample, xp, opt.memory_bytes)
            log.info("faiss ivf pairs: nlist %d, nprobe %d, sample recall %.4f (%d pairs)", nlist, nprobe,
                     recall, n_true)
            if fixed or recall >= target or nprobe >= nlist:
                break
            nprobe = min(nlist, 2 * nprobe)
        return a, b, s, {"engine": self.name, "index": "ivf", "exact": False, "recall": recall,
                         "recall_target": target, "recall_sample_pairs": n_true, "nlist": nlist,
                         "nprobe": nprobe}
