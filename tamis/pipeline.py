"""One scan: load the store, choose the backend, run the checks, assemble the report.

:func:`scan` is the Python API; the CLI calls it too. Each registered check whose
inputs the store holds is run; the others are reported under ``checks_skipped`` with the
reason. Asking for a check by name whose inputs are missing is an error.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ._version import __version__
from .checks import REGISTRY, CheckResult, make_checks
from .checks.shared.reference import matches_table
from .config import (
    DEFAULT_K,
    DEFAULTS,
    NEAR_DUPLICATE_SWEEP,
    ColumnSpec,
    ScanConfig,
    parse_fail_on,
    summarise,
)
from .engine.artifacts import choose_threshold, largest_graph
from .engine.backend import Backend, resolve_backend, to_host
from .engine.context import RunContext
from .engine.progress import Progress
from .engine.projection import column_prefix
from .engine.reference import Reference, assign, index_data
from .errors import ConfigError, InputError
from .io.images import check_image_root
from .io.index_file import OpenIndex, append_segment, describe
from .io.readers import load_store
from .io.store import Store
from .report.folder import check_destination, destination, open_reference, replace_report
from .report.model import Report

log = logging.getLogger("tamis")


def scan(source: Any, *, checks: list[str] | str | None = DEFAULTS.checks, params: dict[str, dict] | None = None,
         device: str | Backend = DEFAULTS.device, precision: str = DEFAULTS.precision,
         projection: str = DEFAULTS.projection, projection_dims: int = DEFAULTS.projection_dims,
         threshold: float = DEFAULTS.threshold, engine: str = DEFAULTS.engine, k: int | None = DEFAULTS.k,
         max_pairs: int | None = DEFAULTS.max_pairs, fail_on: str | list | None = None,
         near_duplicate_fraction: float | None = DEFAULTS.near_duplicate_fraction,
         exclude_by: str = DEFAULTS.exclude_by,
         search_params: dict | None = None, columns: ColumnSpec | dict | None = None,
         metadata_cols: list[str] | str | None = DEFAULTS.metadata_cols, progress: bool = False,
         out: str | None = None, plots: bool = False, image_root: str | None = None,
         client: Any = None, workers: int | None = None, scheduler: str | None = None,
         partition_rows: int | None = None, save_index: bool = False,
         against: str | os.PathLike | None = None) -> Report:
    """Scan an embedding store and return a :class:`~tamis.report.model.Report`.

    Parameters
    ----------
    source : path (.npz, .npy, Parquet file or folder, Arrow/Feather) or in-memory data
        (N x d NumPy/CuPy array, dict of columns, pandas/cuDF DataFrame, pyarrow Table).
    checks : names of the checks to run (default: every check whose inputs are present).
    params : per-check parameters, e.g. ``{"class_imbalance": {"min_fraction": 0.1}}``.
    device : "auto" (GPU when usable, else CPU), "cpu" or "gpu".
    precision : "float32", or "float16" to halve the memory of the normalised matrix.
    projection : "none" (the API's default: fastest), "auto" (tamis' UMAP; PCA for a store too
        small for it, and the summary says which ran), "umap" (tamis' own layout of the run's
        neighbour graph), "umap-learn" (umap-learn's, for comparison), "tsne" (openTSNE) or "pca".
        The coordinates become the ``<method>_x``, ``<method>_y`` (and ``_z``) columns of samples
        (``umap_x``... for either UMAP).
    projection_dims : 2 or 3.
    threshold : cosine similarity at or above which two rows are near duplicates; the default of
        every duplicate-family check's own ``threshold`` parameter.
    engine : the similarity search behind the pairs and the neighbour graph
        (:mod:`tamis.engine.search`): "auto" (exact for small stores, else ivf, by one rule on
        both devices and executors), "exact" (identical answers everywhere), "ivf" (tamis'
        inverted file, recall measured), or "faiss" (when installed). ``summary.json`` ->
        ``search`` records what ran and its measured recall.
    k : neighbours per row in the shared neighbour graph (label errors, outliers, split shift);
        default 10, lowered to (valid rows - 1) for tiny stores. An explicit k >= valid rows is an error.
    max_pairs : the most near-duplicate pairs the scan may hold (default: a quarter of this
        machine's memory at ~100 bytes a pair); a threshold that gives more stops with a
        :class:`~tamis.errors.PairLimitError` (exit 2) before memory runs out, and the
        near-duplicate sweep below the threshold is cut instead where only the sweep exceeds it.
    near_duplicate_fraction : choose the threshold instead: the lowest of the near-duplicate sweep's
        (0.90 .. 0.995) at which at most this share of the valid rows has a near duplicate;
        ``summary.json -> threshold_choice`` records it, the share at each and why.
    exclude_by : "row", or "group" to drop every row of an image (``columns={"group": ...}``) one of
        whose rows is excluded.
    fail_on : conditions on the findings, e.g. ``"leakage>0,label_error>2%,near_duplicate>=1000"``
        (counts, or shares of the rows): ``summary.json -> gate`` records each, and
        :meth:`Report.gate_failures` lists the violated ones (the CLI exits 3 on any).
    search_params : parameters of the chosen engine, e.g. ``{"n_buckets": 500}`` (ivf) or
        ``{"index": "ivf", "nprobe": 16}`` (faiss); the CLI's ``--param search.NAME=VALUE``.
    columns : which column holds what (a :class:`ColumnSpec` or a dict with its fields).
    metadata_cols : the other columns the ``metadata`` check reads (a list or a comma-separated
        string); default: every column that holds no input. Only read when a check reads them.
    progress : show progress bars on stderr.
    out : when given, the report is also saved into this folder (with ``report.html``).
    plots : with ``out``, also write PNG plots (needs matplotlib).
    image_root : the folder image paths are resolved against, for the image_properties check and the
        thumbnails (default: the store's folder; an in-memory store has none for the check, the working
        directory for thumbnails); paths outside it are never read.
    client, workers, scheduler : run the heavy steps on a Dask cluster (``pip install 'tamis[dask]'``):
        an existing ``distributed.Client``, a number of local worker processes to start (a
        ``LocalCUDACluster`` with one worker per GPU where there are GPUs and dask-cuda), or a
        scheduler address to join. ``source`` must then be a path (in any format above) the
        workers can read; the client keeps no embedding matrix in memory (except an .npz
        store's, whose members cannot be read in parts) and runs on its CPU, ``device`` applies
        to the workers. See :mod:`tamis.engine.executors.dask`.
    partition_rows : with a cluster, rows per partition (Parquet: whole row groups; default
        ~64 MiB of float32 embeddings).
    save_index : with ``out``, also write the store's index into the report folder (``index/``:
        the normalised valid rows at ``precision``, their ids, labels, splits and paths, a quantiser
        for large stores, the fingerprint; :mod:`tamis.io.index_file`), for later scans ``against`` it.
    against : a report folder written with ``save_index``: scan ``source`` as a new batch against
        that store without rescanning it (:mod:`tamis.engine.reference`): the duplicate checks also
        pair batch rows with reference rows (``reference_matches`` table; the batch's copies are
        flagged and excluded), and the neighbour-based checks judge each batch row by its
        neighbours among the reference's rows and the batch's. The batch is normalised at the
        index's precision. A folder with no index, an index of another report, a changed index
        file or another dimension is an :class:`~tamis.errors.InputError`, never a rescan.
    """
    started = time.perf_counter()
    if isinstance(checks, str):
        checks = [c.strip() for c in checks.split(",") if c.strip()]
    if isinstance(metadata_cols, str):
        metadata_cols = [c.strip() for c in metadata_cols.split(",") if c.strip()]
    config = ScanConfig(device=device.name if isinstance(device, Backend) else device, checks=checks,
                        params={} if params is None else params, precision=precision, projection=projection,
                        projection_dims=projection_dims, threshold=threshold, engine=engine, k=k,
                        search_params={} if search_params is None else search_params, columns=ColumnSpec.of(columns),
                        max_pairs=max_pairs, near_duplicate_fraction=near_duplicate_fraction,
                        exclude_by=exclude_by, image_root=None if image_root is None else str(image_root),
                        metadata_cols=metadata_cols).validate()
    selected = make_checks(config.checks, config.params)  # unknown names fail before any work
    if config.metadata_cols is not None and not _reads_metadata(selected):
        raise ConfigError(f"metadata_cols names {', '.join(map(repr, config.metadata_cols))}, but no check of this "
                          "scan reads metadata columns (the metadata check does): add it or drop --metadata-cols")
    gate = parse_fail_on(fail_on)
    for condition in gate:
        if condition.name not in REGISTRY:
            raise ConfigError(f"--fail-on names {condition.name!r}, which is no check; the checks are: "
                              f"{', '.join(REGISTRY)}")
    if image_root is not None:   # not a folder: an error now, not after the scan
        check_image_root(image_root)
    if out is not None:   # an unwritable --out fails now, not after the scan
        check_destination(out, source, plots=plots, image_root=image_root)
    reference = _reference(config, against, save_index, out, client, workers, scheduler)
    with destination(out) if out is not None else contextlib.nullcontext() as folder:
        report = _scan(source, config, selected, device, progress, client, workers, scheduler, partition_rows,
                       started, reference, save_index)
        if gate:
            report.summary["gate"] = _gate(report, gate)
        if folder is not None:
            t0 = time.perf_counter()
            replace_report(report, folder, plots=plots, image_root=image_root)
            report.summary["timings"]["write"] = time.perf_counter() - t0
    return report


def _reference(config: ScanConfig, against: Any, save_index: bool, out: Any, client: Any, workers: Any,
               scheduler: Any) -> OpenIndex | None:
    """Check the index options before any work, and open the ``against`` index (checked against its
    fingerprint); the batch then takes the index's precision."""
    distributed = client is not None or workers is not None or scheduler is not None
    if save_index and out is None:
        raise ConfigError("save_index=True needs an out folder: the index is written into the report folder "
                          "(--out DIR)")
    if distributed and (save_index or against is not None):
        raise ConfigError("--save-index and --against run in one process; scan without a cluster (--workers, "
                          "--scheduler)")
    if against is None:
        return None
    if config.engine == "faiss":
        raise ConfigError("--against searches the saved buckets or exactly, not with FAISS: use --engine auto, "
                          "exact or ivf")
    if out is not None and Path(out).resolve() == Path(against).resolve():
        raise ConfigError(f"--out {out} is the --against folder: the batch's report would replace the reference's "
                          "report and index; write it elsewhere")
    index = open_reference(against)
    if config.precision == "float16" and index.dtype == "float32":
        raise ConfigError(f"{against}: the index stores float32 rows and --precision float16 asks for float16: a "
                          "batch is compared at the index's precision; drop --precision")
    if config.precision != index.dtype:
        log.info("against %s: the batch is normalised at the index's precision, %s", against, index.dtype)
    config.precision = index.dtype
    return index


def add_to_index(report_dir: str | os.PathLike, source: Any, *, columns: ColumnSpec | dict | None = None,
                 device: str | Backend = DEFAULTS.device) -> dict:
    """Append the valid rows of the store ``source`` (an accepted batch) to the index of the report
    folder ``report_dir`` (written with ``save_index``): ``tamis index add REPORT_DIR NEW``.

    The index is checked first (as for ``against``); the batch must have the index's dimension,
    ids (the index's rows are named by id) none of which the index holds yet, and the index's
    label, split and path columns. Its rows are normalised at the index's precision, put in the
    nearest bucket where the index has a quantiser, and written as a new segment; the new
    manifest (and fingerprint) replaces the old one last, under the folder's lock, so a reader
    sees the old index or the new one. Rows with unusable embeddings are left out. Returns what
    was done: ``rows_added``, ``rows_left_out``, ``rows`` (now), ``fingerprint`` (now).
    """
    folder = Path(report_dir)
    open_reference(folder)   # a clear error for a folder with no index, before the lock file is made
    with destination(folder):
        index = open_reference(folder, locked=True)
        store = load_store(source, ColumnSpec.of(columns), metadata=())
        if store.embeddings is None or store.dim != index.dim:
            seen = "no embeddings" if store.embeddings is None else f"{store.dim}-dimensional embeddings"
            raise InputError(f"{store.source}: the batch has {seen}, the index of {folder} holds "
                             f"{index.dim}-dimensional rows; add a batch embedded by the reference's model (or name "
                             "--embedding-col)")
        backend = device if isinstance(device, Backend) else resolve_backend(device)
        ctx = RunContext(store, backend, ScanConfig(precision=index.dtype))
        rows = ctx.valid_rows
        if not len(rows):
            raise InputError(f"{store.source}: no row has a usable embedding (NaN, inf or all zeros); nothing to add")
        table = _index_rows(store, rows, index, folder)
        bucket = cos = None
        if index.centroids is not None:
            bucket, cos = assign(ctx.embeddings, index.centroids, ctx.xp)
        manifest = append_segment(index, to_host(ctx.embeddings), table, bucket, cos, str(store.source))
    return {"folder": str(folder), "rows_added": int(len(rows)), "rows_left_out": int(store.n - len(rows)),
            "rows": int(manifest["n_rows"]), "fingerprint": manifest["fingerprint"]}


def _index_rows(store: Store, rows: np.ndarray, index: OpenIndex, folder: Path) -> pa.Table:
    """The rows table of a batch's new segment, in the index's columns and types; an InputError for a
    missing column or an id the index (or the batch) already holds."""
    take = pa.array(rows)
    if store.ids is None:
        raise InputError(f"{store.source}: the batch has no id column; the index names its rows by id, so a batch "
                         "needs ids no row of the index has (name the column with --id-col)")
    columns = {"row": take}
    schema = index.rows[0].schema
    for name, value in (("id", store.ids), ("label", store.labels), ("split", store.split), ("path", store.paths)):
        if name not in schema.names:
            continue
        if value is None:
            raise InputError(f"{store.source}: the index of {folder} holds {name}s and the batch has none; name the "
                             f"batch's column (--{name}-col)")
        try:
            columns[name] = pc.cast(value.take(take), schema.field(name).type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise InputError(f"{store.source}: the batch's {name}s ({value.type}) cannot be the index's "
                             f"({schema.field(name).type}): {exc}") from exc
    known = index.column("id")
    repeated = pc.is_in(columns["id"], value_set=pc.unique(known)).fill_null(False)
    if pc.any(repeated).as_py():
        first = columns["id"].filter(repeated)
        raise InputError(f"{store.source}: {len(first):,} of the batch's ids are in the index of {folder} already "
                         f"(e.g. {first[0].as_py()!r}); a row is added once: drop those rows or give new ids")
    return pa.table(columns)


def _gate(report: Report, gate: list) -> list[dict]:
    """Each ``--fail-on`` condition with the count it saw and whether it is violated (a check that
    did not run violates its conditions: a gate must not pass on a check it never ran)."""
    n = report.summary["store"]["n_rows"]
    out = []
    for condition in gate:
        count = report.summary["issues"].get(condition.name)
        violated = True if count is None else condition.violated(count, n)
        out.append({"condition": str(condition), "count": count, "violated": bool(violated),
                    "reason": "the check did not run" if count is None else
                    f"{count:,} rows ({100 * count / max(1, n):.2f} %)"})
    return out


def _scan(source: Any, config: ScanConfig, selected: list, device: Any, progress: bool, client: Any, workers: Any,
          scheduler: Any, partition_rows: Any, started: float, reference: OpenIndex | None = None,
          save_index: bool = False) -> Report:
    """Load the store (here or as partitions on a Dask cluster) and run the scan."""
    distributed = client is not None or workers is not None or scheduler is not None
    if distributed and config.search_params:
        raise ConfigError(f"search parameters {sorted(config.search_params)} apply to single-process scans; a Dask "
                          "scan uses each engine's defaults: drop them or scan without a cluster")
    timings: dict[str, float] = {}
    # the other columns are read only for a check that reads them (None: all of them)
    metadata = config.metadata_cols if _reads_metadata(selected) else ()
    t0 = time.perf_counter()
    if distributed:  # the client runs the light passes on its CPU; the workers use `device`
        from .engine.executors.dask import open_session

        session = open_session(source, config.columns, client=client, workers=workers, scheduler=scheduler,
                               device=config.device, precision=config.precision, partition_rows=partition_rows,
                               metadata=metadata)
        store, backend = session.store, resolve_backend("cpu")
    else:
        session, backend = None, resolve_backend(device)
        store = load_store(source, config.columns, metadata)
    timings["load"] = time.perf_counter() - t0
    if (reference is not None or save_index) and store.embeddings is None:
        raise InputError(f"{store.source}: the store has no embeddings, and --against / --save-index work on them; "
                         "name the column with --embedding-col")
    if reference is not None and store.dim != reference.dim:
        raise InputError(f"{store.source}: the batch's embeddings have {store.dim} dimensions and the index of "
                         f"{reference.folder.parent} holds {reference.dim}; embed the batch with the reference's "
                         "model (or name the right column with --embedding-col)")
    try:
        return _run(store, backend, config, selected, session, progress, timings, started,
                    None if reference is None else Reference(reference, backend.xp), save_index)
    finally:
        if session is not None:
            session.close()


def _run(store: Store, backend: Backend, config: ScanConfig, selected: list, session: Any, progress: bool,
         timings: dict[str, float], started: float, reference: Reference | None = None,
         save_index: bool = False) -> Report:
    """Run the checks that apply to ``store`` and assemble the report (nothing is written)."""
    if config.exclude_by == "group" and store.groups is None:
        raise ConfigError("exclude_by='group' needs a group column (the image each row comes from): name it with "
                          "--group-col, or exclude by row")
    runnable, skipped = [], []
    available, lacking = store.available, set()
    if reference is not None:   # against a reference, an input its index lacks cannot be compared
        lacking = {name for name, column in (("labels", "label"), ("split", "split"))
                   if name in available and reference.column(column) is None}
        available = available - lacking
    for check in selected:
        reason = check.skip_reason(available)
        if reason is None:
            runnable.append(check)
            continue
        theirs = sorted(lacking & set(check.missing_inputs(available)))
        if theirs:
            reason = (f"needs {', '.join(theirs)}, which the reference index ({reference.index.folder.parent}) does "
                      "not have")
            if config.checks is not None:
                raise ConfigError(f"check {check.name!r} {reason}; rescan the reference with that column and "
                                  "--save-index, or leave the check out")
            skipped.append({"check": check.name, "reason": reason})
            continue
        if config.checks is not None:
            missing = check.missing_inputs(store.available)
            fix = f"name the column (--{_col_option(missing[0].split(' or ')[0])})" if missing else "set it"
            raise ConfigError(f"check {check.name!r} {reason}; {fix} or leave the check out")
        skipped.append({"check": check.name, "reason": reason})
        log.info("skipping %s: %s", check.name, reason)

    results: dict[str, CheckResult] = {}
    with Progress(enabled=progress) as bars:
        ctx = RunContext(store, backend, config, executor=session and session.executor, progress=bars,
                         reference=reference)
        if store.embeddings is not None:
            with ctx.timed("normalise"):
                ctx.valid  # noqa: B018 - build the normalised matrix once, timed on its own
            if not ctx.valid.any():   # not an error: every row is reported invalid, the rest have nothing to see
                reason = (f"leaves rows with unusable embeddings out, and all {ctx.n} rows have one (NaN, inf or "
                          "all zeros): check how the embeddings were computed and saved")
                for check in [c for c in runnable if not c.uses_invalid_rows]:
                    runnable.remove(check)
                    skipped.append({"check": check.name, "reason": reason})
                    log.warning("skipping %s: it %s", check.name, reason)
        for check in list(runnable):   # inputs present, but the scan lacks something else (an image root)
            reason = check.context_skip_reason(ctx)
            if reason is not None:
                if config.checks is not None:
                    raise ConfigError(f"check {check.name!r} {reason}; or leave the check out")
                runnable.remove(check)
                skipped.append({"check": check.name, "reason": reason})
                log.info("skipping %s: %s", check.name, reason)
        choice = None
        if config.near_duplicate_fraction is not None and store.embeddings is not None and ctx.valid.sum() >= 2:
            with ctx.timed("threshold choice"):
                choice = choose_threshold(ctx, config.near_duplicate_fraction, NEAR_DUPLICATE_SWEEP)
            config.threshold = choice["threshold"]   # every duplicate-family check's default from here on
            log.warning("near-duplicate threshold %g: %s", choice["threshold"], choice["reason"])
        if any(check.uses_neighbours for check in runnable):
            # the graph will be built: the pair search shares its bucket scan (lists long enough for k)
            ctx.search_state["neighbours_k"] = config.k or DEFAULT_K
        for check in runnable:
            log.info("running %s", check.name)
            with ctx.timed(f"check:{check.name}"):
                results[check.name] = check.run(ctx)
        projection = _project(ctx, config) if config.projection != "none" and store.embeddings is not None \
            and ctx.valid.sum() >= 2 else None
        index = None
        if save_index:
            with ctx.timed("index"):
                index = index_data(ctx)
    timings.update(ctx.timings)

    timings["total"] = time.perf_counter() - started  # the scan itself; writing is timed apart
    report = _assemble(store, ctx, config, backend, runnable, skipped, results, timings)
    if choice is not None:
        report.summary["threshold_choice"] = choice
    graph = largest_graph(ctx) if reference is None else None   # against a reference it reaches into it
    if graph is not None:
        report.knn = (ctx.valid_rows, ctx.valid_rows[graph[0]], graph[1])
    report.index = index
    if reference is not None:
        _describe_reference(report, ctx, reference)
    if projection is not None:
        coords, info = projection
        report.summary["projection"] = info
        for axis, name in enumerate("xyz"[:coords.shape[1]]):
            report.samples = report.samples.append_column(
                f"{column_prefix(info['method'])}_{name}", pa.array(ctx.to_rows(coords[:, axis].astype(np.float64)), from_pandas=True))
    report.summary["search"] = ctx.search_info
    if session is not None:
        report.summary["distributed"] = session.describe()
    return report


def _describe_reference(report: Report, ctx: RunContext, reference: Reference) -> None:
    """The ``reference_matches`` table and ``summary.json -> reference`` of a scan against a reference."""
    table = matches_table(ctx)
    if table is not None:
        if "reference_matches" in report.tables:
            raise RuntimeError("a check reports table 'reference_matches', the name of the scan's own table")
        report.tables["reference_matches"] = table
    built = ctx.built("reference_pairs")
    verified = list(reference.index.verified.values())
    report.summary["reference"] = {
        "folder": str(reference.index.folder.parent), "report_id": reference.index.manifest["report_id"],
        **describe(reference.index.manifest),
        "files_checked": {"unchanged_since_written": verified.count("stat"), "hashed": verified.count("sha256")},
        "matches": None if not built else {"threshold": float(min(built)), "n_pairs": table.num_rows,
                                           "n_rows": len(set(table["row"].to_pylist()))},
    }


def _project(ctx: RunContext, config: ScanConfig) -> tuple[np.ndarray, dict]:
    """Map coordinates of the valid rows, from the run's neighbour graph where one was built."""
    from .engine.projection import project_or_fallback, project_with_info  # lazy: the map is optional

    graph = largest_graph(ctx) if ctx.reference is None else None   # against a reference it names its rows
    knn = None if graph is None else (graph[0], np.clip(1.0 - graph[1], 0.0, None))
    method = "umap" if config.projection == "auto" else config.projection
    with ctx.timed("projection"), ctx.progress.task(f"map ({method})", total=None) as advance:
        options = dict(dims=config.projection_dims, knn=knn, xp=ctx.xp, seed=0, progress=advance)
        if config.projection == "auto":
            return project_or_fallback(ctx.embeddings, method="umap", **options)
        coords, info = project_with_info(ctx.embeddings, method=config.projection, **options)
    info["requested"] = config.projection
    return coords, info


def _col_option(inp: str) -> str:
    from .io.readers import ALIASES

    if inp not in ALIASES:   # the metadata: the store's other columns
        return "metadata-cols"
    return ALIASES[inp][0].replace("_", "-") + "-col"


def _reads_metadata(checks: list) -> bool:
    return any("metadata" in check.requires for check in checks)


def _assemble(store: Store, ctx: RunContext, config: ScanConfig, backend: Backend, runnable, skipped,
              results: dict[str, CheckResult], timings: dict[str, float]) -> Report:
    n = store.n
    rows = pa.array(np.arange(n, dtype=np.int64))
    ids = store.ids if store.ids is not None else rows
    columns: dict[str, pa.Array] = {
        "row": rows,
        "id": ids,
        "path": store.paths if store.paths is not None else pa.nulls(n, pa.string()),
        "label": store.labels if store.labels is not None else pa.nulls(n, pa.string()),
        "split": store.split if store.split is not None else pa.nulls(n, pa.string()),
    }
    if store.groups is not None:   # the image each row (an object crop) comes from: the page shows its siblings
        columns["group"] = store.groups
    tables: dict[str, pa.Table] = {}
    ex_rows_parts, ex_check_parts, ex_score_parts = [], [], []
    for position, check in enumerate(runnable):
        result = results[check.name]
        columns[check.issue_column()] = pa.array(np.asarray(result.flags, dtype=bool))
        columns[check.score_column()] = pa.array(np.asarray(result.scores, dtype=np.float64), from_pandas=True)
        for name, values in result.columns.items():
            columns[name] = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else \
                pa.array(values, from_pandas=True)  # NaN (not scored) -> null, as for scores
        for name, table in result.tables.items():
            if name in tables or name in ("samples", "exclude", "summary"):
                raise RuntimeError(f"check {check.name!r} reports table {name!r}, a name already taken")
            tables[name] = table
        rows_ex = np.unique(np.asarray(result.exclude, dtype=np.int64))
        ex_rows_parts.append(rows_ex)
        ex_check_parts.append(np.full(len(rows_ex), position))
        ex_score_parts.append(np.asarray(result.scores, dtype=np.float64)[rows_ex])
    samples = pa.table(columns)
    reasons = [c.name for c in runnable]
    if config.exclude_by == "group" and ctx.group_codes is not None and ex_rows_parts:
        # the whole image goes when one of its crops does: its other rows get the reason "group"
        gone = np.unique(np.concatenate(ex_rows_parts))
        codes = ctx.group_codes
        more = np.setdiff1d(np.flatnonzero(np.isin(codes, codes[gone])), gone)
        ex_rows_parts.append(more)
        ex_check_parts.append(np.full(len(more), len(reasons)))
        ex_score_parts.append(np.full(len(more), np.nan))
        reasons.append("group")
    exclusions = _exclusions(samples, reasons, ex_rows_parts, ex_check_parts, ex_score_parts)

    summary = {
        "tamis_version": __version__,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "store": {
            "source": store.source,
            "n_rows": n,
            "n_valid": int(ctx.valid.sum()),
            "dim": store.dim,
            "inputs": sorted(store.available),
            "columns": store.columns,
        },
        "device": {"backend": backend.name, "name": backend.device_name, **backend.info},
        "config": config.as_dict(),
        "checks_run": [c.name for c in runnable],
        "checks_skipped": skipped,
        "issues": {c.name: int(np.asarray(results[c.name].flags).sum()) for c in runnable},
        "n_excluded": exclusions.num_rows,
        "checks": {c.name: {"params": summarise(c.get_params()), **results[c.name].summary} for c in runnable},
        "report": {"galleries": {c.name: c.gallery.as_dict() for c in runnable},
                   "panels": [{"check": c.name, **panel.as_dict()} for c in runnable for panel in c.panels]},
        "timings": timings,
        "versions": _versions(backend),
    }
    return Report(samples=samples, summary=summary, exclusions=exclusions, tables=tables)


def _exclusions(samples: pa.Table, names: list[str], rows: list, checks: list, scores: list) -> pa.Table:
    """One row per excluded input row: its reasons in check order, comma-joined, and the lowest
    score among them (1.0 where no excluding check scored it)."""
    row = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
    check = np.concatenate(checks) if checks else np.empty(0, dtype=np.int64)
    score = np.concatenate(scores) if scores else np.empty(0)
    order = np.lexsort((check, row))
    row, check, score = row[order], check[order], np.nan_to_num(score[order], nan=1.0)
    starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]]) if len(row) else np.empty(0, dtype=np.int64)
    labels = np.array(list(names) + [""], dtype=object)[check]
    reasons = [",".join(part) for part in np.split(labels, starts[1:])] if len(row) else []
    take = pa.array(row[starts], type=pa.int64())
    return pa.table({
        "row": take,
        "id": samples["id"].take(take),
        "path": samples["path"].take(take),
        "reason": pa.array(reasons, type=pa.string()),
        "score": pa.array(np.minimum.reduceat(score, starts) if len(row) else np.empty(0), type=pa.float64()),
    })


def _versions(backend: Backend) -> dict[str, str]:
    import scipy

    versions = {"tamis": __version__, "python": platform.python_version(), "numpy": np.__version__,
                "pyarrow": pa.__version__, "scipy": scipy.__version__}
    versions.update({k: str(v) for k, v in backend.info.items() if k in ("cupy", "cuda_runtime", "cuda_driver")})
    return versions


__all__ = ["scan", "add_to_index", "ScanConfig", "REGISTRY"]
