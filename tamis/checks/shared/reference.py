"""What the duplicate family sees of a reference, in a scan of a new batch against it (``--against``).

The batch's own pairs go through the checks as in any scan; this module adds the pairs between
a batch row and a reference row (:func:`tamis.engine.artifacts.reference_pairs`, one search per
run). Each check asks :func:`reference_hits` for the pairs it cares about at its threshold:

- ``exact_duplicate``: the two stored rows are bit-identical (normalised, at the index's
  precision), or the batch row's path is a reference row's path;
- ``near_duplicate``: every pair at the threshold;
- ``conflicting_labels``: the two rows carry different labels;
- ``leakage``: the two rows lie in different splits.

A batch row with such a pair is flagged and excluded: the reference is already accepted, so
the batch's copy is the one to drop (the exclusion list only ever holds batch rows). Without a
reference every hit is empty, so a check needs no branch of its own. :func:`matches_table` is
``reference_matches.parquet``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ...engine.artifacts import ReferencePairs, reference_pairs
from ...io.images import store_folder

__all__ = ["ReferenceHits", "reference_hits", "matches_table", "EXACT_THRESHOLD"]

#: bit-identical rows of norm 1 +- 1e-3 have similarity above this; exact_duplicate searches here
#: (or at the scan's threshold when that is lower, sharing one search with the other checks)
EXACT_THRESHOLD = 0.99
KINDS = (None, "exact", "label_differs", "cross_split")


@dataclass(frozen=True)
class ReferenceHits:
    """Batch rows with a qualifying pair in the reference.

    rows : (N,) bool, True for a batch row with at least one
    best : (N,) float, the largest similarity of its qualifying pairs (NaN where none)
    count : (N,) int, how many reference rows it pairs with
    pairs : the qualifying pairs (None without a reference)
    summary : what the check reports under ``reference`` (None without a reference)
    """

    rows: np.ndarray
    best: np.ndarray
    count: np.ndarray
    pairs: ReferencePairs | None
    summary: dict | None


def reference_hits(ctx, threshold: float, kind: str | None = None) -> ReferenceHits:
    """The batch rows of ``ctx`` with a pair of ``kind`` (:data:`KINDS`; None: any) at
    ``threshold`` in the reference; all empty when the scan has no reference."""
    n = ctx.n
    if ctx.reference is None:
        return ReferenceHits(np.zeros(n, bool), np.full(n, np.nan), np.zeros(n, np.int64), None, None)
    pairs = reference_pairs(ctx, threshold)
    keep = np.ones(len(pairs), dtype=bool)
    if kind == "exact":
        keep = pairs.exact.copy()
    elif kind == "label_differs":
        keep = _differs(ctx, pairs, "labels")
    elif kind == "cross_split":
        keep = _differs(ctx, pairs, "split")
    row, sim = pairs.row[keep], pairs.similarity[keep]
    rows = np.zeros(n, dtype=bool)
    rows[row] = True
    best = np.full(n, -np.inf)
    np.maximum.at(best, row, sim.astype(np.float64))
    best[np.isneginf(best)] = np.nan
    count = np.bincount(row, minlength=n).astype(np.int64)
    summary = {"threshold": float(threshold), "n_pairs": int(keep.sum()), "n_rows": int(rows.sum()),
               "n_reference_rows": int(len(np.unique(pairs.position[keep])))}
    if kind == "exact" and ctx.store.paths is not None and ctx.reference.column("path") is not None:
        by_path = _same_path(ctx)
        summary["n_rows_by_path"] = int((by_path & ~rows).sum())
        rows |= by_path
        best[by_path & np.isnan(best)] = 1.0
    if kind == "cross_split":
        summary["split_pairs"] = _split_pairs(ctx, pairs.row[keep], pairs.position[keep])
    return ReferenceHits(rows, best, count, ReferencePairs(row, pairs.position[keep], sim, pairs.exact[keep],
                                                           pairs.threshold), summary)


def _differs(ctx, pairs: ReferencePairs, kind: str) -> np.ndarray:
    """Pairs whose two rows carry different labels (``kind`` "labels") or splits ("split");
    none when the batch or the reference lacks them."""
    column = {"labels": "label", "split": "split"}[kind]
    if getattr(ctx.store, kind) is None or ctx.reference.column(column) is None:
        return np.zeros(len(pairs), dtype=bool)
    ours = (ctx.label_codes if kind == "labels" else ctx.split_codes)[pairs.row]
    return ours != ctx.reference_codes(kind)[pairs.position]


def _same_path(ctx) -> np.ndarray:
    """(N,) bool: valid batch rows whose file is a reference row's file.

    Paths are relative to their own store (README: "Input formats"), so both sides are resolved
    first: a batch path against the scan's image root, a reference path against the folder of the
    store its segment came from (``manifest -> segments -> source``). Relative paths with no folder
    to resolve against (an in-memory store) match nothing; ``images/0001.jpg`` of two stores in two
    folders are two files."""
    n = ctx.n
    ours_root = ctx.image_root
    ours = _resolved(ctx.store.paths, ours_root)
    theirs_raw = ctx.reference.column("path")
    parts, start = [], 0
    for segment in ctx.reference.index.manifest.get("segments", []):
        count = int(segment["n_rows"])
        root = store_folder(str(segment.get("source", "memory")))
        parts.extend(_resolved(theirs_raw.slice(start, count), root))
        start += count
    known = {p for p in parts if p is not None}
    found = np.array([p is not None and p in known for p in ours], dtype=bool) if len(ours) == n \
        else np.zeros(n, dtype=bool)
    return found & ctx.valid


def _resolved(paths, root) -> list:
    """Absolute, normalised paths (None where a relative path has no root, or no path)."""
    out = []
    for p in paths.to_pylist():
        if p is None or p == "":
            out.append(None)
        elif os.path.isabs(str(p)):
            out.append(os.path.normpath(str(p)))
        else:
            out.append(None if root is None else os.path.normpath(os.path.join(str(root), str(p))))
    return out


def _split_pairs(ctx, rows: np.ndarray, positions: np.ndarray) -> dict:
    """Pairs per (reference split -> batch split), e.g. ``{"test->train": 3}``."""
    names = ctx.split_names
    ours, theirs = ctx.split_codes[rows], ctx.reference_codes("split")[positions]
    out: dict[str, int] = {}
    for a, b in zip(theirs.tolist(), ours.tolist()):
        key = f"{names[a] if a >= 0 else None}->{names[b]}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def matches_table(ctx) -> pa.Table | None:
    """``reference_matches.parquet`` of a scan against a reference: every pair of a batch row and
    a reference row at the lowest threshold the run searched, sorted by (row, reference position):
    ``row``, ``id`` (the batch row's), ``reference_position``, ``reference_id``, ``similarity``,
    ``exact`` (bit-identical stored rows), ``reference_label``, ``same_label``, ``reference_split``,
    ``cross_split`` (null where a side has no labels / splits), ``reference_path``. None when the
    run has no reference or searched no pair with it."""
    built = ctx.built("reference_pairs")
    if ctx.reference is None or not built:
        return None
    pairs = built[min(built)]
    take = pa.array(pairs.position, type=pa.int64())
    ref = ctx.reference

    def theirs(name: str) -> pa.Array:
        column = ref.column(name)
        return pa.nulls(len(pairs), pa.string()) if column is None else column.take(take)

    def differs(kind: str) -> np.ndarray | None:
        column = {"labels": "label", "split": "split"}[kind]
        if getattr(ctx.store, kind) is None or ref.column(column) is None:
            return None
        return _differs(ctx, pairs, kind)

    def flag(values: np.ndarray | None) -> pa.Array:
        return pa.nulls(len(pairs), pa.bool_()) if values is None else pa.array(values, type=pa.bool_())

    label_differs, split_differs = differs("labels"), differs("split")
    described = ctx.describe_rows(pairs.row)
    return pa.table({
        "row": pa.array(pairs.row, type=pa.int64()),
        "id": described["id"],
        "reference_position": take,
        "reference_id": theirs("id"),
        "similarity": pa.array(pairs.similarity, type=pa.float32()),
        "exact": pa.array(pairs.exact, type=pa.bool_()),
        "reference_label": theirs("label"),
        "same_label": flag(None if label_differs is None else ~label_differs),
        "reference_split": theirs("split"),
        "cross_split": flag(split_differs),
        "reference_path": theirs("path"),
    })
