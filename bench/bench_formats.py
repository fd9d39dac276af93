"""Release benchmark: the same million-row store in every input format, each scanned by the CLI.

A 1M-row store once crashed in the seed's own .npz format (pyarrow cut its path column into
chunks) while the 100k store passed: every format is scanned at this size before a release.
Writes one store (labels, paths, a split, some exact copies and near copies) as ``.npz``,
``.npy`` (embeddings only), Parquet (row groups of 100k) and Feather, runs
``tamis scan STORE --no-projection`` on each in a subprocess, and prints a Markdown table of
exit code, wall time, peak RSS and the issue counts (which must agree across formats: the
``.npy`` store has embeddings only, so it runs fewer checks).

    python bench/bench_formats.py                     # 1M x 64, the default checks below
    python bench/bench_formats.py --n 200000 --d 32 --checks invalid,exact_duplicate

Stores go to ``bench/data/formats-<n>x<d>/`` (git-ignored) and are reused.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
CHECKS = "invalid,exact_duplicate,near_duplicate,conflicting_labels,leakage,class_imbalance"


def write_stores(folder: Path, n: int, d: int, seed: int = 0) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.feather as feather
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"npz": folder / "store.npz", "npy": folder / "store.npy", "parquet": folder / "store.parquet",
             "feather": folder / "store.feather"}
    if all(p.exists() for p in paths.values()):
        return paths
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 100, n)
    centers = rng.normal(size=(100, d)).astype(np.float32)
    emb = centers[labels] + rng.normal(scale=1.5, size=(n, d)).astype(np.float32)
    copies = rng.choice(n, n // 200, replace=False)            # 0.5 % exact copies of other rows
    emb[copies] = emb[(copies + 1) % n]
    image_paths = np.array([f"images/{i:08d}.jpg" for i in range(n)])
    split = np.where(rng.random(n) < 0.2, "test", "train")
    np.savez(paths["npz"], embeddings=emb, labels=labels, image_paths=image_paths, split=split)
    np.save(paths["npy"], emb)
    table = pa.table({"embeddings": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), d),
                      "labels": labels, "image_paths": image_paths, "split": split})
    pq.write_table(table, paths["parquet"], row_group_size=100_000)
    feather.write_feather(table, paths["feather"])
    return paths


def scan(path: Path, out: Path, checks: str) -> dict:
    wanted = checks if path.suffix != ".npy" else ",".join(c for c in checks.split(",")
                                                            if c in ("invalid", "exact_duplicate", "near_duplicate"))
    cmd = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "tamis", "scan", str(path), "--out", str(out),
           "--no-projection", "--device", "cpu", "-q", "--checks", wanted]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = proc.stderr.strip().splitlines()
    rss_mb = int(lines[-1]) / 1024 if lines and lines[-1].isdigit() else float("nan")
    counts = {}
    if proc.returncode == 0:
        counts = json.loads((out / "summary.json").read_text())["issues"]
    return {"rc": proc.returncode, "wall_s": wall, "peak_rss_mb": rss_mb, "counts": counts,
            "error": "" if proc.returncode == 0 else " ".join(lines[:-1])[:200]}


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--checks", default=CHECKS)
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()
    folder = ROOT / "data" / f"formats-{args.n}x{args.d}"
    stores = write_stores(folder, args.n, args.d)
    rows = {fmt: scan(path, folder / f"report-{fmt}", args.checks) for fmt, path in stores.items()}
    print(f"# {args.n:,} x {args.d} in every format ({_cpu()}, {time.strftime('%Y-%m-%d')})\n")
    print("| format | exit | wall s | peak RSS MB | issues |")
    print("|---|---|---|---|---|")
    for fmt, r in rows.items():
        issues = ", ".join(f"{k} {v:,}" for k, v in r["counts"].items()) or r["error"]
        print(f"| {fmt} | {r['rc']} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | {issues} |")
    if args.json:
        args.json.write_text(json.dumps({"n": args.n, "d": args.d, "checks": args.checks, "rows": rows}, indent=2))
    return 0 if all(r["rc"] == 0 for r in rows.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
