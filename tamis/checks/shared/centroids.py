"""Class centroids: the mean direction of each class's unit rows, built once per run.

``outlier`` compares each row with its own class's centroid, ``off_topic`` with the nearest of
all of them; both read :func:`class_centroids`. Written against ``xp``. Each class's rows are
summed in float64 in a fixed order: by row, in slices of :data:`SUM_ROWS` (a one-hot matmul, as
before, did C times the arithmetic, in the BLAS's order). A float64 sum of float32 rows is exact
unless their entries span some 29 binades, so the slicing almost never changes a bit.
Memory O(C d + SUM_ROWS d).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: rows per float64 slice of a class's sum (4 MiB at d = 512)
SUM_ROWS = 1024


def class_centroids(ctx) -> Any:
    """(C, d) float64 unit centroids of the valid rows' classes, on the run's device (a class
    with no row keeps a zero row)."""

    def build() -> Any:
        xp = ctx.xp
        codes = np.asarray(ctx.label_codes[ctx.valid_rows])
        emb = ctx.embeddings
        n_classes = len(ctx.label_names)
        sums = xp.zeros((n_classes, emb.shape[1]), dtype=xp.float64)
        order = np.argsort(codes, kind="stable")               # each class's rows, ascending
        bounds = np.searchsorted(codes[order], np.arange(n_classes + 1))
        for c in range(n_classes):
            for start in range(int(bounds[c]), int(bounds[c + 1]), SUM_ROWS):
                rows = order[start:min(start + SUM_ROWS, int(bounds[c + 1]))]
                sums[c] += emb[xp.asarray(rows)].astype(xp.float64).sum(axis=0)
        norms = xp.linalg.norm(sums, axis=1)
        return sums / xp.where(norms > 0, norms, 1.0)[:, None]

    return ctx.artifact("class_centroids", build)
