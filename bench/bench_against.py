"""Benchmark of a new batch against a scanned store (``tamis scan NEW --against REPORT_DIR``).

1. Generates ``--n + --batch`` rows with bench/generate.py's generator (``--classes`` classes,
   its planted duplicates, leaks, label flips and outliers; no pred_probs): the first ``--n`` are
   the reference, the last ``--batch`` the new batch, into which ``--copies`` exact copies and
   as many near copies (cosine ~0.99) of reference rows are planted, half of them under another
   label, and whose ids follow the reference's.
2. Saves the reference's index: ``tamis.scan(reference, checks=["invalid"], out=REF,
   save_index=True, precision=--precision)`` (the normalised rows, the k-means quantiser, the
   fingerprint), timed.
3. Runs ``tamis scan BATCH --against REF --no-projection`` in a child process (so its peak RSS
   is its own; the index is warm in the page cache after step 2), timed, and reads its
   ``summary.json``: the stage timings, what the searches ran, and the planted copies found.

Prints a Markdown table and, with ``--json``, writes the numbers.

    python bench/bench_against.py                          # 1,000,000 x 512 float16, a 10,000-row batch
    python bench/bench_against.py --n 200000 --checks invalid,exact_duplicate,near_duplicate
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tamis  # noqa: E402
from bench.generate import GenerateConfig, generate  # noqa: E402


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _make(args) -> tuple[dict, dict, dict]:
    """(reference arrays, batch arrays, planted truth of the batch)."""
    total = args.n + args.batch
    cfg = GenerateConfig(n=total, d=args.d, classes=args.classes, seed=args.seed, pred_probs=False)
    arrays = generate(cfg).arrays
    ref = {key: value[:args.n] for key, value in arrays.items()}
    batch = {key: np.array(value[args.n:]) for key, value in arrays.items()}
    rng = np.random.default_rng(args.seed + 1)
    sources = rng.choice(args.n, 2 * args.copies, replace=False)
    slots = rng.choice(args.batch, 2 * args.copies, replace=False)
    emb = batch["embeddings"]
    emb[slots[:args.copies]] = ref["embeddings"][sources[:args.copies]]                 # exact copies
    near = ref["embeddings"][sources[args.copies:]].astype(np.float64)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    noise = rng.standard_normal(near.shape)
    noise -= (noise * near).sum(axis=1, keepdims=True) * near
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    emb[slots[args.copies:]] = (0.99 * near + np.sqrt(1 - 0.99 ** 2) * noise).astype(np.float32)   # cosine 0.99
    relabel = slots[::2]
    batch["labels"][slots] = ref["labels"][sources]
    batch["labels"][relabel] = (batch["labels"][relabel] + 1) % args.classes                     # half: another label
    truth = {"copies": {int(s): int(p) for s, p in zip(slots, sources)}, "relabelled": sorted(map(int, relabel))}
    return ref, batch, truth


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="reference rows (default: %(default)s)")
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--batch", type=int, default=10_000, help="batch rows (default: %(default)s)")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--copies", type=int, default=100, help="exact copies, and near copies, planted in the batch")
    p.add_argument("--precision", choices=("float32", "float16"), default="float16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--engine", default="auto", help="the batch scan's --engine (auto, exact, ivf)")
    p.add_argument("--checks", default=None, help="the batch scan's --checks (default: every check that applies)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="bench/data/against", help="where the reference report and the batch go")
    p.add_argument("--json", default=None, help="write the numbers here")
    args = p.parse_args(argv)

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    ref, batch, truth = _make(args)
    t_generate = time.perf_counter() - t0
    np.savez(work / "batch.npz", **batch)

    t0 = time.perf_counter()
    saved = tamis.scan(ref, checks=["invalid"], device=args.device, precision=args.precision,
                       out=str(work / "reference"), save_index=True)
    t_save = time.perf_counter() - t0
    save_timings = {k: round(v, 2) for k, v in saved.summary["timings"].items()}
    index = saved.summary["index"]
    rss_save = _peak_rss_mb()
    del ref, saved
    gc.collect()

    out = work / "batch-report"
    command = [sys.executable, "-m", "tamis", "scan", str(work / "batch.npz"), "--against", str(work / "reference"),
               "--out", str(out), "--no-projection", "--device", args.device, "--engine", args.engine, "-q"]
    if args.checks:
        command += ["--checks", args.checks]
    # a child inherits the peak RSS of the process it was forked from (Linux keeps it across exec), so
    # the batch scan is started from a small Python process that reports the scan's own peak
    waiter = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:]); _, st, ru = os.wait4(p.pid, 0); "
              "print(os.waitstatus_to_exitcode(st), ru.ru_maxrss)")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", waiter, *command], capture_output=True, text=True, check=True)
    t_against = time.perf_counter() - t0
    code, maxrss_kb = (int(v) for v in done.stdout.split()[-2:])
    if code not in (0, 3):
        raise SystemExit(f"the batch scan failed ({code}): {' '.join(command)}\n{done.stderr}")
    summary = json.loads((out / "summary.json").read_text())
    import pyarrow.parquet as pq

    matches = pq.read_table(out / "reference_matches.parquet") if (out / "reference_matches.parquet").exists() else None
    found = set()
    if matches is not None:
        found = {(r, p) for r, p in zip(matches["row"].to_pylist(), matches["reference_position"].to_pylist())}
    planted = set(truth["copies"].items())   # reference positions are input rows: the generator has no invalid rows
    recall = len(planted & found) / max(1, len(planted))

    t = summary["timings"]
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.processor() or 'cpu'}", "device": summary["device"]["backend"], "n": args.n, "d": args.d,
        "batch": args.batch, "precision": args.precision, "classes": args.classes,
        "generate_s": round(t_generate, 1), "save_index_s": round(t_save, 1), "save_timings": save_timings,
        "save_peak_rss_mb": round(rss_save), "index": index,
        "against_wall_s": round(t_against, 2), "against_peak_rss_mb": round(maxrss_kb / 1024),
        "against_timings": {k: round(v, 3) for k, v in t.items()},
        "search": summary.get("search"), "issues": summary["issues"],
        "reference": summary.get("reference"), "planted_copies_found": recall,
        "command": " ".join(command),
    }
    print(f"| reference | {args.n:,} x {args.d} {args.precision}, index {index['buckets']} buckets |")
    print("|---|---|")
    print(f"| generate | {t_generate:.1f} s |")
    print(f"| save the index (scan --checks invalid --save-index) | {t_save:.1f} s, peak RSS {rss_save:,.0f} MB |")
    print(f"| {args.batch:,}-row batch --against, whole process | {t_against:.2f} s, peak RSS "
          f"{maxrss_kb / 1024:,.0f} MB |")
    for key in sorted(t):
        if key.startswith("artifact:") or key in ("load", "normalise", "total", "write"):
            print(f"| . {key} | {t[key]:.3f} s |")
    print(f"| planted copies found (exact + near, {len(planted)}) | {recall:.3f} |")
    print(f"| issues | {summary['issues']} |")
    print(json.dumps(summary.get("search"), indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
