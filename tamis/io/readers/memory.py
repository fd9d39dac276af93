"""In-memory stores: a NumPy / CuPy matrix, a dict of columns, a pandas / cuDF DataFrame, a
pyarrow Table, a Hugging Face ``Dataset`` or a ``lance.LanceDataset``. Device (CuPy) matrices
stay on the device. A DataFrame column of mixed Python types (``[45, "N/A", 999]``), which
Arrow cannot hold, is handed on as an object array: a metadata column becomes strings, an
input column gets the usual error."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from ...config import ColumnSpec
from ...errors import InputError
from ..store import Store
from .columns import choose_columns, from_columns, metadata_plan, table_columns


def load_memory(data: Any, spec: ColumnSpec, metadata: Sequence[str] | None = None) -> Store:
    """The (not yet validated) :class:`Store` of in-memory ``data``, with its other columns as
    metadata: all (``metadata=None``), those named, or none (``()``)."""
    cols = memory_columns(data)
    chosen = choose_columns(list(cols), spec, "memory")
    extra, skipped = ([], {}) if metadata is not None and not metadata else \
        metadata_plan(list(cols), chosen, metadata, "memory")
    return from_columns(cols, chosen, "memory", extra, skipped, named=metadata is not None)


def memory_columns(data: Any) -> dict[str, Any]:
    """Column name -> values of in-memory ``data``."""
    if isinstance(data, Mapping):
        return dict(data)
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        return table_columns(data)
    module = type(data).__module__.split(".")[0]
    if module == "pandas":
        try:
            return table_columns(pa.Table.from_pandas(data, preserve_index=False))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            return _pandas_columns(data, exc)
    if module == "cudf":
        return table_columns(data.to_arrow())
    if module == "datasets" and hasattr(data, "with_format"):   # a Hugging Face Dataset (its row order, selects applied)
        return table_columns(data.with_format("arrow")[:])
    if module == "lance" and hasattr(data, "to_table"):   # a lance.LanceDataset: its version, in scan order
        return table_columns(data.to_table(scan_in_order=True))
    if hasattr(data, "shape") and len(getattr(data, "shape")) == 2:
        return {"embeddings": data}
    if hasattr(data, "shape"):
        raise InputError(f"memory: an array of shape {tuple(data.shape)} is not an embedding matrix; "
                         "give an N x d matrix, or a dict {'embeddings': ..., 'labels': ...}")
    raise InputError(f"memory: tamis cannot read a {type(data).__name__}; give a path, an N x d array, a dict "
                     "of columns, a pandas/cuDF DataFrame or a pyarrow Table")


def _pandas_columns(data: Any, exc: Exception) -> dict[str, Any]:
    """A DataFrame Arrow cannot take whole, column by column: a column Arrow refuses (Python
    objects of mixed types) is handed on as an object array."""
    out: dict[str, Any] = {}
    for name in data.columns:
        series = data[name]
        try:
            out[name] = pa.Array.from_pandas(series)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            if series.dtype != object:
                raise InputError(f"memory: cannot convert the DataFrame to Arrow ({exc}); give the embedding "
                                 "column as lists or arrays of numbers") from exc
            out[name] = np.asarray(series, dtype=object)
    return out
