"""Benchmark of the map: tamis' own UMAP layout beside umap-learn, on the same rows and graph.

For a store written by ``bench/generate.py`` (``store.npz``: ``embeddings``, ``labels``):
the rows are L2-normalised, one neighbour graph is built with tamis' search engine (k =
``--k``, the scan's default 10; its time is reported apart, the scan builds it anyway), and
each layout maps the rows from that graph with seed 0:

* ``tamis``: :func:`tamis.engine.projection.project` with ``method="umap"`` (graph, spectral
  start, batch epochs; the PCA start included in its time);
* ``umap-learn``: ``umap.UMAP(metric="cosine", random_state=0, precomputed_knn=...)`` on the
  same graph (single-threaded, as a seed makes it), ``--umap-learn-unseeded`` also runs it
  without a seed (parallel, not reproducible).

Quality, on a sample of ``--sample`` rows, both layouts scored the same way:

* neighbourhood preservation: the share of each sampled row's 10 nearest neighbours in the
  embedding space (exact cosine) that are among its 10 nearest on the map (Euclidean);
* class separation: the accuracy of a 10-nearest-neighbour vote on the map predicting the
  row's TRUE class (``truth.json`` ``label_error.true_labels`` where given, else the label).

    python bench/bench_map.py --store bench/data/s100k
    python bench/bench_map.py --store bench/data/r100k --json bench/results/map.json
    python bench/bench_map.py --store bench/data/s1m --systems tamis
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.store import atomic_write_json  # noqa: E402
from tamis.engine.projection import project_with_info  # noqa: E402
from tamis.engine.search import knn_graph  # noqa: E402

NEIGHBOURS = 10


def load(store: Path) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows and TRUE labels of a generated store."""
    z = np.load(store / "store.npz")
    x = np.ascontiguousarray(z["embeddings"], dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.asarray(z["labels"]).copy()
    truth_file = store / "truth.json"
    if truth_file.exists():
        truth = json.loads(truth_file.read_text())
        flips = truth.get("label_error", {})
        if flips.get("rows"):
            labels[np.asarray(flips["rows"])] = np.asarray(flips["true_labels"], dtype=labels.dtype)
    return x, labels


def quality(x: np.ndarray, coords: np.ndarray, labels: np.ndarray, sample: np.ndarray) -> dict:
    """Neighbourhood preservation and kNN class accuracy on the map, for the sampled rows."""
    kept, right = 0, 0
    chunk = max(1, min(512, 50_000_000 // len(x)))   # rows per pass: ~0.5 GB of map distances
    for start in range(0, len(sample), chunk):
        rows = sample[start:start + chunk]
        sims = x[rows] @ x.T
        sims[np.arange(len(rows)), rows] = -np.inf
        true_nn = np.argpartition(-sims, NEIGHBOURS, axis=1)[:, :NEIGHBOURS]
        d2 = ((coords[rows, None, :] - coords[None, :, :]) ** 2).sum(-1)
        d2[np.arange(len(rows)), rows] = np.inf
        map_nn = np.argpartition(d2, NEIGHBOURS, axis=1)[:, :NEIGHBOURS]
        for a, b, row in zip(true_nn, map_nn, rows):
            kept += len(np.intersect1d(a, b))
            votes = np.bincount(labels[b].astype(np.int64))
            right += int(np.argmax(votes) == labels[row])
    return {"neighbourhood_preservation": round(kept / (NEIGHBOURS * len(sample)), 4),
            "class_separation": round(right / len(sample), 4)}


def run_tamis(x: np.ndarray, knn: tuple, dims: int, max_fit: int) -> tuple[np.ndarray, float, dict]:
    clock = time.perf_counter()
    coords, info = project_with_info(x, method="umap", dims=dims, knn=knn, seed=0, max_fit=max_fit)
    return coords, time.perf_counter() - clock, {"stages": info["layout"]["seconds"], "n_fitted": info["n_fitted"],
                                                 "n_epochs": info["layout"]["n_epochs"]}


def run_umap_learn(x: np.ndarray, knn: tuple, dims: int, seeded: bool) -> tuple[np.ndarray, float, dict]:
    import umap  # noqa: PLC0415 - a peer, imported only when benchmarked

    ind, dist = knn
    m = len(x)
    ind_full = np.concatenate([np.arange(m)[:, None], ind], axis=1).astype(np.int32)
    dist_full = np.concatenate([np.zeros((m, 1), np.float32), dist.astype(np.float32)], axis=1)
    k = ind_full.shape[1]
    kwargs = {"random_state": 0} if seeded else {}
    clock = time.perf_counter()
    model = umap.UMAP(n_components=dims, n_neighbors=k, metric="cosine", precomputed_knn=(ind_full, dist_full),
                      **kwargs)
    coords = model.fit_transform(x)
    return np.asarray(coords, dtype=np.float32), time.perf_counter() - clock, {"n_epochs": model.n_epochs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--systems", default="tamis,umap-learn")
    p.add_argument("--dims", type=int, default=2)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--sample", type=int, default=2000)
    p.add_argument("--max-fit", type=int, default=200_000)
    p.add_argument("--umap-learn-unseeded", action="store_true")
    p.add_argument("--graph-cache", type=Path,
                   help="npz holding the neighbour graph (indices, sims): read when it exists, else written")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    x, labels = load(args.store)
    m = len(x)
    clock = time.perf_counter()
    if args.graph_cache is not None and args.graph_cache.exists():
        cached = np.load(args.graph_cache)
        indices, sims = cached["indices"][:, :args.k], cached["sims"][:, :args.k]
    else:
        indices, sims = (np.asarray(a) for a in knn_graph(x, args.k)[:2])
        if args.graph_cache is not None:
            np.savez(args.graph_cache, indices=indices, sims=sims)
    graph_s = time.perf_counter() - clock
    knn = (indices, np.clip(1.0 - np.asarray(sims, dtype=np.float64), 0.0, None))
    sample = np.sort(np.random.default_rng(1).choice(m, size=min(args.sample, m), replace=False))
    rows = []
    systems = args.systems.split(",")
    runs = []
    if "tamis" in systems:
        runs.append(("tamis", lambda: run_tamis(x, knn, args.dims, args.max_fit)))
    if "umap-learn" in systems:
        runs.append(("umap-learn (seed 0)", lambda: run_umap_learn(x, knn, args.dims, True)))
        if args.umap_learn_unseeded:
            runs.append(("umap-learn (no seed, parallel)", lambda: run_umap_learn(x, knn, args.dims, False)))
    for name, fn in runs:
        coords, seconds, extra = fn()
        row = {"system": name, "n": m, "d": int(x.shape[1]), "dims": args.dims, "k": args.k,
               "seconds": round(seconds, 2), **quality(x, coords, labels, sample), **extra}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nstore {args.store} ({m} x {x.shape[1]}), neighbour graph k={args.k}: {graph_s:.1f} s "
          f"({'read from ' + str(args.graph_cache) if args.graph_cache and graph_s < 5 else 'built once, shared'})\n")
    print("| system | seconds | neighbourhood preservation | class separation |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['system']} | {r['seconds']} | {r['neighbourhood_preservation']} | {r['class_separation']} |")
    if args.json:
        meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(), "store": str(args.store), "graph_seconds": round(graph_s, 2),
                "command": "python bench/bench_map.py " + " ".join(argv if argv is not None else sys.argv[1:])}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, {"meta": meta, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
