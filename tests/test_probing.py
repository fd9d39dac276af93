"""The nearest-buckets scan (tamis.engine.search.probing) and the pieces it stands on: the
buffered top-c merge against a brute-force reference, the packed top-k selection, the
row-grouped canonical similarity, and the ivf engine's pairs from the neighbour scan's tiles.

The brute-force references use rows of small integers over 8, whose products and sums are
exact in float32 whatever order a BLAS adds them in, so "the same tile values" is a fact
here and every comparison is exact; the many repeated rows make ties the common case.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tamis.engine.search import find_pairs, knn_graph
from tamis.engine.search import probing
from tamis.engine.search.rows import canonical_dot, canonical_dot_rows
from tamis.kernels.topk import empty_topk, topk_rows


def integer_rows(n, d, seed, distinct=None):
    rng = np.random.default_rng(seed)
    base = rng.integers(-3, 4, (distinct or n, d)).astype(np.float32) / 8
    return base[rng.integers(0, len(base), n)] if distinct else base


def reference_lists(X, probes, bucket_of, c, start=None):
    """Per query: every row of its probed buckets but itself (plus the running list ``start``),
    ranked by similarity, then index; the first c. Indices are row ids (buckets hold rows in
    id order, so list index == row id with the identity layout used here)."""
    S = X @ X.T
    m = len(X)
    out_s = np.full((m, c), -np.inf, np.float32)
    out_i = np.full((m, c), -1, np.int64)
    for q in range(m):
        cand = np.flatnonzero(np.isin(bucket_of, probes[q]))
        cand = cand[cand != q]
        sims = S[q, cand]
        if start is not None:
            have = start[1][q] >= 0
            cand = np.concatenate([start[1][q][have], cand])
            sims = np.concatenate([start[0][q][have], sims])
            cand, first = np.unique(cand, return_index=True)
            sims = sims[first]
        order = np.lexsort((cand, -sims))[:c]
        out_s[q, :len(order)], out_i[q, :len(order)] = sims[order], cand[order]
    return out_s, out_i


def layout(bucket_of):
    """Rows already grouped by bucket (bucket_of ascending): offsets and the bucket accessor."""
    counts = np.bincount(bucket_of)
    return np.concatenate([[0], np.cumsum(counts)])


@pytest.mark.parametrize("extra", [1, 3, 32])
@pytest.mark.parametrize("c", [1, 5, 12])
def test_probe_buckets_equals_brute_force(monkeypatch, extra, c):
    """Every buffer width (1 slot forces a compaction on nearly every tile, and rows with
    more tied entries than a buffer take the wide path) gives the brute-force lists."""
    monkeypatch.setattr(probing, "BUFFER_WIDTH", extra)
    n_buckets, d = 9, 6
    X = integer_rows(240, d, seed=c + extra, distinct=40)      # ~6 copies of every row
    bucket_of = np.sort(np.random.default_rng(1).integers(0, n_buckets, len(X)))
    offsets = layout(bucket_of)
    rng = np.random.default_rng(2)
    probes = np.stack([np.concatenate([[bucket_of[q]], rng.choice(np.setdiff1d(np.arange(n_buckets),
                                                                              [bucket_of[q]]), 2, replace=False)])
                       for q in range(len(X))])

    def own(q, b):
        inside = (q >= offsets[b]) & (q < offsets[b + 1])
        return np.flatnonzero(inside), q[inside] - offsets[b]

    got_s, got_i, pairs = probing.probe_buckets(
        X, probes, offsets, lambda b: X[offsets[b]:offsets[b + 1]], empty_topk(len(X), c), c, np,
        1 << 20, "float32", own, pair_cutoff=0.25)
    want_s, want_i = reference_lists(X, probes, bucket_of, c)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_s, want_s)
    # the pairs the same tiles hold: every (query, probed row) at or above the cutoff
    S = X @ X.T
    want = {(q, j) for q in range(len(X)) for j in np.flatnonzero(np.isin(bucket_of, probes[q]))
            if j != q and S[q, j] >= 0.25}
    assert set(zip(pairs[0].tolist(), pairs[1].tolist())) == want


def test_probe_buckets_home_bucket_alone_is_one_symmetric_product():
    """Probing only each row's own bucket (the ivf scan's first step): the queries of a tile are
    the bucket's rows, in order, and its product is taken with one operand (``R @ R.T``); the
    lists and pairs are the brute-force ones."""
    X = integer_rows(200, 6, seed=5, distinct=35)
    bucket_of = np.sort(np.random.default_rng(6).integers(0, 7, len(X)))
    offsets = layout(bucket_of)
    probes = bucket_of[:, None]

    def own(q, b):
        inside = (q >= offsets[b]) & (q < offsets[b + 1])
        return np.flatnonzero(inside), q[inside] - offsets[b]

    got_s, got_i, pairs = probing.probe_buckets(X, probes, offsets, lambda b: X[offsets[b]:offsets[b + 1]],
                                                empty_topk(len(X), 4), 4, np, 1 << 20, "float32", own,
                                                pair_cutoff=0.25)
    want_s, want_i = reference_lists(X, probes, bucket_of, 4)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_s, want_s)
    S = X @ X.T
    want = {(q, j) for q in range(len(X)) for j in np.flatnonzero(bucket_of == bucket_of[q]) if j != q and S[q, j] >= 0.25}
    assert set(zip(pairs[0].tolist(), pairs[1].tolist())) == want


def test_probe_buckets_goes_on_from_running_lists():
    """A second round (other buckets) merged into the first round's lists equals one round
    over both sets of buckets."""
    X = integer_rows(150, 5, seed=3, distinct=30)
    bucket_of = np.sort(np.random.default_rng(4).integers(0, 6, len(X)))
    offsets = layout(bucket_of)
    probes = np.stack([(bucket_of[q] + np.arange(4)) % 6 for q in range(len(X))])

    def run(p, best):
        def own(q, b):
            inside = (q >= offsets[b]) & (q < offsets[b + 1])
            return np.flatnonzero(inside), q[inside] - offsets[b]
        return probing.probe_buckets(X, p, offsets, lambda b: X[offsets[b]:offsets[b + 1]], best, 7, np,
                                     1 << 20, "float32", own)[:2]

    first = run(probes[:, :2], empty_topk(len(X), 7))
    both = run(probes[:, 2:], first)
    once = run(probes, empty_topk(len(X), 7))
    for a, b in zip(both, once):
        np.testing.assert_array_equal(a, b)


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 30), w=st.integers(1, 40), k=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_topk_rows_is_the_total_order(m, w, k, seed):
    k = min(k, w)
    rng = np.random.default_rng(seed)
    sims = rng.integers(-4, 5, (m, w)).astype(np.float32) / 4          # many ties
    sims[rng.random((m, w)) < 0.1] = -np.inf
    idx = np.stack([rng.permutation(1000)[:w] for _ in range(m)]).astype(np.int64)
    empty = rng.random((m, w)) < 0.2
    idx[empty], sims[empty] = -1, -np.inf
    got_s, got_i = topk_rows(sims, idx, k)
    key = np.where(idx < 0, np.iinfo(np.int64).max, idx)
    order = np.lexsort((key, -sims), axis=1)[:, :k]
    np.testing.assert_array_equal(got_i, np.take_along_axis(idx, order, 1))
    np.testing.assert_array_equal(got_s, np.take_along_axis(sims, order, 1))
    loose_s, loose_i = topk_rows(sims, idx, k, ordered=False)
    assert [sorted(r) for r in loose_i.tolist()] == [sorted(r) for r in got_i.tolist()]
    # the same entries in another order within each row: the same lists
    perm = np.argsort(rng.random((m, w)), axis=1)
    again = topk_rows(np.take_along_axis(sims, perm, 1), np.take_along_axis(idx, perm, 1), k)
    np.testing.assert_array_equal(again[1], got_i)


def tree_reference(a, b):
    """The canonical similarity by its definition (rows.py): float64 products padded with zeros
    to a power of two, then halves added until one column is left; one pair at a time."""
    width = 1 << max(0, (len(a) - 1).bit_length())
    p = np.zeros(width)
    p[:len(a)] = np.asarray(a, np.float64) * np.asarray(b, np.float64)
    while width > 1:
        width //= 2
        p[:width] = p[:width] + p[width:2 * width]
    return p[0]


@pytest.mark.parametrize("d", [1, 2, 3, 7, 64, 100, 512, 768])
def test_canonical_dot_rows_is_the_tree_bit_for_bit(d):
    rng = np.random.default_rng(d)
    A = rng.standard_normal((60, d)).astype(np.float32)
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    A[0] = 0
    A[0, 0] = -1.0                                   # products of -0.0 and of opposite zeros
    A[1] = -A[0]
    cand = rng.integers(-1, 60, (60, 9))
    got = canonical_dot_rows(A, A, np.arange(60), cand, np)
    want = np.array([[tree_reference(A[i], A[max(j, 0)]) for j in row] for i, row in enumerate(cand)])
    assert np.array_equal(got.view(np.int64), want.view(np.int64))
    flat = canonical_dot(A, A, np.repeat(np.arange(60), 9), np.maximum(cand, 0).reshape(-1), np)
    assert np.array_equal(flat.view(np.int64), want.reshape(-1).view(np.int64))


def clustered(n=4000, d=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, d))
    X = centres[rng.integers(0, 40, n)] + 0.5 * rng.standard_normal((n, d))
    X[rng.integers(0, n, 200)] = X[rng.integers(0, n, 200)] + 0.02 * rng.standard_normal((200, d))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def test_ivf_pairs_come_from_the_neighbour_scan_and_the_graph_goes_on_from_it():
    X = clustered()
    state = {"neighbours_k": 10}                                     # a graph will follow
    pairs = find_pairs(X, 0.9, engine="ivf", state=state)
    assert pairs.info["rule"] == "nearest buckets" and pairs.info["recall"] >= 0.99
    exact = find_pairs(X, 0.9, engine="exact")
    found = set(zip(pairs.row_a.tolist(), pairs.row_b.tolist()))
    truth = dict(zip(zip(exact.row_a.tolist(), exact.row_b.tolist()), exact.similarity.tolist()))
    assert found <= set(truth) and len(found) >= 0.99 * len(truth)
    assert all(truth[p] == s for p, s in zip(zip(pairs.row_a.tolist(), pairs.row_b.tolist()),
                                            pairs.similarity.tolist()))
    shared = knn_graph(X, 10, engine="ivf", state=state)             # goes on from the pair scan
    alone = knn_graph(X, 10, engine="ivf")
    np.testing.assert_array_equal(shared.indices, alone.indices)
    np.testing.assert_array_equal(shared.similarities, alone.similarities)
    assert not any(key[0] == "ivf_scan" for key in state if isinstance(key, tuple))   # released


def test_ivf_pairs_fall_back_to_the_slack_rule_when_the_scan_misses():
    """One probe (the home bucket) misses pairs across buckets; the sample sees it and the
    slack rule runs, which finds them."""
    X = clustered(seed=1)
    got = find_pairs(X, 0.8, engine="ivf", n_probe=1, n_buckets=60, state={"neighbours_k": 10})
    assert got.info["rule"] == "slack"
    exact = find_pairs(X, 0.8, engine="exact")
    assert len(got.row_a) >= 0.99 * len(exact.row_a)


def test_ivf_pairs_with_a_bigger_k_later_search_again():
    """A graph with more neighbours than the scan's lists keep is searched afresh (and right)."""
    X = clustered(seed=2)
    state = {"neighbours_k": 10}
    find_pairs(X, 0.9, engine="ivf", state=state)
    got = knn_graph(X, 30, engine="ivf", state=state)
    alone = knn_graph(X, 30, engine="ivf")
    np.testing.assert_array_equal(got.indices, alone.indices)


