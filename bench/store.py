"""Reading and writing benchmark stores (``store.npz`` or ``store.parquet``) and ``truth.json``.

A store holds one row per sample:

=============  =====================================  =====================================
field          npz array (dtype)                      Parquet column
=============  =====================================  =====================================
embedding      ``embeddings`` (N, D) float32          ``embedding`` fixed_size_list<float32>
label          ``labels`` (N,) int64                  ``label`` int64
image path     ``image_paths`` (N,) unicode           ``image_path`` string
split          ``split`` (N,) unicode                 ``split`` string
id             ``ids`` (N,) int64                     ``id`` int64
pred_probs     ``pred_probs`` (N, C) float32          ``pred_probs`` fixed_size_list<float32>
=============  =====================================  =====================================

``pred_probs`` is optional. npz files are written with ``np.savez`` (no object arrays, so
``np.load`` needs no ``allow_pickle``). Every file is written to a temporary name and moved
into place with ``os.replace``, so a reader never sees a half-written store.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

FORMATS = ("npz", "parquet")
STORE_FILES = {"npz": "store.npz", "parquet": "store.parquet"}
TRUTH_FILE = "truth.json"

# npz array name -> Parquet column name
_COLUMNS = {
    "embeddings": "embedding",
    "labels": "label",
    "image_paths": "image_path",
    "split": "split",
    "ids": "id",
    "pred_probs": "pred_probs",
}
_PARQUET_ROW_GROUP = 65_536


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        _publish(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _publish(tmp: Path, path: Path) -> None:
    """Give a finished temporary file ordinary permissions (mkstemp makes it 0600) and move it."""
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


def _atomic_target(path: Path) -> Path:
    """A temporary sibling of ``path`` with the same suffix (np.savez appends '.npz' otherwise)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def write_store(arrays: dict[str, np.ndarray], out_dir: str | os.PathLike, fmt: str) -> Path:
    """Write ``arrays`` (keyed by npz array name) as ``out_dir/store.<fmt>``; return the path.

    Parquet is written in row groups of 65,536 rows from zero-copy slices, so the peak
    extra memory is one row group, not a second copy of the matrix.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / STORE_FILES[fmt]
    tmp = _atomic_target(path)
    try:
        if fmt == "npz":
            np.savez(tmp, **arrays)
        else:
            _write_parquet(arrays, tmp)
        _publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _fixed_size_list(matrix: np.ndarray):
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])


def _write_parquet(arrays: dict[str, np.ndarray], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    emb = arrays["embeddings"]
    fields = [
        pa.field("embedding", pa.list_(pa.float32(), emb.shape[1])),
        pa.field("label", pa.int64()),
        pa.field("image_path", pa.string()),
        pa.field("split", pa.string()),
        pa.field("id", pa.int64()),
    ]
    probs = arrays.get("pred_probs")
    if probs is not None:
        fields.append(pa.field("pred_probs", pa.list_(pa.float32(), probs.shape[1])))
    schema = pa.schema(fields)
    n = emb.shape[0]
    with pq.ParquetWriter(path, schema) as writer:
        for a in range(0, n, _PARQUET_ROW_GROUP):
            b = min(a + _PARQUET_ROW_GROUP, n)
            cols = [
                _fixed_size_list(emb[a:b]),
                pa.array(arrays["labels"][a:b], pa.int64()),
                pa.array(arrays["image_paths"][a:b].tolist(), pa.string()),
                pa.array(arrays["split"][a:b].tolist(), pa.string()),
                pa.array(arrays["ids"][a:b], pa.int64()),
            ]
            if probs is not None:
                cols.append(_fixed_size_list(probs[a:b]))
            writer.write_table(pa.Table.from_arrays(cols, schema=schema))


def find_store(path: str | os.PathLike) -> Path:
    """The store file for ``path``: the file itself, or ``store.npz`` / ``store.parquet`` in it."""
    path = Path(path)
    if path.is_file():
        return path
    for name in STORE_FILES.values():
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(
        f"no store at {path}: expected a store file or a folder holding "
        f"{' or '.join(STORE_FILES.values())}; create one with `python -m bench.generate --out {path}`")


def load_store(path: str | os.PathLike, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Load a store as a dict of NumPy arrays keyed by npz array name.

    ``names`` restricts what is read (e.g. ``["labels", "split"]``); absent optional
    arrays (``pred_probs``) are left out of the result.
    """
    file = find_store(path)
    wanted = list(_COLUMNS) if names is None else list(names)
    if file.suffix == ".npz":
        with np.load(file) as z:
            return {k: z[k] for k in wanted if k in z.files}
    import pyarrow.parquet as pq

    present = set(pq.read_schema(file).names)
    cols = [_COLUMNS[k] for k in wanted if _COLUMNS[k] in present]
    table = pq.read_table(file, columns=cols)
    out = {}
    for key in wanted:
        col = _COLUMNS[key]
        if col not in present:
            continue
        chunked = table.column(col)
        if key in ("embeddings", "pred_probs"):
            out[key] = _matrix_from_chunks(chunked)
        elif key in ("image_paths", "split"):
            out[key] = np.asarray(chunked.to_pylist(), dtype=str)
        else:
            out[key] = chunked.to_numpy()
    return out


def _matrix_from_chunks(chunked) -> np.ndarray:
    """A (N, D) float32 matrix from a chunked fixed_size_list column, filled in place."""
    width = chunked.type.list_size
    out = np.empty((len(chunked), width), dtype=np.float32)
    start = 0
    for chunk in chunked.chunks:
        m = len(chunk)
        out[start:start + m] = chunk.flatten().to_numpy(zero_copy_only=False).reshape(m, width)
        start += m
    return out


def load_truth(path: str | os.PathLike) -> dict:
    """``truth.json`` from a store folder (or the folder of a store file)."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    with open(folder / TRUTH_FILE) as fh:
        return json.load(fh)
