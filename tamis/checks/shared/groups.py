"""What the duplicate family shares: groups of near duplicates and the keep policies.

The pairs come from the run's one pair search (:func:`tamis.engine.artifacts.pairs_at`), so
exact, near, conflicting and leakage checks cost one search together.

Groups are the connected components of the pair graph (scipy's csgraph on the host: the
pair list is small next to the embeddings). A group's id is its smallest input row, so the
same store gives the same ids on every run and device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ...engine.artifacts import Pairs, pairs_at
from ...errors import InputError

KEEP_POLICIES = ("first", "central", "quality")


@dataclass(frozen=True)
class Groups:
    """Connected components of size >= 2. ``group_of[r]`` is the id of row r's group, or -1."""

    group_of: np.ndarray
    rows: np.ndarray        # member rows, sorted by (group id, row)
    ids: np.ndarray         # the group id of each entry of ``rows``
    starts: np.ndarray      # offsets of each group in ``rows``; len = n_groups + 1

    @property
    def n_groups(self) -> int:
        return len(self.starts) - 1

    @property
    def group_ids(self) -> np.ndarray:
        return self.ids[self.starts[:-1]]

    def sizes(self) -> np.ndarray:
        return np.diff(self.starts)


def groups_of(n: int, row_a: np.ndarray, row_b: np.ndarray) -> Groups:
    """Connected components (size >= 2) of the graph on ``n`` rows with edges (row_a, row_b)."""
    if len(row_a) == 0:
        empty = np.empty(0, dtype=np.int64)
        return Groups(np.full(n, -1, dtype=np.int64), empty, empty, np.zeros(1, dtype=np.int64))
    graph = coo_matrix((np.ones(len(row_a), dtype=np.int8), (row_a, row_b)), shape=(n, n)).tocsr()
    _, comp = connected_components(graph, directed=False)
    size = np.bincount(comp)
    in_group = size[comp] >= 2
    rows = np.flatnonzero(in_group)
    # the id of a component is its smallest row: the first row seen of it in ascending order
    first = np.full(len(size), -1, dtype=np.int64)
    order = rows[::-1]
    first[comp[order]] = order
    group_of = np.full(n, -1, dtype=np.int64)
    group_of[rows] = first[comp[rows]]
    ids = group_of[rows]
    order = np.lexsort((rows, ids))
    rows, ids = rows[order], ids[order]
    starts = np.concatenate([np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]), [len(ids)]]).astype(np.int64)
    return Groups(group_of, rows, ids, starts)


def near_groups(ctx, threshold: float) -> Groups:
    """Groups of near duplicates at ``threshold`` (cached per threshold)."""
    def build() -> Groups:
        pairs = pairs_at(ctx, threshold)
        return groups_of(ctx.n, pairs.row_a, pairs.row_b)

    return ctx.artifact(("near_groups", float(threshold)), build)


def keep_one(ctx, groups: Groups, policy: str) -> np.ndarray:
    """(N,) bool: True for the one member each group keeps (and for every row in no group).

    - ``first``: the smallest id (the row number where the store has no ids), ties by row;
    - ``central``: the member most similar on average to its group, i.e. the largest
      ``x . mean(group)``; ties (exact copies) fall back to ``first``;
    - ``quality``: the largest value of the store's quality column; ties fall back to ``first``.
    """
    keep = np.ones(ctx.n, dtype=bool)
    if groups.n_groups == 0:
        return keep
    keep[groups.rows] = False
    rank = _id_rank(ctx)[groups.rows]
    if policy == "first":
        primary = np.zeros(len(groups.rows))
    elif policy == "central":
        primary = -_centrality(ctx, groups)
    elif policy == "quality":
        if ctx.store.quality is None:
            raise InputError(f"{ctx.store.source}: keep policy 'quality' needs a quality column; name it with "
                             "--quality-col, or use keep=first or keep=central")
        quality = ctx.store.quality.to_numpy(zero_copy_only=False).astype(np.float64)[groups.rows]
        primary = -np.nan_to_num(quality, nan=-np.inf)
    else:  # validated by the checks' constraints; kept for direct callers
        raise ValueError(f"unknown keep policy {policy!r}")
    # sorted by group first (ids are already ascending, so each group keeps its offsets), then by
    # the policy, then by id rank: the first entry of each group is the member it keeps
    order = np.lexsort((rank, primary, groups.ids))
    keep[groups.rows[order[groups.starts[:-1]]]] = True
    return keep


