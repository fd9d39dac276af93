"""Off-topic samples: junk clusters that belong to no class, and rows unlike the trusted
reference examples of their own class.

Scraped data holds images that are not what their label says: junk, memes, text, other
objects, logos, blank frames. Two signals, the second only with references:

**Junk clusters** (always): small dense groups far from every class's mass, whose labels are
mixed (scraped logos carry whatever label the page had). A row is a candidate when

- its largest cosine similarity to any class centroid (the mean of the class's unit rows) is
  below the fence ``Q1 - far_factor x IQR`` of that similarity over all rows (far from every
  class: 3.0, Tukey's "far out");
- it is not isolated: the mean similarity to its k neighbours is above the same kind of fence
  (isolated rows are ``outlier``'s);
- at most ``max_agreement`` (0.5) of its neighbours carry its label.

Candidates linked in the neighbour graph form clusters; a cluster of at least
``min_cluster`` (5) rows whose most common label holds at most half of them is junk: every
member is flagged, and the clusters are ``off_topic_clusters.parquet`` (``group_id``: the
smallest row, ``row``, ``keep`` false), the report's gallery. Measured on the realistic bench
store (100k x 512, three junk clusters of ~167 rows with random labels among 100 classes, 0.5 %
random-direction outliers): see README "Label errors, outliers and off-topic samples". The
score is that largest centroid similarity, clipped to [0, 1].

**References** (``references``: a few trusted examples per class (``references``: a store path or in-memory
data with embeddings and labels, e.g. ``--references refs.npz``), a row's score is its
largest cosine similarity to its class's references, clipped to [0, 1]. A row is flagged
when that score is below ``min_similarity``; by default (None) each class gets its own
cutoff: the median, over the references of the *other* classes, of their largest
similarity to this class's references. A row less like its class's trusted examples than a
trusted example of another class typically is does not belong. This is deliberately
conservative: a few references never cover a class's whole variety (a stricter cutoff,
halfway to the references' similarity among themselves, flagged 8 % of the clean demo
digits), and rows that belong to another class are ``label_error``'s to find. Rows of classes without
references are not scored (listed in the summary); with references the score is the
reference similarity, and a row is flagged by either signal. Flagged rows are excluded with
reason ``off_topic``. Time O(N C d) for the centroids, O(N R d) for R references, blocked;
memory O(block x max(C, R)) and the graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import pyarrow as pa
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from ..config import Interval
from ..engine.artifacts import neighbour_codes, neighbours, resolve_k
from ..engine.search.tiles import run_blocks
from ..errors import InputError
from .base import Check, CheckResult, plain
from .shared.centroids import class_centroids
from .views import Groups

_BLOCK_CELLS = 1 << 21


class _Anything:
    def accepts(self, value: Any) -> bool:
        return True

    def describe(self) -> str:
        return "a store path or in-memory data"


class OffTopic(Check):
    name = "off_topic"
    requires = ("embeddings", "labels")
    uses_neighbours = True
    description = "junk clusters far from every class, with mixed labels; rows unlike their class's references"
    gallery = Groups(table="off_topic_clusters")
    _parameter_constraints = {
        "references": _Anything(),
        "min_similarity": Interval(float, -1, 1, none_ok=True),
        "k": Interval(int, 1, None, none_ok=True),
        "far_factor": Interval(float, 0, None, closed="neither"),
        "max_agreement": Interval(float, 0, 1),
        "min_cluster": Interval(int, 2, None),
    }

    def __init__(self, references: Any = None, min_similarity: float | None = None, k: int | None = None,
                 far_factor: float = 3.0, max_agreement: float = 0.5, min_cluster: int = 5) -> None:
        self.references = references
        self.min_similarity = min_similarity
        self.k = k
        self.far_factor = far_factor
        self.max_agreement = max_agreement
        self.min_cluster = min_cluster

    def _run(self, ctx) -> CheckResult:
        far, members, clusters = self._junk_clusters(ctx)
        summary = {"n_junk_clusters": len(clusters), "junk_clusters": clusters[:50]}
        flag_valid = members.copy()
        score_valid = np.clip(far, 0.0, 1.0)
        if self.references is not None:
            ref_flags, ref_scores, ref_summary = self._against_references(ctx)
            flag_valid |= ref_flags
            score_valid = np.where(np.isnan(ref_scores), score_valid, ref_scores)
            summary.update(ref_summary)
        summary["n_off_topic"] = int(flag_valid.sum())
        rows = ctx.valid_rows
        table_rows, table_groups = [], []
        for cluster in clusters:
            mine = rows[np.asarray(cluster.pop("members"))]
            table_rows.append(mine)
            table_groups.append(np.full(len(mine), mine.min()))
            cluster["group_id"] = int(mine.min())
        member_rows = np.concatenate(table_rows) if table_rows else np.empty(0, dtype=np.int64)
        table = pa.table({
            "group_id": pa.array(np.concatenate(table_groups) if table_groups else np.empty(0, np.int64),
                                 type=pa.int64()),
            "row": pa.array(member_rows, type=pa.int64()),
            "keep": pa.array(np.zeros(len(member_rows), dtype=bool)),
        })
        flags = ctx.to_rows(flag_valid, fill=False, dtype=bool)
        scores = ctx.to_rows(score_valid, fill=np.nan, dtype=np.float64)
        return CheckResult(flags=flags, scores=scores, summary=summary, exclude=np.flatnonzero(flags),
                           tables={"off_topic_clusters": table})

    def _junk_clusters(self, ctx) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """(largest centroid similarity per valid row, junk-cluster members (bool), the clusters)."""
        xp = ctx.xp
        emb = ctx.embeddings
        codes = ctx.label_codes[ctx.valid_rows]
        m, n_classes = len(codes), len(ctx.label_names)
        centroids = class_centroids(ctx).astype(xp.float32)
        far = np.empty(m)
        block = max(1, _BLOCK_CELLS // max(1, n_classes))

        def one(start: int) -> None:
            far[start:start + block] = ctx.backend.to_host((emb[start:start + block].astype(xp.float32, copy=False)
                                                            @ centroids.T).max(axis=1))

        run_blocks(one, m, block, xp)
        k = resolve_k(ctx, self.k)
        idx, sims = neighbours(ctx, k)
        density = sims.astype(np.float64).mean(axis=1)
        agreement = (neighbour_codes(ctx, idx) == codes[:, None]).mean(axis=1)
        candidate = ((far < _low_fence(far, self.far_factor)) & (density >= _low_fence(density, self.far_factor))
                     & (agreement <= self.max_agreement))
        members = np.zeros(m, dtype=bool)
        clusters: list[dict] = []
        if not candidate.any():
            return far, members, clusters
        head = np.repeat(np.arange(m), idx.shape[1])
        tail = idx.ravel()
        inside = tail < m   # against a reference (--against), a neighbour m + p is reference row p
        head, tail = head[inside], tail[inside]
        both = candidate[head] & candidate[tail]
        graph = sp.coo_matrix((np.ones(int(both.sum())), (head[both], tail[both])), shape=(m, m)).tocsr()
        _, component = connected_components(graph, directed=False)
        cand_rows = np.flatnonzero(candidate)
        order = np.argsort(component[cand_rows], kind="stable")       # candidates grouped by component
        bounds = np.flatnonzero(np.diff(component[cand_rows][order])) + 1
        for rows in np.split(cand_rows[order], bounds):
            if len(rows) < self.min_cluster:
                continue
            counts = np.bincount(codes[rows])
            if counts.max() > 0.5 * len(rows):
                continue
            members[rows] = True
            clusters.append({"members": rows, "size": int(len(rows)), "n_labels": int(np.count_nonzero(counts)),
                             "top_label_share": float(counts.max() / len(rows)),
                             "centroid_similarity": float(np.median(far[rows])),
                             "density": float(np.median(density[rows]))})
        clusters.sort(key=lambda c: (-c["size"], int(c["members"].min())))
        return far, members, clusters

    def _against_references(self, ctx) -> tuple[np.ndarray, np.ndarray, dict]:
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
            sims = emb[start:start + block].astype(xp.float32, copy=False) @ r.T
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
        summary = {
            "n_references": int(len(ref_labels)),
            "n_unlike_references": int(flag_valid.sum()),
            "classes_without_references": [plain(names[c]) for c in np.flatnonzero(~covered)][:50],
            "n_classes_without_references": int((~covered).sum()),
            "cutoffs": {str(names[c]): float(cutoffs[c]) for c in np.flatnonzero(~np.isnan(cutoffs))},
        }
        return flag_valid, np.clip(best_own, 0.0, 1.0), summary


def _low_fence(values: np.ndarray, factor: float) -> float:
    """Q1 - factor x IQR: below it a value is far out on the low side (Tukey)."""
    q1, q3 = np.quantile(values, [0.25, 0.75])
    return float(q1 - factor * (q3 - q1))


def _key(value: Any) -> str:
    return str(value.item() if isinstance(value, np.generic) else value)

