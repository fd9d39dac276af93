"""Train/test leakage: near copies whose members lie in different splits.

A pair at ``threshold`` (the scan's ``--threshold`` by default) across two splits is a leak.
Of its two members, the one in the *evaluation* split is flagged: the split not named like
a training split (``train``, ``training``, ``trn``); between two evaluation splits, the one
named like a test split (``test``, ``testing``, ``holdout``, ``eval``), else the smaller
split. Score: ``1 - (largest similarity to a row of another split)`` for flagged rows, 1 for
the rest. ``exclude``: ``eval`` (default) drops the evaluation member, ``train`` the other
member, ``none`` nothing. The summary gives, per pair of splits, the number of pairs and the
leak rate: leaked rows of the evaluation split over its size.

Against a reference (``--against``), a batch row with a copy in another split of the reference
(a new training row that is a reference test row, or a new test row the reference trains on) is
flagged and excluded (unless ``exclude="none"``): the reference is fixed, so the batch's row is the
one to drop. The summary's ``reference`` counts the pairs per ``reference split->batch split``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..config import Interval, Options
from ..engine.artifacts import pairs_at, resolve_threshold
from .base import Check, CheckResult
from .shared.reference import reference_hits
from .views import Field, Pairs

TRAIN_NAMES = ("train", "training", "trn")
TEST_NAMES = ("test", "testing", "holdout", "eval", "evaluation")


class Leakage(Check):
    name = "leakage"
    requires = ("embeddings", "split")
    description = "near copies that cross splits (train vs val / test)"
    gallery = Pairs(table="leaks", value="similarity", field=Field("split", "split"))
    _parameter_constraints = {
        "threshold": Interval(float, 0, 1, closed="right", none_ok=True),
        "exclude": Options(("eval", "train", "none")),
    }

    def __init__(self, threshold: float | None = None, exclude: str = "eval") -> None:
        self.threshold = threshold
        self.exclude = exclude

    def _run(self, ctx) -> CheckResult:
        threshold = resolve_threshold(ctx, self.threshold)
        pairs = pairs_at(ctx, threshold)
        codes, names = ctx.split_codes, ctx.split_names
        sizes = np.bincount(codes[ctx.valid], minlength=len(names))
        rank = _eval_rank(names, sizes)
        ca, cb = codes[pairs.row_a], codes[pairs.row_b]
        cross = ca != cb
        a, b, sim, ca, cb = pairs.row_a[cross], pairs.row_b[cross], pairs.similarity[cross], ca[cross], cb[cross]
        a_is_eval = rank[ca] > rank[cb]
        eval_row = np.where(a_is_eval, a, b)
        other_row = np.where(a_is_eval, b, a)

        flags = np.zeros(ctx.n, dtype=bool)
        flags[eval_row] = True
        best = np.full(ctx.n, -np.inf)
        np.maximum.at(best, eval_row, sim)
        scores = np.where(flags, np.clip(1.0 - best, 0.0, 1.0), 1.0)
        scores[~ctx.valid] = np.nan
        split_groups, group_eval, group_other = _groups_across_splits(ctx, codes, rank)
        flags[group_eval] = True                       # a crop whose image has crops in a training split
        scores[group_eval] = 0.0
        # against a reference: a batch row with a copy in another of the reference's splits is the leak the
        # batch brings in, whichever side is the evaluation one, and the batch row is the one to drop
        leaks = reference_hits(ctx, threshold, "cross_split")
        flags |= leaks.rows
        scores = np.where(leaks.rows, np.fmin(scores, np.clip(1.0 - np.nan_to_num(leaks.best, nan=1.0), 0.0, 1.0)),
                          scores)
        batch_side = np.flatnonzero(leaks.rows) if self.exclude != "none" else np.empty(0, dtype=np.int64)
        excluded = {"eval": np.unique(np.concatenate([eval_row, group_eval, batch_side])),
                    "train": np.unique(np.concatenate([other_row, group_other, batch_side])),
                    "none": np.empty(0, dtype=np.int64)}[self.exclude]

        eval_split = np.where(a_is_eval, ca, cb)
        other_split = np.where(a_is_eval, cb, ca)
        per_pair = {}
        for e, o in sorted(set(zip(eval_split.tolist(), other_split.tolist())), key=lambda t: (names[t[1]], names[t[0]])):
            sel = (eval_split == e) & (other_split == o)
            leaked = len(np.unique(eval_row[sel]))
            per_pair[f"{names[o]}->{names[e]}"] = {"n_pairs": int(sel.sum()), "n_leaked_rows": leaked,
                                                    "leak_rate": leaked / max(1, int(sizes[e]))}
        summary = {"threshold": float(threshold), "n_pairs": int(len(a)), "n_rows": int(flags.sum()),
                   "n_excluded": int(len(excluded)), "exclude": self.exclude,
                   "evaluation_order": [str(names[i]) for i in np.argsort(rank, kind="stable")],
                   "split_pairs": per_pair, "n_groups_across_splits": split_groups}
        if leaks.summary is not None:
            summary["reference"] = leaks.summary
        leaks = pa.table({"row_a": pa.array(a, pa.int64()), "row_b": pa.array(b, pa.int64()),
                          "similarity": pa.array(sim, pa.float32()), "eval_row": pa.array(eval_row, pa.int64())})
        return CheckResult(flags=flags, scores=scores, summary=summary, exclude=excluded, tables={"leaks": leaks})


def _groups_across_splits(ctx, codes: np.ndarray, rank: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """With a group column (the image each object crop comes from): the groups whose valid rows lie
    in more than one split, their rows in a more evaluation-like split than the group's most
    training-like one, and the others. Splits are judged per image, not per crop."""
    groups = ctx.group_codes
    empty = np.empty(0, dtype=np.int64)
    if groups is None:
        return 0, empty, empty
    rows = ctx.valid_rows
    g, r = groups[rows], rank[codes[rows]]
    n_groups = int(g.max()) + 1 if len(g) else 0
    low = np.full(n_groups, np.inf)
    np.minimum.at(low, g, r)
    high = np.full(n_groups, -np.inf)
    np.maximum.at(high, g, r)
    across = high > low
    member = across[g]
    eval_side = member & (r > low[g])
    return int(across.sum()), rows[eval_side], rows[member & ~eval_side]


def _eval_rank(names: list, sizes: np.ndarray) -> np.ndarray:
    """Rank per split, higher = more of an evaluation split (the member kept out of training)."""
    out = np.empty(len(names), dtype=np.float64)
    for i, name in enumerate(names):
        low = str(name).lower()
        base = 0.0 if low in TRAIN_NAMES else 2.0 if low in TEST_NAMES else 1.0
        out[i] = base + 1.0 / (2.0 + sizes[i])  # smaller splits rank as more evaluation-like
    return out
