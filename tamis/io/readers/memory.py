"""In-memory stores: a NumPy / CuPy matrix, a dict of columns, a pandas / cuDF DataFrame or a
pyarrow Table. Device (CuPy) matrices stay on the device."""

from __future__ import annotations

from typing import Any, Mapping

import pyarrow as pa

from ...config import ColumnSpec
from ...errors import InputError
from ..store import Store
from .columns import choose_columns, from_columns, table_columns


def load_memory(data: Any, spec: ColumnSpec) -> Store:
    """The (not yet validated) :class:`Store` of in-memory ``data``."""
    cols = memory_columns(data)
    return from_columns(cols, choose_columns(list(cols), spec, "memory"), "memory")


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
            raise InputError(f"memory: cannot convert the DataFrame to Arrow ({exc}); give the embedding "
                             "column as lists or arrays of numbers") from exc
    if module == "cudf":
        return table_columns(data.to_arrow())
    if module == "datasets" and hasattr(data, "with_format"):   # a Hugging Face Dataset (its row order, selects applied)
        return table_columns(data.with_format("arrow")[:])
    if hasattr(data, "shape") and len(getattr(data, "shape")) == 2:
        return {"embeddings": data}
    if hasattr(data, "shape"):
        raise InputError(f"memory: an array of shape {tuple(data.shape)} is not an embedding matrix; "
                         "give an N x d matrix, or a dict {'embeddings': ..., 'labels': ...}")
    raise InputError(f"memory: tamis cannot read a {type(data).__name__}; give a path, an N x d array, a dict "
                     "of columns, a pandas/cuDF DataFrame or a pyarrow Table")
