"""Score tamis and its peers on the same store in the same run.

    python -m bench.run --store DIR [--systems tamis,faiss,cleanlab] [--device cpu|gpu|auto]
                        [--stages ISSUE,...] [--name NAME]

Each system runs in its own subprocess (``python -m bench.worker SYSTEM``), so wall time and
peak RSS (``os.wait4`` rusage of that child and its descendants) belong to it alone; peak GPU
memory comes from CuPy's memory pool inside the worker. tamis is run as
``python -m tamis scan STORE --out TMP --device DEV --no-projection``; its
``samples.parquet`` is scored per issue type against ``truth.json`` (see
``bench.scoring``), and ``summary.json["timings"]`` gives per-stage seconds. faiss finds
pairs above the cosine threshold (scored per pair type); cleanlab's Datalab is scored like
tamis. A peer that is not installed is skipped with a printed reason.

``--stages`` restricts the issue types scored, and those run: it becomes tamis's ``--checks``
(unless ``--tamis-args`` has one) and the issue types cleanlab is asked for.

Results go to ``bench/results/<name>.json`` (a list of rows) and ``<name>.md``; each row has
system, device, device_name, n, d, stage, seconds, peak_rss_mb, peak_gpu_mb, precision,
recall, average_precision, issue_type, unit, date, command, versions. The row with ``stage``
"process" carries the worker subprocess's wall time (interpreter start, imports and loading
included) and its peaks; other stage rows carry the system's own stage timings (tamis:
``summary.json["timings"]``, whose "total" is tamis's own); rows with an ``issue_type``
carry quality, with the seconds of the stage named like the check (``check:<name>``).
``unit`` is "rows" (positives: every planted row), "excluded_rows" (positives: the rows a
keep-one policy drops) or "pairs" (faiss: found pairs vs truth pairs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from .scoring import ISSUE_TYPES, POLICIES, score_found_pairs, score_samples
from .store import (
    atomic_write_bytes,
    atomic_write_json,
    find_store,
    load_store,
    load_truth,
)
from .worker import SYSTEMS, UNAVAILABLE

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
FIELDS = ("system", "device", "device_name", "n", "d", "stage", "seconds", "peak_rss_mb",
          "peak_gpu_mb", "precision", "recall", "average_precision", "issue_type", "unit", "date",
          "command", "versions")


def run_measured(cmd: list[str], log_path: Path, timeout: float | None = None,
                 env: dict | None = None) -> tuple[int, float, float]:
    """Run ``cmd``; return (exit code, wall seconds, peak RSS in MB of it and its children).

    The rusage comes from ``os.wait4`` on this one child, so earlier children do not leak
    into it (``RUSAGE_CHILDREN`` would report the maximum over all of them).
    """
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                env=env, start_new_session=True)
        timer = None
        if timeout:
            timer = threading.Timer(timeout, _kill_group, (proc.pid,))
            timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            if timer:
                timer.cancel()
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    scale = 2**20 if sys.platform == "darwin" else 2**10  # ru_maxrss: bytes on macOS, KiB on Linux
    return proc.returncode, wall, usage.ru_maxrss * scale / 2**20


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended just now
        pass


def git_commit() -> str | None:
    """The checked-out commit of the repository (read-only), or None."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def worker_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def quality_rows(result: dict, truth: dict, n: int, policy: str, issue_types) -> list[dict]:
    """Scores of one worker result against the truth (no I/O beyond its output files)."""
    if result.get("samples"):
        table = pq.read_table(result["samples"])
        if policy != "both":
            return score_samples(table, truth, n, policy=policy, issue_types=issue_types)
        out = score_samples(table, truth, n, policy="rows", issue_types=issue_types)
        out += [r for r in score_samples(table, truth, n, "excluded_rows", issue_types)
                if r["unit"] == "excluded_rows"]
        order = {t: i for i, t in enumerate(ISSUE_TYPES)}
        return sorted(out, key=lambda r: order[r["issue_type"]])  # stable: rows before excluded
    if result.get("pairs"):
        with np.load(result["pairs"]) as z:
            pairs, identical = z["pairs"], z["identical"]
        meta = load_store(result["store"], ["labels", "split"])
        rows = score_found_pairs(pairs, identical, meta["labels"], meta["split"], truth)
        return [r for r in rows if issue_types is None or r["issue_type"] in issue_types]
    return []


def result_rows(system: str, result: dict, quality: list[dict], wall: float, rss_mb: float,
                base: dict) -> list[dict]:
    """The result rows of one system: the whole process, one per stage, one per scored type."""
    common = {**base, "system": system, "device": result["device"],
              "device_name": result["device_name"], "command": result["command"],
              "versions": {**result["versions"], **base.get("versions", {})}}
    empty = {k: None for k in FIELDS}
    rows = [{**empty, **common, "stage": "process", "seconds": wall, "peak_rss_mb": rss_mb,
             "peak_gpu_mb": result.get("peak_gpu_mb")}]
    stages = result.get("stages", {})
    scored = {q["issue_type"] for q in quality} | {f"check:{q['issue_type']}" for q in quality}
    rows += [{**empty, **common, "stage": s, "seconds": sec}
             for s, sec in stages.items() if s not in scored]
    for q in quality:  # a stage named like the check lends its seconds to the row
        stage = next((s for s in (q["issue_type"], f"check:{q['issue_type']}") if s in stages), None)
        rows.append({**empty, **common, "stage": stage,
                     "seconds": stages.get(stage) if stage else None,
                     **{k: q[k] for k in ("issue_type", "unit", "precision", "recall",
                                          "average_precision")}})
    return rows


