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
- ``<table>.parquet``: each table a check reports (e.g. ``class_counts.parquet``);
- ``knn.npz``: the neighbour graph, when a check built one (indices are input rows);
- ``report.html`` and ``thumbs/`` (:mod:`.html`), PNG plots when asked (:mod:`.plots`).

:func:`write_report` writes every file into a staging folder first and renames each into
place, ``summary.json`` last, so a folder holding a ``summary.json`` holds a whole report.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq

from ..errors import InputError
from ..io.atomic import (
    move_into_place,
    output_folder,
    staged_folder,
    write_json,
    write_parquet,
    write_text,
)
from ..io.knn_file import KNN_FILE, load_knn_rows, save_knn
from .html import write_html_report
from .model import Report
from .plots import write_plots

FIXED_FILES = ("samples.parquet", "exclude.parquet", "exclude.txt", "summary.json")


def write_report(report: Report, out: str | os.PathLike, *, html: bool = True, plots: bool = False,
                 image_root: str | os.PathLike | None = None) -> Path:
    """Write ``report`` into folder ``out`` (created if needed); return its path.

    ``html`` writes ``report.html`` (thumbnails of images under ``image_root``, default the
    store's folder, go to ``thumbs/``); ``plots`` writes PNG plots (needs matplotlib).
    """
    out = output_folder(out)
    with staged_folder(out) as stage:
        write_parquet(stage / "samples.parquet", report.samples)
        write_parquet(stage / "exclude.parquet", report.exclusions)
        write_text(stage / "exclude.txt", "".join(f"{line}\n" for line in report.exclude_list()))
        names = []
        for name, table in report.tables.items():
            write_parquet(stage / f"{name}.parquet", table)
            names.append(f"{name}.parquet")
        if report.knn is not None:
            rows, indices, sims = report.knn
            save_knn(stage / KNN_FILE, indices, sims, rows=rows)
            names.append(KNN_FILE)
        extra = []
        if html:
            write_html_report(report, stage, image_root=image_root)
            extra = [p.name for p in stage.iterdir() if p.name in ("report.html", "thumbs")]
        if plots:
            extra += [p.name for p in write_plots(report, stage)]
        names += sorted(extra)
        write_json(stage / "summary.json", dict(report.summary, files=list(FIXED_FILES) + names))
        for name in [*FIXED_FILES[:-1], *names, "summary.json"]:  # summary.json last: the commit mark
            move_into_place(stage / name, out / name)
    return out


def read_report(folder: str | os.PathLike) -> Report:
    """Read a report that :func:`write_report` wrote."""
    folder = Path(folder)
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        raise InputError(f"{folder}: no summary.json here; is this a folder written by tamis scan?")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    files = summary.get("files", [])
    tables = {Path(name).stem: pq.read_table(folder / name) for name in files
              if name.endswith(".parquet") and name not in FIXED_FILES}
    knn = load_knn_rows(folder / KNN_FILE) if KNN_FILE in files else None
    return Report(samples=pq.read_table(folder / "samples.parquet"), summary=summary,
                  exclusions=pq.read_table(folder / "exclude.parquet"), tables=tables, knn=knn)


__all__ = ["write_report", "read_report", "FIXED_FILES"]
