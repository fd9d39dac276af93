"""Likely label errors, by confident learning on out-of-sample class probabilities.

Probabilities come from the embeddings (``evidence``: the similarity-weighted votes of the k
nearest neighbours, the row itself excluded, smoothed towards the class prior; and a linear
probe, linear discriminant analysis cross-validated over 5 folds, :mod:`.shared.probe`), from
a model's ``pred_probs`` (which must be out-of-sample, e.g. cross-validated), or from every
source the store has (``source="auto"``), combined as a product of experts (the normalised
geometric mean): the sources err in different ways, and a class keeps its probability only
where none of them doubts it. Neighbour votes are sharp and miscalibrated where classes
overlap; the probe sees the class's whole shape (measured on the realistic bench store:
average precision 0.814 votes, 0.877 probe, 0.892 both). :mod:`tamis.checks.shared.confident`
finds the issues.

Which rows are flagged (``method``): ``prune_by_noise_rate`` is confident learning as
published (and cleanlab's default); ``prune_or_disagree`` also flags the rows outvoted with
confidence: given label below its class threshold, and another class the most probable and
within one standard deviation of its own threshold (split votes are ambiguity, not a wrong
label). ``auto`` uses the second whenever the neighbourhoods speak: neighbour votes are
nearly one-hot, so the class thresholds sit at the typical confidence and the confident
joint under-counts the errors (bench store, 100 classes, 3 % flips: recall 0.83 -> 1.00 at
precision 1.00; averaged with a 91 %-accurate model: 0.81 -> 0.93 at precision 1.00). From
``pred_probs`` alone pruning is used: a model's own mistakes make disagreement a poor signal
(precision 0.26 there).

Per row: ``label_error_score`` = the given label's share of its contest with the strongest
other class, ``p_given / (p_given + max_other p)`` (a monotone map of their log-odds to
[0, 1]; lower = more likely wrong), and ``suggested_label`` = the most probable class. A label
error is one other class beating the given one; self-confidence (``p_given``) also ranks low
the rows whose probability is spread over many classes, hard images rather than wrong labels.
Measured (``bench/bench_label_quality.py``, average precision of the ranking): from a model's
``pred_probs`` alone on the realistic 20k store, log-odds 0.720 against self-confidence 0.714,
normalised margin 0.685 and confidence-weighted entropy 0.672; on the easy bench store the two
first are equal (0.988). Tables:
``label_errors.parquet`` lists the flagged rows, most confident mistakes first (by the
probability of the suggested label), and ``label_confusion.parquet`` counts given ->
suggested, the labels with the most mistakes first. Flagged rows are excluded with reason
``label_error``. Memory: O(M C) for the probabilities.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..config import Interval, Options
from .base import Check, CheckResult, plain
from .shared.confident import (
    EMBEDDING_EVIDENCE,
    class_probabilities,
    disagreements,
    find_label_issues,
    strongest_other,
)
from .views import Field, Samples, Table


class LabelError(Check):
    name = "label_error"
    requires = ("labels",)
    uses_neighbours = True
    requires_any = ("embeddings", "pred_probs")
    description = "likely wrong labels, from neighbourhoods and/or a model's pred_probs (confident learning)"
    gallery = Samples(fields=(Field("label", "given"), Field("suggested_label", "suggested")))
    panels = (Table(title="Label confusion (given -> suggested)", table="label_confusion"),)
    _parameter_constraints = {
        "source": Options(("auto", "embeddings", "pred_probs")),
        "k": Interval(int, 1, None, none_ok=True),
        "smoothing": Interval(float, 0, None, closed="left"),
        "method": Options(("auto", "prune_by_noise_rate", "prune_or_disagree")),
        "evidence": Options(EMBEDDING_EVIDENCE),
    }

    def __init__(self, source: str = "auto", k: int | None = None, smoothing: float = 0.1,
                 method: str = "auto", evidence: str = "neighbours+probe") -> None:
        self.source = source
        self.k = k
        self.smoothing = smoothing
        self.method = method
        self.evidence = evidence

    def _run(self, ctx) -> CheckResult:
        names = ctx.label_names
        n_classes = len(names)
        rows = ctx.valid_rows
        y = ctx.label_codes[rows]
        P, used = class_probabilities(ctx, self.name, self.source, self.k, self.smoothing, self.evidence)

        issues, est = find_label_issues(P, y)
        self_conf = P[np.arange(len(y)), y].astype(np.float64)
        contest = self_conf / np.maximum(self_conf + strongest_other(P, y), 1e-300)
        suggested = np.argmax(P, axis=1)
        method = self.method if self.method != "auto" else \
            "prune_or_disagree" if {"neighbours", "probe"} & set(used) else "prune_by_noise_rate"
        if method == "prune_or_disagree":
            issues |= disagreements(P, y, est["thresholds"])
        flags = ctx.to_rows(issues, fill=False, dtype=bool)
        scores = ctx.to_rows(np.clip(contest, 0.0, 1.0), fill=np.nan, dtype=np.float64)
        suggested_rows = ctx.to_rows(suggested, fill=-1, dtype=np.int64)
        label_values = pa.array(names, type=ctx.label_type)
        suggested_col = label_values.take(pa.array(np.where(suggested_rows >= 0, suggested_rows, 0))).to_pylist()
        suggested_col = pa.array([v if s >= 0 else None for v, s in zip(suggested_col, suggested_rows)],
                                 type=label_values.type)

        flagged = np.flatnonzero(issues)
        confidence = P[flagged, suggested[flagged]].astype(np.float64)
        order = np.lexsort((rows[flagged], -confidence))
        f_rows = rows[flagged][order]
        errors = pa.table({
            "row": pa.array(f_rows, type=pa.int64()),
            **ctx.describe_rows(f_rows),
            "given_label": label_values.take(pa.array(y[flagged][order])),
            "suggested_label": label_values.take(pa.array(suggested[flagged][order])),
            "confidence": pa.array(confidence[order]),
            "self_confidence": pa.array(self_conf[flagged][order]),
        })
        pairs = y[flagged] * n_classes + suggested[flagged]
        uniq, counts = np.unique(pairs, return_counts=True)
        given, sugg = uniq // n_classes, uniq % n_classes
        per_given = np.bincount(given, weights=counts, minlength=n_classes)
        order = np.lexsort((sugg, given, -counts, -per_given[given]))
        confusion = pa.table({
            "given_label": label_values.take(pa.array(given[order])),
            "suggested_label": label_values.take(pa.array(sugg[order])),
            "count": pa.array(counts[order], type=pa.int64()),
        })
        noisy = np.argsort(-est["noise_rate"], kind="stable")[:20]
        summary = {
            "sources": used,
            "method": method,
            "n_label_errors": int(issues.sum()),
            "estimated_noise_rate": float(issues.mean()) if len(issues) else 0.0,
            "top_confusions": [{"given": plain(names[g]), "suggested": plain(names[s]), "count": int(c)}
                               for g, s, c in zip(given[order][:20], sugg[order][:20], counts[order][:20])],
            "noisiest_classes": [{"label": plain(names[c]), "estimated_noise_rate": float(est["noise_rate"][c])}
                                 for c in noisy if est["noise_rate"][c] > 0],
        }
        return CheckResult(flags=flags, scores=scores, summary=summary, exclude=np.flatnonzero(flags),
                           tables={"label_errors": errors, "label_confusion": confusion},
                           columns={"suggested_label": suggested_col})

