"""The one label encoder: the tables, the HTML page and the plots number classes the same way."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def encode(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, list]:
    """``(codes, names)``: ``codes[i]`` (int64) indexes ``names``, the distinct values of
    ``values`` in ascending order (Arrow's sort); -1 for nulls. Dictionary columns are decoded
    first; an all-null column has no names. A chunked column is read chunk by chunk (never
    combined into one: a string column over 2 GiB cannot be)."""
    arr = values
    if pa.types.is_dictionary(arr.type):   # chunk by chunk: a large string column cannot be one chunk
        arr = pc.cast(arr, arr.type.value_type)
    if pa.types.is_null(arr.type):
        return np.full(len(arr), -1, dtype=np.int64), []
    names = pc.unique(pc.drop_null(arr))
    if isinstance(names, pa.ChunkedArray):
        names = names.combine_chunks()
    names = names.take(pc.array_sort_indices(names))
    codes = pc.index_in(arr, value_set=names).fill_null(-1)
    return np.asarray(codes.to_numpy(zero_copy_only=False), dtype=np.int64), names.to_pylist()


__all__ = ["encode"]
