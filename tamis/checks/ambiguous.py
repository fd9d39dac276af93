"""Ambiguous samples: rows whose probability is split between two classes, their given one among them.

From the out-of-sample class probabilities label_error uses (neighbour votes and/or
``pred_probs``, :func:`~tamis.checks.shared.confident.class_probabilities`): a row is ambiguous
when its two most probable classes are within ``max_margin`` of each other, the second holds at
least ``min_second`` of the mass and more than its class prior, and the given label is one
of the two. Such a row is a hard but plausible sample, not a mistake (a label error's given
label is not among its likely classes), so nothing is excluded. Score: the margin between the
two (lower = more ambiguous). Column ``ambiguous_between``: the two classes, ``a | b``.

``evidence`` defaults to the neighbour votes alone (with ``pred_probs`` where given): the
linear probe, which ranks label errors better, is over-confident on rows that lie between two
classes (a row halfway between two Gaussians belongs to neither, yet its log-odds grow with
the distance between them), so it would call them sure members of one class.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..config import Interval, Options
from ..engine.search.tiles import run_blocks
from .base import Check, CheckResult, plain
from .shared.confident import EMBEDDING_EVIDENCE, class_probabilities
from .views import Field, Samples


class Ambiguous(Check):
    name = "ambiguous"
    requires = ("labels",)
    uses_neighbours = True
    requires_any = ("embeddings", "pred_probs")
    description = "rows split between two likely classes, their given label one of them (hard, not wrong)"
    gallery = Samples(fields=(Field("label", "given"), Field("ambiguous_between", "between")), score_caption="margin")
    _parameter_constraints = {
        "source": Options(("auto", "embeddings", "pred_probs")),
        "k": Interval(int, 1, None, none_ok=True),
        "max_margin": Interval(float, 0, 1),
        "min_second": Interval(float, 0, 0.5, closed="right"),
        "evidence": Options(EMBEDDING_EVIDENCE),
    }

    def __init__(self, source: str = "auto", k: int | None = None, max_margin: float = 0.3,
                 min_second: float = 0.25, evidence: str = "neighbours") -> None:
        self.source = source
        self.k = k
        self.evidence = evidence
        self.max_margin = max_margin
        self.min_second = min_second

    def _run(self, ctx) -> CheckResult:
        P, used = class_probabilities(ctx, self.name, self.source, self.k, evidence=self.evidence)
        rows = ctx.valid_rows
        y = ctx.label_codes[rows]
        n_classes = P.shape[1]
        prior = np.bincount(y, minlength=n_classes) / max(1, len(y))
        if n_classes < 2:
            top = np.zeros((len(rows), 2), dtype=np.int64)
        else:
            top = _top_two(P)
        first, second = P[np.arange(len(rows)), top[:, 0]], P[np.arange(len(rows)), top[:, 1]]
        margin = np.clip(first - second, 0.0, 1.0).astype(np.float64)
        among = (top[:, 0] == y) | (top[:, 1] == y)
        ambiguous = (margin <= self.max_margin) & (second >= self.min_second) & \
            (second > prior[top[:, 1]]) & among & (n_classes >= 2)
        flags = ctx.to_rows(ambiguous, fill=False, dtype=bool)
        scores = ctx.to_rows(margin, fill=np.nan, dtype=np.float64)
        names = ctx.label_names
        between = np.full(ctx.n, None, dtype=object)
        hit = np.flatnonzero(ambiguous)
        between[rows[hit]] = [f"{names[a]} | {names[b]}" for a, b in top[hit]]
        pairs = {}
        for a, b in top[hit]:
            key = tuple(sorted((plain(names[a]), plain(names[b])), key=str))
            pairs[key] = pairs.get(key, 0) + 1
        summary = {"sources": used, "n_rows": int(ambiguous.sum()),
                   "top_pairs": [{"classes": [str(a), str(b)], "rows": n}
                                 for (a, b), n in sorted(pairs.items(), key=lambda kv: (-kv[1], str(kv[0])))[:20]]}
        return CheckResult(flags=flags, scores=scores, summary=summary,
                           columns={"ambiguous_between": pa.array(between.tolist(), type=pa.string())})


def _top_two(P: np.ndarray, block_cells: int = 1 << 18) -> np.ndarray:
    """(M, 2) int64: each row's most and second most probable class, ties to the lower class
    (what a stable descending sort would put first), in row blocks: no (M, C) sort or copy."""
    m, n_classes = P.shape
    top = np.empty((m, 2), dtype=np.int64)
    step = max(1, block_cells // max(n_classes, 1))

    def one(start: int) -> None:
        part = np.array(P[start:start + step], dtype=np.float64)
        first = part.argmax(axis=1)
        part[np.arange(len(part)), first] = -np.inf
        top[start:start + step, 0], top[start:start + step, 1] = first, part.argmax(axis=1)

    run_blocks(one, m, step)
    return top