def _fmt(value, digits: int) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict], title: str) -> str:
    head = ["system", "device", "n", "d", "stage", "issue_type", "unit", "seconds", "peak RSS MB",
            "peak GPU MB", "precision", "recall", "AP"]
    keys = ["system", "device", "n", "d", "stage", "issue_type", "unit", "seconds", "peak_rss_mb",
            "peak_gpu_mb", "precision", "recall", "average_precision"]
    digits = {"seconds": 2, "peak_rss_mb": 0, "peak_gpu_mb": 0}
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |",
             "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k), digits.get(k, 3)) for k in keys) + " |")
    names = sorted({(r["system"], r["device"], r["device_name"]) for r in rows})
    lines += ["", *(f"- {s} on {dev}: {name}" for s, dev, name in names)]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--store", required=True, help="store folder (with truth.json) or store file")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help=f"comma-separated, from {', '.join(SYSTEMS)}")
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), default="auto")
    p.add_argument("--stages", default=None,
                   help=f"comma-separated issue types to score (default all): {', '.join(ISSUE_TYPES)}")
    p.add_argument("--name", default=None, help="results file name (default: date-NxD-device)")
    p.add_argument("--results-dir", default=str(RESULTS_DIR))
    p.add_argument("--policy", choices=(*POLICIES, "both"), default="both",
                   help="truth rows to score pair types against: every row of a pair ('rows'), "
                        "the rows a keep-one policy drops ('excluded_rows'), or both (default; "
                        "the result's unit column says which)")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine threshold for faiss (default: truth.json meta.near_threshold)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per system")
    p.add_argument("--tamis-module", default="tamis", help="module run as `python -m MODULE scan`")
    p.add_argument("--tamis-store-arg", choices=("file", "dir"), default="file",
                   help="pass tamis the store file (default) or its folder")
    p.add_argument("--tamis-args", default="", help="extra arguments for `tamis scan`, quoted")
    p.add_argument("--keep-work", action="store_true",
                   help="keep the workers' output folder (always kept when a system fails)")
    return p


def _split_list(text: str | None, allowed, what: str) -> list[str] | None:
    if text is None:
        return None
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad:
        raise SystemExit(f"unknown {what}: {', '.join(bad)}; choose from {', '.join(allowed)}")
    return items


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    systems = _split_list(args.systems, SYSTEMS, "systems")
    issue_types = _split_list(args.stages, ISSUE_TYPES, "issue types")
    try:
        store = find_store(args.store)
        truth = load_truth(store)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = truth["meta"]
    n, d = meta["n"], meta["d"]
    threshold = args.threshold if args.threshold is not None else meta.get("near_threshold", 0.97)
    now = dt.datetime.now(dt.timezone.utc)
    name = args.name or f"{now:%Y%m%d-%H%M%S}-{n}x{d}-{args.device}"
    base = {"n": n, "d": d, "date": now.isoformat(timespec="seconds"),
            "versions": {"git_commit": git_commit()}}

    work = Path(tempfile.mkdtemp(prefix="tamis-bench-"))
    rows: list[dict] = []
    failed = False
    for system in systems:
        out = work / system
        cmd = [sys.executable, "-m", "bench.worker", system, "--store", str(store), "--out",
               str(out), "--device", args.device, "--threshold", str(threshold),
               "--tamis-module", args.tamis_module, "--tamis-store-arg", args.tamis_store_arg]
        if issue_types:
            cmd += ["--issue-types", ",".join(issue_types)]
        if args.tamis_args:
            cmd += ["--tamis-args", args.tamis_args]
        out.mkdir(parents=True)
        log = work / f"{system}.log"
        print(f"running {system} ...", flush=True)
        code, wall, rss = run_measured(cmd, log, args.timeout, worker_env())
        text = log.read_text(errors="replace").strip()
        if code == UNAVAILABLE:
            print(f"skip {system}: {text.splitlines()[-1] if text else 'unavailable'}")
            continue
        if code != 0:
            tail = "\n".join(text.splitlines()[-20:])
            why = f"killed after --timeout {args.timeout} s" if code == -signal.SIGKILL else f"exit {code}"
            print(f"FAILED {system} ({why}); last lines of {log}:\n{tail}")
            failed = True
            continue
        result = json.loads((out / "result.json").read_text())
        result["store"] = str(store)
        quality = quality_rows(result, truth, n, args.policy, issue_types)
        rows += result_rows(system, result, quality, wall, rss, base)
        print(f"done {system}: {wall:.1f} s, peak RSS {rss:.0f} MB", flush=True)

    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(results_dir / f"{name}.json", rows)
    table = markdown(rows, f"{name}: {store} ({n} x {d})")
    atomic_write_bytes(results_dir / f"{name}.md", table.encode())
    if args.keep_work or failed:
        print(f"worker outputs and logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(table)
    return 1 if failed or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