@pytest.mark.parametrize("lo,hi", [(0, 1), (0, 3), (2, 5), (0, 9), (4, 9)])
def test_probe_order_is_one_total_order_with_ties(lo, hi):
    """Centroid ranks by similarity, then centroid id, whatever the ties: rows of small
    integers over 8 against centroids with repeated columns tie exactly and often."""
    from tamis.engine.search.kmeans import probe_order
    rng = np.random.default_rng(lo * 10 + hi)
    X = rng.integers(-2, 3, (500, 4)).astype(np.float32) / 8
    C = rng.integers(-2, 3, (9, 4)).astype(np.float32) / 8
    C[5] = C[2]                                                       # a twin centroid
    got = probe_order(X, C, lo, hi, np, 4096)                        # small blocks: many of them
    S = X @ C.T
    want = np.lexsort((np.broadcast_to(np.arange(9), S.shape), -S), axis=1)[:, lo:hi]
    np.testing.assert_array_equal(got, want)


def test_ivf_pairs_alone_use_the_slack_rule():
    """No graph announced: the pair search runs the slack rule (faster alone) and keeps no scan."""
    X = clustered(seed=3)
    state = {}
    got = find_pairs(X, 0.9, engine="ivf", state=state)
    assert got.info["rule"] == "slack"
    assert not any(isinstance(key, tuple) and key[0] == "ivf_scan" for key in state)


