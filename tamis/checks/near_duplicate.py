"""Near duplicates: pairs of rows with cosine similarity >= ``threshold``, grouped.

Default threshold 0.95 (the scan's ``--threshold``): see the README's "Choosing the
threshold". The pairs come from the shared pair search (:mod:`tamis.checks.shared.groups`),
groups are the connected components of the pairs, and each group keeps one member by the
``keep`` policy (``first`` by id, most ``central``, or highest ``quality``); the others are
excluded with reason ``near_duplicate``.

Score: ``1 - (largest similarity to another row)`` for rows in a pair found at the sweep's
lowest threshold, 1 for the rest (lower = more duplicated). ``summary.json`` holds a sweep:
pairs and groups at 0.90 ... 0.995, so a threshold can be picked from counts, and
``pairs_from``: the sweep's lowest threshold (the threshold itself without a sweep).

Against a reference (``--against``), a batch row with a copy (similarity >= ``threshold``) among
the reference's rows is flagged and excluded too (the reference keeps its row); the summary's
``reference`` counts them, ``reference_matches.parquet`` lists the pairs.

Tables: ``pairs.parquet`` (row_a, row_b, similarity, cross_split) and ``groups.parquet``
(group_id, row, kind, keep, conflicting) at ``threshold``; ``sweep_pairs.parquet`` (row_a,
row_b, similarity): every pair at ``pairs_from``, which the report's threshold slider regroups.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from ..config import NEAR_DUPLICATE_SWEEP, Interval, Options
from ..engine.artifacts import pairs_at, resolve_threshold
from ..errors import PairLimitError
from .base import Check, CheckResult
from .shared.groups import (
    KEEP_POLICIES,
    conflicting_groups,
    group_table,
    groups_of,
    keep_one,
    max_similarity,
    near_groups,
)
from .shared.reference import reference_hits
from .views import Groups, Histogram, Slider

log = logging.getLogger("tamis")

SWEEP = NEAR_DUPLICATE_SWEEP


class NearDuplicate(Check):
    name = "near_duplicate"
    requires = ("embeddings",)
    description = "pairs and groups of rows with cosine similarity >= threshold"
    gallery = Groups(table="groups", member_columns=(("kind", "copies"), ("conflicting", "labels differ")),
                     slider=Slider(table="sweep_pairs", value="similarity", threshold="threshold",
                                   lowest="pairs_from", keep_param="keep"))
    panels = (Histogram(title="Near-duplicate similarity", key="histogram", marker="threshold",
                        x_label="cosine similarity", y_label="pairs",
                        note="Pairs per cosine-similarity bin (log scale); the line is the threshold: pairs at or "
                             "above it are near duplicates."),)
    _parameter_constraints = {
        "threshold": Interval(float, 0, 1, closed="right", none_ok=True),
        "keep": Options(KEEP_POLICIES),
        "sweep": Options((True, False)),
    }

    def __init__(self, threshold: float | None = None, keep: str = "first", sweep: bool = True) -> None:
        self.threshold = threshold
        self.keep = keep
        self.sweep = sweep

    def _run(self, ctx) -> CheckResult:
        threshold = resolve_threshold(ctx, self.threshold)
        base = min(threshold, SWEEP[0]) if self.sweep else threshold
        sweep_cut = None
        try:
            every = pairs_at(ctx, base)
        except PairLimitError as exc:
            if base >= threshold:
                raise
            # the sweep below the threshold exploded, not the threshold itself: cut the sweep
            log.warning("near_duplicate: the sweep from %g %s; sweeping from the threshold %g only", base,
                        "gives more pairs than the budget", threshold)
            sweep_cut = f"from {base:g}: more than {exc.limit:,} pairs (max_pairs); the sweep starts at {threshold:g}"
            base = threshold
            every = pairs_at(ctx, base)
        pairs = every.at(threshold)
        groups = near_groups(ctx, threshold)
        keep = keep_one(ctx, groups, self.keep)

        flags = groups.group_of >= 0
        best = max_similarity(ctx.n, every)
        copies = reference_hits(ctx, threshold)   # against a reference: rows with a copy there, which it keeps
        flags |= copies.rows
        best = np.fmax(best, copies.best)
        scores = np.where(np.isnan(best), 1.0, np.clip(1.0 - best, 0.0, 1.0))
        scores[~ctx.valid] = np.nan
        excluded = np.flatnonzero((flags & ~keep) | copies.rows)

        emb = ctx.store.embeddings
        kind = _group_kinds(ctx, groups, emb)
        conflicting = _conflicting(ctx, groups)
        cross = _cross_split(ctx, pairs)
        sims = pairs.similarity
        group_sims = _group_similarity_range(groups, pairs)
        summary = {
            "threshold": float(threshold),
            "pairs_from": float(base),
            "n_pairs": int(len(pairs)),
            "n_groups": int(groups.n_groups),
            "n_rows_in_groups": int(flags.sum()),
            "n_excluded": int(len(excluded)),
            "largest_group": int(groups.sizes().max()) if groups.n_groups else 0,
            "similarity": {"min": float(sims.min()), "max": float(sims.max())} if len(sims) else None,
            "groups_similarity": group_sims,
            "histogram": _histogram(every),
        }
        if sweep_cut:
            summary["sweep_cut"] = sweep_cut
        if copies.summary is not None:
            summary["reference"] = copies.summary
        if self.sweep:
            summary["sweep"] = []
            for t in sorted(set(SWEEP) | {float(threshold)}):
                if t >= base:
                    at = every.at(t)
                    summary["sweep"].append({"threshold": t, "n_pairs": int(len(at)),
                                             "n_groups": int(groups_of(ctx.n, at.row_a, at.row_b).n_groups)})
        tables = {
            "pairs": pa.table({"row_a": pa.array(pairs.row_a, type=pa.int64()),
                               "row_b": pa.array(pairs.row_b, type=pa.int64()),
                               "similarity": pa.array(pairs.similarity, type=pa.float32()),
                               "cross_split": pa.array(cross, type=pa.bool_())}),
            "groups": group_table(groups, kind, keep, conflicting),
            "sweep_pairs": pa.table({"row_a": pa.array(every.row_a, type=pa.int64()),
                                     "row_b": pa.array(every.row_b, type=pa.int64()),
                                     "similarity": pa.array(every.similarity, type=pa.float32())}),
        }
        return CheckResult(flags=flags, scores=scores, summary=summary, tables=tables, exclude=excluded)


def _group_kinds(ctx, groups, emb) -> np.ndarray:
    """'exact' for a group whose members all hold the same embedding bits, else 'near'."""
    if groups.n_groups == 0:
        return np.empty(0, dtype=object)
    host = ctx.backend.to_host(ctx.xp.asarray(emb[groups.rows]))
    raw = np.ascontiguousarray(host).view(np.uint8).reshape(len(groups.rows), -1)
    first = raw[np.repeat(groups.starts[:-1], groups.sizes())]
    same = (raw == first).all(axis=1)
    all_same = np.logical_and.reduceat(same, groups.starts[:-1])
    return np.where(all_same, "exact", "near")


def _conflicting(ctx, groups) -> np.ndarray:
    """(n_groups,) True where a group's members carry two or more labels (False without labels)."""
    if ctx.store.labels is None:
        return np.zeros(groups.n_groups, dtype=bool)
    return conflicting_groups(groups, ctx.label_codes, len(ctx.label_names))


