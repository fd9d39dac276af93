"""Benchmark of the similarity search: every tamis engine and faiss-cpu's IVF, in one run.

One store (anisotropic Gaussian clusters of log-normal sizes on the unit sphere, effective
dimension ~ d / 5, like image or text embeddings, with 3 % planted near duplicates at
cosine 0.88-1.0) and, for the pair search at ``--threshold`` and the kNN graph at ``--k``:

* tamis ``exact`` (the reference; ``--skip-exact`` above ~200k rows on a CPU),
* tamis ``ivf`` (auto's choice for large stores) with its measured sample recall,
* faiss-cpu ``IndexIVFFlat`` alone (``nlist`` 1024, build included), kNN at the ``nprobe``
  that first reaches tamis ivf's true recall (8, 16, 32, ...), pairs by ``range_search`` at
  the nprobe that first reaches tamis ivf's pair recall,
* tamis ``faiss`` engine (FAISS candidates, canonical answers),

each timed, with its true recall against the exact answer. Prints a Markdown table and,
with ``--json``, writes the numbers.

    python bench/bench_search.py                       # 100,000 x 512, threshold 0.95, k 10
    python bench/bench_search.py --n 1000000 --skip-exact --skip-faiss
    python bench/bench_search.py --device gpu --n 1000000
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

from tamis.engine.backend import resolve_backend  # noqa: E402
from tamis.engine.search import find_pairs, knn_graph  # noqa: E402
from tamis.engine.search.recall import knn_recall  # noqa: E402
from tamis.engine.search.rows import canonical_dot  # noqa: E402


def embeddings(n: int, d: int, seed: int = 0, dup_fraction: float = 0.03) -> np.ndarray:
    """(n, d) float32 unit rows: anisotropic clusters plus planted near duplicates."""
    rng = np.random.default_rng(seed)
    n_clusters = max(1, n // 500)
    n_dups = int(n * dup_fraction)
    n_base = n - n_dups
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    basis_t = basis.T.astype(np.float32)
    scale = (1.0 / np.sqrt(np.arange(1, d + 1))).astype(np.float32)
    scale *= np.sqrt(d / (scale ** 2).sum())

    def noise(m: int) -> np.ndarray:
        out = np.empty((m, d), np.float32)
        for r0 in range(0, m, 16384):
            g = rng.standard_normal((min(m, r0 + 16384) - r0, d), dtype=np.float32) * scale
            out[r0:r0 + len(g)] = (g @ basis_t) / np.float32(np.sqrt(d))
        return out

    centers = rng.standard_normal((n_clusters, d), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    weights = rng.lognormal(0.0, 1.0, n_clusters)
    label = rng.choice(n_clusters, size=n_base, p=weights / weights.sum())
    spread = rng.uniform(0.8, 1.4, n_clusters).astype(np.float32)
    X = centers[label] + spread[label, None] * noise(n_base)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    source = rng.integers(0, n_base, n_dups)
    cos = rng.uniform(0.88, 1.0, n_dups).astype(np.float32)
    step = noise(n_dups)
    step -= (step * X[source]).sum(axis=1, keepdims=True) * X[source]
    step /= np.linalg.norm(step, axis=1, keepdims=True)
    D = cos[:, None] * X[source] + np.sqrt(1.0 - cos ** 2)[:, None] * step
    X = np.concatenate([X, D]).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X[rng.permutation(n)]


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def pair_recall(found, truth, n: int) -> float:
    keys = np.asarray(truth[0]) * n + np.asarray(truth[1])
    return 1.0 if keys.size == 0 else float(np.isin(keys, np.asarray(found[0]) * n + np.asarray(found[1])).mean())


def faiss_ivf(X: np.ndarray, nlist: int, seed: int):
    import faiss

    quantizer = faiss.IndexFlatIP(X.shape[1])
    index = faiss.IndexIVFFlat(quantizer, X.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.train(X)
    index.add(X)
    return index


def faiss_knn(index, X: np.ndarray, k: int, nprobe: int):
    index.nprobe = nprobe
    D, I = index.search(X, k + 1)
    rows = np.arange(len(X))[:, None]
    keep = I != rows
    keep[keep.sum(axis=1) > k, -1] = False        # the row itself was not returned: drop the last
    I = I[keep].reshape(len(X), k)
    sims = canonical_dot(X, X, np.repeat(np.arange(len(X)), k), I.reshape(-1), np).reshape(len(X), k)
    return I, sims.astype(np.float32)


def faiss_pairs(index, X: np.ndarray, threshold: float, nprobe: int):
    index.nprobe = nprobe
    lims, _, labels = index.range_search(X, threshold)
    rows = np.repeat(np.arange(len(X)), np.diff(lims.astype(np.int64)))
    keep = labels > rows
    return rows[keep], labels[keep].astype(np.int64)


def matmul_gflops(xp) -> float:
    """float32 GEMM throughput now: calibrates timings taken on a shared machine."""
    A = xp.asarray(np.random.default_rng(0).random((4096, 512), dtype=np.float32))
    (A @ A.T).sum().item()
    start = time.perf_counter()
    (A @ A.T).sum().item()
    return 2 * 4096 * 4096 * 512 / (time.perf_counter() - start) / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--nlist", type=int, default=1024, help="faiss IVF lists (default 1024)")
    parser.add_argument("--skip-exact", action="store_true", help="no exact reference (no true recall)")
    parser.add_argument("--skip-faiss", action="store_true")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers here")
    args = parser.parse_args(argv)

    backend = resolve_backend(args.device)
    X = embeddings(args.n, args.d, args.seed)
    Xd = backend.xp.asarray(X)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"# similarity search: N={args.n:,} d={args.d} k={args.k} threshold={args.threshold} on "
          f"{backend.name} ({backend.device_name}; {machine}); matmul {matmul_gflops(backend.xp):.0f} GFLOP/s\n")
    knn_graph(Xd[:2048], args.k, engine="exact")          # warm-up (compiles GPU kernels once)
    rows = []
    truth_pairs = truth_sims = None
    if not args.skip_exact:
        pairs, t = timed(find_pairs, Xd, args.threshold, engine="exact")
        truth_pairs = pairs
        rows.append(("tamis exact", "pairs", t, 1.0, len(pairs.row_a)))
        graph, t = timed(knn_graph, Xd, args.k, engine="exact")
        truth_sims = graph.similarities
        rows.append(("tamis exact", "kNN", t, 1.0, None))
    alone, t_alone = timed(find_pairs, Xd, args.threshold, engine="ivf")     # the slack rule, no graph after
    rows.append(("tamis ivf, pairs alone (slack rule)", "pairs", t_alone,
                 pair_recall(alone, truth_pairs, args.n) if truth_pairs is not None else alone.info["recall"],
                 len(alone.row_a)))
    state: dict = {"neighbours_k": args.k}          # as a scan whose checks read the graph: one bucket scan
    pairs, t_pairs = timed(find_pairs, Xd, args.threshold, engine="ivf", state=state)
    graph, t_knn = timed(knn_graph, Xd, args.k, engine="ivf", state=state)   # goes on from the pairs' scan
    ivf_pair_recall = pair_recall(pairs, truth_pairs, args.n) if truth_pairs is not None else pairs.info["recall"]
    ivf_knn_recall = knn_recall(graph.indices, graph.similarities, truth_sims) if truth_sims is not None \
        else graph.info["recall"]
    rows.append(("tamis ivf, one scan: pairs, then the graph", "pairs", t_pairs, ivf_pair_recall, len(pairs.row_a)))
    rows.append(("tamis ivf, one scan: pairs, then the graph", "kNN", t_knn, ivf_knn_recall, None))
    print(f"tamis ivf: sample recall pairs {pairs.info['recall']:.4f}, kNN {graph.info['recall']:.4f}; "
          f"{graph.info['buckets']} buckets, kNN probes {graph.info['probes']}\n")
    if not args.skip_faiss:
        index, t_build = timed(faiss_ivf, X, args.nlist, args.seed)
        print(f"faiss IndexIVFFlat nlist={args.nlist}: build {t_build:.1f} s\n")
        nprobe, reference = 8, truth_sims
        while True:
            (I, sims), t = timed(faiss_knn, index, X, args.k, nprobe)
            r = knn_recall(I, sims, reference) if reference is not None else float("nan")
            if reference is None or r >= ivf_knn_recall or nprobe >= args.nlist:
                break
            nprobe *= 2
        rows.append((f"faiss IVFFlat nprobe {nprobe} (+ build {t_build:.1f} s)", "kNN", t + t_build, r, None))
        nprobe = 8
        while True:
            found, t = timed(faiss_pairs, index, X, args.threshold, nprobe)
            r = pair_recall(found, truth_pairs, args.n) if truth_pairs is not None else float("nan")
            if truth_pairs is None or r >= ivf_pair_recall or nprobe >= args.nlist:
                break
            nprobe *= 2
        rows.append((f"faiss IVFFlat range_search nprobe {nprobe} (+ build {t_build:.1f} s)", "pairs",
                     t + t_build, r, len(found[0])))
        state = {}
        pairs, t = timed(find_pairs, Xd, args.threshold, engine="faiss", index="ivf", state=state)
        rows.append(("tamis faiss engine (ivf)", "pairs", t,
                     pair_recall(pairs, truth_pairs, args.n) if truth_pairs is not None else pairs.info["recall"],
                     len(pairs.row_a)))
        graph, t = timed(knn_graph, Xd, args.k, engine="faiss", index="ivf", state=state)
        rows.append(("tamis faiss engine (ivf)", "kNN", t,
                     knn_recall(graph.indices, graph.similarities, truth_sims) if truth_sims is not None
                     else graph.info["recall"], None))
    print("| engine | task | time (s) | true recall | pairs |")
    print("|---|---|---:|---:|---:|")
    for name, task, t, r, count in rows:
        print(f"| {name} | {task} | {t:.2f} | {r:.4f} | {'' if count is None else f'{count:,}'} |")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "n": args.n, "d": args.d, "k": args.k, "threshold": args.threshold, "device": backend.name,
            "machine": machine, "date": time.strftime("%Y-%m-%d"),
            "rows": [{"engine": n, "task": t, "seconds": s, "recall": r, "pairs": c} for n, t, s, r, c in rows]},
            indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
