"""Static PNG plots of a report, for papers, tickets and CI logs (matplotlib, optional).

:func:`write_plots` writes, into ``out_dir``, each plot the report has data for:

- ``projection.png``: the map, coloured by label, rows flagged by any check outlined in black;
- one PNG per panel a check declared (:mod:`tamis.checks.views`) that can be drawn: a
  :class:`~tamis.checks.views.Crosstab` as grouped bars (the 30 largest rows), a
  :class:`~tamis.checks.views.Histogram` as bars with its marker; named
  ``<check>_<table or key>.png`` (e.g. ``class_imbalance_class_counts.png``).

matplotlib is imported when the function runs and drawn through its Agg canvas directly
(no pyplot, so the caller's matplotlib backend and global state are left alone). Files are
written under a temporary name and renamed into place.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError
from ..io.atomic import atomic_path, output_folder
from ..io.labels import encode
from .model import Report

#: rows of a crosstab drawn (the largest)
MAX_BARS = 30
#: points drawn in the projection; beyond it a deterministic random subset, said in the title
MAX_POINTS = 500_000


def write_plots(report: Report, out_dir: str | os.PathLike, coords: Any = None) -> list[Path]:
    """Write the PNG plots the report has data for into ``out_dir``; return their paths.

    ``coords``: optional (N, 2 or 3) map coordinates, one row per input row, NaN where none;
    default: the map the scan stored in the samples, when it made one.
    Raises :class:`~tamis.errors.ConfigError` when matplotlib is not installed.
    """
    FigureCanvasAgg, Figure = _matplotlib()
    out = output_folder(out_dir)
    plots = [("projection.png", lambda fig: _projection(fig, report, coords))]
    for panel in report.views()[1]:
        draw = DRAW.get(panel.get("kind"))
        if draw is not None:
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{panel['check']}_{panel.get('table') or panel.get('key')}")
            taken = {n for n, _ in plots}
            unique = next(f"{name}{'' if i == 1 else f'_{i}'}.png" for i in range(1, len(plots) + 2)
                          if f"{name}{'' if i == 1 else f'_{i}'}.png" not in taken)
            plots.append((unique, lambda fig, panel=panel, draw=draw: draw(fig, report, panel)))
    written = []
    for name, draw in plots:
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


def check_plots() -> None:
    """A :class:`~tamis.errors.ConfigError` when matplotlib is missing (checked before a scan starts)."""
    _matplotlib()


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ConfigError(f"plots need the optional package 'matplotlib' ({exc}); install it with: "
                          "pip install matplotlib") from exc
    return FigureCanvasAgg, Figure


def _plain(value: Any, limit: int = 30) -> str:
    """``value`` as plain text for matplotlib: ``$`` escaped (no mathtext), long text cut."""
    text = str(value)
    text = text if len(text) <= limit else text[:limit - 1] + "\u2026"
    return text.replace("$", r"\$")


def _projection(fig: Any, report: Report, coords: Any) -> bool:
    coords = report.coordinates() if coords is None else coords
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
    codes, names = encode(report.samples["label"])
    flagged = np.zeros(n, dtype=bool)
    for name in report.issue_types:
        flagged |= report.flags(name)
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


def _crosstab(fig: Any, report: Report, panel: dict) -> bool:
    """Grouped bars: ``value`` per ``row`` (the largest whole-store rows), one bar per ``column`` value."""
    table = report.tables.get(panel["table"])
    if table is None or table.num_rows == 0:
        return False
    row_key, col_key, value = panel["row"], panel["column"], panel["value"]
    rows = table.to_pylist()
    whole = {r[row_key]: r[value] for r in rows if r.get(col_key) is None}
    if not whole:
        whole = {}
        for r in rows:
            whole[r[row_key]] = whole.get(r[row_key], 0) + r[value]
    labels = sorted(whole, key=lambda k: (-whole[k], str(k)))[:MAX_BARS]
    splits = sorted({r[col_key] for r in rows if r.get(col_key) is not None}, key=str)
    series = splits or [None]
    counts = {(r[row_key], r.get(col_key)): r[value] for r in rows}
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
    ax.set_ylabel(_plain(value))
    more = f" (largest {MAX_BARS} of {len(whole)})" if len(whole) > MAX_BARS else ""
    ax.set_title(_plain(panel["title"], 80) + more)
    if splits:
        ax.legend(fontsize=8)
    return True


def _histogram(fig: Any, report: Report, panel: dict) -> bool:
    """Bars of ``summary[key]`` (edges, counts), counts on a symlog scale, the marker as a dashed line."""
    summary = report.summary.get("checks", {}).get(panel["check"], {})
    hist = summary.get(panel["key"])
    if not hist or not hist.get("counts"):
        return False
    edges = np.asarray(hist["edges"], dtype=np.float64)
    counts = np.asarray(hist["counts"], dtype=np.float64)
    ax = fig.add_subplot()
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#2f6fdf", edgecolor="white", linewidth=0.3)
    if counts.max() > 0:
        ax.set_yscale("symlog", linthresh=1)
    marker = summary.get(panel["marker"]) if panel.get("marker") else None
    if marker is not None:
        ax.axvline(marker, color="#c8372d", linestyle="--", label=f"{_plain(panel['marker'])} {marker:g}")
        ax.legend(fontsize=8)
    ax.set_xlabel(_plain(panel["x_label"], 80))
    ax.set_ylabel(_plain(panel["y_label"], 80))
    ax.set_title(_plain(panel["title"], 80))
    return True


#: how each panel kind is drawn; kinds not here (tables) have no plot
DRAW = {"crosstab": _crosstab, "histogram": _histogram}


__all__ = ["write_plots"]
