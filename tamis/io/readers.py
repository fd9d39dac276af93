"""Read an embedding store from a file, a directory of shards, or memory.

Formats
-------
- ``.npz``: arrays ``embeddings`` and optional ``labels``, ``image_paths``, ``split``,
  ``pred_probs``, ``ids`` (read with ``allow_pickle=False``);
- ``.npy``: one (N, d) matrix, embeddings only;
- Parquet: one file or a directory of shards; Arrow IPC / Feather (``.arrow``, ``.feather``,
  ``.ipc``): the embedding column as a list or fixed-size list of numbers;
- memory: a NumPy / CuPy matrix, a dict of columns, a pandas / cuDF DataFrame or a
  pyarrow Table.

Column names are found by :class:`~tamis.io.store.ColumnSpec` or, when not given,
by the usual names (:data:`ALIASES`). Embedding matrices are copied at most once: a
single-chunk float32 column is used in place (read-only), anything else is copied once
into one float32 matrix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa

from ..errors import InputError
from .store import ColumnSpec, Store

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
}
MATRIX_INPUTS = ("embeddings", "pred_probs")
PARQUET_SUFFIXES = (".parquet", ".pq")
ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")


def load_store(source: Any, columns: ColumnSpec | None = None) -> Store:
    """Read ``source`` (a path or in-memory data) into a validated :class:`Store`."""
    columns = columns or ColumnSpec()
    if isinstance(source, Store):
        return source.validate()
    if isinstance(source, (str, os.PathLike)):
        return _load_path(Path(source), columns).validate()
    return _from_columns(_memory_columns(source), columns, "memory").validate()


# ---------------------------------------------------------------------------- files
def _load_path(path: Path, columns: ColumnSpec) -> Store:
    if not path.exists():
        raise InputError(f"{path}: no such file or directory; give the path of an .npz, .npy, "
                         "Parquet or Arrow/Feather store")
    src = str(path)
    if path.is_dir():
        return _from_columns(_table_columns(_read_parquet(parquet_shards(path), src)), columns, src)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _from_columns(_read_npz(path), columns, src)
    if suffix == ".npy":
        return _read_npy(path, columns)
    if suffix in PARQUET_SUFFIXES:
        return _from_columns(_table_columns(_read_parquet([path], src)), columns, src)
    if suffix in ARROW_SUFFIXES:
        return _from_columns(_table_columns(_read_arrow(path)), columns, src)
    raise InputError(f"{src}: unknown store format {suffix or '(no suffix)'!r}; tamis reads .npz, .npy, "
                     ".parquet (or a directory of shards), .arrow, .feather and .ipc")


def parquet_shards(path: Path) -> list[Path]:
    """The Parquet files of a store, in row order: the file itself, or a folder's shards sorted by path."""
    if not path.is_dir():
        return [path]
    shards = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PARQUET_SUFFIXES)
    if not shards:
        raise InputError(f"{path}: the directory holds no .parquet shards; give a file or a "
                         "directory of Parquet shards")
    return shards


def _read_npz(path: Path) -> dict[str, Any]:
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - zipfile, OSError and ValueError all mean unreadable
        raise InputError(f"{path}: cannot read this .npz file ({exc}); is it a complete file written by "
                         "np.savez?") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(f"{path}: this is not an .npz archive; rename it or save with np.savez")
    out = {}
    with archive:
        for key in archive.files:
            try:
                out[key] = archive[key]
            except ValueError as exc:
                if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
                    raise InputError(
                        f"{path}: array {key!r} is an object array, which tamis does not load (pickles can "
                        f"run code); re-save it with a plain dtype, e.g. np.savez(..., {key}="
                        f"np.asarray({key}, dtype=str)) for strings or .astype(np.float32) for numbers") from exc
                raise InputError(f"{path}: cannot read array {key!r} ({exc})") from exc
            except Exception as exc:  # noqa: BLE001 - a damaged member raises zlib/zipfile errors
                raise InputError(f"{path}: array {key!r} is damaged ({exc}); write the file again") from exc
    return out


