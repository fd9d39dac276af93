"""Distributed and out-of-core scans on a Dask cluster (the Dask executor).

``tamis.scan(store, client=...)`` (or ``workers=N``, ``scheduler=ADDRESS``; the CLI's
``--workers`` / ``--scheduler``) runs a scan whose heavy steps happen on Dask workers and
whose client never holds the embedding matrix. The store is any format a reader of
:mod:`tamis.io.readers` reads from a path every worker can read (each reader cuts it into row
partitions: Parquet into whole row groups). The answers are those of a single-process scan
with the same engines.

What is distributed
    The two quadratic artefacts every duplicate- and neighbour-based check shares: the
    near-duplicate pair list (at the lowest threshold the checks ask for) and the kNN graph.
    Tasks run over blocks of partitions (row ranges with global row offsets); each
    worker reads and normalises the partitions it needs itself (:mod:`.tasks`) and returns
    pairs or (rows, k) neighbour lists, which the client gathers into the run context under
    the keys the checks use. The engines are those of :mod:`tamis.engine.search`, with the
    same ``auto`` rule (the work shared by the workers) and the same code: with ``exact`` a
    task is one :func:`~tamis.engine.search.exact.pairs_in_block` (upper triangle of
    partition pairs) or one partition's certified top-k against every partition
    (:func:`~tamis.engine.search.exact.exact_rows`), so the pairs and neighbour lists are
    those of a single-process scan bit for bit; ``ivf`` (:mod:`.buckets`) restricts both to
    the k-means buckets of the local ivf engine, fitted on a sample, and measures its recall.

What stays on the client, in blocks
    The linear passes and the checks themselves: validity and normalisation (the normalised
    matrix goes to a local file, :class:`~tamis.engine.executors.dask.blocked.DiskMatrix`), exact-duplicate
    hashing, class centroids, groups, label votes, the report. Client memory is O(N) for the
    per-row columns (labels, ids, the valid mask, scores: tens of bytes per row), the pair
    list (12 bytes per pair), the neighbour graph (12 k bytes per row) and what the checks
    derive from it (label_error: O(N x classes)), plus one partition (``rows x d x 4`` bytes) and
    64 MiB blocks; never O(N d). Measured on a 2-core machine (``bench/bench_out_of_core.py``,
    d=256): the duplicate-family checks take ~0.9 GB plus ~110 bytes per row (1.9 GB at 10M rows);
    the linear passes ran at ~50 us per row on one core (Parquet decoding included).

Nothing here imports Dask until a distributed scan starts (``pip install 'tamis[dask]'``).
"""

from __future__ import annotations

from .cluster import ClusterError, DaskExecutor, Session, open_session

__all__ = ["DaskExecutor", "ClusterError", "Session", "open_session"]
