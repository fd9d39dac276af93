"""Label-error quality, side by side on one store: tamis, a cross-validated linear probe with
confident learning, and rankings from ``pred_probs`` alone.

For a store written by ``bench/generate.py`` (``store.npz`` + ``truth.json``; the realistic
mode is the point), in one process:

* ``tamis``: ``tamis.scan(store, checks=["label_error"])`` (neighbour votes x the LDA probe x
  ``pred_probs``), and with ``source="embeddings"`` (no ``pred_probs``);
* ``probe + CL``: scikit-learn's ``LogisticRegression`` trained by 5-fold
  ``cross_val_predict`` on the embeddings (the workflow cleanlab recommends), its
  out-of-sample probabilities into ``cleanlab.filter.find_label_issues`` (flags) and
  self-confidence (ranking) -- the baseline issue 13 asks tamis to match;
* ``pred_probs`` alone: the average precision of several rankings of the store's model
  probabilities (cleanlab's ``self_confidence``, ``normalized_margin``,
  ``confidence_weighted_entropy``, and the log-odds of the given label against the strongest
  other class), and tamis' flags from ``pred_probs`` alone.

Scored like ``bench/run.py``: positives are the truth's label-error rows, ``ignore_rows`` left
out; precision, recall, F1 of the flags; average precision of the ranking (lower score = more
likely wrong); and the share of flagged true flips whose suggested label is the true one.

    python -m bench.generate --realistic --n 20000 --d 512 --classes 100 --out bench/data/r20k
    python bench/bench_label_quality.py --store bench/data/r20k --json bench/results/label-quality.json
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

import tamis  # noqa: E402
from bench.store import atomic_write_json  # noqa: E402


def load(store: Path) -> dict:
    z = np.load(store / "store.npz")
    truth = json.loads((store / "truth.json").read_text())
    return {"arrays": {k: z[k] for k in z.files}, "truth": truth}


def scorer(truth: dict, labels: np.ndarray):
    from sklearn.metrics import average_precision_score

    le = truth["label_error"]
    n = len(labels)
    positive = np.zeros(n, dtype=bool)
    positive[le["rows"]] = True
    keep = np.ones(n, dtype=bool)
    keep[le.get("ignore_rows", [])] = False
    keep |= positive
    classes = np.unique(labels)
    true_code = dict(zip(le["rows"], np.searchsorted(classes, np.asarray(le["true_labels"]))))

    def score(name: str, flags: np.ndarray | None, ranking: np.ndarray, suggested: np.ndarray | None = None,
              seconds: float | None = None) -> dict:
        row = {"method": name, "seconds": None if seconds is None else round(seconds, 2),
               "average_precision": round(float(average_precision_score(positive[keep], -ranking[keep])), 4)}
        if flags is not None:
            tp = int((flags & positive & keep).sum())
            flagged = int((flags & keep).sum())
            p = tp / max(flagged, 1)
            r = tp / max(int(positive.sum()), 1)
            row.update(precision=round(p, 4), recall=round(r, 4), f1=round(2 * p * r / max(p + r, 1e-12), 4))
        if suggested is not None and flags is not None:
            hits = [suggested[r] == true_code[r] for r in le["rows"] if flags[r]]
            row["suggested_right"] = round(float(np.mean(hits)), 4) if hits else None
        return row

    return score


def tamis_rows(store: Path, score, labels: np.ndarray) -> list[dict]:
    classes = np.unique(labels)
    rows = []
    for source in ("auto", "embeddings", "pred_probs"):
        clock = time.perf_counter()
        report = tamis.scan(str(store / "store.npz"), checks=["label_error"], device="cpu",
                            params={"label_error": {"source": source}})
        seconds = time.perf_counter() - clock
        s = report.samples
        flags = s["is_label_error_issue"].to_numpy(zero_copy_only=False).astype(bool)
        ranking = s["label_error_score"].to_numpy(zero_copy_only=False).astype(np.float64)
        suggested = np.searchsorted(classes, s["suggested_label"].to_numpy(zero_copy_only=False))
        sources = "+".join(report.summary["checks"]["label_error"]["sources"])
        rows.append(score(f"tamis label_error ({sources})", flags, np.nan_to_num(ranking, nan=1.0), suggested, seconds))
    return rows


def probe_rows(x: np.ndarray, y: np.ndarray, score, folds: int, max_iter: int) -> list[dict]:
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    clock = time.perf_counter()
    model = LogisticRegression(max_iter=max_iter, C=1.0)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    probs = cross_val_predict(model, x, y, cv=cv, method="predict_proba")
    flags = find_label_issues(y, probs)
    seconds = time.perf_counter() - clock
    return [score(f"probe + CL (LogisticRegression, {folds}-fold, cleanlab find_label_issues)", flags,
                  probs[np.arange(len(y)), y], probs.argmax(axis=1), seconds)]


def pred_probs_rows(pp: np.ndarray, y: np.ndarray, score) -> list[dict]:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    flags = find_label_issues(y, pp)
    rows = []
    for method in ("self_confidence", "normalized_margin", "confidence_weighted_entropy"):
        ranking = get_label_quality_scores(y, pp, method=method)
        rows.append(score(f"pred_probs alone: cleanlab {method}", flags if method == "self_confidence" else None,
                          ranking))
    other = pp.astype(np.float64).copy()
    other[np.arange(len(y)), y] = -1.0
    log_odds = np.log(np.maximum(pp[np.arange(len(y)), y], 1e-12)) - np.log(np.maximum(other.max(axis=1), 1e-12))
    rows.append(score("pred_probs alone: log-odds of the given label vs the strongest other", None, log_odds))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--max-iter", type=int, default=200)
    p.add_argument("--skip-probe", action="store_true", help="skip the LogisticRegression baseline (slow at 100k)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    data = load(args.store)
    a = data["arrays"]
    labels = np.asarray(a["labels"])
    classes, y = np.unique(labels, return_inverse=True)
    x = np.asarray(a["embeddings"], dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    score = scorer(data["truth"], labels)
    rows = tamis_rows(args.store, score, labels)
    if not args.skip_probe:
        rows += probe_rows(x, y, score, args.folds, args.max_iter)
    if "pred_probs" in a:
        rows += pred_probs_rows(np.asarray(a["pred_probs"], dtype=np.float64), y, score)
    print(f"\nstore {args.store}: {len(y)} x {x.shape[1]}, {len(classes)} classes, "
          f"{len(data['truth']['label_error']['rows'])} planted label errors\n")
    print("| method | precision | recall | F1 | average precision | suggested right | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r.get('precision', '')} | {r.get('recall', '')} | {r.get('f1', '')} | "
              f"{r['average_precision']} | {r.get('suggested_right', '')} | {r.get('seconds') or ''} |")
    if args.json:
        meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(), "store": str(args.store),
                "command": "python bench/bench_label_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])}
        atomic_write_json(args.json, {"meta": meta, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
