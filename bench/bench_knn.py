"""Benchmark of the k-nearest-neighbour graph engines on clustered embeddings.

Times :func:`tamis.engine.knn.exact_knn`, :func:`approximate_knn` and, when faiss is
importable, faiss-cpu ``IndexFlatIP`` (k + 1 neighbours, self dropped); reports the
recall@k of each against the exact graph (ties with the k-th neighbour count as found,
see :func:`tamis.engine.knn.knn_recall`) as a Markdown table. A matmul throughput line
calibrates the numbers on shared machines.

    python bench/bench_knn.py                         # 100,000 x 512, k = 10
    python bench/bench_knn.py --n 20000 --skip-faiss
    python bench/bench_knn.py --device gpu --n 1000000 --skip-faiss

The data: anisotropic Gaussian clusters (power-law noise spectrum, effective dimension
about d / 5) of log-normal sizes on the unit sphere, like image or text embeddings.
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
from tamis.engine.knn import approximate_knn, exact_knn, knn_recall  # noqa: E402


def clustered_embeddings(n: int, d: int, *, n_clusters: int | None = None,
                         seed: int = 0) -> np.ndarray:
    """(n, d) float32 unit rows in anisotropic clusters of log-normal sizes."""
    rng = np.random.default_rng(seed)
    n_clusters = n_clusters or max(1, n // 500)
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scale = (1.0 / np.sqrt(np.arange(1, d + 1))).astype(np.float32)
    scale *= np.sqrt(d / (scale ** 2).sum())
    centers = rng.standard_normal((n_clusters, d), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    weights = rng.lognormal(0.0, 1.0, n_clusters)
    label = rng.choice(n_clusters, size=n, p=weights / weights.sum())
    spread = rng.uniform(0.8, 1.4, n_clusters).astype(np.float32)
    X = np.empty((n, d), np.float32)
    basis_t = basis.T.astype(np.float32)
    for r0 in range(0, n, 16384):
        lab = label[r0:r0 + 16384]
        noise = (rng.standard_normal((len(lab), d), dtype=np.float32) * scale) @ basis_t
        X[r0:r0 + len(lab)] = centers[lab] + spread[lab, None] * noise / np.float32(np.sqrt(d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X


def faiss_flat_knn(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """faiss IndexFlatIP, k + 1 neighbours, the row itself dropped (else the last)."""
    import faiss

    index = faiss.IndexFlatIP(X.shape[1])
    index.add(X)
    sims, idx = index.search(X, k + 1)
    own = idx == np.arange(len(X))[:, None]
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
    keep = np.ones_like(own)
    keep[np.arange(len(X)), drop] = False
    return idx[keep].reshape(-1, k), sims[keep].reshape(-1, k)


def matmul_gflops(xp) -> float:
    A = xp.asarray(np.random.default_rng(0).random((4096, 512), dtype=np.float32))
    A @ A.T
    t = time.perf_counter()
    (A @ A.T).sum().item()
    return 2 * 4096 * 4096 * 512 / (time.perf_counter() - t) / 1e9


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="rows (default 100000)")
    parser.add_argument("--d", type=int, default=512, help="dimensions (default 512)")
    parser.add_argument("--k", type=int, default=10, help="neighbours (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--memory-mib", type=int, default=256,
                        help="tile budget in MiB (default 256; 1024-4096 suit a GPU)")
    parser.add_argument("--skip-exact", action="store_true", help="no exact run (no recall)")
    parser.add_argument("--skip-faiss", action="store_true", help="no faiss IndexFlatIP run")
    args = parser.parse_args(argv)

    backend = resolve_backend(args.device)
    X = clustered_embeddings(args.n, args.d, seed=args.seed)
    Xd = backend.asarray(X)
    print(f"# kNN graph: N={args.n:,} d={args.d} k={args.k} on {backend.name} "
          f"({backend.device_name or platform.machine()}); "
          f"matmul {matmul_gflops(backend.xp):.0f} GFLOP/s float32\n")

    memory = args.memory_mib * 2**20
    exact_knn(Xd[:256], args.k)                  # warm-up: compiles the GPU kernel once
    rows = []
    exact_sims = None
    if not args.skip_exact:
        (idx, sims), seconds = timed(exact_knn, Xd, args.k, memory_bytes=memory)
        exact_sims = sims
        rows.append(("tamis exact_knn", backend.name, seconds, 1.0))
    (idx, sims), seconds = timed(approximate_knn, Xd, args.k, target_recall=args.target_recall,
                                 memory_bytes=memory)
    rows.append(("tamis approximate_knn", backend.name, seconds,
                 None if exact_sims is None else knn_recall(idx, sims, exact_sims)))
    if not args.skip_faiss:
        try:
            import faiss  # noqa: F401
        except ImportError:
            print("faiss is not installed: skipping IndexFlatIP\n")
        else:
            (idx, sims), seconds = timed(faiss_flat_knn, X, args.k)
            rows.append(("faiss IndexFlatIP", "cpu", seconds,
                         None if exact_sims is None else knn_recall(idx, sims, exact_sims)))

    print(f"| method | device | time (s) | recall@{args.k} |")
    print("|---|---|---:|---:|")
    for name, device, seconds, recall in rows:
        shown = "n/a" if recall is None else f"{recall:.4f}"
        print(f"| {name} | {device} | {seconds:.2f} | {shown} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
