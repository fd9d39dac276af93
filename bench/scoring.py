"""Scoring detector output against ``truth.json``. Pure functions: no I/O, no subprocesses.

Row-level scoring (tamis, cleanlab) reads a samples table with a ``row`` column and, per
check, ``is_<check>_issue`` (bool) and ``<check>_score`` (float, lower = worse). For each
issue type present in both the table and the truth:

- positives are the truth ``rows`` (or, with ``policy="excluded_rows"``, the ``excluded_rows``
  of pair types: what a keep-one policy drops, e.g. only the test row of a leak pair); the
  result's ``unit`` says which;
- ``ignore_rows`` are left out of every count (a near-duplicate detector may or may not
  flag exact duplicates and leak pairs, which are near duplicates by cosine too);
- precision = TP / flagged, recall = TP / positives (``None`` when the denominator is 0);
- average precision = ``sklearn.metrics.average_precision_score(positive, 1 - score)``
  (``None`` without positives or negatives); a NaN score ranks as 1 (not an issue).

Rows missing from the table count as not flagged with score 1.

Pair-level scoring (faiss) compares found pairs, unordered, with truth ``pairs``; a found
pair that is not a truth pair is ignored when one of its rows is in ``ignore_rows``.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

ISSUE_TYPES = ("exact_duplicate", "near_duplicate", "conflicting_labels", "leakage",
               "label_error", "outlier", "off_topic", "class_imbalance", "invalid")
POLICIES = ("rows", "excluded_rows")


def _ratio(num: int, den: int) -> float | None:
    return float(num) / den if den else None


def score_rows(n: int, truth_rows: Iterable[int], flagged: np.ndarray,
               scores: np.ndarray | None = None, ignore_rows: Iterable[int] = ()) -> dict:
    """Precision, recall and average precision of per-row flags against truth rows.

    ``flagged`` and ``scores`` have length ``n`` (row order); ``scores`` lower = worse.
    """
    from sklearn.metrics import average_precision_score

    flagged = np.asarray(flagged, dtype=bool)
    if flagged.shape != (n,):
        raise ValueError(f"flagged has shape {flagged.shape}, expected ({n},)")
    positive = np.zeros(n, dtype=bool)
    positive[np.asarray(list(truth_rows), dtype=np.int64)] = True
    keep = np.ones(n, dtype=bool)
    keep[np.asarray(list(ignore_rows), dtype=np.int64)] = False
    keep |= positive
    y, f = positive[keep], flagged[keep]
    tp, n_flagged, n_true = int(np.sum(y & f)), int(np.sum(f)), int(np.sum(y))
    ap = None
    if scores is not None and 0 < n_true < len(y):
        s = np.asarray(scores, dtype=np.float64)[keep]
        s = np.where(np.isnan(s), 1.0, s)
        ap = float(average_precision_score(y, 1.0 - s))
    return {"precision": _ratio(tp, n_flagged), "recall": _ratio(tp, n_true),
            "average_precision": ap, "tp": tp, "flagged": n_flagged, "positives": n_true}


def _column(table: Any, name: str) -> np.ndarray:
    """A column of a pyarrow Table, a pandas DataFrame or a dict of arrays, as NumPy."""
    col = table[name]
    return col.to_numpy() if hasattr(col, "to_numpy") else np.asarray(col)


def _columns(table: Any) -> list[str]:
    if hasattr(table, "column_names"):
        return list(table.column_names)
    return list(table.keys() if isinstance(table, Mapping) else table.columns)


def _as_array(values: np.ndarray, dtype, missing) -> np.ndarray:
    """``values`` as ``dtype``, with nulls (``None`` in object arrays) replaced by ``missing``."""
    if values.dtype == object:
        values = np.array([missing if v is None else v for v in values])
    return values.astype(dtype)


def check_arrays(table: Any, check: str, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``(flagged, scores)`` of ``check`` aligned to rows 0..n-1 through the ``row`` column.

    A null flag reads as False and a null score as 1 (not an issue).
    """
    rows = _column(table, "row").astype(np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise ValueError(f"samples table has rows outside [0, {n}); is it from another store?")
    flagged = np.zeros(n, dtype=bool)
    flagged[rows] = _as_array(_column(table, f"is_{check}_issue"), bool, False)
    scores = None
    if f"{check}_score" in _columns(table):
        scores = np.ones(n, dtype=np.float64)
        scores[rows] = _as_array(_column(table, f"{check}_score"), np.float64, 1.0)
    return flagged, scores


def truth_positive_rows(entry: Mapping, policy: str = "rows") -> list[int]:
    """The rows scored as positives for one truth entry under ``policy``."""
    if policy not in POLICIES:
        raise ValueError(f"policy={policy!r} is not one of {', '.join(POLICIES)}")
    if policy == "excluded_rows" and "excluded_rows" in entry:
        return entry["excluded_rows"]
    return entry["rows"]


def score_samples(table: Any, truth: Mapping, n: int, policy: str = "rows",
                  issue_types: Iterable[str] | None = None) -> list[dict]:
    """One result per issue type present in both ``table`` and ``truth`` (see module doc)."""
    cols = set(_columns(table))
    wanted = ISSUE_TYPES if issue_types is None else tuple(issue_types)
    out = []
    for check in wanted:
        if check not in truth or f"is_{check}_issue" not in cols:
            continue
        flagged, scores = check_arrays(table, check, n)
        entry = truth[check]
        res = score_rows(n, truth_positive_rows(entry, policy), flagged, scores,
                         entry.get("ignore_rows", ()))
        unit = "excluded_rows" if policy == "excluded_rows" and "excluded_rows" in entry else "rows"
        out.append({"issue_type": check, "unit": unit, **res})
    return out


def _pair_keys(pairs: np.ndarray) -> np.ndarray:
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    lo, hi = pairs.min(axis=1), pairs.max(axis=1)
    return (lo << 32) | hi


def score_pairs(found: np.ndarray, truth_pairs: Iterable, ignore_rows: Iterable[int] = ()) -> dict:
    """Precision and recall of found pairs (unordered) against truth pairs."""
    found_keys = np.unique(_pair_keys(np.asarray(found)))
    truth_keys = np.unique(_pair_keys(np.asarray(list(truth_pairs), dtype=np.int64)))
    hit = np.isin(found_keys, truth_keys)
    ignore = np.asarray(list(ignore_rows), dtype=np.int64)
    if ignore.size:
        lo, hi = found_keys >> 32, found_keys & 0xFFFFFFFF
        dropped = ~hit & (np.isin(lo, ignore) | np.isin(hi, ignore))
        found_keys, hit = found_keys[~dropped], hit[~dropped]
    tp = int(hit.sum())
    return {"precision": _ratio(tp, len(found_keys)), "recall": _ratio(tp, len(truth_keys)),
            "average_precision": None, "tp": tp, "flagged": int(len(found_keys)),
            "positives": int(len(truth_keys))}


def classify_pairs(pairs: np.ndarray, identical: np.ndarray, labels: np.ndarray,
                   split: np.ndarray) -> dict[str, np.ndarray]:
    """Split similar pairs into issue types, the way a pair-finding peer reports them.

    exact_duplicate: bit-identical rows; near_duplicate: not identical; conflicting_labels:
    labels differ; leakage: splits differ. A pair can belong to several types.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    identical = np.asarray(identical, dtype=bool)
    a, b = pairs[:, 0], pairs[:, 1]
    return {
        "exact_duplicate": pairs[identical],
        "near_duplicate": pairs[~identical],
        "conflicting_labels": pairs[labels[a] != labels[b]],
        "leakage": pairs[split[a] != split[b]],
    }


def score_found_pairs(pairs: np.ndarray, identical: np.ndarray, labels: np.ndarray,
                      split: np.ndarray, truth: Mapping) -> list[dict]:
    """Pair-level results per pair issue type for a peer that returns similar pairs."""
    out = []
    for kind, found in classify_pairs(pairs, identical, labels, split).items():
        if kind in truth:
            res = score_pairs(found, truth[kind]["pairs"], truth[kind].get("ignore_rows", ()))
            out.append({"issue_type": kind, "unit": "pairs", **res})
    return out
