"""Class balance: counts per class and per split, and how the splits' label mixes differ.

A class is flagged when it holds fewer than ``min_fraction`` times the mean number of
rows per class; every row of it gets ``is_class_imbalance_issue``. A row's score is its
class count over the mean class count, capped at 1 (lower = rarer). Nothing is excluded:
rare classes need more data, not less.

For every split other than the largest (the reference, usually ``train``), the summary
holds the total variation distance between its label distribution and the reference's,
a chi-square test of independence, and the classes it lacks; a split whose distance
exceeds ``max_split_distance`` is listed under ``shifted_splits``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..config import Interval
from .base import Check, CheckResult, plain
from .views import Crosstab


class ClassImbalance(Check):
    name = "class_imbalance"
    requires = ("labels",)
    description = "classes far below the mean class size, and label mixes that differ between splits"
    panels = (Crosstab(title="Classes per split", table="class_counts", row="label", column="split",
                       value="count", share="fraction", mark="is_rare"),)
    _parameter_constraints = {
        "min_fraction": Interval(float, 0, 1, closed="neither"),
        "max_split_distance": Interval(float, 0, 1, closed="both"),
    }

    def __init__(self, min_fraction: float = 0.2, max_split_distance: float = 0.1) -> None:
        self.min_fraction = min_fraction
        self.max_split_distance = max_split_distance

    def _run(self, ctx) -> CheckResult:
        valid = ctx.valid
        codes = ctx.label_codes
        names = ctx.label_names
        n_classes = len(names)
        counts = np.bincount(codes[valid], minlength=n_classes)
        present = counts > 0
        mean = counts[present].mean()
        rare = present & (counts < self.min_fraction * mean)

        flags = valid & rare[codes]
        scores = np.where(valid, np.minimum(1.0, counts[codes] / mean), np.nan)

        summary = {
            "n_classes": int(present.sum()),
            "mean_count": float(mean),
            "imbalance_ratio": float(counts[present].max() / counts[present].min()),
            "counts": {str(names[c]): int(counts[c]) for c in np.flatnonzero(present)},
            "rare_classes": [plain(names[c]) for c in np.flatnonzero(rare)],
        }
        rows = [(names[c], None, int(counts[c]), float(counts[c] / counts.sum()), bool(rare[c]))
                for c in np.flatnonzero(present)]
        if ctx.store.split is not None:
            split_summary, split_rows = self._splits(ctx, codes, valid, names, n_classes, rare)
            summary["splits"] = split_summary
            rows.extend(split_rows)
        table = pa.table({
            "label": pa.array([plain(r[0]) for r in rows], type=ctx.label_type),
            "split": pa.array([r[1] for r in rows], type=pa.string()),
            "count": pa.array([r[2] for r in rows], type=pa.int64()),
            "fraction": pa.array([r[3] for r in rows], type=pa.float64()),
            "is_rare": pa.array([r[4] for r in rows], type=pa.bool_()),
        })
        return CheckResult(flags=flags, scores=scores, summary=summary, tables={"class_counts": table})

    def _splits(self, ctx, codes, valid, names, n_classes, rare):
        split_codes, split_names = ctx.split_codes, ctx.split_names
        per_split = np.zeros((len(split_names), n_classes), dtype=np.int64)
        np.add.at(per_split, (split_codes[valid], codes[valid]), 1)
        sizes = per_split.sum(axis=1)
        ref = int(np.argmax(sizes))
        summary = {"reference": str(split_names[ref]),
                   "counts": {str(s): {str(names[c]): int(per_split[i, c]) for c in np.flatnonzero(per_split[i])}
                              for i, s in enumerate(split_names)},
                   "differences": {}, "shifted_splits": []}
        rows = []
        for i, split in enumerate(split_names):
            for c in np.flatnonzero(per_split[i]):
                rows.append((names[c], str(split), int(per_split[i, c]), float(per_split[i, c] / sizes[i]),
                             bool(rare[c])))
            if i == ref or sizes[i] == 0:
                continue
            p, q = per_split[ref] / sizes[ref], per_split[i] / sizes[i]
            distance = float(0.5 * np.abs(p - q).sum())
            cols = (per_split[ref] + per_split[i]) > 0
            pair = np.stack([per_split[ref][cols], per_split[i][cols]])
            p_value = _chi2_independence_p(pair) if pair.shape[1] > 1 else 1.0
            summary["differences"][str(split)] = {
                "total_variation_distance": distance,
                "chi2_p_value": p_value,
                "missing_classes": [plain(names[c]) for c in np.flatnonzero((per_split[ref] > 0) & (per_split[i] == 0))],
                "extra_classes": [plain(names[c]) for c in np.flatnonzero((per_split[ref] == 0) & (per_split[i] > 0))],
            }
            if distance > self.max_split_distance:
                summary["shifted_splits"].append(str(split))
        return summary, rows



def _chi2_independence_p(table: np.ndarray) -> float:
    """p-value of Pearson's chi-square test of independence on a 2-D contingency table.

    Written out rather than taken from ``scipy.stats`` (whose import alone costs a second);
    no continuity correction, as scipy applies one only to 2 x 2 tables.
    """
    from scipy.special import chdtrc

    table = table.astype(np.float64)
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    statistic = float(((table - expected) ** 2 / expected).sum())
    dof = (table.shape[0] - 1) * (table.shape[1] - 1)
    return float(chdtrc(dof, statistic))
