"""Split shift: do the splits cover the same ground?

For every row, the share of its k nearest neighbours that lie in other splits is compared
with what chance gives (the other splits' share of the valid rows). Score: that ratio,
clipped to [0, 1] (a row whose neighbours all come from its own split scores 0). A row
outside the reference split (the largest split, or the one named like a training split)
is flagged when none of its k neighbours is in the reference split: nothing like it was
trained on. The summary gives, per split, the observed own-split neighbour rate against
chance; a ratio far above 1 means the split sits in a region of its own (a domain shift).
Label-mix differences between splits are reported by ``class_imbalance``.
"""

from __future__ import annotations

import numpy as np

from ..config import Interval
from ..engine.artifacts import neighbour_codes, neighbours, resolve_k
from .base import Check, CheckResult
from .leakage import TRAIN_NAMES


class SplitShift(Check):
    name = "split_shift"
    requires = ("embeddings", "split")
    uses_neighbours = True
    description = "evaluation rows with no neighbour in the training split; splits that keep to themselves"
    _parameter_constraints = {"k": Interval(int, 1, None, none_ok=True)}

    def __init__(self, k: int | None = None) -> None:
        self.k = k

    def _run(self, ctx) -> CheckResult:
        k = resolve_k(ctx, self.k)
        idx, _ = neighbours(ctx, k)
        codes = ctx.split_codes[ctx.valid_rows]
        names = ctx.split_names
        m = len(codes)
        sizes = np.bincount(codes, minlength=len(names))
        trainish = [i for i, s in enumerate(names) if str(s).lower() in TRAIN_NAMES]
        reference = max(trainish, key=lambda i: sizes[i]) if trainish else int(np.argmax(sizes))
        neighbour_split = neighbour_codes(ctx, idx, "split")   # against a reference, its rows' splits too
        other_share = (neighbour_split != codes[:, None]).mean(axis=1)
        chance = (m - sizes[codes]) / max(1, m - 1)
        ratio = np.where(chance > 0, other_share / np.where(chance > 0, chance, 1), 1.0)
        no_reference = (codes != reference) & ~(neighbour_split == reference).any(axis=1)
        flags = ctx.to_rows(no_reference, fill=False, dtype=bool)
        scores = ctx.to_rows(np.clip(ratio, 0.0, 1.0), fill=np.nan, dtype=np.float64)
        per_split = {}
        for s, name in enumerate(names):
            sel = codes == s
            if not sel.any():
                continue
            own = float(1.0 - other_share[sel].mean())
            expected = float((sizes[s] - 1) / max(1, m - 1))
            per_split[str(name)] = {"n_rows": int(sel.sum()), "own_split_neighbour_rate": own,
                                    "chance_rate": expected, "ratio": own / expected if expected > 0 else None,
                                    "n_without_reference_neighbour": int(no_reference[sel].sum())}
        summary = {"k": int(k), "reference": str(names[reference]), "splits": per_split,
                   "n_flagged": int(no_reference.sum())}
        return CheckResult(flags=flags, scores=scores, summary=summary)
