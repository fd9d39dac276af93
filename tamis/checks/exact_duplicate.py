"""Exact duplicates: bit-identical embeddings, and the same path listed twice.

Rows are hashed to 64 bits (their raw words times random odd multipliers, summed modulo
2**64: exact integer arithmetic, the same on every device), rows that share a hash are
compared word for word, and rows with equal paths are joined too. Each group keeps one
member by the ``keep`` policy; the others are excluded with reason ``exact_duplicate``.
Against a reference (``--against``), a batch row whose normalised row (at the index's
precision) is bit-identical to a reference row's, or whose path is a reference row's, is flagged
and excluded too. Score: 0 for a member of a group (or such a copy), 1 otherwise. Memory: one (block x d) uint64 copy of
``2**20`` words at a time besides the input.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..config import Options
from ..io.labels import encode
from .base import Check, CheckResult
from .shared.groups import KEEP_POLICIES, groups_of, keep_one
from .shared.reference import EXACT_THRESHOLD, reference_hits
from .views import Groups

HASH_BLOCK_WORDS = 1 << 20


class ExactDuplicate(Check):
    name = "exact_duplicate"
    requires = ("embeddings",)
    description = "bit-identical embeddings, and the same path listed more than once"
    gallery = Groups(table="exact_groups")
    _parameter_constraints = {"keep": Options(KEEP_POLICIES)}

    def __init__(self, keep: str = "first") -> None:
        self.keep = keep

    def _run(self, ctx) -> CheckResult:
        rows = ctx.valid_rows
        a, b = _identical_rows(ctx, rows)
        if ctx.store.paths is not None:
            pa_, pb = _equal_values(ctx.store.paths)
            both_valid = ctx.valid[pa_] & ctx.valid[pb]  # an invalid copy must never be the one kept
            a, b = np.concatenate([a, pa_[both_valid]]), np.concatenate([b, pb[both_valid]])
        within = ~ctx.across_groups(a, b)   # crops of one image share its pixels and its path
        a, b = a[~within], b[~within]
        groups = groups_of(ctx.n, a, b)
        keep = keep_one(ctx, groups, self.keep)
        copies = reference_hits(ctx, min(EXACT_THRESHOLD, ctx.config.threshold), "exact")   # against a reference
        flags = (groups.group_of >= 0) | copies.rows
        scores = np.where(flags, 0.0, 1.0)
        scores[~ctx.valid] = np.nan
        flags &= ctx.valid
        excluded = np.flatnonzero(flags & (~keep | copies.rows))
        summary = {"n_groups": int(groups.n_groups), "n_rows": int(flags.sum()), "n_excluded": int(len(excluded)),
                   "largest_group": int(groups.sizes().max()) if groups.n_groups else 0}
        if copies.summary is not None:
            summary["reference"] = copies.summary
        members = groups.rows[flags[groups.rows]]
        table = pa.table({"group_id": pa.array(groups.group_of[members], pa.int64()),
                          "row": pa.array(members, pa.int64()), "keep": pa.array(keep[members], pa.bool_())})
        return CheckResult(flags=flags, scores=scores, summary=summary, exclude=excluded,
                           tables={"exact_groups": table})


def _identical_rows(ctx, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (first row, other row) of valid rows whose raw embeddings are bit-identical."""
    xp = ctx.xp
    emb = ctx.store.embeddings
    d = emb.shape[1]
    row_bytes = d * emb.dtype.itemsize
    # the row's bits as 64-bit words where they fill them (10x fewer, cheaper products than
    # widening 32-bit words), else as 32- or 16-bit words; a sum of products mod 2**64 is the
    # same in any order
    word = 8 if row_bytes % 8 == 0 else (4 if emb.dtype.itemsize >= 4 else 2)
    words_per_row = row_bytes // word
    rng = np.random.default_rng(0x7A315)
    mult = xp.asarray(rng.integers(1, 2**63, size=words_per_row, dtype=np.uint64) | np.uint64(1))
    block = max(1, HASH_BLOCK_WORDS // max(1, words_per_row))
    hashes = np.empty(len(rows), dtype=np.uint64)
    contiguous = len(rows) == emb.shape[0]
    for start in range(0, len(rows), block):
        take = rows[start:start + block]
        part = xp.ascontiguousarray(xp.asarray(emb[start:start + len(take)] if contiguous else emb[take]))
        words = part.reshape(len(take), -1).view({8: xp.uint64, 4: xp.uint32, 2: xp.uint16}[word])
        hashes[start:start + len(take)] = ctx.backend.to_host((words.astype(xp.uint64, copy=False) * mult).sum(axis=1))
    # candidates: rows sharing a hash; confirmed word for word (hash collisions are possible)
    first, other = _runs(hashes)
    if not len(first):
        return first, other
    a, b = rows[first], rows[other]
    left = ctx.backend.to_host(xp.asarray(emb[a]))
    right = ctx.backend.to_host(xp.asarray(emb[b]))
    equal = (left.view(np.uint8).reshape(len(a), -1) == right.view(np.uint8).reshape(len(b), -1)).all(axis=1)
    return a[equal], b[equal]


def _equal_values(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (first row, other row) of rows holding the same value (chunked columns too)."""
    return _runs(encode(values)[0])


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (first, other) pairing the first position of each run of equal keys with every
    other position of that run; first positions are the smallest of their run."""
    if len(keys) == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]]
    first_of_run = np.maximum.accumulate(np.where(starts, np.arange(len(ordered)), 0))
    same = np.flatnonzero(~starts)
    return order[first_of_run[same]].astype(np.int64), order[same].astype(np.int64)
