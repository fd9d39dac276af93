"""Off-topic samples: rows unlike the trusted reference examples of their own class.

Scraped data holds images that are not what their label says: junk, memes, text, other
objects. Given a few trusted examples per class (``references``: a store path or in-memory
data with embeddings and labels, e.g. ``--references refs.npz``), a row's score is its
largest cosine similarity to its class's references, clipped to [0, 1]. A row is flagged
when that score is below ``min_similarity``; by default (None) each class gets its own
cutoff: the median, over the references of the *other* classes, of their largest
similarity to this class's references. A row less like its class's trusted examples than a
trusted example of another class typically is does not belong. This is deliberately
conservative: a few references never cover a class's whole variety (a stricter cutoff,
halfway to the references' similarity among themselves, flagged 8 % of the clean demo
digits), and rows that belong to another class are ``label_error``'s to find. Rows of classes without
references are not scored (listed in the summary). Flagged rows are excluded with reason
``off_topic``. Time O(N R d) for R references, blocked; memory O(block x R).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import Interval
from ..errors import InputError
from .base import Check, CheckResult, plain

_BLOCK_CELLS = 1 << 24


class _Anything:
    def accepts(self, value: Any) -> bool:
        return True

    def describe(self) -> str:
        return "a store path or in-memory data"


class OffTopic(Check):
    name = "off_topic"
    requires = ("embeddings", "labels")
    description = "rows unlike the trusted reference examples of their class (needs --references)"
    _parameter_constraints = {
        "references": _Anything(),
        "min_similarity": Interval(float, -1, 1, none_ok=True),
    }

    def __init__(self, references: Any = None, min_similarity: float | None = None) -> None:
        self.references = references
        self.min_similarity = min_similarity

    def skip_reason(self, available: frozenset[str]) -> str | None:
        reason = super().skip_reason(available)
        if reason is None and self.references is None:
            return "needs reference embeddings per class: pass --references STORE"
        return reason

    def _run(self, ctx) -> CheckResult:
        from ..io.readers import load_store

        refs = load_store(self.references)
        if refs.embeddings is None or refs.labels is None:
            raise InputError(f"{refs.source}: the references need embeddings and labels; it holds "
                             f"{', '.join(sorted(refs.available))}")
        if refs.dim != ctx.store.dim:
            raise InputError(f"{refs.source}: reference embeddings have {refs.dim} dimensions but the store's have "
                             f"{ctx.store.dim}; embed both with the same model")
        xp = ctx.xp
        r = xp.asarray(refs.embeddings, dtype=xp.float32)
        norms = xp.linalg.norm(r, axis=1)
        good = xp.isfinite(norms) & (norms > 0)
        names = ctx.label_names
        index = {_key(v): i for i, v in enumerate(names)}
        ref_labels = np.array([index.get(_key(v), -1) for v in refs.labels.to_pylist()])
        keep = ctx.backend.to_host(good) & (ref_labels >= 0)
        if not keep.any():
            raise InputError(f"{refs.source}: no reference carries one of the store's labels; the references' labels "
                             "must be spelled as the store's")
        r = r[xp.asarray(np.flatnonzero(keep))] / norms[xp.asarray(np.flatnonzero(keep))][:, None]
        ref_labels = ref_labels[keep]
        n_classes = len(names)
        covered = np.bincount(ref_labels, minlength=n_classes) > 0

        # best similarity of every row to the references of each class, blocked over rows
        emb = ctx.embeddings
        codes = ctx.label_codes[ctx.valid_rows]
        best_own = np.full(len(codes), np.nan)
        block = max(1, _BLOCK_CELLS // max(1, r.shape[0]))
        own_mask = xp.asarray(ref_labels)
        for start in range(0, emb.shape[0], block):
            sims = emb[start:start + block].astype(xp.float32) @ r.T
            mine = own_mask[None, :] == xp.asarray(codes[start:start + block])[:, None]
            best = xp.where(mine, sims, -xp.inf).max(axis=1)
            best_own[start:start + block] = ctx.backend.to_host(best)
        best_own[~covered[codes]] = np.nan

        cutoffs = np.full(n_classes, np.nan)
        if self.min_similarity is not None:
            cutoffs[covered] = self.min_similarity
        else:
            rr = ctx.backend.to_host(r @ r.T).astype(np.float64)
            for c in np.flatnonzero(covered):
                mine, others = ref_labels == c, ref_labels != c
                if others.any():
                    cutoffs[c] = float(np.median(rr[np.ix_(others, mine)].max(axis=1)))
        cut = cutoffs[codes]
        flag_valid = ~np.isnan(best_own) & ~np.isnan(cut) & (best_own < cut)
        flags = ctx.to_rows(flag_valid, fill=False, dtype=bool)
        scores = ctx.to_rows(np.clip(best_own, 0.0, 1.0), fill=np.nan, dtype=np.float64)
        summary = {
            "n_references": int(len(ref_labels)),
            "n_off_topic": int(flag_valid.sum()),
            "classes_without_references": [plain(names[c]) for c in np.flatnonzero(~covered)][:50],
            "n_classes_without_references": int((~covered).sum()),
            "cutoffs": {str(names[c]): float(cutoffs[c]) for c in np.flatnonzero(~np.isnan(cutoffs))},
        }
        return CheckResult(flags=flags, scores=scores, summary=summary, exclude=np.flatnonzero(flags))


def _key(value: Any) -> str:
    return str(value.item() if isinstance(value, np.generic) else value)

