"""Out-of-core benchmark: a sharded float16 Parquet store scanned on a local Dask cluster.

Generates the store shard by shard (one block of rows in memory at a time, never the whole
matrix), then runs the scan in a subprocess (``tamis.scan(STORE, workers=W)``: a local
cluster of W worker processes; the client keeps no embedding matrix in memory) and prints
its wall time, its stage timings and the peak resident memory of the whole process tree
(client + workers, sampled every 0.1 s with psutil) as a Markdown table.

    python bench/bench_out_of_core.py --n 1000000                    # ~0.5 GB of float16 shards
    python bench/bench_out_of_core.py --n 10000000 --checks invalid,exact_duplicate,near_duplicate
    python bench/bench_out_of_core.py --units                        # per-block costs on this machine

The store (``bench/data/ooc-<n>x<d>/``, git-ignored) is reused when it exists. Rows: unit
vectors around 200 sub-clusters per class (cosine ~0.8 within a sub-cluster, ~0.55 within a
class), 1 % near copies (cosine 0.97-0.995) and 0.5 % exact copies of rows of the same block,
labels, a train/test split.
``--units`` times the units of distributed work on this CPU (one ``pairs_in_block`` and one
exact neighbour block of a given size), the numbers the README's scaling estimate starts from.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 65_536
MODES = 200          # sub-clusters per class


def generate(out: Path, n: int, d: int, shard_rows: int, row_group: int, classes: int, seed: int) -> None:
    """Write ``ceil(n / shard_rows)`` Parquet shards of float16 embeddings, block by block."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((classes, d)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    mode_class = np.repeat(np.arange(classes), MODES)               # local structure, as real embeddings have
    modes = centroids[mode_class] + 0.7 * rng.standard_normal((len(mode_class), d)).astype(np.float32) / np.sqrt(d)
    modes /= np.linalg.norm(modes, axis=1, keepdims=True)
    started, row = time.perf_counter(), 0
    for shard in range(-(-n // shard_rows)):
        path = out / f"part-{shard:05d}.parquet"
        stop = min(n, row + shard_rows)
        tmp = path.with_suffix(".tmp")
        schema = pa.schema([("embedding", pa.list_(pa.float16(), d)), ("label", pa.int32()), ("split", pa.string())])
        with pq.ParquetWriter(tmp, schema) as writer:
            for start in range(row, stop, BLOCK):
                m = min(BLOCK, stop - start)
                block_rng = np.random.default_rng([seed, start])
                mode = block_rng.integers(0, len(modes), m)
                label = mode_class[mode].astype(np.int32)
                x = modes[mode] + 0.5 * block_rng.standard_normal((m, d), dtype=np.float32) / np.sqrt(d)
                x /= np.linalg.norm(x, axis=1, keepdims=True)
                near = block_rng.choice(m, int(0.015 * m), replace=False)
                source = block_rng.integers(0, m, len(near))
                cos = block_rng.uniform(0.97, 0.995, len(near)).astype(np.float32)
                noise = block_rng.standard_normal((len(near), d), dtype=np.float32)
                noise -= (noise * x[source]).sum(axis=1, keepdims=True) * x[source]
                noise /= np.linalg.norm(noise, axis=1, keepdims=True)
                x[near] = cos[:, None] * x[source] + np.sqrt(1 - cos ** 2)[:, None] * noise
                exact = near[: len(near) // 3]                  # a third of the copies are exact
                x[exact] = x[source[: len(exact)]]
                label[near] = label[source]
                split = np.where(block_rng.random(m) < 0.8, "train", "test")
                flat = pa.array(x.astype(np.float16).reshape(-1))
                writer.write_table(pa.table({"embedding": pa.FixedSizeListArray.from_arrays(flat, d),
                                             "label": label, "split": split}, schema=schema),
                                   row_group_size=row_group)
        os.replace(tmp, path)
        row = stop
        print(f"  {path.name}: rows {stop:,} / {n:,} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)


SCAN = """
import json, sys, time, tamis
args = json.loads(sys.argv[1])
t = time.perf_counter()
report = tamis.scan(args["store"], workers=args["workers"], partition_rows=args["partition_rows"],
                    checks=args["checks"], projection="none", engine=args["engine"],
                    precision=args["precision"])
scan = time.perf_counter() - t
t = time.perf_counter()
if args["out"]:
    tamis.write_report(report, args["out"], html=False)
print(json.dumps({"scan_s": scan, "write_s": time.perf_counter() - t, "counts": report.counts(),
                  "timings": report.summary["timings"], "distributed": report.summary["distributed"],
                  "search": report.summary["search"]}))
"""


def run_scan(store: Path, args: argparse.Namespace) -> dict:
    """The scan in a subprocess; its wall time and the peak RSS of its process tree."""
    import psutil

    out = tempfile.mkdtemp(prefix="tamis-ooc-") if args.write else None
    payload = {"store": str(store), "workers": args.workers, "partition_rows": args.partition_rows,
               "checks": args.checks.split(",") if args.checks else None, "out": out,
               "engine": args.engine, "precision": args.precision}
    env = dict(os.environ, PYTHONPATH=str(ROOT), DASK_LOGGING__DISTRIBUTED="error")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", SCAN, json.dumps(payload)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    peak = {"tree": 0, "client": 0, "worker": 0}
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                client = root.memory_info().rss
                workers = [c.memory_info().rss for c in root.children(recursive=True)]
            except psutil.Error:
                break
            peak["tree"] = max(peak["tree"], client + sum(workers))
            peak["client"] = max(peak["client"], client)
            peak["worker"] = max([peak["worker"], *workers])
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"the scan failed (exit {proc.returncode}):\n{stderr[-4000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result.update(wall_s=wall, peak_rss_tree_mb=peak["tree"] / 2**20, peak_rss_client_mb=peak["client"] / 2**20,
                  peak_rss_worker_mb=peak["worker"] / 2**20)
    return result


def unit_costs(d: int) -> list[dict]:
    """Seconds of one pairs_in_block (m x m) and one exact neighbour block (m queries x 4m rows,
    the Dask task's unit) on this CPU."""
    sys.path.insert(0, str(ROOT))
    from tamis.engine.search import SearchOptions
    from tamis.engine.search.exact import exact_neighbours, pairs_in_block

    rng = np.random.default_rng(0)
    rows = []
    for m in (8192, 16384, 32768):
        x = rng.standard_normal((4 * m, d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        t = time.perf_counter()
        pairs_in_block(x[:m], x[m:2 * m], 0, m, 0.9, np)
        pairs = time.perf_counter() - t
        t = time.perf_counter()
        exact_neighbours(x, 10, SearchOptions(), rows=np.arange(m))
        knn = time.perf_counter() - t
        rows.append({"m": m, "d": d, "pairs_in_block_s": pairs, "pairs_gmac_per_s": m * m * d / pairs / 1e9,
                     "knn_block_s": knn, "knn_rows": 4 * m, "knn_gmac_per_s": 4 * m * m * d / knn / 1e9})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="rows (default %(default)s; the goal is 10,000,000)")
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--shard-rows", type=int, default=1_000_000, help="rows per Parquet file")
    p.add_argument("--row-group", type=int, default=100_000, help="rows per row group")
    p.add_argument("--data", type=Path, default=None, help="store folder (default bench/data/ooc-<n>x<d>)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--partition-rows", type=int, default=500_000)
    p.add_argument("--checks", default=None, help="comma-separated checks (default: all that apply)")
    p.add_argument("--engine", default="auto", help="auto, exact or ivf (the engines a Dask scan runs)")
    p.add_argument("--precision", default="float16")
    p.add_argument("--write", action="store_true", help="also write the report's files (no report.html)")
    p.add_argument("--generate-only", action="store_true")
    p.add_argument("--units", action="store_true", help="only time one pairs_in_block / exact neighbour block per size")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    if args.units:
        print(f"| m | d | pairs_in_block m x m (s) | GMAC/s | neighbour block m x 4m, k=10 (s) | GMAC/s |  ({machine})")
        print("|---|---|---|---|---|---|")
        for r in unit_costs(args.d):
            print(f"| {r['m']:,} | {r['d']} | {r['pairs_in_block_s']:.2f} | {r['pairs_gmac_per_s']:.0f} | "
                  f"{r['knn_block_s']:.2f} | {r['knn_gmac_per_s']:.0f} |")
        return 0
    store = args.data or ROOT / "bench" / "data" / f"ooc-{args.n}x{args.d}"
    if not (store / "part-00000.parquet").exists() or \
            len(list(store.glob("*.parquet"))) != -(-args.n // args.shard_rows):
        print(f"generating {store} ...", file=sys.stderr)
        generate(store, args.n, args.d, args.shard_rows, args.row_group, args.classes, args.seed)
    size = sum(f.stat().st_size for f in store.glob("*.parquet"))
    if args.generate_only:
        print(f"{store}: {size / 2**30:.2f} GiB")
        return 0
    r = run_scan(store, args)
    stages = {k: v for k, v in r["timings"].items() if k not in ("total",)}
    print(f"| n | d | store GiB | workers | partition rows | wall s | scan s | peak RSS tree MiB | client MiB "
          f"| max worker MiB |  ({machine}, {time.strftime('%Y-%m-%d')})")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.n:,} | {args.d} | {size / 2**30:.2f} | {args.workers} | {args.partition_rows:,} | "
          f"{r['wall_s']:.0f} | {r['scan_s']:.0f} | {r['peak_rss_tree_mb']:.0f} | {r['peak_rss_client_mb']:.0f} | "
          f"{r['peak_rss_worker_mb']:.0f} |")
    print("\nstages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    print(f"engines: {r['distributed'].get('engines')}  partitions: {r['distributed']['n_partitions']}")
    print(f"issues: {r['counts']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
