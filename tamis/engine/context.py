"""The run context: the store, the backend, and the artefacts checks share.

Expensive things are built once per run, on first use, and cached here (cleanlab's
shared kNN graph): the valid-row mask, the L2-normalised embedding matrix on the
device, label and split codes, and later the neighbour graph and pair lists
(:mod:`tamis.engine.artifacts`, built by the context's executor: here, or on a Dask
cluster, the context never asks which). Checks read them as properties or through
:meth:`RunContext.artifact`; :meth:`RunContext.built` lists what one kind holds so far.

Row spaces: ``ctx.n`` input rows; ``ctx.valid`` marks the rows whose embedding is
finite and non-zero (all rows when the store has no embeddings); ``ctx.embeddings`` holds
the valid rows only, in input order, and ``ctx.valid_rows`` maps its rows back to input
positions. :meth:`RunContext.to_rows` scatters per-valid-row values back to all rows.

A scan against a reference (``--against``) holds the reference's index
(:class:`~tamis.engine.reference.Reference`, ``ctx.reference``): its rows are *positions*
``0 .. ctx.reference.n - 1``, labels and splits are numbered over the batch's values and the
reference's together (so a reference row's label votes in the batch's label space:
:meth:`RunContext.reference_codes`), and the neighbour graph of the batch's rows reaches into the
reference (:func:`tamis.engine.artifacts.neighbours`).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config import ScanConfig, default_max_pairs
from ..errors import InputError
from ..io.images import scan_image_root
from ..io.labels import encode
from ..io.store import Store
from .backend import Backend
from .executors import Executor
from .executors.local import LocalExecutor
from .progress import Progress
from .search.tiles import parallel_map, plan_for

log = logging.getLogger("tamis")

#: rows per block when normalising: bounds the temporary float64 block to ~8 MiB (64 MiB blocks
#: measured 10x slower on a 2-core VM: every fresh block page-faults in)
NORMALISE_BLOCK_BYTES = 8 << 20


class RunContext:
    """Everything one scan shares between its checks."""

    def __init__(self, store: Store, backend: Backend, config: ScanConfig | None = None, *,
                 executor: Executor | None = None, progress: Progress | None = None, reference: Any = None):
        self.store = store
        #: the scanned store a batch is judged against (``--against``), or None
        self.reference = reference
        #: the scan's settings (threshold, engine, k, search parameters, precision, ...)
        self.config = config or ScanConfig()
        #: what builds the pair list and the neighbour graph (here, or on a Dask cluster's workers)
        self.executor = executor or LocalExecutor()
        #: what the similarity search ran (engine, exactness, measured recall), for summary.json
        self.search_info: dict[str, dict] = {}
        #: shared between the pair search and the neighbour graph (e.g. the ivf engine's k-means;
        #: ``"neighbours_k"``, set when a check will read the graph, lets both share one scan)
        self.search_state: dict = {}
        self.backend = backend
        self.xp = backend.xp
        self.progress = progress or Progress(enabled=False)
        self.timings: dict[str, float] = {}
        self._cache: dict[Any, Any] = {}

    # ------------------------------------------------------------------ generic cache
    def artifact(self, key: Any, build: Callable[[], Any]) -> Any:
        """The artefact stored under ``key``, built by ``build()`` on first use."""
        if key not in self._cache:
            name = key if isinstance(key, str) else "/".join(map(str, key))
            with self.timed(f"artifact:{name}"):
                self._cache[key] = build()
        return self._cache[key]

    def built(self, kind: str) -> dict[Any, Any]:
        """The artefacts of one ``kind`` built so far, by their parameter: ``ctx.artifact((kind, p), ...)``
        stored under ``p`` (e.g. ``built("knn")`` maps each k built to its graph)."""
        return {key[1]: value for key, value in self._cache.items()
                if isinstance(key, tuple) and len(key) == 2 and key[0] == kind}

    def built_all(self, kind: str) -> list[tuple[tuple, Any]]:
        """Every artefact of ``kind`` built so far, whatever its parameters, in build order, as
        ``(the rest of its key, value)``: for a check that reuses what another one built (e.g. the
        class probabilities label_error built) without building it itself."""
        return [(key[1:], value) for key, value in self._cache.items()
                if isinstance(key, tuple) and key and key[0] == kind]

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.backend.synchronize()
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    @property
    def max_pairs(self) -> int:
        """The pair budget of this run: the scan's ``max_pairs``, else :func:`~tamis.config.default_max_pairs`."""
        return self.config.max_pairs if self.config.max_pairs is not None else default_max_pairs()

    @property
    def image_root(self) -> Path | None:
        """The resolved folder image paths are read from and confined to: the scan's ``image_root``,
        else the store's folder; None for an in-memory store given none (:mod:`tamis.io.images`)."""
        return scan_image_root(self.store.source, self.config.image_root)

    # ------------------------------------------------------------------ rows
    @property
    def n(self) -> int:
        return self.store.n

    @property
    def valid(self) -> np.ndarray:
        """(N,) bool: rows with a usable embedding (all rows when there are no embeddings)."""
        return self._normalised()[0]

    @property
    def valid_rows(self) -> np.ndarray:
        """Input positions of the valid rows, ascending."""
        return self.artifact("valid_rows", lambda: np.flatnonzero(self.valid))

    @property
    def embeddings(self) -> Any:
        """(M, d) L2-normalised embeddings of the valid rows, on the backend's device."""
        matrix = self._normalised()[1]
        if matrix is None:
            raise InputError(f"{self.store.source}: this check needs embeddings, and the store has none")
        return matrix

    def to_rows(self, values: Any, fill: Any = np.nan, dtype: Any = None) -> np.ndarray:
        """Scatter per-valid-row ``values`` (length M) to a host array over all N rows."""
        host = self.backend.to_host(values)
        out = np.full(self.n, fill, dtype=dtype or host.dtype)
        out[self.valid_rows] = host
        return out

    def _normalised(self) -> tuple[np.ndarray, Any]:
        return self.artifact("normalised", self._normalise)

    def _normalise(self) -> tuple[np.ndarray, Any]:
        emb = self.store.embeddings
        if emb is None:
            return np.ones(self.n, dtype=bool), None
        xp, n, d = self.xp, emb.shape[0], emb.shape[1]
        block = max(1, NORMALISE_BLOCK_BYTES // (8 * max(d, 1)))
        m, r = np.empty(n, dtype=np.float64), np.empty(n, dtype=np.float64)
        plan = plan_for(xp)   # both passes in row blocks on the CPU's threads (the output's page faults too)

        def scales(start: int) -> int:
            part = emb[start:start + block]
            pm, pr = row_scales(part, xp)
            m[start:start + block], r[start:start + block] = self.backend.to_host(pm), self.backend.to_host(pr)
            return len(part)

        def normalise(start: int) -> int:
            take = rows[start:start + block]
            part = emb[start:start + len(take)] if contiguous else emb[take]
            out[start:start + len(take)] = scaled_rows(part, m[start:start + block], r[start:start + block], xp)
            return len(take)

        with self.progress.task("check embeddings", total=2 * n) as advance:
            for done in parallel_map(scales, list(range(0, n, block)), plan):  # pass 1: every row's scale, float64
                advance(done)
            valid = usable(m, r, np)
            rows = np.flatnonzero(valid)
            out = self.executor.allocate((len(rows), d), self.config.precision, xp)
            m, r = m[rows], r[rows]
            contiguous = len(rows) == n
            for done in parallel_map(normalise, list(range(0, len(rows), block)), plan):  # pass 2: valid rows
                advance(done)
            advance(n - len(rows))
        if not valid.all():
            log.info("%d of %d rows have unusable embeddings (NaN, inf or all zeros)", n - len(rows), n)
        return valid, out

    def describe_rows(self, rows: np.ndarray) -> dict[str, pa.Array]:
        """``id`` and ``path`` of ``rows`` (the row number where the store has no ids; null paths)."""
        take = pa.array(np.asarray(rows, dtype=np.int64))
        ids = self.store.ids.take(take) if self.store.ids is not None else take
        paths = self.store.paths.take(take) if self.store.paths is not None else pa.nulls(len(take), pa.string())
        return {"id": ids, "path": paths}

    # ------------------------------------------------------------------ labels and splits
    @property
    def label_codes(self) -> np.ndarray:
        """(N,) int64 index into :attr:`label_names` for every input row."""
        return self._labels()[0]

    @property
    def label_names(self) -> list:
        """The classes, sorted; with integer labels and pred_probs, 0..C-1 (pred_probs' columns)."""
        return self._labels()[1]

    @property
    def label_type(self) -> pa.DataType:
        """The Arrow type of the labels: tables holding label values use it (a uint64 label >= 2**63
        fits no int64)."""
        return self._need("labels").type

    def _labels(self) -> tuple[np.ndarray, list]:
        def build() -> tuple[np.ndarray, list]:
            labels = self._need("labels")
            if self.store.pred_probs is not None and pa.types.is_integer(labels.type):
                return labels.to_numpy(zero_copy_only=False).astype(np.int64), \
                    list(range(self.store.pred_probs.shape[1]))
            return self._encode(labels, "label")
        return self.artifact("labels", build)

    def _encode(self, values: Any, column: str) -> tuple[np.ndarray, list]:
        """Codes of the batch's ``values`` over its distinct values, and in a scan against a
        reference over the reference's ``column`` values too."""
        theirs = None if self.reference is None else self.reference.column(column)
        if theirs is None:
            return encode(values)
        ours, theirs = _common_type(values, theirs, column, str(self.store.source), str(self.reference.index.folder))
        distinct = pc.unique(theirs)
        chunks = list(ours.chunks) if isinstance(ours, pa.ChunkedArray) else [ours]
        codes, names = encode(pa.chunked_array(chunks + [pc.cast(distinct, ours.type)], type=ours.type))
        return codes[:len(values)], names

    def reference_codes(self, kind: str) -> np.ndarray:
        """(reference rows,) int64 code of each reference row's label (``kind`` "labels") or split
        ("split") in this run's numbering (:attr:`label_names`, :attr:`split_names`)."""
        column = {"labels": "label", "split": "split"}[kind]

        def build() -> np.ndarray:
            theirs = self.reference.column(column)
            if theirs is None:
                raise InputError(f"{self.reference.index.folder}: the reference index holds no {column}s, so its "
                                 f"rows cannot be compared by {column}; leave the checks that need them out")
            names = self.label_names if kind == "labels" else self.split_names
            if kind == "labels" and self.store.pred_probs is not None and pa.types.is_integer(self.label_type):
                codes = np.asarray(theirs.to_numpy(), dtype=np.int64)
                bad = (codes < 0) | (codes >= len(names))
                if bad.any():
                    raise InputError(f"{self.reference.index.folder}: reference label {int(codes[bad][0])} is outside "
                                     f"the {len(names)} classes of the batch's pred_probs; give pred_probs one column "
                                     "per class of the reference too")
                return codes
            _, theirs = _common_type(self._need(kind), theirs, column, str(self.store.source),
                                     str(self.reference.index.folder))
            value_set = pa.array(names, type=theirs.type)
            return np.asarray(pc.index_in(theirs, value_set=value_set).fill_null(-1).to_numpy(), dtype=np.int64)
        return self.artifact(("reference_codes", kind), build)

    @property
    def split_codes(self) -> np.ndarray:
        return self._splits()[0]

    @property
    def split_names(self) -> list:
        return self._splits()[1]

    def _splits(self) -> tuple[np.ndarray, list]:
        return self.artifact("splits", lambda: self._encode(self._need("split"), "split"))

    @property
    def group_codes(self) -> np.ndarray | None:
        """(N,) int64 code of each row's group (the image an object crop comes from), or None."""
        if self.store.groups is None:
            return None
        return self.artifact("groups", lambda: encode(self.store.groups)[0])

    def across_groups(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(len(a),) bool: the pairs of input rows ``(a, b)`` whose rows come from different groups
        (all of them when the store has no groups)."""
        codes = self.group_codes
        return np.ones(len(a), dtype=bool) if codes is None else codes[a] != codes[b]

    def _need(self, name: str) -> Any:
        value = getattr(self.store, name)
        if value is None:
            raise InputError(f"{self.store.source}: this check needs {name}, and the store has none")
        return value


def _common_type(ours: Any, theirs: Any, column: str, source: str, folder: str) -> tuple[Any, Any]:
    """The batch's and the reference's values of ``column`` cast to one Arrow type (integers to
    int64, strings to string, floats to float64); an InputError when they are of different kinds."""
    def plain(values: Any) -> Any:
        return pc.cast(values, values.type.value_type) if pa.types.is_dictionary(values.type) else values

    ours, theirs = plain(ours), plain(theirs)
    if ours.type == theirs.type:
        return ours, theirs
    for test, target in ((pa.types.is_integer, pa.int64()), (lambda t: pa.types.is_string(t) or
                                                            pa.types.is_large_string(t), pa.string()),
                         (pa.types.is_floating, pa.float64())):
        if test(ours.type) and test(theirs.type):
            return pc.cast(ours, target), pc.cast(theirs, target)
    raise InputError(f"{source}: the batch's {column}s are {ours.type} and the reference's ({folder}) are "
                     f"{theirs.type}; give the batch {column}s of the reference's kind (e.g. the same class names)")


def row_scales(rows: Any, xp: Any) -> tuple[Any, Any]:
    """``(m, r)`` per row, in float64: ``m`` the largest ``|x|`` and ``r`` the L2 norm of ``x / m``, so the
    norm is ``m r`` without overflow or underflow (float64 rows near 1e300 or 1e-300 stay usable);
    float32 and float16 rows cannot overflow float64 squares, so for them ``m`` is 1.
    A row is usable when both are finite and positive (NaN / inf entries give NaN / inf; zeros give 0).
    Row by row, so the same bits for any block and on every worker."""
    part = xp.asarray(rows, dtype=xp.float64)
    if np.dtype(rows.dtype).itemsize <= 4:   # float32 / float16: squares cannot over- or underflow float64
        r = xp.sqrt(xp.einsum("ij,ij->i", part, part))
        return xp.ones(part.shape[0]), r
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        m = xp.max(xp.abs(part), axis=1) if part.shape[1] else xp.zeros(part.shape[0])
        unit = part / xp.where(m > 0, m, 1.0)[:, None]
        r = xp.sqrt(xp.einsum("ij,ij->i", unit, unit))
    return m, r


def usable(m: Any, r: Any, xp: Any) -> Any:
    """Rows whose :func:`row_scales` are finite and positive."""
    return xp.isfinite(m) & (m > 0) & xp.isfinite(r) & (r > 0)


def scaled_rows(rows: Any, m: Any, r: Any, xp: Any) -> Any:
    """The usable ``rows`` L2-normalised, bit for bit the same on every worker: float64 rows as
    ``(x / m) / r`` in float64, then float32; float32 / float16 rows as ``x * (1 / r)`` in float32."""
    if np.dtype(rows.dtype).itemsize <= 4:   # float32 arithmetic, as fast as it was: no range to guard
        inverse = 1.0 / (xp.asarray(m, dtype=xp.float64) * xp.asarray(r, dtype=xp.float64))
        return xp.asarray(rows, dtype=xp.float32) * inverse.astype(xp.float32)[:, None]
    part = xp.asarray(rows, dtype=xp.float64)
    m = xp.asarray(m, dtype=xp.float64)[:, None]
    r = xp.asarray(r, dtype=xp.float64)[:, None]
    return ((part / m) / r).astype(xp.float32)