def _cross_split(ctx, pairs) -> np.ndarray:
    if ctx.store.split is None:
        return np.zeros(len(pairs), dtype=bool)
    codes = ctx.split_codes
    return codes[pairs.row_a] != codes[pairs.row_b]


def _group_similarity_range(groups, pairs) -> list[dict]:
    """Min and max pair similarity inside the 20 largest groups (over the pairs found)."""
    if groups.n_groups == 0:
        return []
    gid = groups.group_of[pairs.row_a]
    order = np.argsort(-groups.sizes(), kind="stable")[:20]
    out = []
    for g in order:
        inside = pairs.similarity[gid == groups.group_ids[g]]
        out.append({"group_id": int(groups.group_ids[g]), "size": int(groups.sizes()[g]),
                    "min_similarity": float(inside.min()), "max_similarity": float(inside.max())})
    return out


def _histogram(pairs) -> dict:
    """Counts of pair similarities in 0.005-wide bins from the sweep's lowest threshold to 1."""
    lo = float(pairs.threshold)
    edges = np.round(np.arange(lo, 1.0 + 1e-9, 0.005), 4)
    if edges[-1] < 1.0:
        edges = np.append(edges, 1.0)
    counts, _ = np.histogram(np.minimum(pairs.similarity, 1.0), bins=edges)
    return {"edges": edges.tolist(), "counts": counts.tolist()}