def _id_rank(ctx) -> np.ndarray:
    ids = ctx.store.ids
    if ids is None:
        return np.arange(ctx.n)
    return ctx.artifact("id_rank", lambda: np.asarray(
        pc.rank(ids, sort_keys="ascending", tiebreaker="first"), dtype=np.int64))


def _centrality(ctx, groups: Groups) -> np.ndarray:
    """x_i . mean of its group, for every member (mean similarity to the group, self included).

    Blocked over groups so at most ~``2**22`` member rows are gathered at once; O(members x d).
    """
    xp = ctx.xp
    position = np.full(ctx.n, -1, dtype=np.int64)
    position[ctx.valid_rows] = np.arange(len(ctx.valid_rows))
    out = np.empty(len(groups.rows), dtype=np.float64)
    emb = ctx.embeddings
    block = max(1, (1 << 22) // max(1, emb.shape[1]))
    g0 = 0
    while g0 < groups.n_groups:
        g1 = int(np.searchsorted(groups.starts, groups.starts[g0] + block, side="right")) - 1
        g1 = max(g1, g0 + 1)
        lo, hi = int(groups.starts[g0]), int(groups.starts[g1])
        members = xp.asarray(emb[xp.asarray(position[groups.rows[lo:hi]])], dtype=xp.float64)
        local = np.repeat(np.arange(g1 - g0), np.diff(groups.starts[g0:g1 + 1]))
        cums = xp.concatenate([xp.zeros((1, members.shape[1])), xp.cumsum(members, axis=0)])
        bounds = xp.asarray(groups.starts[g0:g1 + 1] - lo)
        means = (cums[bounds[1:]] - cums[bounds[:-1]]) / xp.asarray(np.diff(groups.starts[g0:g1 + 1]))[:, None]
        out[lo:hi] = ctx.backend.to_host((members * means[xp.asarray(local)]).sum(axis=1))
        g0 = g1
    return np.round(out, 6)  # equal members tie exactly, whatever the summation order


def group_table(groups: Groups, kind: np.ndarray, keep: np.ndarray, conflicting: np.ndarray) -> pa.Table:
    """``groups.parquet``: one row per member: group_id, row, kind, keep, conflicting."""
    return pa.table({
        "group_id": pa.array(groups.ids, type=pa.int64()),
        "row": pa.array(groups.rows, type=pa.int64()),
        "kind": pa.array(np.repeat(kind, groups.sizes()) if len(kind) else np.empty(0, dtype=str), type=pa.string()),
        "keep": pa.array(keep[groups.rows], type=pa.bool_()),
        "conflicting": pa.array(np.repeat(conflicting, groups.sizes()) if len(conflicting) else
                                np.empty(0, dtype=bool), type=pa.bool_()),
    })


def max_similarity(n: int, pairs: Pairs) -> np.ndarray:
    """(N,) the largest similarity of each row to any partner in ``pairs`` (NaN where none)."""
    best = np.full(n, -np.inf)
    np.maximum.at(best, pairs.row_a, pairs.similarity)
    np.maximum.at(best, pairs.row_b, pairs.similarity)
    best[np.isneginf(best)] = np.nan
    return best


def conflicting_groups(groups: Groups, codes: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_groups,) True where a group's members carry two or more labels."""
    if groups.n_groups == 0:
        return np.zeros(0, dtype=bool)
    group_index, _, _ = segment_label_stats(groups, codes, n_classes)
    return np.bincount(group_index, minlength=groups.n_groups) >= 2


def segment_label_stats(groups: Groups, codes: np.ndarray, n_classes: int):
    """Per group: label counts (n_groups x n_labels, sparse as dict rows), distinct labels."""
    member_codes = codes[groups.rows]
    local = np.repeat(np.arange(groups.n_groups), groups.sizes())
    key = local * n_classes + member_codes
    uniq, counts = np.unique(key, return_counts=True)
    return uniq // n_classes, uniq % n_classes, counts
