"""The columnar store every scan reads: embeddings plus the columns that describe them.

A :class:`Store` holds numeric matrices as arrays (NumPy, or CuPy when the caller
passes device arrays), the descriptive columns (labels, paths, split, ids) as
pyarrow arrays, one value per input row, in input order, and the store's other columns
(one scalar per row: the ``metadata`` input) as one pyarrow Table. It is built by
:func:`tamis.io.readers.load_store` and checked by :meth:`Store.validate`; it is
never modified afterwards (inputs are never modified).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError
from .labels import encode

#: names of the inputs a check can require
INPUTS = ("embeddings", "labels", "paths", "split", "ids", "pred_probs", "quality", "groups", "metadata")
#: the inputs a store must hold one of (its other columns alone are no embedding store)
PRIMARY_INPUTS = INPUTS[:-1]

#: tolerance on |sum(pred_probs row) - 1|
PRED_PROBS_ATOL = 1e-3


@dataclass(frozen=True)
class Store:
    """One embedding store, validated, in input order.

    Attributes
    ----------
    embeddings : (N, d) float array or None, as given (not normalised)
    labels, paths, split, ids : pyarrow arrays of length N, or None
    pred_probs : (N, C) float array or None
    quality : pyarrow array of numbers (higher = better), used by the "quality" keep policy
    groups : pyarrow array naming the image (or other unit) each row comes from, e.g. the image of
        an object crop: rows of one group are never each other's duplicates or leaks
    metadata : pyarrow Table of the store's other columns (one scalar per row, in input order), or
        None when there are none or no check reads them
    metadata_skipped : other columns left out of ``metadata``, with the reason (lists, nested values,
        matrices, another length)
    source : where the store came from (a path or "memory")
    columns : input name -> the column it was read from
    """

    embeddings: Any = None
    labels: pa.Array | None = None
    paths: pa.Array | None = None
    split: pa.Array | None = None
    ids: pa.Array | None = None
    pred_probs: Any = None
    quality: pa.Array | None = None
    groups: pa.Array | None = None
    metadata: pa.Table | None = None
    source: str = "memory"
    columns: dict = field(default_factory=dict)
    metadata_skipped: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        for value in (self.embeddings, self.pred_probs, self.labels, self.paths, self.split, self.ids,
                      self.quality, self.groups):
            if value is not None:
                return len(value)
        return 0 if self.metadata is None else self.metadata.num_rows

    @property
    def available(self) -> frozenset[str]:
        """Names (from :data:`INPUTS`) of the inputs this store holds."""
        return frozenset(name for name in INPUTS if getattr(self, name) is not None)

    @property
    def dim(self) -> int | None:
        return None if self.embeddings is None else int(self.embeddings.shape[1])

    def validate(self) -> "Store":
        """Raise :class:`InputError` for a store no scan can use; return self otherwise."""
        if not self.available & set(PRIMARY_INPUTS):
            raise InputError(f"{self.source}: the store holds none of the inputs tamis reads "
                             f"({', '.join(PRIMARY_INPUTS)}); name the columns with --embedding-col, "
                             "--label-col, ... or add them")
        n = self.n
        if n == 0:
            raise InputError(f"{self.source}: the store is empty (0 rows); scan a store with at least one row")
        for name in INPUTS:
            value = getattr(self, name)
            if value is not None and len(value) != n:
                first = next(x for x in INPUTS if getattr(self, x) is not None)
                raise InputError(
                    f"{self.source}: column {self._col(name)!r} has {len(value)} rows but "
                    f"{self._col(first)!r} has {n}; every column needs one value per row")
        if self.labels is not None:
            _check_no_nulls(self.labels, self._col("labels"), self.source)
        for name in ("paths", "split", "ids", "quality", "groups"):
            value = getattr(self, name)
            if value is not None:
                _check_no_nulls(value, self._col(name), self.source)
        if self.ids is not None:
            _check_unique(self.ids, self._col("ids"), self.source)
        for name in ("paths", "ids"):   # the lines of exclude.txt: one value, one line
            value = getattr(self, name)
            if value is not None:
                _check_one_line(value, self._col(name), self.source)
        if self.pred_probs is not None:
            self._validate_pred_probs()
        if self.quality is not None and not (pa.types.is_integer(self.quality.type)
                                             or pa.types.is_floating(self.quality.type)):
            raise InputError(f"{self.source}: column {self._col('quality')!r} has type {self.quality.type}; "
                             "a quality column must hold numbers (higher = better)")
        return self

    def _col(self, name: str) -> str:
        return self.columns.get(name, name)

    def _validate_pred_probs(self) -> None:
        col = self._col("pred_probs")
        probs = self.pred_probs
        xp = _array_module(probs)
        if probs.ndim != 2 or probs.shape[1] < 2:
            raise InputError(f"{self.source}: column {col!r} has shape {tuple(probs.shape)}; pred_probs "
                             "must be an N x C matrix of class probabilities with C >= 2")
        finite = bool(xp.isfinite(probs).all())
        low = float(probs.min()) if finite else float("nan")
        sums = probs.sum(axis=1, dtype=xp.float64)
        bad = xp.flatnonzero(xp.abs(sums - 1.0) > PRED_PROBS_ATOL)
        if not finite or low < 0 or len(bad):
            if not finite:
                what = "non-finite values (NaN or inf)"
            elif low < 0:
                what = f"negative values (min {low:.3g})"
            else:
                r = int(bad[0])
                what = f"{len(bad)} rows that do not sum to 1 (row {r} sums to {float(sums[r]):.4g})"
            raise InputError(f"{self.source}: column {col!r} has {what}; pred_probs must hold "
                             "probabilities: apply softmax to logits, or normalise each row to sum to 1")
        if self.labels is not None and pa.types.is_integer(self.labels.type):
            n_classes = probs.shape[1]
            lo, hi = pc.min(self.labels).as_py(), pc.max(self.labels).as_py()
            if lo < 0 or hi >= n_classes:
                bad_label = hi if hi >= n_classes else lo
                raise InputError(
                    f"{self.source}: label {bad_label} in {self._col('labels')!r} is outside the "
                    f"{n_classes} classes of {col!r} (0..{n_classes - 1}); integer labels index "
                    "pred_probs' columns: give one column per class")


def _check_no_nulls(array: pa.Array, col: str, source: str) -> None:
    if array.null_count:
        first = int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{source}: column {col!r} has {array.null_count} nulls (first at row {first}); "
                         "fill them or drop those rows before scanning")


#: control characters and line separators (what ``str.splitlines`` splits on among them) that would
#: split or hide a line of exclude.txt
CONTROL_CHARACTERS = "[\\x00-\\x1f\\x7f\\x{85}\\x{2028}\\x{2029}]"


def _check_unique(array: pa.Array, col: str, source: str) -> None:
    """Ids name rows in the tables and, without paths, in exclude.txt: two rows with one id would
    make a filter on it drop both."""
    if pc.count_distinct(array).as_py() == len(array):
        return
    codes, names = encode(array)
    counts = np.bincount(codes, minlength=len(names))
    worst = int(np.argmax(counts))
    rows = np.flatnonzero(codes == worst)[:3].tolist()
    raise InputError(f"{source}: column {col!r} holds the id {names[worst]!r} {int(counts[worst]):,} times (rows "
                     f"{', '.join(map(str, rows))}, ...) and {int((counts > 1).sum()):,} ids more than once; ids name "
                     "rows in exclude.txt and the tables: make them unique, or name another column with --id-col")


def _check_one_line(array: pa.Array, col: str, source: str) -> None:
    """Paths and ids become the lines of ``exclude.txt``: a control character (``\\n``, ``\\r``, ...)
    would make one row two lines, and a training job would drop a file no check flagged."""
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        return
    bad = pc.match_substring_regex(array, CONTROL_CHARACTERS)
    if pc.any(bad).as_py():
        first = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{source}: column {col!r} holds a control character (e.g. a newline) at row {first} "
                         f"({array[first].as_py()!r}); paths and ids are written one per line to exclude.txt, so "
                         "they may not contain one: rename the file or fix the column before scanning")


def _array_module(a: Any):
    if isinstance(a, np.ndarray):
        return np
    import importlib

    return importlib.import_module(type(a).__module__.split(".")[0])
