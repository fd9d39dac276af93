"""Rows whose embedding is unusable: NaN, inf, or all zeros.

They are reported, excluded from every other check (``ctx.embeddings`` holds the valid
rows only) and put on the exclusion list. A store with no valid row at all is an error.
"""

from __future__ import annotations

import numpy as np

from .base import Check, CheckResult


class InvalidEmbedding(Check):
    name = "invalid"
    requires = ("embeddings",)
    description = "embeddings that are NaN, inf or all zeros"
    uses_invalid_rows = True
    _parameter_constraints = {}

    def __init__(self) -> None:
        pass

    def _run(self, ctx) -> CheckResult:
        valid = ctx.valid
        bad = np.flatnonzero(~valid)
        emb = ctx.store.embeddings
        rows = ctx.backend.to_host(ctx.xp.asarray(emb[bad], dtype=ctx.xp.float64)) if len(bad) \
            else np.empty((0, 1))
        has_nan = np.isnan(rows).any(axis=1)
        has_inf = np.isinf(rows).any(axis=1)
        summary = {
            "n_invalid": int(len(bad)),
            "n_nan": int(has_nan.sum()),
            "n_inf": int((has_inf & ~has_nan).sum()),
            "n_zero": int((~has_nan & ~has_inf).sum()),
            "first_rows": bad[:20].tolist(),
        }
        return CheckResult(flags=~valid, scores=valid.astype(np.float64), summary=summary, exclude=bad)
