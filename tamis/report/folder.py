"""A report as a folder of files, and back.

Files (the public contract, pinned in ``tests/test_outputs.py``):

- ``samples.parquet``: one row per input row, in input order: ``row``, ``id``, ``path``,
  ``label``, ``split``, then for every check that ran ``is_<check>_issue`` and
  ``<check>_score`` (plus any extra columns a check adds);
- ``summary.json``: counts per issue type, checks run and skipped, config, versions,
  device, timings, what each check shows in the report (``report``), and ``files``;
- ``exclude.txt``: one path per line (the id where there is no path): what the keep
  policy drops, for a training job to filter on; ``exclude.parquet``: ``row``, ``id``,
  ``path``, ``reason``, ``score``;
- ``keep.parquet``: ``row``, ``id``, ``keep``: one row per input row, False for the excluded ones
  (the mask for ``Dataset.filter`` / ``select`` or a sampler);
- ``<table>.parquet``: each table a check reports (e.g. ``class_counts.parquet``);
- ``knn.npz``: the neighbour graph, when a check built one (indices are input rows);
- ``index/``: with ``--save-index``, the store's index for later scans ``--against`` this folder
  (:mod:`tamis.io.index_file`; its ``manifest.json`` carries the ``report_id``);
- ``report.html`` and ``thumbs/`` (:mod:`.html`), PNG plots when asked (:mod:`.plots`).

:func:`write_report` replaces a report folder as one unit: it takes the folder's lock
(``.tamis.lock``; a second scan into the same folder at the same time is an
:class:`~tamis.errors.OutputError`; a scan holds it from before its first check to the end of
its write, :func:`destination`), writes every file into a staging folder inside it, sets the
old ``summary.json`` aside (``.tamis-summary-old.json``), writes a journal of the files it moves
in (``.tamis-incoming.json``), moves the new files in, removes the files the old report listed
that the new one does not (and, from a killed run's journal, the files it had moved in, and its
staging folders), and moves ``summary.json`` in last. So a folder holding a ``summary.json`` holds one whole
report, the old one or the new one: a run killed at any point leaves the old report, the new one,
or a folder without ``summary.json`` that no reader takes for a report (the next scan cleans it).
Files tamis did not write are left alone. Every table, ``knn.npz`` and ``summary.json`` carry the
same ``report_id``; :func:`read_report` refuses a folder whose files do not all carry it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError, InputError, OutputError
from ..io.atomic import (
    move_into_place,
    output_folder,
    staged_folder,
    write_json,
    write_parquet,
    write_text,
)
from ..io.images import check_image_root
from ..io.index_file import (
    INDEX_DIR,
    IndexData,
    OpenIndex,
    copy_index,
    describe,
    open_index,
    read_manifest,
    write_index,
)
from ..io.knn_file import KNN_FILE, load_knn_rows, save_knn
from .html import write_html_report
from .model import Report
from .plots import check_plots, write_plots
from .thumbnails import THUMBS_STAGING

FIXED_FILES = ("samples.parquet", "exclude.parquet", "exclude.txt", "keep.parquet", "summary.json")
LOCK = ".tamis.lock"
OLD_SUMMARY = ".tamis-summary-old.json"
INCOMING = ".tamis-incoming.json"
STAGING_PREFIX = ".tamis-staging-"
#: the Parquet schema metadata key (and knn.npz array) that ties a file to its summary.json
REPORT_ID = "tamis.report_id"


def write_report(report: Report, out: str | os.PathLike, *, html: bool = True, plots: bool = False,
                 image_root: str | os.PathLike | None = None) -> Path:
    """Write ``report`` into folder ``out`` (created if needed), replacing a report there as one
    unit (see the module docstring); return its path. ``html`` writes ``report.html`` (thumbnails
    of images under ``image_root``, default the store's folder, go to ``thumbs/``); ``plots``
    writes PNG plots (needs matplotlib). An :class:`~tamis.errors.OutputError` names the path and
    the reason when the folder cannot be written, or another scan is writing it."""
    with destination(out) as folder:
        return replace_report(report, folder, html=html, plots=plots, image_root=image_root)


@contextmanager
def destination(out: str | os.PathLike) -> Iterator[Path]:
    """Hold the report folder ``out`` for a whole scan: created if needed and locked (``flock`` on
    ``.tamis.lock``: a second scan into it meanwhile is an :class:`~tamis.errors.OutputError`, and
    the kernel releases the lock when the process dies). A folder this created is removed again
    when the scan fails. Output ``OSError`` s become ``OutputError`` s naming the path."""
    target = Path(out)
    created = not target.exists()
    try:
        folder = output_folder(target)
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise _output_error(exc, target) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(f"{folder}: another tamis scan is writing this report folder right now; wait "
                                  "for it to finish or give another folder (--out DIR)") from exc
            raise _output_error(exc, target) from exc
        try:
            yield folder
        except BaseException as exc:
            if created:   # still locked: nobody else can be using it
                _remove_if_empty(folder)
            if isinstance(exc, OSError) and not isinstance(exc, OutputError):
                raise _output_error(exc, target) from exc
            raise
    finally:
        os.close(fd)


def _output_error(exc: OSError, target: Path) -> OutputError:
    if isinstance(exc, OutputError):
        return exc
    where = exc.filename or target
    return OutputError(f"cannot write the report to {target}: {exc.strerror or exc} ({where}); free space or "
                       "choose a folder you can write (--out DIR)")


def check_destination(out: str | os.PathLike, source: object = None, *, plots: bool = False,
                      image_root: str | os.PathLike | None = None) -> None:
    """Refuse, before a scan starts, a report it could not write: ``out`` a file, a folder (or the
    first existing parent of one) this process cannot write, a folder inside the input store (its
    tables would become shards of the store), plots without matplotlib, an image root that is no
    folder. Creates nothing."""
    target = Path(out)
    if target.exists() and not target.is_dir():
        raise InputError(f"{target}: the output path is a file; give a folder for the report (--out DIR)")
    existing = target
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise OutputError(f"cannot create the report folder {target}: {existing} is a file; choose another "
                          "folder (--out DIR)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write the report to {target}: permission denied on {existing}; choose a "
                          "folder you can write (--out DIR)")
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        store = Path(source).resolve()
        if target.resolve() == store or target.resolve().is_relative_to(store):
            raise ConfigError(f"--out {target} is inside the store folder {store}: the report's .parquet files "
                              "would become shards of the store; write the report elsewhere")
    if plots:
        check_plots()
    if image_root is not None:
        check_image_root(image_root)


def replace_report(report: Report, out: Path, *, html: bool = True, plots: bool = False,
                   image_root: str | os.PathLike | None = None) -> Path:
    """Replace the report in folder ``out``, which the caller holds (:func:`destination`)."""
    report_id = uuid.uuid4().hex
    old = _listed(out)
    for stale in out.iterdir():   # left by a killed run (we hold the lock): staging, swapped-out folders
        if stale.name.startswith((STAGING_PREFIX, THUMBS_STAGING)) or \
                (stale.name.startswith(".") and "-old-" in stale.name):
            _remove(stale)
    with staged_folder(out, prefix=STAGING_PREFIX) as stage, ThreadPoolExecutor(1) as writer:
        # the tables and the graph are written on a thread while the page is built here (Arrow and
        # the file writes release the GIL); every write is waited for before anything moves
        writes = [writer.submit(write_parquet, stage / "samples.parquet", _stamped(report.samples, report_id)),
                  writer.submit(write_parquet, stage / "exclude.parquet", _stamped(report.exclusions, report_id)),
                  writer.submit(write_text, stage / "exclude.txt",
                                "".join(f"{line}\n" for line in report.exclude_list())),
                  writer.submit(write_parquet, stage / "keep.parquet",
                                _stamped(pa.table({"row": report.samples["row"], "id": report.samples["id"],
                                                   "keep": pa.array(report.keep_mask())}), report_id))]
        names = []
        for name, table in report.tables.items():
            writes.append(writer.submit(write_parquet, stage / f"{name}.parquet", _stamped(table, report_id)))
            names.append(f"{name}.parquet")
        if report.knn is not None:
            rows, indices, sims = report.knn
            writes.append(writer.submit(save_knn, stage / KNN_FILE, indices, sims, rows=rows,
                                        extra={REPORT_ID: report_id}))
            names.append(KNN_FILE)
        if report.index is not None:   # IndexData from a scan, or the index folder of a report read back
            if isinstance(report.index, IndexData):
                manifest = write_index(stage / INDEX_DIR, report.index, report_id)
            else:
                manifest = copy_index(report.index, stage / INDEX_DIR, report_id)
            report.summary["index"] = describe(manifest)   # the fingerprint is known once the files are
            names.append(INDEX_DIR)
        extra = []
        if html:
            write_html_report(report, stage, image_root=image_root)
            extra = [p.name for p in stage.iterdir() if p.name in ("report.html", "thumbs")]
        if plots:
            extra += [p.name for p in write_plots(report, stage)]
        names += sorted(extra)
        for done in writes:
            done.result()                      # a failed write raises here, before the folder changes
        files = list(FIXED_FILES) + names
        write_json(stage / "summary.json", dict(report.summary, report_id=report_id, files=files))
        # the journal: what this run moves in, so a run killed half way is cleaned by the next one
        write_json(out / INCOMING, {"files": files})
        if (out / "summary.json").exists():   # from here on the folder is no report until the new one is whole
            os.replace(out / "summary.json", out / OLD_SUMMARY)
        for name in files:
            if name != "summary.json":
                move_into_place(stage / name, out / name)
        for name in sorted(set(old) - set(files)):
            _remove(out / name)
        move_into_place(stage / "summary.json", out / "summary.json")   # the commit mark, last
    (out / OLD_SUMMARY).unlink(missing_ok=True)
    (out / INCOMING).unlink(missing_ok=True)
    return out


def _listed(out: Path) -> list[str]:
    """Every file a report of ``out`` owns: those its summary.json lists (or the one a killed run
    set aside), and those a killed run's journal says it was moving in."""
    owned: list[str] = []
    for name in ("summary.json", OLD_SUMMARY, INCOMING):
        try:
            files = json.loads((out / name).read_text(encoding="utf-8")).get("files", [])
        except (OSError, ValueError, AttributeError):
            continue
        owned += [f for f in files if _plain_name(f) and f not in owned]
    return owned


def _plain_name(name: object) -> bool:
    """A file name inside the folder (no path, no parent): the only names a report may list."""
    return isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name and \
        name not in (".", "..") and "\x00" not in name


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _remove_if_empty(folder: Path) -> None:
    """Remove a folder this scan created, when nothing but its lock is in it (called holding the lock)."""
    try:
        if {p.name for p in folder.iterdir()} <= {LOCK}:
            (folder / LOCK).unlink(missing_ok=True)
            folder.rmdir()
    except OSError:
        pass


def _stamped(table: pa.Table, report_id: str) -> pa.Table:
    return table.replace_schema_metadata({**(table.schema.metadata or {}), REPORT_ID.encode(): report_id.encode()})


def read_report(folder: str | os.PathLike) -> Report:
    """Read a report that :func:`write_report` wrote; an :class:`~tamis.errors.InputError` when the
    folder holds no whole report (no ``summary.json``, a listed file missing, or files of another
    report: a different ``report_id`` or row count)."""
    folder = Path(folder)
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        raise InputError(f"{folder}: no summary.json here; is this a folder written by tamis scan (a scan killed "
                         "while writing leaves none: scan again)?")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder}: summary.json cannot be read ({exc}); the folder is not a whole report: "
                         "scan again") from exc
    files = summary.get("files", []) if isinstance(summary, dict) else None
    if not isinstance(files, list) or not all(_plain_name(name) for name in files):
        raise InputError(f"{folder}: summary.json's file list is not a list of file names in the folder; the "
                         "folder is not a report tamis wrote: scan again")
    missing = [name for name in files if not (folder / name).exists()]
    if missing:
        raise InputError(f"{folder}: summary.json lists {missing[0]}, which is not there; the folder is not a whole "
                         "report: scan again")
    report_id = summary.get("report_id")

    def table(name: str) -> pa.Table:
        read = pq.read_table(folder / name)
        stamp = (read.schema.metadata or {}).get(REPORT_ID.encode(), b"").decode()
        if report_id is not None and stamp != report_id:
            raise InputError(f"{folder}: {name} belongs to another report than summary.json "
                             f"(report_id {stamp or 'missing'} != {report_id}); the folder is mixed: scan again")
        return read.replace_schema_metadata({k: v for k, v in (read.schema.metadata or {}).items()
                                             if k != REPORT_ID.encode()} or None)

    tables = {Path(name).stem: table(name) for name in files if name.endswith(".parquet") and name not in FIXED_FILES}
    knn = None
    if KNN_FILE in files:
        with np.load(folder / KNN_FILE, allow_pickle=False) as archive:
            stamp = str(archive[REPORT_ID]) if REPORT_ID in archive.files else ""
        if report_id is not None and stamp != report_id:
            raise InputError(f"{folder}: {KNN_FILE} belongs to another report than summary.json; the folder is "
                             "mixed: scan again")
        knn = load_knn_rows(folder / KNN_FILE)
    index = None
    if INDEX_DIR in files:
        if read_manifest(folder / INDEX_DIR).get("report_id") != report_id:
            raise InputError(f"{folder}: {INDEX_DIR}/ belongs to another report than summary.json; the folder is "
                             "mixed: scan again")
        index = folder / INDEX_DIR
    samples = table("samples.parquet")
    n_rows = summary.get("store", {}).get("n_rows")
    if n_rows is not None and samples.num_rows != n_rows:
        raise InputError(f"{folder}: samples.parquet has {samples.num_rows} rows but summary.json says {n_rows}; "
                         "the folder is mixed: scan again")
    return Report(samples=samples, summary=summary, exclusions=table("exclude.parquet"), tables=tables, knn=knn,
                  index=index)


