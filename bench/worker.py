"""Runs ONE system on a store, in its own process, so the runner can measure it alone.

    python -m bench.worker {tamis,faiss,cleanlab} --store FILE --out DIR --device DEV [...]

Writes ``DIR/result.json``::

    {"system", "device", "device_name", "stages": {stage: seconds}, "peak_gpu_mb",
     "versions": {package: version}, "command", "samples": path | null, "pairs": path | null}

``samples`` is a Parquet table in the tamis schema (``row``, ``is_<check>_issue``,
``<check>_score``); ``pairs`` an npz with ``pairs`` (K, 2), ``similarity`` (K,) and
``identical`` (K,) for a peer that finds similar pairs. Exit code 3 means the system is not
available here (its reason is the last line on stderr); the runner reports it as skipped.

Peak GPU memory is the high-water mark of bytes in use in CuPy's default memory pool: a
thin allocator wraps ``pool.malloc`` and reads ``pool.used_bytes()`` after each allocation
(the peak always follows an allocation). It is installed only when the device is not "cpu"
and CuPy imports; systems that allocate outside CuPy's pool (faiss-gpu) report null.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import platform
import runpy
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .store import atomic_write_json, load_store

UNAVAILABLE = 3
SYSTEMS = ("tamis", "faiss", "cleanlab")
# tamis check name -> cleanlab issue type
CLEANLAB_TYPES = {"label_error": "label", "outlier": "outlier", "near_duplicate": "near_duplicate",
                  "class_imbalance": "class_imbalance"}
_BLOCK = 16_384


class Unavailable(Exception):
    """The system cannot run here (not installed, no GPU support)."""


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - no CuPy, or no usable device
        return None


def track_cupy_pool() -> Callable[[], float | None]:
    """Install a peak-tracking allocator on CuPy's pool; return a reader of the peak in MB."""
    try:
        import cupy
    except ImportError:
        return lambda: None
    pool = cupy.get_default_memory_pool()
    peak = [0]

    def malloc(size):
        mem = pool.malloc(size)
        used = pool.used_bytes()
        if used > peak[0]:
            peak[0] = used
        return mem

    cupy.cuda.set_allocator(malloc)
    return lambda: max(peak[0], pool.total_bytes()) / 2**20


