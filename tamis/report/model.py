"""The result of a scan and the files it is saved as.

Files (the public contract, pinned in ``tests/test_outputs.py``):

- ``samples.parquet``: one row per input row, in input order: ``row``, ``id``, ``path``,
  ``label``, ``split``, then for every check that ran ``is_<check>_issue`` and
  ``<check>_score`` (plus any extra columns a check adds);
- ``summary.json``: counts per issue type, checks run and skipped, config, versions,
  device, timings;
- ``exclude.txt``: one path per line (the id where there is no path): what the keep
  policy drops, for a training job to filter on; ``exclude.parquet``: ``row``, ``id``,
  ``path``, ``reason``, ``score``;
- ``<table>.parquet``: each table a check reports (e.g. ``class_counts.parquet``);
- ``knn.npz``: the neighbour graph, when a check built one (indices are input rows).

:meth:`Report.save` writes every file under a temporary name first and renames it into
place, ``summary.json`` last, so a folder holding a ``summary.json`` holds a whole report.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import InputError
from ..io.atomic import default_dir_mode, write_json, write_parquet, write_text

FIXED_FILES = ("samples.parquet", "exclude.parquet", "exclude.txt", "summary.json")



@dataclass
class Report:
    """Tables and summary of one scan; ``save(dir)`` writes them."""

    samples: pa.Table
    summary: dict
    exclusions: pa.Table
    tables: dict[str, pa.Table] = field(default_factory=dict)
    #: the run's neighbour graph in input rows: (rows, indices, similarities), or None
    knn: tuple | None = None

    # ------------------------------------------------------------------ reading
    @property
    def issue_types(self) -> list[str]:
        return list(self.summary.get("checks_run", []))

    def counts(self) -> dict[str, int]:
        """Flagged rows per issue type."""
        return dict(self.summary.get("issues", {}))

    def issues(self, name: str) -> pa.Table:
        """The samples flagged with issue ``name``, worst (lowest score) first."""
        col = f"is_{name}_issue"
        if col not in self.samples.column_names:
            raise InputError(f"issue type {name!r} is not in this report; it has: {', '.join(self.issue_types)}")
        flagged = self.samples.filter(self.samples[col])
        return flagged.sort_by([(f"{name}_score", "ascending"), ("row", "ascending")])

    def exclude_list(self) -> list[str]:
        """The lines of ``exclude.txt``: paths, or ids where there are no paths."""
        paths = self.exclusions["path"]
        ids = self.exclusions["id"].cast(pa.string())
        return pc.if_else(pc.is_null(paths), ids, paths).to_pylist()

    # ------------------------------------------------------------------ writing
    def save(self, out: str | os.PathLike, *, html: bool = True, plots: bool = False,
             image_root: str | os.PathLike | None = None) -> Path:
        """Write the report into folder ``out`` (created if needed); return its path.

        ``html`` writes ``report.html`` (thumbnails of images under ``image_root``, default
        the store's folder, go to ``thumbs/``); ``plots`` writes PNG plots (needs matplotlib).
        """
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise InputError(f"{out}: the output path is a file; give a folder for the report (--out DIR)")
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".tamis-staging-", dir=out))
        os.chmod(stage, default_dir_mode())  # mkdtemp makes 0700
        try:
            write_parquet(stage / "samples.parquet", self.samples)
            write_parquet(stage / "exclude.parquet", self.exclusions)
            lines = self.exclude_list()
            write_text(stage / "exclude.txt", "".join(f"{line}\n" for line in lines))
            names = []
            for name, table in self.tables.items():
                write_parquet(stage / f"{name}.parquet", table)
                names.append(f"{name}.parquet")
            if self.knn is not None:
                from ..io.knn_file import KNN_FILE, save_knn

                rows, indices, sims = self.knn
                save_knn(stage / KNN_FILE, indices, sims, rows=rows)
                names.append(KNN_FILE)
            extra = []
            if html:
                from .html import write_html_report

                write_html_report(self, stage, coords=self.coordinates(), neighbors=self.neighbour_rows(),
                                  image_root=self._image_root(image_root))
                extra = [p.name for p in stage.iterdir() if p.name in ("report.html", "thumbs")]
            if plots:
                from .plots import write_plots

                extra += [p.name for p in write_plots(self, stage, coords=self.coordinates())]
            names += sorted(extra)
            summary = dict(self.summary, files=list(FIXED_FILES) + names)
            write_json(stage / "summary.json", summary)
            for name in [*FIXED_FILES[:-1], *names, "summary.json"]:  # summary.json last: the commit mark
                if (stage / name).is_dir():
                    shutil.rmtree(out / name, ignore_errors=True)
                os.replace(stage / name, out / name)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return out

    def coordinates(self) -> "np.ndarray | None":
        """(N, 2 or 3) map coordinates from the samples' projection columns (NaN where none)."""
        import numpy as np

        names = self.samples.column_names
        for method in ("umap", "tsne", "pca"):
            axes = [f"{method}_{a}" for a in "xyz" if f"{method}_{a}" in names]
            if len(axes) >= 2:
                return np.column_stack([self.samples[a].to_numpy(zero_copy_only=False).astype(np.float64)
                                        for a in axes])
        return None

    def neighbour_rows(self) -> "np.ndarray | None":
        """(N, k) nearest input rows of each input row from ``knn`` (-1 = none)."""
        import numpy as np

        if self.knn is None:
            return None
        rows, indices, _ = self.knn
        out = np.full((self.samples.num_rows, indices.shape[1]), -1, dtype=np.int64)
        out[rows] = indices
        return out

    def _image_root(self, given: str | os.PathLike | None) -> Path:
        if given is not None:
            return Path(given)
        source = Path(str(self.summary.get("store", {}).get("source", "")))
        return source.parent if source.name and source.exists() else Path.cwd()

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Report":
        """Read a report that :meth:`save` wrote."""
        folder = Path(folder)
        summary_path = folder / "summary.json"
        if not summary_path.is_file():
            raise InputError(f"{folder}: no summary.json here; is this a folder written by tamis scan?")
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        tables = {Path(name).stem: pq.read_table(folder / name) for name in summary.get("files", [])
                  if name.endswith(".parquet") and name not in FIXED_FILES}
        knn = None
        if "knn.npz" in summary.get("files", []):
            from ..io.knn_file import load_knn_rows

            knn = load_knn_rows(folder / "knn.npz")
        return cls(samples=pq.read_table(folder / "samples.parquet"), summary=summary,
                   exclusions=pq.read_table(folder / "exclude.parquet"), tables=tables, knn=knn)

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in self.counts().items())
        return f"Report(n_rows={self.samples.num_rows}, {counts})"