@contextmanager
def reading(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold report folder ``folder`` for reading (a shared ``flock`` on ``.tamis.lock``, where there
    is one): a scan or ``tamis index add`` writing it meanwhile is an :class:`~tamis.errors.InputError`
    for the reader, and the writer waits for no reader longer than the reading takes."""
    folder = Path(folder)
    try:
        fd = os.open(folder / LOCK, os.O_RDONLY)
    except OSError:
        yield folder   # no lock file (a copied or read-only folder): nobody writes it through tamis
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            raise InputError(f"{folder}: a tamis scan or index add is writing this report folder right now; wait for "
                             "it to finish and run again") from exc
        yield folder
    finally:
        os.close(fd)


def open_reference(folder: str | os.PathLike, *, locked: bool = False) -> OpenIndex:
    """The index a report folder holds, for a scan ``--against`` it or ``tamis index add``: the
    folder must hold a whole report (summary.json) that lists ``index/``, whose manifest carries the
    report's ``report_id`` and whose files match its fingerprint (:func:`~tamis.io.index_file.open_index`).
    Every refusal is an :class:`~tamis.errors.InputError` naming the folder and the fix. ``locked``:
    the caller holds the folder's lock already (:func:`destination`), so no shared lock is taken."""
    folder = Path(folder)
    fix = f"scan the reference with --save-index (tamis scan STORE --out {folder} --save-index)"
    if not folder.is_dir():
        raise InputError(f"{folder}: no such report folder; {fix}")
    with reading(folder) if not locked else contextlib.nullcontext(folder):
        summary_path = folder / "summary.json"
        if not summary_path.is_file():
            raise InputError(f"{folder}: no summary.json here, so no whole report and no index; {fix}")
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{folder}: summary.json cannot be read ({exc}); {fix}") from exc
        files = summary.get("files") if isinstance(summary, dict) else None
        if not isinstance(files, list) or INDEX_DIR not in files:
            raise InputError(f"{folder}: this report has no index (it was scanned without --save-index); {fix}")
        return open_index(folder / INDEX_DIR, report_id=summary.get("report_id"))


__all__ = ["write_report", "read_report", "check_destination", "open_reference", "reading", "FIXED_FILES"]
