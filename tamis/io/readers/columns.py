"""Which column holds which input, and how a column becomes a validated array.

Every reader hands its raw columns (Arrow arrays or NumPy / CuPy arrays) to
:func:`convert_columns`, whole for a local scan or a row range at a time for a Dask worker;
the conversion works row by row, so rows ``a:b`` of a converted column are bit for bit the
conversion of rows ``a:b``. Embedding matrices are copied at most once: a single-chunk
float32 Arrow column is used in place (read-only), anything else is copied once into one
float32 matrix; NumPy input keeps its float dtype.

The store's other columns (neither embedding, label, path, split, id, pred_probs, quality nor
group) are its metadata: :func:`metadata_plan` says which to read (all, or those named with
``--metadata-cols``) and :func:`metadata_table` keeps those holding one scalar per row as one
Arrow table; list, nested and binary columns, matrices and columns of another length are left
out with the reason (``Store.metadata_skipped``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from ...config import ColumnSpec
from ...errors import ConfigError, InputError
from ..store import Store

#: input name -> (ColumnSpec field, names tried in order when the column is not named)
ALIASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "embeddings": ("embedding", ("embeddings", "embedding", "emb", "embs", "features", "feature",
                                 "vectors", "vector", "X", "x")),
    "labels": ("label", ("labels", "label", "y", "target", "targets", "class", "category")),
    "paths": ("path", ("image_paths", "image_path", "paths", "path", "filepaths", "filepath",
                       "file_paths", "file_path", "filenames", "filename", "file", "image")),
    "split": ("split", ("split", "splits", "subset", "fold", "partition")),
    "ids": ("id", ("ids", "id", "sample_id", "sample_ids", "uid", "uuid")),
    "pred_probs": ("pred_probs", ("pred_probs", "pred_prob", "probs", "probabilities",
                                  "predicted_probs", "predictions")),
    "quality": ("quality", ("quality", "quality_score")),
    "groups": ("group", ("image_id", "source_image", "parent_id")),
}
#: inputs that are (N, k) matrices; the others are one value per row
MATRIX_INPUTS = ("embeddings", "pred_probs")


def choose_columns(names: list[str], spec: ColumnSpec, src: str) -> dict[str, str]:
    """Input name -> the column of ``names`` that holds it: as named in ``spec``, else by alias."""
    chosen: dict[str, str] = {}
    wanted = spec.as_dict()
    for name, (field_name, aliases) in ALIASES.items():
        given = wanted[field_name]
        if given is not None:
            if given not in names:
                raise InputError(f"{src}: column {given!r} (--{field_name.replace('_', '-')}-col) is not in "
                                 f"the store; its columns are: {', '.join(map(repr, names)) or 'none'}")
            chosen[name] = given
            continue
        lower = {c.lower(): c for c in names}
        for alias in aliases:
            if alias in names or alias.lower() in lower:
                found = alias if alias in names else lower[alias.lower()]
                if found not in chosen.values():
                    chosen[name] = found
                    break
    return chosen


def from_columns(cols: dict[str, Any], chosen: dict[str, str], src: str, metadata: Sequence[str] = (),
                 skipped: dict[str, str] | None = None, named: bool = False) -> Store:
    """The (not yet validated) :class:`Store` of the ``chosen`` columns of ``cols``, with the columns
    ``metadata`` of ``cols`` as its metadata table (``skipped``: those left out already, with why;
    ``named``: the caller named them, so one that cannot be read is an error)."""
    values = convert_columns(cols, chosen, src)
    n = next((len(v) for v in values.values() if v is not None), None)
    table, more = metadata_table(cols, metadata, n, src, named)
    return Store(**values, metadata=table, source=src, columns=chosen,
                 metadata_skipped={**(skipped or {}), **more})


#: pandas writes its index as these columns (``__index_level_0__``): never metadata
_PANDAS_INDEX = "__index_level_"
#: Arrow field metadata key marking a column whose Python values mixed types (stored as strings)
MIXED_TYPES_KEY = b"tamis.mixed_types"


def metadata_plan(names: list[str], chosen: dict[str, str], wanted: Sequence[str] | None, src: str,
                  unreadable: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """``(columns to read as metadata, columns left out -> why)``.

    ``wanted``: None for every column that holds no input, or the names given with
    ``--metadata-cols`` (an empty sequence: none). ``unreadable``: columns the reader already
    knows hold no scalar per row (from the schema, without reading them), with the reason.
    A name the store lacks, or one that holds an input, is a :class:`ConfigError`; a named
    column that holds no scalars an :class:`InputError`.
    """
    unreadable = unreadable or {}
    inputs = {col: name for name, col in chosen.items()}
    others = [c for c in names if c not in inputs and not str(c).startswith(_PANDAS_INDEX)]
    if wanted is None:
        skipped = {c: unreadable[c] for c in others if c in unreadable}
        return [c for c in others if c not in skipped], skipped
    wanted = list(dict.fromkeys(wanted))
    for col in wanted:
        if col in inputs:
            raise ConfigError(f"{src}: --metadata-cols names {col!r}, which holds the store's {inputs[col]}; metadata "
                              f"columns are the others: {', '.join(map(repr, others)) or 'none'}")
        if col not in names:
            raise ConfigError(f"{src}: --metadata-cols names {col!r}, which is not in the store; its other columns "
                              f"are: {', '.join(map(repr, others)) or 'none'}")
        if col in unreadable:
            raise InputError(f"{src}: column {col!r} (--metadata-cols) {unreadable[col]}; the metadata check reads "
                             "one number, string, bool or date per row: leave it out of --metadata-cols")
    return wanted, {}


def metadata_table(cols: dict[str, Any], names: Sequence[str], n: int | None, src: str,
                   named: bool = False) -> tuple[pa.Table | None, dict[str, str]]:
    """``(the columns ``names`` of ``cols`` as one Arrow table, or None; columns left out -> why)``.

    A column is kept when it holds one scalar per row (number, string, bool, date or time) and
    has ``n`` rows; Python objects of mixed types become strings (the field's metadata says
    which types they were). A column left out is an :class:`InputError` when ``named``.
    """
    arrays, fields, skipped = [], [], {}
    for name in names:
        array, mixed, why = _metadata_array(cols[name], n)
        if why is not None:
            if named:
                raise InputError(f"{src}: column {name!r} (--metadata-cols) {why}; the metadata check reads one "
                                 "number, string, bool or date per row: leave it out of --metadata-cols")
            skipped[name] = why
            continue
        arrays.append(array)
        fields.append(pa.field(str(name), array.type, metadata={MIXED_TYPES_KEY: mixed} if mixed else None))
    if not arrays:
        return None, skipped
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields)), skipped


def unreadable_type(typ: pa.DataType) -> str | None:
    """Why a column of Arrow type ``typ`` is no metadata column (lists, structs, maps, unions,
    binary), or None when it holds one scalar per row."""
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    if pa.types.is_nested(typ):
        return f"holds {typ} values (lists or nested values are not analysed)"
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ) or pa.types.is_fixed_size_binary(typ):
        return f"holds {typ} values (bytes are not analysed)"
    return None


def _metadata_array(value: Any, n: int | None) -> tuple[Any, bytes | None, str | None]:
    """``(Arrow array or chunked array, the mixed Python types or None, why it is left out or None)``."""
    mixed = None
    if not isinstance(value, (pa.Array, pa.ChunkedArray)):
        if hasattr(value, "get") and type(value).__module__.startswith("cupy"):
            value = value.get()
        arr = np.asarray(value)
        if arr.ndim != 1:
            return None, None, f"has shape {tuple(arr.shape)} (one value per row is analysed, not a matrix)"
        if arr.dtype == object:
            try:
                value = pa.array(arr.tolist())
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                value, mixed = _mixed_as_strings(arr)
        else:
            try:
                value = pa.array(arr)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                return None, None, f"has dtype {arr.dtype} ({exc})"
    why = unreadable_type(value.type)
    if why is not None:
        return None, None, why
    if n is not None and len(value) != n:
        return None, None, f"has {len(value):,} rows, the store {n:,}"
    if pa.types.is_decimal(value.type):
        value = value.cast(pa.float64())
    return value, mixed, None


def _mixed_as_strings(arr: np.ndarray) -> tuple[pa.Array, bytes]:
    """Python objects of several types as strings (None and NaN stay null), and their type names."""
    kinds = sorted({type(v).__name__ for v in arr if v is not None and not (isinstance(v, float) and v != v)})
    values = [None if v is None or (isinstance(v, float) and v != v) else str(v) for v in arr]
    return pa.array(values, type=pa.string()), ",".join(kinds).encode()


def convert_columns(cols: dict[str, Any], chosen: dict[str, str], src: str) -> dict[str, Any]:
    """Input name -> its validated array, for the ``chosen`` columns of ``cols``."""
    values: dict[str, Any] = {}
    for name, col in chosen.items():
        if name in MATRIX_INPUTS:
            values[name] = _as_matrix(cols[col], col, src)
        else:
            values[name] = _as_vector(cols[col], col, src, numeric=name == "quality")
    return values


def _checked(value: Any, col: str, src: str) -> Any:
    """``value`` (an Arrow array or chunked array) after a full validation: a damaged file can hold
    offsets out of range or bytes that are no UTF-8."""
    try:
        value.validate(full=True)
    except (pa.ArrowInvalid, pa.ArrowException) as exc:
        raise InputError(f"{src}: column {col!r} is damaged ({' '.join(str(exc).split())}); write the store "
                         "again") from exc
    return value


def _as_vector(value: Any, col: str, src: str, numeric: bool = False) -> pa.Array:
    """One descriptive column (labels, paths, split, ids; quality when ``numeric``) as a pyarrow array."""
    # what a file gave is checked (a chunked column before its chunks are joined, which reads their
    # offsets); what pyarrow built from memory here is sound
    if isinstance(value, pa.ChunkedArray):
        value = _checked(value, col, src).combine_chunks()
    elif isinstance(value, pa.Array):
        value = _checked(value, col, src)
    else:
        if hasattr(value, "get") and type(value).__module__.startswith("cupy"):
            value = value.get()
        arr = np.asarray(value)
        if arr.ndim != 1:
            raise InputError(f"{src}: column {col!r} has shape {arr.shape}; it must hold one value per row (1-D)")
        if arr.dtype == object:
            try:
                value = pa.array(arr.tolist())
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise InputError(f"{src}: column {col!r} mixes value types ({exc}); use one type") from exc
        else:
            value = pa.array(arr)
    if pa.types.is_dictionary(value.type):
        value = value.dictionary_decode()
    if numeric:
        return value
    if pa.types.is_floating(value.type):
        floats = value.to_numpy(zero_copy_only=False)
        finite = floats[np.isfinite(floats)]
        if len(finite) == len(floats) and np.all(finite == np.round(finite)):
            return pa.array(floats.astype(np.int64))
        if len(finite) < len(floats):
            first = int(np.flatnonzero(~np.isfinite(floats))[0])
            raise InputError(f"{src}: column {col!r} has {len(floats) - len(finite)} NaN values (first at row "
                             f"{first}); fill them or drop those rows before scanning")
        raise InputError(f"{src}: column {col!r} holds fractional numbers; labels, paths, splits and ids must be "
                         "integers or strings")
    if not (pa.types.is_integer(value.type) or pa.types.is_string(value.type)
            or pa.types.is_large_string(value.type) or pa.types.is_boolean(value.type)):
        raise InputError(f"{src}: column {col!r} has type {value.type}; labels, paths, splits and ids must be "
                         "integers or strings")
    return value


def _as_matrix(value: Any, col: str, src: str) -> Any:
    """A numeric matrix column (embeddings, pred_probs) as an (N, d) float array.

    NumPy input keeps its float dtype (float16/32/64); integers become float32. CuPy input
    stays on the device. Arrow list columns are copied once into a float32 matrix, or used
    in place when they are one chunk of float32 with no nulls.
    """
    if isinstance(value, (pa.Array, pa.ChunkedArray)):
        return _arrow_matrix(value, col, src)
    is_device = type(value).__module__.startswith("cupy")
    arr = value if is_device else np.asarray(value) if not isinstance(value, np.ndarray) else value
    if not is_device and arr.dtype == object:
        try:
            arr = np.stack([np.asarray(row, dtype=np.float32) for row in arr])
        except (ValueError, TypeError) as exc:
            raise InputError(f"{src}: column {col!r} has rows of different lengths or non-numeric values "
                             f"({exc}); every row must be a vector of the same length d") from exc
    if arr.ndim != 2:
        raise InputError(f"{src}: column {col!r} has shape {tuple(arr.shape)}; it must be a 2-D N x d matrix "
                         "(one vector per row); reshape it with .reshape(len(x), -1)")
    kind = arr.dtype.kind
    if kind == "f":
        return arr
    if kind in "iub":
        return arr.astype("float32")
    raise InputError(f"{src}: column {col!r} has non-numeric dtype {arr.dtype}; it must hold floating-point "
                     "numbers, e.g. embeddings.astype(np.float32)")


def _arrow_matrix(value: pa.Array | pa.ChunkedArray, col: str, src: str) -> np.ndarray:
    chunks = value.chunks if isinstance(value, pa.ChunkedArray) else [value]
    chunks = [c for c in chunks if len(c)]
    typ = value.type
    if not (pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ)):
        raise InputError(f"{src}: column {col!r} has type {typ}; an embedding column must be a list or "
                         "fixed-size list of floats (one vector per row)")
    vtype = typ.value_type
    if not (pa.types.is_floating(vtype) or pa.types.is_integer(vtype)):
        raise InputError(f"{src}: column {col!r} holds {vtype} values; it must hold numbers (floats)")
    n = len(value)
    if n == 0:
        return np.empty((0, 0), dtype=np.float32)
    dim = None
    for chunk in chunks:
        lengths = chunk.value_lengths().to_numpy(zero_copy_only=False) if not pa.types.is_fixed_size_list(typ) \
            else np.full(len(chunk), typ.list_size)
        valid = ~chunk.is_null().to_numpy(zero_copy_only=False)
        present = lengths[valid]
        if len(present):
            lo, hi = int(present.min()), int(present.max())
            if lo != hi or (dim is not None and lo != dim):
                raise InputError(f"{src}: column {col!r} is ragged: its vectors have lengths from "
                                 f"{min(lo, dim or lo)} to {max(hi, dim or hi)}; every row needs the same length d")
            dim = lo
    if dim is None or dim == 0:
        raise InputError(f"{src}: column {col!r} holds no vector values; it must hold one vector of d numbers per row")
    single = (len(chunks) == 1 and chunks[0].null_count == 0 and pa.types.is_float32(vtype)
              and chunks[0].values.null_count == 0)
    if single:
        chunk = chunks[0]
        flat = chunk.flatten().to_numpy(zero_copy_only=True) if chunk.offset == 0 else \
            chunk.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(n, dim)
    out = np.empty((n, dim), dtype=np.float32)
    row = 0
    for chunk in chunks:
        m = len(chunk)
        valid = ~chunk.is_null().to_numpy(zero_copy_only=False)
        if valid.all():
            flat = chunk.flatten().to_numpy(zero_copy_only=False)
            out[row:row + m] = np.asarray(flat, dtype=np.float32).reshape(m, dim)
        else:  # a null vector is a row with no embedding: reported as invalid, never a crash
            block = np.full((m, dim), np.nan, dtype=np.float32)
            flat = chunk.filter(pa.array(valid)).flatten().to_numpy(zero_copy_only=False)
            block[valid] = np.asarray(flat, dtype=np.float32).reshape(int(valid.sum()), dim)
            out[row:row + m] = block
        row += m
    return out


def table_columns(table: pa.Table | pa.RecordBatch) -> dict[str, Any]:
    """Column name -> column, for every column of an Arrow table or record batch."""
    return {name: table.column(name) for name in table.column_names}
