"""Class centroids: the mean direction of each class's unit rows, built once per run.

``outlier`` compares each row with its own class's centroid, ``off_topic`` with the nearest of
all of them; both read :func:`class_centroids`. Written against ``xp``; class sums are one-hot
matmuls over row blocks (no N x C one-hot), memory O(C d + block x max(C, d)).
"""

from __future__ import annotations

from typing import Any


def class_centroids(ctx) -> Any:
    """(C, d) float64 unit centroids of the valid rows' classes, on the run's device (a class
    with no row keeps a zero row)."""

    def build() -> Any:
        xp = ctx.xp
        codes = xp.asarray(ctx.label_codes[ctx.valid_rows])
        emb = ctx.embeddings
        n_classes = len(ctx.label_names)
        sums = xp.zeros((n_classes, emb.shape[1]), dtype=xp.float64)
        block = max(256, (1 << 20) // max(n_classes, emb.shape[1]))  # one-hot and row block <= 8 MiB
        for start in range(0, emb.shape[0], block):
            part = emb[start:start + block].astype(xp.float64)
            one_hot = xp.zeros((part.shape[0], n_classes), dtype=xp.float64)
            one_hot[xp.arange(part.shape[0]), codes[start:start + block]] = 1.0
            sums += one_hot.T @ part
        norms = xp.linalg.norm(sums, axis=1)
        return sums / xp.where(norms > 0, norms, 1.0)[:, None]

    return ctx.artifact("class_centroids", build)
