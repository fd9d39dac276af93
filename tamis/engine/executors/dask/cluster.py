"""One distributed scan: the Dask client, the partitioned store, and the executor that runs on the workers.

:func:`open_session` connects (an existing ``Client``, a scheduler address, or a local
cluster of N workers it starts and stops), opens the store as partitions and returns a
:class:`Session`. Its :class:`DaskExecutor` is the run context's executor: the pair search
and the neighbour graph (:mod:`tamis.engine.artifacts`) ask it, as they ask the local one.
It submits one task per block of partitions (:mod:`.tasks`), gathers the small results and
returns them in the shapes the local executor returns, so the checks and the artefact cache
are the same as in one process.

Failures: tasks are pure, so when a worker dies the scheduler re-runs its tasks elsewhere
(up to Dask's ``distributed.scheduler.allowed-failures``, 3 by default). A task that still
cannot finish (``KilledWorker``) or a lost scheduler ends the scan with a
:class:`ClusterError`; errors tamis raises on purpose in a task (a corrupt shard: an
:class:`~tamis.errors.InputError`) reach the caller unchanged. Either way the scan writes
no report.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from typing import Any, Callable, Sequence

import numpy as np

from ...._optional import has_module, optional_import
from ....config import ColumnSpec
from ....errors import ConfigError, TamisError
from ....io.readers import Partition, open_partitioned
from ....io.store import Store
from ...search.exact import sort_pairs
from ...search.registry import choose
from ...search.tiles import PairBudget
from .. import Executor
from .blocked import DiskMatrix
from .tasks import ReadSpec, drop_cache, knn_partition, pair_block

log = logging.getLogger("tamis")

#: engines the Dask executor runs (faiss indexes live in one process)
ENGINES = ("exact", "ivf")


class ClusterError(TamisError, RuntimeError):
    """The Dask cluster could not finish the scan (a worker kept dying, the scheduler went away)."""


class DaskExecutor(Executor):
    """Builds the pair list and the neighbour graph on the cluster's workers.

    What runs where: each task reads and normalises its partitions on its worker and
    returns pairs (three arrays, a few per duplicate) or one partition's (rows, k) lists;
    the client only plans tasks, concatenates and sorts results. Client memory for these
    steps: the results (12 bytes per pair; 12 M k bytes for the graph) and the (N,) valid
    mask; never the embeddings.
    """

    name = "dask"

    def __init__(self, client: Any, spec: ReadSpec | None, partitions: list[Partition], n_workers: int,
                 folder: str):
        self.client = client
        #: the client's local folder: the normalised matrix is a file in it (:meth:`allocate`)
        self.folder = folder
        self.spec = spec
        self.partitions = partitions
        self.n_workers = max(1, n_workers)
        #: engines used, for the summary; and state the bucketed engines keep between artefacts
        self.engines: dict[str, Any] = {}
        self.state: dict[Any, Any] = {}

    # ------------------------------------------------------------------ artefacts
    def pairs(self, ctx, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """(row_a, row_b, similarity, info) in valid-row space, sorted, as :func:`find_pairs` gives them."""
        parts, counts, offsets = self._layout(ctx)
        engine = self._engine("pairs", ctx.config.engine, len(ctx.valid_rows))
        if engine != "exact":
            from .buckets import bucket_pairs_on
            return bucket_pairs_on(self, ctx, parts, counts, offsets, threshold)
        jobs = [(pair_block, (self.spec, parts[i], parts[j], (counts[i], counts[j]), (offsets[i], offsets[j]),
                              float(threshold), ctx.max_pairs), f"pairs-{threshold}-{parts[i].index}-{parts[j].index}")
                for i in range(len(parts)) for j in range(i, len(parts))]
        found = self.run(jobs, "pair search", budget=PairBudget(ctx.max_pairs, threshold))
        return (*sort_pairs(found, len(ctx.valid_rows), np), {"engine": "exact", "exact": True, "recall": 1.0})

    def knn(self, ctx, k: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """(indices, similarities, info), each (M, k), as :func:`tamis.engine.search.knn_graph` gives them."""
        parts, counts, offsets = self._layout(ctx)
        engine = self._engine("neighbours", ctx.config.engine, len(ctx.valid_rows))
        if engine != "exact":
            from .buckets import bucket_knn_on
            return bucket_knn_on(self, ctx, parts, counts, offsets, k)
        jobs = [(knn_partition, (self.spec, tuple(parts), tuple(counts), tuple(offsets), i, int(k)),
                 f"knn-{k}-{parts[i].index}") for i in range(len(parts))]
        lists = self.run(jobs, "neighbour graph")
        return (np.concatenate([r[0] for r in lists]), np.concatenate([r[1] for r in lists]),
                {"engine": "exact", "exact": True, "recall": 1.0})

    def allocate(self, shape: tuple, dtype: str, xp: Any) -> DiskMatrix:
        """Where the client keeps the normalised matrix: a file in the session's local folder."""
        return DiskMatrix.create(self.folder, shape, dtype)

    def describe(self) -> dict:
        return {"executor": self.name, "engines": dict(self.engines)}

    # ------------------------------------------------------------------ plumbing
    def _layout(self, ctx) -> tuple[list[Partition], list[int], list[int]]:
        """Partitions with valid rows, their valid-row counts and offsets (from ``ctx.valid``)."""
        before = np.concatenate([[0], np.cumsum(ctx.valid, dtype=np.int64)])
        parts, counts, offsets = [], [], []
        for p in self.partitions:
            lo, hi = int(before[p.row0]), int(before[p.row0 + p.n_rows])
            if hi > lo:
                parts.append(p)
                counts.append(hi - lo)
                offsets.append(lo)
        return parts, counts, offsets

    def _engine(self, what: str, asked: str, m: int) -> str:
        """The engine for ``what`` (``pairs`` / ``neighbours``): the one ``auto`` rule of
        :func:`tamis.engine.search.choose`, with the work shared by the workers."""
        if asked == "auto":
            device = "gpu" if self.spec.device == "gpu" else "cpu"
            chosen = choose(what, m, self.spec.dim, device, self.n_workers)
            log.info("distributed %s: %s engine for %d rows on %d workers", what, chosen, m, self.n_workers)
        elif asked not in ENGINES:
            raise ConfigError(f"engine={asked!r} does not run on a Dask cluster (it runs: {', '.join(ENGINES)}, "
                              "auto); scan without --workers/--scheduler to use it")
        else:
            chosen = asked
        self.engines[what] = chosen
        return chosen

    def run(self, jobs: list[tuple[Callable, tuple, str]], what: str, budget: PairBudget | None = None) -> list[Any]:
        """Submit ``(function, args, name)`` jobs, return their results in order.

        Keys carry the scan's token, so two scans on one cluster never share results. With a
        pair ``budget``, each result's pairs (its first array) are counted as it arrives.
        """
        from distributed import as_completed

        futures = [self.client.submit(fn, *args, key=f"tamis-{self.spec.token}-{name}", pure=False)
                   for fn, args, name in jobs]
        index = {f.key: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        try:
            for future, result in as_completed(futures, with_results=True):
                if budget is not None:
                    budget.take(len(result[0]))
                results[index[future.key]] = result
                future.release()
        except TamisError:
            raise
        except Exception as exc:  # noqa: BLE001 - translated below, or re-raised as an internal error
            raise _cluster_error(exc, what) from exc
        finally:
            self.client.cancel([f for f in futures if not f.done()])
        return results


def _cluster_error(exc: Exception, what: str) -> Exception:
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    if isinstance(exc, KilledWorker):
        return ClusterError(f"the {what} failed: its workers died too often ({exc}); Dask re-ran the task and "
                            "gave up. A worker that runs out of memory dies this way: give workers more memory "
                            "(dask worker --memory-limit), use smaller partitions (partition_rows), or raise "
                            "distributed.scheduler.allowed-failures")
    if isinstance(exc, (CommClosedError, OSError, TimeoutError)):
        return ClusterError(f"the {what} lost the Dask cluster ({type(exc).__name__}: {exc}); check that the "
                            "scheduler is still running and reachable, then scan again")
    return exc


# ---------------------------------------------------------------------------- the session
class Session:
    """A distributed scan's resources; :meth:`close` releases them (and stops a cluster it started)."""

    def __init__(self, client: Any, store: Store, executor: DaskExecutor, owned: list[Any], describe: dict):
        self.client = client
        self.store = store
        #: the run context's executor
        self.executor = executor
        self._owned = owned
        self._describe = describe

    def describe(self) -> dict:
        return {**self._describe, "engines": dict(self.executor.engines)}

    def close(self) -> None:
        if self.executor.spec is not None:
            try:
                self.client.run(drop_cache, self.executor.spec.token)
            except Exception as exc:  # noqa: BLE001 - best effort: the workers' folders go with them
                log.info("could not clear the workers' partition caches: %s", exc)
        for thing in reversed(self._owned):
            try:
                thing.close()
            except Exception as exc:  # noqa: BLE001
                log.info("closing %s: %s", type(thing).__name__, exc)
        shutil.rmtree(self.executor.folder, ignore_errors=True)


def open_session(source: Any, columns: ColumnSpec, *, client: Any = None, workers: int | None = None,
                 scheduler: str | None = None, device: str = "auto", precision: str = "float32",
                 partition_rows: int | None = None, metadata: Sequence[str] | None = ()) -> Session:
    """Connect to Dask and open ``source`` (a path in any format tamis reads) as partitions; the
    client also reads the ``metadata`` columns (:func:`~tamis.io.readers.open_partitioned`)."""
    given = [name for name, v in (("client", client), ("workers", workers), ("scheduler", scheduler)) if v is not None]
    if len(given) > 1:
        raise ConfigError(f"{' and '.join(given)} were both given; pass one: a Dask client, a scheduler address, "
                          "or a number of local workers")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers={workers!r} is not a positive integer; pass e.g. workers=2")
    if partition_rows is not None and (isinstance(partition_rows, bool) or not isinstance(partition_rows, int)
                                       or partition_rows < 1):
        raise ConfigError(f"partition_rows={partition_rows!r} is not a positive integer; pass e.g. 262144")
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError("a distributed scan reads a store from a path the workers can read; save the data "
                          "first (e.g. np.savez('store.npz', embeddings=..., labels=...)), or scan it without a "
                          "cluster")
    optional_import("distributed")
    store, partitions = open_partitioned(source, columns, partition_rows, metadata)
    owned: list[Any] = []
    folder = tempfile.mkdtemp(prefix="tamis-scan-")
    try:
        if client is None:
            client = _connect(workers, scheduler, device, owned)
        n_workers = len(client.nthreads())
        if n_workers == 0:
            raise ClusterError(f"the Dask cluster at {client.scheduler.address} has no workers; start some "
                               "(dask worker ADDRESS, or dask-cuda-worker ADDRESS on GPU nodes)")
        spec = None
        if store.embeddings is not None:
            spec = ReadSpec(token=uuid.uuid4().hex[:12], column=store.embeddings.column,
                            dim=store.embeddings.shape[1], precision=precision, device=device)
        describe = {"scheduler": client.scheduler.address, "n_workers": n_workers,
                    "n_partitions": len(partitions), "worker_device": device,
                    "started_local_cluster": workers is not None}
        return Session(client, store, DaskExecutor(client, spec, partitions, n_workers, folder), owned, describe)
    except BaseException:
        for thing in reversed(owned):
            thing.close()
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _connect(workers: int | None, scheduler: str | None, device: str, owned: list) -> Any:
    distributed = optional_import("distributed")
    if scheduler is not None:
        try:
            client = distributed.Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {scheduler!r} ({exc}); start one with "
                               "'dask scheduler' and pass its address, e.g. tcp://host:8786") from exc
        owned.append(client)
        return client
    cluster = _local_cluster(workers, device, distributed)
    owned.append(cluster)
    client = distributed.Client(cluster)
    owned.append(client)
    return client


def _local_cluster(workers: int, device: str, distributed: Any) -> Any:
    """``LocalCUDACluster`` (one worker per GPU, at most ``workers``) when GPUs and dask-cuda are
    there and the device allows it; ``LocalCluster`` of ``workers`` processes otherwise."""
    if device != "cpu" and has_module("dask_cuda"):
        from ...backend import gpu_available

        if gpu_available():
            import cupy
            from dask_cuda import LocalCUDACluster

            n_gpus = cupy.cuda.runtime.getDeviceCount()
            visible = ",".join(str(i) for i in range(min(workers, n_gpus)))
            log.info("starting a LocalCUDACluster on GPUs %s", visible)
            return LocalCUDACluster(CUDA_VISIBLE_DEVICES=visible, dashboard_address=":0", silence_logs=logging.ERROR)
    threads = max(1, (os.cpu_count() or 1) // workers)
    log.info("starting a LocalCluster of %d workers x %d threads", workers, threads)
    return distributed.LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                                    dashboard_address=":0", silence_logs=logging.ERROR)


__all__ = ["DaskExecutor", "ClusterError", "Session", "open_session"]
