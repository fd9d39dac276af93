"""Benchmark of the near-duplicate pair search on clustered embeddings with planted duplicates.

Times :func:`tamis.engine.pairsearch.exact_pairs`, :func:`partitioned_pairs` and, when
faiss is importable, faiss-cpu ``IndexFlatIP.range_search``; reports pair counts and the
pair recall of the partitioned engine against the exact one, as a Markdown table.

    python bench/bench_pairs.py                       # 100,000 x 512 at threshold 0.95
    python bench/bench_pairs.py --n 20000 --skip-faiss
    python bench/bench_pairs.py --device gpu --n 1000000 --skip-faiss
    python bench/bench_pairs.py --data store --threshold 0.9   # a bench.generate store

The data (``planted_embeddings``): anisotropic Gaussian clusters of log-normal sizes on the
unit sphere (so most pairs sit near cosine 0.1-0.6, like text or image embeddings), plus
copies of 3% of the rows, in groups of 1-3 copies, perturbed within the same anisotropic
distribution to cosine ~U(0.88, 1.0) with their source. Rows are shuffled.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tamis.engine.backend import resolve_backend  # noqa: E402
from tamis.engine.pairsearch import exact_pairs, partitioned_pairs  # noqa: E402


def planted_embeddings(n: int, d: int, *, n_clusters: int | None = None,
                       dup_fraction: float = 0.03, seed: int = 0) -> np.ndarray:
    """(n, d) float32 unit rows: anisotropic clusters plus planted near duplicates."""
    rng = np.random.default_rng(seed)
    n_clusters = n_clusters or max(1, n // 200)
    n_dups = int(n * dup_fraction)
    n_base = n - n_dups
    # anisotropic noise: power-law spectrum in a random basis (effective dim ~ d / 5)
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scale = (1.0 / np.sqrt(np.arange(1, d + 1))).astype(np.float32)
    scale *= np.sqrt(d / (scale ** 2).sum())

    def noise(m: int) -> np.ndarray:
        g = rng.standard_normal((m, d), dtype=np.float32) * scale
        return (g @ basis.T.astype(np.float32)) / np.sqrt(d)

    centers = rng.standard_normal((n_clusters, d), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    weights = rng.lognormal(0.0, 1.0, n_clusters)
    label = rng.choice(n_clusters, size=n_base, p=weights / weights.sum())
    spread = rng.uniform(0.8, 1.4, n_clusters).astype(np.float32)
    X = centers[label] + spread[label, None] * noise(n_base)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    # planted near duplicates: groups of 1-3 copies of a source row
    copies = []
    while sum(len(c) for c in copies) < n_dups:
        copies.append(np.full(rng.integers(1, 4), rng.integers(n_base)))
    source = np.concatenate(copies)[:n_dups]
    cos = rng.uniform(0.88, 1.0, n_dups).astype(np.float32)
    step = noise(n_dups)
    step -= (step * X[source]).sum(axis=1, keepdims=True) * X[source]   # orthogonal part
    step /= np.linalg.norm(step, axis=1, keepdims=True)
    D = cos[:, None] * X[source] + np.sqrt(1.0 - cos ** 2)[:, None] * step
    X = np.concatenate([X, D]).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X[rng.permutation(n)]


def store_embeddings(n: int, d: int, seed: int = 0) -> np.ndarray:
    """The embeddings of a ``bench.generate`` store (100 classes, planted issues)."""
    from bench.generate import GenerateConfig, generate

    return generate(GenerateConfig(n=n, d=d, seed=seed, pred_probs=False)).arrays["embeddings"]


def faiss_pairs(X: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexFlatIP(X.shape[1])
    index.add(X)
    lims, _, labels = index.range_search(X, threshold)
    rows = np.repeat(np.arange(X.shape[0]), np.diff(lims.astype(np.int64)))
    keep = labels > rows
    return rows[keep], labels[keep].astype(np.int64)


def recall(found: tuple[np.ndarray, np.ndarray], truth: tuple[np.ndarray, np.ndarray],
           n: int) -> float:
    truth_keys = truth[0] * n + truth[1]
    if truth_keys.size == 0:
        return 1.0
    return float(np.isin(truth_keys, found[0] * n + found[1]).mean())


def matmul_gflops(xp) -> float:
    """float32 GEMM throughput now: calibrates timings taken on a shared machine."""
    A = xp.asarray(np.random.default_rng(0).random((4096, 512), dtype=np.float32))
    (A @ A.T).sum().item()
    start = time.perf_counter()
    (A @ A.T).sum().item()
    return 2 * 4096 * 4096 * 512 / (time.perf_counter() - start) / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="rows (default 100000)")
    parser.add_argument("--d", type=int, default=512, help="dimensions (default 512)")
    parser.add_argument("--threshold", type=float, default=0.95, help="cosine (default 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    parser.add_argument("--data", choices=("planted", "store"), default="planted",
                        help="planted clusters (default) or a bench.generate store")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--n-buckets", type=int, default=None, help="partitioned engine")
    parser.add_argument("--probes", type=int, default=None, help="partitioned engine")
    parser.add_argument("--skip-exact", action="store_true", help="no exact run (no recall)")
    parser.add_argument("--skip-faiss", action="store_true", help="no faiss range_search")
    args = parser.parse_args(argv)

    backend = resolve_backend(args.device)
    start = time.perf_counter()
    make = planted_embeddings if args.data == "planted" else store_embeddings
    X = make(args.n, args.d, seed=args.seed)
    print(f"# pair search: N={args.n:,} d={args.d} threshold={args.threshold} data={args.data} "
          f"({time.perf_counter() - start:.1f} s to make) on {backend.name} "
          f"({backend.device_name or platform.machine()}); "
          f"matmul {matmul_gflops(backend.xp):.0f} GFLOP/s float32")
    Xd = backend.asarray(X)
    if backend.is_gpu:                       # compile the kernel, create cuBLAS handles
        exact_pairs(Xd[:4096], args.threshold)
        partitioned_pairs(Xd[:4096], args.threshold)

    def run(fn, *a, **kw):
        backend.synchronize()
        start = time.perf_counter()
        out = fn(*a, **kw)
        backend.synchronize()
        return out, time.perf_counter() - start

    rows = []
    part, t_part = run(partitioned_pairs, Xd, args.threshold, n_buckets=args.n_buckets,
                       probes=args.probes)
    exact = None
    if not args.skip_exact:
        exact, t_exact = run(exact_pairs, Xd, args.threshold)
        rows.append(("tamis exact_pairs", t_exact, len(exact[0]), 1.0))
    rows.append(("tamis partitioned_pairs", t_part, len(part[0]),
                 recall(part, exact, args.n) if exact is not None else float("nan")))
    if not args.skip_faiss:
        try:
            found, t_faiss = run(faiss_pairs, X, args.threshold)
        except ImportError:
            print("faiss is not importable; skipped")
        else:
            rows.append(("faiss-cpu IndexFlatIP.range_search", t_faiss, len(found[0]),
                         recall(found, exact, args.n) if exact is not None else float("nan")))

    print()
    print("| engine | time (s) | pairs | pair recall vs exact |")
    print("|---|---:|---:|---:|")
    for name, seconds, count, rec in rows:
        print(f"| {name} | {seconds:.2f} | {count:,} | {rec:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
