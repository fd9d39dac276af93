"""Classes the data does not tell apart: pairs the probabilities keep confusing in both directions.

From the out-of-sample class probabilities label_error uses, the calibrated confident joint
``Q`` (confident learning, :mod:`.shared.confident`: rows labelled ``a`` whose confident class is
``b``) is normalised to sum to 1; the overlap of classes ``a`` and ``b`` is ``Q[a, b] + Q[b, a]``
(the way cleanlab's ``find_overlapping_classes`` ranks them). Pairs at or above ``min_overlap``
are reported in ``class_overlap.parquet`` (``class_a``, ``class_b``, ``overlap``, ``a_to_b``,
``b_to_a`` rows, highest first) with the advice "merge or relabel"; the rows of such a pair
labelled one class and confidently the other are flagged (score: 1 - the pair's overlap share,
lower = the more overlapping pair). Nothing is excluded: the fix is in the label set, not the rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..config import Interval, Options
from .base import Check, CheckResult, plain
from .shared.confident import (
    calibrate,
    class_probabilities,
    confident_joint,
    per_class_thresholds,
)
from .views import Field, Samples, Table


class ClassOverlap(Check):
    name = "class_overlap"
    requires = ("labels",)
    uses_neighbours = True
    requires_any = ("embeddings", "pred_probs")
    description = "class pairs the embeddings or pred_probs confuse both ways (merge or relabel)"
    gallery = Samples(fields=(Field("label", "given"), Field("overlaps_with", "confused with")))
    panels = (Table(title="Overlapping classes (merge or relabel)", table="class_overlap"),)
    _parameter_constraints = {
        "source": Options(("auto", "embeddings", "pred_probs")),
        "k": Interval(int, 1, None, none_ok=True),
        "min_overlap": Interval(float, 0, 1, closed="right"),
    }

    def __init__(self, source: str = "auto", k: int | None = None, min_overlap: float = 0.02) -> None:
        self.source = source
        self.k = k
        self.min_overlap = min_overlap

    def _run(self, ctx) -> CheckResult:
        P, used = class_probabilities(ctx, self.name, self.source, self.k)
        rows = ctx.valid_rows
        y = ctx.label_codes[rows]
        names = ctx.label_names
        n_classes = P.shape[1]
        thresholds = per_class_thresholds(P, y)
        joint = calibrate(confident_joint(P, y, thresholds), np.bincount(y, minlength=n_classes).astype(np.float64))
        total = joint.sum()
        Q = joint / total if total > 0 else joint
        both = Q + Q.T
        a_idx, b_idx = np.triu_indices(n_classes, k=1)
        overlap = both[a_idx, b_idx]
        keep = overlap >= self.min_overlap
        a_idx, b_idx, overlap = a_idx[keep], b_idx[keep], overlap[keep]
        order = np.lexsort((b_idx, a_idx, -overlap))
        a_idx, b_idx, overlap = a_idx[order], b_idx[order], overlap[order]
        # which rows carry each direction: labelled one, most probable the other
        best = np.argmax(P, axis=1) if n_classes else np.zeros(len(rows), dtype=np.int64)
        pair_of = {}
        for rank, (a, b) in enumerate(zip(a_idx, b_idx)):
            pair_of[(a, b)] = pair_of[(b, a)] = rank
        hit_rank = np.array([pair_of.get((g, s), -1) for g, s in zip(y, best)], dtype=np.int64) \
            if pair_of else np.full(len(rows), -1)
        flagged = hit_rank >= 0
        top = overlap.max() if len(overlap) else 1.0
        score = np.ones(len(rows))
        score[flagged] = 1.0 - overlap[hit_rank[flagged]] / top * 0.999
        flags = ctx.to_rows(flagged, fill=False, dtype=bool)
        scores = ctx.to_rows(score, fill=np.nan, dtype=np.float64)
        with_col = np.full(ctx.n, None, dtype=object)
        with_col[rows[flagged]] = [str(names[s]) for s in best[flagged]]
        counts = np.zeros((len(overlap), 2), dtype=np.int64)
        for r in np.flatnonzero(flagged):
            counts[hit_rank[r], 0 if y[r] == a_idx[hit_rank[r]] else 1] += 1
        label_values = pa.array(names, type=ctx.label_type)
        table = pa.table({"class_a": label_values.take(pa.array(a_idx, pa.int64())),
                          "class_b": label_values.take(pa.array(b_idx, pa.int64())),
                          "overlap": pa.array(overlap, pa.float64()),
                          "a_to_b": pa.array(counts[:, 0]), "b_to_a": pa.array(counts[:, 1])})
        summary = {"sources": used, "n_pairs": int(len(overlap)), "n_rows": int(flagged.sum()),
                   "advice": "merge or relabel the top pairs" if len(overlap) else None,
                   "pairs": [{"classes": [plain(names[a]), plain(names[b])], "overlap": float(o)}
                             for a, b, o in zip(a_idx[:20], b_idx[:20], overlap[:20])]}
        return CheckResult(flags=flags, scores=scores, summary=summary, tables={"class_overlap": table},
                           columns={"overlaps_with": pa.array(with_col.tolist(), type=pa.string())})
