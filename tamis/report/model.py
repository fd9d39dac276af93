"""The result of a scan, as data: the Report knows nothing of the files, pages and plots it becomes.

The views take a Report: :func:`tamis.report.folder.write_report` writes the folder
(:mod:`tamis.report.folder` lists the files), :func:`tamis.report.html.write_html_report`
the page, :func:`tamis.report.plots.write_plots` the PNG plots;
:func:`tamis.report.folder.read_report` reads a folder back into a Report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError


@dataclass
class Report:
    """Tables and summary of one scan.

    samples : one row per input row (``row``, ``id``, ``path``, ``label``, ``split``, then per
        check ``is_<check>_issue``, ``<check>_score`` and its extra columns)
    summary : what ``summary.json`` holds (counts, checks run and skipped, config, versions,
        timings, and under ``report`` what each check shows: :mod:`tamis.checks.views`)
    exclusions : ``row``, ``id``, ``path``, ``reason``, ``score`` of every row the keep policies drop
    tables : the tables checks reported, by name
    knn : the run's neighbour graph in input rows, ``(rows, indices, similarities)``, or None
    index : what ``index/`` becomes (``--save-index``): the scan's
        :class:`~tamis.io.index_file.IndexData`, or the index folder of a report read back; or None
    """

    samples: pa.Table
    summary: dict
    exclusions: pa.Table
    tables: dict[str, pa.Table] = field(default_factory=dict)
    knn: tuple | None = None
    index: object | None = None

    @property
    def issue_types(self) -> list[str]:
        """The checks whose ``is_<check>_issue`` column the samples hold, in the order they ran."""
        cols = set(self.samples.column_names)
        named = [c for c in self.summary.get("checks_run", []) if f"is_{c}_issue" in cols]
        extra = [c[3:-6] for c in self.samples.column_names
                 if c.startswith("is_") and c.endswith("_issue") and c[3:-6] not in named]
        return named + extra

    def counts(self) -> dict[str, int]:
        """Flagged rows per issue type."""
        return dict(self.summary.get("issues", {}))

    def flags(self, name: str) -> np.ndarray:
        """(N,) bool: the rows flagged with issue ``name``."""
        col = f"is_{name}_issue"
        if col not in self.samples.column_names:
            raise InputError(f"issue type {name!r} is not in this report; it has: {', '.join(self.issue_types)}")
        return np.asarray(self.samples[col].fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)

    def issues(self, name: str) -> pa.Table:
        """The samples flagged with issue ``name``, worst (lowest score) first."""
        flagged = self.samples.filter(pa.array(self.flags(name)))
        return flagged.sort_by([(f"{name}_score", "ascending"), ("row", "ascending")])

    def exclude_list(self) -> list[str]:
        """The lines of ``exclude.txt``: paths, or ids where there are no paths."""
        paths = self.exclusions["path"]
        ids = self.exclusions["id"].cast(pa.string())
        return pc.if_else(pc.is_null(paths), ids, paths).to_pylist()

    def gate_failures(self) -> list[str]:
        """The ``fail_on`` conditions the findings violate, as lines (``leakage>0: 38 rows (0.04 %)``)."""
        return [f"{g['condition']}: {g['reason']}" for g in self.summary.get("gate", []) if g.get("violated")]

    def keep_mask(self) -> np.ndarray:
        """(N,) bool: True for the rows a training job keeps (every row not on the exclusion list),
        aligned with the input rows, e.g. for ``Dataset.select(np.flatnonzero(mask))``."""
        mask = np.ones(self.samples.num_rows, dtype=bool)
        mask[np.asarray(self.exclusions["row"].to_numpy(zero_copy_only=False), dtype=np.int64)] = False
        return mask

    def coordinates(self) -> np.ndarray | None:
        """(N, 2 or 3) map coordinates from the samples' projection columns (NaN where none)."""
        names = self.samples.column_names
        for method in ("umap", "tsne", "pca"):
            axes = [f"{method}_{a}" for a in "xyz" if f"{method}_{a}" in names]
            if len(axes) >= 2:
                return np.column_stack([self.samples[a].to_numpy(zero_copy_only=False).astype(np.float64)
                                        for a in axes])
        return None

    def neighbour_rows(self) -> np.ndarray | None:
        """(N, k) nearest input rows of each input row from ``knn`` (-1 = none)."""
        if self.knn is None:
            return None
        rows, indices, _ = self.knn
        out = np.full((self.samples.num_rows, indices.shape[1]), -1, dtype=np.int64)
        out[rows] = indices
        return out

    def views(self) -> tuple[dict[str, dict], list[dict]]:
        """``(galleries, panels)`` the checks declared (``summary.json -> report``): a gallery per
        issue type, and the panels in check order, each with its ``check``."""
        declared = self.summary.get("report") or {}
        return dict(declared.get("galleries") or {}), list(declared.get("panels") or [])

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in self.counts().items())
        return f"Report(n_rows={self.samples.num_rows}, {counts})"


__all__ = ["Report"]