def versions(extra: dict | None = None) -> dict:
    out = {"python": platform.python_version()}
    for name in ("numpy", "pyarrow", "sklearn", "scipy", "faiss", "cleanlab", "cupy", "tamis"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = getattr(mod, "__version__", None)
    out.update(extra or {})
    return out


def _require(module: str, hint: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise Unavailable(f"{module} is not installed ({hint})")


def _finite_unit(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows normalised to unit length, mask of usable rows); unusable rows become zeros."""
    ok = np.isfinite(emb).all(axis=1)
    x = np.where(ok[:, None], emb, 0).astype(np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    ok &= norms[:, 0] > 0
    x /= np.where(norms > 0, norms, 1)
    return x, ok


def run_tamis(args, out: Path) -> dict:
    module = args.tamis_module
    _require(module, "install tamis, or pass --tamis-module")
    if importlib.util.find_spec(f"{module}.__main__") is None:
        raise Unavailable(f"{module} has no CLI ({module}/__main__.py is missing)")
    scan_out = out / "scan"
    store = Path(args.store)
    target = str(store.parent if args.tamis_store_arg == "dir" else store)
    extra = shlex.split(args.tamis_args)
    if args.issue_types and "--checks" not in extra:
        known = getattr(importlib.import_module(module), "CHECKS", None)  # tamis's registry
        checks = [c for c in args.issue_types if known is None or c in known]
        if not checks:
            raise Unavailable(f"{module} runs none of {', '.join(args.issue_types)} "
                              f"(its checks: {', '.join(known)})")
        extra += ["--checks", ",".join(checks)]
    argv = ["scan", target, "--out", str(scan_out), "--device", args.device, "--no-projection",
            *extra]
    gpu_peak = track_cupy_pool() if args.device != "cpu" else (lambda: None)
    sys.argv = [module, *argv]
    t0 = time.perf_counter()
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    wall = time.perf_counter() - t0
    if code:  # tamis failed; its message is in the log (never UNAVAILABLE: that means "skip")
        raise SystemExit(1 if code == UNAVAILABLE else code)
    summary = json.loads((scan_out / "summary.json").read_text())
    timings = {str(k): float(v) for k, v in (summary.get("timings") or {}).items()}
    peak = gpu_peak()
    device, name = _summary_device(summary)
    device = device or ("gpu" if peak else "cpu")
    return {"device": device,
            "device_name": gpu_name() if device == "gpu" else cpu_name(),
            "device_name_reported": name,
            "stages": timings if "total" in timings else {"total": wall, **timings},
            "peak_gpu_mb": peak if device == "gpu" else None,
            "command": " ".join(["python", "-m", module, *argv]),
            "samples": str(scan_out / "samples.parquet"), "pairs": None}


def _summary_device(summary: dict) -> tuple[str | None, str | None]:
    """(backend "cpu"/"gpu", device name) from tamis's summary.json, where it says."""
    value = summary.get("device")
    if isinstance(value, dict):
        backend = value.get("backend") if value.get("backend") in ("cpu", "gpu") else None
        return backend, value.get("name")
    return (value if value in ("cpu", "gpu") else None), None


def run_faiss(args, out: Path) -> dict:
    _require("faiss", "pip install faiss-cpu")
    import faiss

    t0 = time.perf_counter()
    emb = load_store(args.store, ["embeddings"])["embeddings"]
    t1 = time.perf_counter()
    x, _ = _finite_unit(emb)
    n, d = x.shape
    use_gpu = args.device != "cpu" and hasattr(faiss, "StandardGpuResources") \
        and faiss.get_num_gpus() > 0
    if args.device == "gpu" and not use_gpu:
        raise Unavailable("faiss has no usable GPU here (faiss-cpu, or no device)")
    index = faiss.IndexFlatIP(d)
    if use_gpu:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(x)
    t2 = time.perf_counter()
    found_a, found_b, sims = [], [], []
    for a in range(0, n, _BLOCK):
        q = x[a:a + _BLOCK]
        if use_gpu:  # GPU flat indexes have no range_search: k-NN, then the threshold
            dist, idx = index.search(q, args.faiss_k)
            qi = np.repeat(np.arange(a, a + len(q)), args.faiss_k).reshape(dist.shape)
            keep = dist > args.threshold
            qi, idx, dist = qi[keep], idx[keep], dist[keep]
        else:
            lims, dist, idx = index.range_search(q, args.threshold)
            qi = np.repeat(np.arange(a, a + len(q)), np.diff(lims).astype(np.int64))
        keep = idx > qi
        found_a.append(qi[keep]); found_b.append(idx[keep]); sims.append(dist[keep])
    t3 = time.perf_counter()
    pairs = np.stack([np.concatenate(found_a), np.concatenate(found_b)], axis=1).astype(np.int64)
    identical = (emb[pairs[:, 0]] == emb[pairs[:, 1]]).all(axis=1)
    path = out / "pairs.npz"
    np.savez(path, pairs=pairs, similarity=np.concatenate(sims), identical=identical)
    method = f"search(k={args.faiss_k})" if use_gpu else "range_search"
    return {"device": "gpu" if use_gpu else "cpu",
            "device_name": gpu_name() if use_gpu else cpu_name(),
            "stages": {"load": t1 - t0, "index": t2 - t1, method: t3 - t2},
            "peak_gpu_mb": None,
            "command": f"faiss.IndexFlatIP {method} > {args.threshold} on unit rows",
            "samples": None, "pairs": str(path)}


def run_cleanlab(args, out: Path) -> dict:
    _require("cleanlab", "pip install cleanlab")
    import pyarrow as pa
    import pyarrow.parquet as pq
    from cleanlab import Datalab

    wanted = [t for t in CLEANLAB_TYPES if args.issue_types is None or t in args.issue_types]
    if not wanted:
        raise Unavailable(f"none of the requested issue types is one cleanlab checks "
                          f"({', '.join(CLEANLAB_TYPES)})")
    t0 = time.perf_counter()
    data = load_store(args.store, ["embeddings", "labels", "pred_probs"])
    t1 = time.perf_counter()
    emb = data["embeddings"]
    ok = np.isfinite(emb).all(axis=1) & np.any(emb != 0, axis=1)  # cleanlab fails on NaN rows
    rows = np.flatnonzero(ok)
    lab = Datalab(data={"label": data["labels"][rows]}, label_name="label",
                  task="classification", verbosity=0)
    kwargs = {"features": emb[rows]}
    if "pred_probs" in data:
        kwargs["pred_probs"] = data["pred_probs"][rows]
    lab.find_issues(**kwargs, issue_types={CLEANLAB_TYPES[t]: {} for t in wanted})
    t2 = time.perf_counter()
    issues = lab.get_issues()
    cols = {"row": rows}
    for ours in wanted:
        theirs = CLEANLAB_TYPES[ours]
        if f"is_{theirs}_issue" in issues.columns:
            cols[f"is_{ours}_issue"] = issues[f"is_{theirs}_issue"].to_numpy(dtype=bool)
            cols[f"{ours}_score"] = issues[f"{theirs}_score"].to_numpy(dtype=np.float64)
    path = out / "samples.parquet"
    pq.write_table(pa.table(cols), path)
    return {"device": "cpu", "device_name": cpu_name(),
            "stages": {"load": t1 - t0, "find_issues": t2 - t1},
            "peak_gpu_mb": None,
            "command": f"cleanlab.Datalab.find_issues(issue_types={[CLEANLAB_TYPES[t] for t in wanted]})",
            "samples": str(path), "pairs": None}


RUNNERS = {"tamis": run_tamis, "faiss": run_faiss, "cleanlab": run_cleanlab}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.worker")
    p.add_argument("system", choices=SYSTEMS)
    p.add_argument("--store", required=True, help="the store file")
    p.add_argument("--out", required=True, help="folder for result.json and outputs")
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), default="auto")
    p.add_argument("--threshold", type=float, default=0.97, help="cosine threshold for faiss")
    p.add_argument("--faiss-k", type=int, default=10, help="neighbours per row for faiss on GPU")
    p.add_argument("--issue-types", type=lambda s: s.split(","), default=None)
    p.add_argument("--tamis-module", default="tamis")
    p.add_argument("--tamis-store-arg", choices=("file", "dir"), default="file",
                   help="pass tamis the store file or its folder")
    p.add_argument("--tamis-args", default="", help="extra arguments for `tamis scan`, quoted")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        result = RUNNERS[args.system](args, out)
    except Unavailable as exc:
        print(f"unavailable: {exc}", file=sys.stderr)
        return UNAVAILABLE
    result["system"] = args.system
    result["versions"] = versions()
    atomic_write_json(out / "result.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