def _read_npy(path: Path, columns: ColumnSpec) -> Store:
    try:
        matrix = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise InputError(f"{path}: the .npy file holds an object array; re-save it with "
                             "np.save(path, embeddings.astype(np.float32))") from exc
        raise InputError(f"{path}: cannot read this .npy file ({exc})") from exc
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: cannot read this .npy file ({exc}); is it a complete file written by "
                         "np.save?") from exc
    named = [k for k, v in columns.as_dict().items() if v is not None and k != "embedding"]
    if named:
        raise InputError(f"{path}: a .npy file holds embeddings only, but --{named[0].replace('_', '-')}-col "
                         "was given; use an .npz or Parquet store for labels and other columns")
    return Store(embeddings=_as_matrix(np.asarray(matrix), "embeddings", str(path)), source=str(path),
                 columns={"embeddings": "(npy matrix)"})


def _read_parquet(files: list[Path], src: str) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        tables = [pq.read_table(f) for f in files]
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
    except Exception as exc:  # noqa: BLE001 - ArrowInvalid, OSError, ...
        raise InputError(f"{src}: cannot read the Parquet store ({exc}); is every shard a complete "
                         "Parquet file with the same columns?") from exc


def _read_arrow(path: Path) -> pa.Table:
    import pyarrow.feather as feather
    import pyarrow.ipc as ipc

    try:
        return feather.read_table(path, memory_map=True)
    except Exception:  # noqa: BLE001 - not a file-format IPC; try the stream format
        pass
    try:
        with pa.memory_map(str(path)) as source:
            return ipc.open_stream(source).read_all()
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: cannot read this Arrow IPC / Feather file ({exc}); write it with "
                         "pyarrow.feather.write_feather") from exc


# ---------------------------------------------------------------------------- memory
def _memory_columns(data: Any) -> dict[str, Any]:
    if isinstance(data, Mapping):
        return dict(data)
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        return _table_columns(data)
    module = type(data).__module__.split(".")[0]
    if module == "pandas":
        try:
            return _table_columns(pa.Table.from_pandas(data, preserve_index=False))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise InputError(f"memory: cannot convert the DataFrame to Arrow ({exc}); give the embedding "
                             "column as lists or arrays of numbers") from exc
    if module == "cudf":
        return _table_columns(data.to_arrow())
    if hasattr(data, "shape") and len(getattr(data, "shape")) == 2:
        return {"embeddings": data}
    if hasattr(data, "shape"):
        raise InputError(f"memory: an array of shape {tuple(data.shape)} is not an embedding matrix; "
                         "give an N x d matrix, or a dict {'embeddings': ..., 'labels': ...}")
    raise InputError(f"memory: tamis cannot read a {type(data).__name__}; give a path, an N x d array, a dict "
                     "of columns, a pandas/cuDF DataFrame or a pyarrow Table")


def _table_columns(table: pa.Table | pa.RecordBatch) -> dict[str, Any]:
    return {name: table.column(name) for name in table.column_names}


# ---------------------------------------------------------------------------- columns
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


def _from_columns(cols: dict[str, Any], spec: ColumnSpec, src: str) -> Store:
    chosen = choose_columns(list(cols), spec, src)
    return Store(**convert_columns(cols, chosen, src), source=src, columns=chosen)


def convert_columns(cols: dict[str, Any], chosen: dict[str, str], src: str) -> dict[str, Any]:
    """Input name -> its validated array, for the ``chosen`` columns of ``cols``."""
    values: dict[str, Any] = {}
    for name, col in chosen.items():
        if name in MATRIX_INPUTS:
            values[name] = _as_matrix(cols[col], col, src)
        else:
            values[name] = _as_vector(cols[col], col, src, numeric=name == "quality")
    return values


def _as_vector(value: Any, col: str, src: str, numeric: bool = False) -> pa.Array:
    """One descriptive column (labels, paths, split, ids; quality when ``numeric``) as a pyarrow array."""
    if isinstance(value, pa.ChunkedArray):
        value = value.combine_chunks()
    if not isinstance(value, pa.Array):
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
