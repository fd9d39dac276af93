"""Near-duplicate groups whose members carry two or more labels.

The same image under two labels teaches a model nothing but noise. Groups are the
near-duplicate groups at ``threshold`` (the scan's ``--threshold`` by default). Every member
of a conflicting group is flagged; its score is the share of its group that carries its own
label (a lone dissenter scores low). ``policy``: ``exclude_group`` (default) drops every
member, ``keep_majority`` drops the members outside the majority label, and the whole group
where no label has a strict majority. Against a reference (``--against``), a batch row with a
copy there under another label is flagged and excluded under either policy (the reference's label
stands); its score is the share of itself and its reference copies that carry its label. Table
``conflicts.parquet``: one row per group with its size, label counts, majority label and label
entropy (bits).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from ..config import Interval, Options
from ..engine.artifacts import resolve_threshold
from .base import Check, CheckResult
from .shared.groups import near_groups, segment_label_stats
from .shared.reference import reference_hits
from .views import Groups


class ConflictingLabels(Check):
    name = "conflicting_labels"
    requires = ("embeddings", "labels")
    description = "near-duplicate groups whose members carry different labels"
    gallery = Groups(table="conflict_members", facts="conflicts",
                     fact_columns=(("label_counts", "labels", "counts"), ("majority_label", "majority", "text")),
                     score_caption="own-label share", exclude="copies")
    _parameter_constraints = {
        "threshold": Interval(float, 0, 1, closed="right", none_ok=True),
        "policy": Options(("exclude_group", "keep_majority")),
    }

    def __init__(self, threshold: float | None = None, policy: str = "exclude_group") -> None:
        self.threshold = threshold
        self.policy = policy

    def _run(self, ctx) -> CheckResult:
        threshold = resolve_threshold(ctx, self.threshold)
        groups = near_groups(ctx, threshold)
        codes, names = ctx.label_codes, ctx.label_names
        flags = np.zeros(ctx.n, dtype=bool)
        scores = np.where(ctx.valid, 1.0, np.nan)
        excluded = np.empty(0, dtype=np.int64)
        rows_out = []
        if groups.n_groups:
            g_idx, g_label, g_count = segment_label_stats(groups, codes, len(names))
            n_labels = np.bincount(g_idx, minlength=groups.n_groups)
            conflicting = n_labels >= 2
            sizes = groups.sizes()
            member_group = np.repeat(np.arange(groups.n_groups), sizes)
            member_conf = conflicting[member_group]
            members = groups.rows[member_conf]
            flags[members] = True
            # share of the group with the member's own label
            mg = member_group[member_conf]
            keys = g_idx * len(names) + g_label  # ascending: segment_label_stats comes from np.unique
            own = g_count[np.searchsorted(keys, mg * len(names) + codes[members])].astype(np.float64)
            scores[members] = own / sizes[mg]
            drop = []
            for g in np.flatnonzero(conflicting):
                sel = g_idx == g
                labels, counts = g_label[sel], g_count[sel]
                top = counts.max()
                majority = labels[counts == top]
                strict = len(majority) == 1
                p = counts / counts.sum()
                rows_out.append({
                    "group_id": int(groups.group_ids[g]), "size": int(sizes[g]), "n_labels": int(len(labels)),
                    "majority_label": str(names[majority[0]]) if strict else None,
                    "majority_share": float(top / counts.sum()),
                    "entropy_bits": float(-(p * np.log2(p)).sum()),
                    "label_counts": json.dumps({str(names[c]): int(k) for c, k in zip(labels, counts)}),
                })
                group_rows = groups.rows[groups.starts[g]:groups.starts[g + 1]]
                if self.policy == "keep_majority" and strict:
                    drop.append(group_rows[codes[group_rows] != majority[0]])
                else:
                    drop.append(group_rows)
            excluded = np.sort(np.concatenate(drop)) if drop else excluded
        table = pa.Table.from_pylist(rows_out, schema=pa.schema([
            ("group_id", pa.int64()), ("size", pa.int64()), ("n_labels", pa.int64()),
            ("majority_label", pa.string()), ("majority_share", pa.float64()), ("entropy_bits", pa.float64()),
            ("label_counts", pa.string())]))
        # against a reference: a batch row whose copies there carry another label (the reference's stand)
        every, others = reference_hits(ctx, threshold), reference_hits(ctx, threshold, "label_differs")
        against = others.rows & ~flags
        scores[others.rows] = np.fmin(scores[others.rows], (1.0 + every.count[others.rows] - others.count[others.rows])
                                      / (1.0 + every.count[others.rows]))
        excluded = np.union1d(excluded, np.flatnonzero(others.rows)).astype(np.int64)
        members = np.flatnonzero(flags)
        flags |= others.rows
        gone = np.zeros(ctx.n, dtype=bool)
        gone[excluded] = True
        member_table = pa.table({"group_id": pa.array(groups.group_of[members], pa.int64()),
                                 "row": pa.array(members, pa.int64()), "keep": pa.array(~gone[members], pa.bool_())})
        summary = {"threshold": float(threshold), "n_groups": len(rows_out), "n_rows": int(flags.sum()),
                   "n_excluded": int(len(excluded)), "policy": self.policy,
                   "groups": sorted(rows_out, key=lambda r: (-r["size"], r["group_id"]))[:20]}
        if others.summary is not None:
            summary["reference"] = dict(others.summary, n_rows_only_against_reference=int(against.sum()))
            summary["n_rows"], summary["n_excluded"] = int(flags.sum()), int(len(excluded))
        return CheckResult(flags=flags, scores=scores, summary=summary, exclude=excluded,
                           tables={"conflicts": table, "conflict_members": member_table})