def test_a_scan_shares_the_bucket_scan_only_when_a_check_reads_the_graph(tmp_path):
    import tamis
    X = clustered(n=3000, seed=4)
    labels = np.arange(len(X)) % 7
    both = tamis.scan({"embeddings": X, "labels": labels}, device="cpu", engine="ivf",
                      checks=["near_duplicate", "label_error"])
    assert both.summary["search"]["pairs"]["rule"] == "nearest buckets"
    alone = tamis.scan({"embeddings": X, "labels": labels}, device="cpu", engine="ivf", checks=["near_duplicate"])
    assert alone.summary["search"]["pairs"]["rule"] == "slack"


def test_the_pair_budget_counts_a_pair_once_when_the_scan_sees_it_from_both_rows():
    """The bucket scan meets a pair from each of its rows: a budget just above the true pair
    count is enough, and one below it stops with the budget's own number in the message."""
    from tamis.errors import PairLimitError
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((60, 16))
    X = centres[rng.integers(0, 60, 1200)] + 0.05 * rng.standard_normal((1200, 16))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    n_true = len(find_pairs(X, 0.95, engine="exact").row_a)
    assert n_true > 1000
    state = {"neighbours_k": 10}
    got = find_pairs(X, 0.95, engine="ivf", state=state, max_pairs=int(n_true * 1.05))
    assert got.info["rule"] == "nearest buckets" and len(got.row_a) >= 0.99 * n_true
    with pytest.raises(PairLimitError, match=f"more than {n_true // 3:,} pairs"):
        find_pairs(X, 0.95, engine="ivf", state={"neighbours_k": 10}, max_pairs=n_true // 3)
