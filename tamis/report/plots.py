"""Static PNG plots of a report, for papers, tickets and CI logs (matplotlib, optional).

:func:`write_plots` writes, into ``out_dir``, each plot the report has data for:

- ``projection.png``: the map, coloured by label, rows flagged by any check outlined in black;
- ``class_distribution.png``: rows per class and split (the 30 largest classes);
- ``similarity_histogram.png``: near-duplicate pairs per similarity bin, threshold marked.

matplotlib is imported when the function runs and drawn through its Agg canvas directly
(no pyplot, so the caller's matplotlib backend and global state are left alone). Files are
written under a temporary name and renamed into place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..engine.projection import coords_by_row
from ..errors import ConfigError, InputError
from ..io.atomic import atomic_path
from .model import Report

#: classes drawn in the class distribution (the largest)
MAX_CLASSES = 30
#: points drawn in the projection; beyond it a deterministic random subset, said in the title
MAX_POINTS = 500_000


def write_plots(report: Report, out_dir: str | os.PathLike, coords: Any = None) -> list[Path]:
    """Write the PNG plots the report has data for into ``out_dir``; return their paths.

    ``coords``: optional (N, 2 or 3) map coordinates, one row per input row, NaN where none;
    default: the report's ``projection`` table, when it has one.
    Raises :class:`~tamis.errors.ConfigError` when matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ConfigError(f"plots need the optional package 'matplotlib' ({exc}); install it with: "
                          "pip install matplotlib") from exc
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: the output path is a file; give a folder for the plots")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in (("projection.png", lambda fig: _projection(fig, report, coords)),
                       ("class_distribution.png", lambda fig: _classes(fig, report)),
                       ("similarity_histogram.png", lambda fig: _histogram(fig, report))):
        fig = Figure(figsize=(8, 6), dpi=120)
        FigureCanvasAgg(fig)
        if not draw(fig):
            continue
        fig.tight_layout()
        path = out / name
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        written.append(path)
    return written


def _plain(value: Any, limit: int = 30) -> str:
    """``value`` as plain text for matplotlib: ``$`` escaped (no mathtext), long text cut."""
    text = str(value)
    text = text if len(text) <= limit else text[:limit - 1] + "\u2026"
    return text.replace("$", r"\$")


def _codes(values: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    arr = values.combine_chunks()
    if pa.types.is_null(arr.type):
        return np.full(len(arr), -1), []
    enc = arr.dictionary_encode()
    codes = np.asarray(enc.indices.fill_null(-1), dtype=np.int64)
    return codes, [str(v) for v in enc.dictionary.to_pylist()]


def _projection(fig: Any, report: Report, coords: Any) -> bool:
    if coords is None and "projection" in report.tables:
        coords = coords_by_row(report.tables["projection"], report.samples.num_rows)
    if coords is None:
        return False
    xy = np.asarray(getattr(coords, "get", lambda: coords)(), dtype=np.float32)
    n = report.samples.num_rows
    if xy.ndim != 2 or xy.shape[0] != n or xy.shape[1] < 2:
        raise InputError(f"coords has shape {xy.shape}; expected ({n}, 2) or ({n}, 3)")
    rows = np.flatnonzero(np.isfinite(xy[:, :2]).all(axis=1))
    if not len(rows):
        return False
    note = ""
    if len(rows) > MAX_POINTS:
        rows = np.sort(np.random.default_rng(0).choice(rows, MAX_POINTS, replace=False))
        note = f" ({MAX_POINTS:,} of {n:,} points drawn)"
    codes, names = _codes(report.samples["label"])
    flagged = np.zeros(n, dtype=bool)
    for col in report.samples.column_names:
        if col.startswith("is_") and col.endswith("_issue"):
            flagged |= np.asarray(report.samples[col].fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
    ax = fig.add_subplot()
    size = 6 if len(rows) <= 10_000 else 1.5 if len(rows) <= 100_000 else 0.3
    c = codes[rows]
    cmap = "tab20" if len(names) <= 20 else "gist_ncar"
    ax.scatter(xy[rows, 0], xy[rows, 1], c=np.where(c < 0, 0, c), cmap=cmap, vmin=0, vmax=max(1, len(names) - 1),
               s=size, linewidths=0, rasterized=True)
    bad = rows[flagged[rows]]
    if len(bad):
        ax.scatter(xy[bad, 0], xy[bad, 1], s=size * 4 + 4, facecolors="none", edgecolors="black", linewidths=0.5,
                   label=f"flagged by a check ({int(flagged.sum()):,})", rasterized=True)
        ax.legend(loc="best", fontsize=8)
    method = (report.summary.get("projection") or {}).get("method")
    ax.set_title(f"Projection{' (' + method.upper() + ')' if method else ''}, coloured by label{note}")
    ax.set_xticks([])
    ax.set_yticks([])
    return True


def _classes(fig: Any, report: Report) -> bool:
    table = report.tables.get("class_counts")
    if table is None or table.num_rows == 0:
        return False
    rows = table.to_pylist()
    whole = {r["label"]: r["count"] for r in rows if r.get("split") is None}
    labels = sorted(whole, key=lambda k: (-whole[k], str(k)))[:MAX_CLASSES]
    splits = sorted({r["split"] for r in rows if r.get("split") is not None}, key=str)
    series = splits or [None]
    counts = {(r["label"], r.get("split")): r["count"] for r in rows}
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    width = 0.8 / len(series)
    for i, s in enumerate(series):
        ax.bar(x + i * width - 0.4 + width / 2, [counts.get((lab, s), 0) for lab in labels], width,
               label="all" if s is None else _plain(s))
    ax.set_xticks(x)
    names = [_plain(lab) for lab in labels]
    tilt = len(labels) > 8 or max(len(t) for t in names) > 10
    ax.set_xticklabels(names, rotation=45 if tilt else 0, ha="right" if tilt else "center", fontsize=8)
    ax.set_ylabel("rows")
    more = f" (largest {MAX_CLASSES} of {len(whole)})" if len(whole) > MAX_CLASSES else ""
    ax.set_title(f"Rows per class and split{more}")
    if splits:
        ax.legend(fontsize=8)
    return True


def _histogram(fig: Any, report: Report) -> bool:
    nd = report.summary.get("checks", {}).get("near_duplicate", {})
    hist = nd.get("histogram")
    if not hist or not hist.get("counts"):
        return False
    edges = np.asarray(hist["edges"], dtype=np.float64)
    counts = np.asarray(hist["counts"], dtype=np.float64)
    ax = fig.add_subplot()
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#2f6fdf", edgecolor="white", linewidth=0.3)
    if counts.max() > 0:
        ax.set_yscale("symlog", linthresh=1)
    threshold = nd.get("threshold")
    if threshold is not None:
        ax.axvline(threshold, color="#c8372d", linestyle="--", label=f"threshold {threshold:g}")
        ax.legend(fontsize=8)
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("pairs")
    ax.set_title("Near-duplicate pairs per similarity")
    return True


__all__ = ["write_plots"]
