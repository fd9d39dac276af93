"""A scanned store's index as files: what ``tamis scan --against`` searches and ``tamis index add`` grows.

A report written with ``--save-index`` holds a folder ``index/`` (listed in ``summary.json ->
files`` like every file of the report, so a later scan into the folder replaces or removes it):

- ``vectors-NNNNN.npy``: one segment of the L2-normalised valid rows, (rows, d) float32 or
  float16, C order, memory-mapped when read (``np.load(mmap_mode="r")``); segment 0 is the
  scanned store's valid rows in input order, each ``tamis index add`` appends one segment;
- ``rows-NNNNN.parquet``: one row per vector of the segment, in the same order: ``row`` (the
  row's position in the store that contributed it), ``id``, and where the store had them
  ``label``, ``split``, ``path``; where the index has a quantiser ``bucket`` (int32) and
  ``bucket_cos`` (float64: ``x . c / |x|`` with the bucket's centroid ``c``, in float64);
- ``quantiser-00000.npz`` (optional): ``centroids`` (B, d) float32 unit vectors; with ``bucket``
  and ``bucket_cos`` a batch query skips every bucket, and every part of a bucket, whose rows
  cannot reach a similarity (:mod:`tamis.engine.reference`); appended rows go to the nearest
  centroid, so the file never changes;
- ``manifest.json``, written last (the commit mark): format and version, ``report_id`` (the
  report's, as every file of a report carries it), ``dim``, ``dtype``, ``n_rows``, the
  ``columns``, the ``segments``, the ``quantiser``, each file's SHA-256, size and the
  ``os.stat`` signature it had when written, and the ``fingerprint``.

The fingerprint is ``sha256:`` + SHA-256 of the canonical JSON of ``{"format", "version",
"dim", "dtype", "segments": [[rows, SHA-256 of the vectors file, SHA-256 of the rows file],
...]}``: it names the index's content (the normalised embedding bytes, the row count, the ids,
labels, splits and paths and their column names), not the report that wrote it. Opening an index
checks every file against the manifest: a file whose size, modification and change times and
inode are those recorded is taken as written (the check git makes of its index: any write to a
file changes its change time, which no user can set back), any other is hashed in full and
refused when its digest differs. So an untouched index opens in time independent of its size,
and a changed one is never used.

``tamis index add`` (:func:`append_segment`) writes a new segment, then replaces
``manifest.json`` (atomic rename); a run killed before that rename leaves files no manifest
lists, removed by the next append.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError
from .atomic import atomic_path, write_json, write_parquet

__all__ = ["INDEX_DIR", "MANIFEST", "IndexData", "OpenIndex", "write_index", "copy_index", "read_manifest",
           "open_index", "append_segment", "fingerprint_of", "describe", "ROW_COLUMNS"]

INDEX_DIR = "index"
MANIFEST = "manifest.json"
FORMAT = "tamis-index"
VERSION = 1
#: the optional columns of a rows file, in order (``row`` always comes first, ``bucket`` last)
ROW_COLUMNS = ("id", "label", "split", "path")
_OWN_FILE = re.compile(r"(vectors|rows|quantiser)-\d{5}\.(npy|parquet|npz)")
#: a temporary file of one of them (atomic_path's ``.<name>.<random>.tmp``), left by a killed write
_OWN_TEMP = re.compile(r"\.(vectors|rows|quantiser)-\d{5}\.(npy|parquet|npz)\..+\.tmp")
_HASH_CHUNK = 16 << 20


@dataclass
class IndexData:
    """What a scan hands the writer: host arrays of the valid rows.

    vectors : (M, d) float32 or float16, L2-normalised, in input order
    rows : ``row``, ``id`` and the optional ``label``, ``split``, ``path`` of each vector
    buckets : (M,) int32 bucket of each vector, with ``bucket_cos`` (M,) float64 (each vector's
        cosine to its bucket's centroid) and ``centroids`` (B, d) float32; all three None where the
        index has no quantiser
    """

    vectors: np.ndarray
    rows: pa.Table
    buckets: np.ndarray | None = None
    bucket_cos: np.ndarray | None = None
    centroids: np.ndarray | None = None
    source: str = "memory"


@dataclass
class OpenIndex:
    """An index opened for reading: the manifest, each segment's memory-mapped vectors and rows."""

    folder: Path
    manifest: dict
    vectors: list[np.ndarray]
    rows: list[pa.Table]
    centroids: np.ndarray | None = None
    #: how each file was checked: "stat" (untouched since written) or "sha256" (hashed in full)
    verified: dict = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return int(self.manifest["n_rows"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def dtype(self) -> str:
        return str(self.manifest["dtype"])

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    def column(self, name: str) -> pa.ChunkedArray | None:
        """One column of every segment's rows, in index order (None where the index lacks it)."""
        if name not in self.rows[0].column_names:
            return None
        kind = self.rows[0].schema.field(name).type
        return pa.chunked_array([c for t in self.rows for c in t[name].chunks], type=kind)


# ------------------------------------------------------------------------------ writing
def _segment_names(number: int) -> tuple[str, str]:
    return f"vectors-{number:05d}.npy", f"rows-{number:05d}.parquet"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _signature(path: Path) -> list[int]:
    st = os.stat(path)
    return [int(st.st_size), int(st.st_mtime_ns), int(st.st_ctime_ns), int(st.st_ino)]


def _file_entry(path: Path) -> dict:
    return {"sha256": _sha256(path), "bytes": path.stat().st_size, "stat": _signature(path)}


def fingerprint_of(manifest: dict) -> str:
    """The fingerprint the manifest's format, shape and file digests give (module docstring)."""
    files = manifest["files"]
    content = {"format": FORMAT, "version": VERSION, "dim": int(manifest["dim"]), "dtype": str(manifest["dtype"]),
               "segments": [[int(s["n_rows"]), files[s["vectors"]]["sha256"], files[s["rows"]]["sha256"]]
                            for s in manifest["segments"]]}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def _save_quantiser(path: Path, centroids: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, centroids=np.asarray(centroids, dtype=np.float32))


def _rows_table(rows: pa.Table, buckets: np.ndarray | None, bucket_cos: np.ndarray | None) -> pa.Table:
    if buckets is None:
        return rows
    return rows.append_column("bucket", pa.array(np.asarray(buckets, dtype=np.int32))) \
        .append_column("bucket_cos", pa.array(np.asarray(bucket_cos, dtype=np.float64)))


def write_index(folder: str | os.PathLike, data: IndexData, report_id: str) -> dict:
    """Write ``data`` as a new index into ``folder`` (created; the caller stages it) and return the
    manifest. Files first, ``manifest.json`` last."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=False)
    vectors = np.asarray(data.vectors)
    if vectors.ndim != 2 or vectors.dtype not in (np.float32, np.float16):
        raise InputError(f"index vectors must be an (M, d) float32 or float16 matrix, got {vectors.dtype} "
                         f"{vectors.shape}")
    if data.rows.num_rows != vectors.shape[0]:
        raise InputError(f"the index rows table has {data.rows.num_rows} rows for {vectors.shape[0]} vectors")
    vec_name, rows_name = _segment_names(0)
    _save_npy(folder / vec_name, vectors)
    write_parquet(folder / rows_name, _rows_table(data.rows, data.buckets, data.bucket_cos))
    names = [vec_name, rows_name]
    quantiser = None
    if data.centroids is not None:
        _save_quantiser(folder / "quantiser-00000.npz", data.centroids)
        names.append("quantiser-00000.npz")
        quantiser = {"file": "quantiser-00000.npz", "buckets": int(np.asarray(data.centroids).shape[0])}
    manifest = {
        "format": FORMAT, "version": VERSION, "report_id": report_id,
        "dim": int(vectors.shape[1]), "dtype": str(vectors.dtype), "n_rows": int(vectors.shape[0]),
        "columns": [c for c in ROW_COLUMNS if c in data.rows.column_names],
        "segments": [{"vectors": vec_name, "rows": rows_name, "n_rows": int(vectors.shape[0]),
                      "source": str(data.source), "added_at": _now()}],
        "quantiser": quantiser,
        "files": {name: _file_entry(folder / name) for name in names},
    }
    manifest["fingerprint"] = fingerprint_of(manifest)
    write_json(folder / MANIFEST, manifest)
    return manifest


def copy_index(source: str | os.PathLike, folder: str | os.PathLike, report_id: str) -> dict:
    """Copy the index at ``source`` (checked first) into ``folder`` for a report ``report_id``:
    the same files, hence the same fingerprint, under a new manifest."""
    opened = open_index(source)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=False)
    manifest = dict(opened.manifest, report_id=report_id)
    files = {}
    for name in manifest["files"]:
        with atomic_path(folder / name) as tmp, open(opened.folder / name, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(_HASH_CHUNK):
                dst.write(chunk)
        files[name] = _file_entry(folder / name)
        if files[name]["sha256"] != manifest["files"][name]["sha256"]:
            raise InputError(f"{source}: {name} changed while it was being copied; copy the index again")
    manifest["files"] = files
    write_json(folder / MANIFEST, manifest)
    return manifest


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------ reading
def _fix(folder: Path) -> str:
    report = folder.parent
    return f"rescan the reference with --save-index (tamis scan STORE --out {report} --save-index)"


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of the index at ``folder``; an :class:`InputError` naming the folder and the fix
    when there is none or it is not one tamis wrote."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise InputError(f"{folder}: no index here (no {MANIFEST}); the index is missing or incomplete: "
                         f"{_fix(folder)}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} cannot be read ({exc}); the index is damaged: {_fix(folder)}") from exc
    keys = ("format", "version", "report_id", "dim", "dtype", "n_rows", "columns", "segments", "files", "fingerprint")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or any(k not in manifest for k in keys):
        raise InputError(f"{path} is not a tamis index manifest; {_fix(folder)}")
    if manifest["version"] != VERSION:
        raise InputError(f"{path}: index format version {manifest['version']}, this tamis reads version {VERSION}; "
                         f"{_fix(folder)}")
    for name in manifest["files"]:
        if not isinstance(name, str) or not _OWN_FILE.fullmatch(name):
            raise InputError(f"{path} lists {name!r}, which is no index file name; {_fix(folder)}")
    return manifest


def _verify(folder: Path, manifest: dict) -> dict:
    """Each listed file's check ("stat" or "sha256"); an InputError for a missing or changed one."""
    how = {}
    for name, entry in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise InputError(f"{folder}: {name} is missing; the index is incomplete: {_fix(folder)}")
        if _signature(path) == list(entry.get("stat") or []):
            how[name] = "stat"
            continue
        digest = _sha256(path)
        if digest != entry["sha256"]:
            raise InputError(f"{folder}: {name} does not match the index's fingerprint {manifest['fingerprint']} "
                             f"(its SHA-256 is {digest[:16]}..., the manifest says {entry['sha256'][:16]}...): the "
                             f"index was changed after tamis wrote it; {_fix(folder)}")
        how[name] = "sha256"
    if fingerprint_of(manifest) != manifest["fingerprint"]:
        raise InputError(f"{folder}: the manifest's fingerprint {manifest['fingerprint']} is not the one its files "
                         f"give ({fingerprint_of(manifest)}): the index was changed after tamis wrote it; "
                         f"{_fix(folder)}")
    return how


def open_index(folder: str | os.PathLike, report_id: str | None = None) -> OpenIndex:
    """Open the index at ``folder`` for reading: every file checked against the manifest (module
    docstring), the vectors memory-mapped, the rows read. With ``report_id``, the manifest must
    carry it (an index of another report in the folder is a mixed folder)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if report_id is not None and manifest["report_id"] != report_id:
        raise InputError(f"{folder}: {MANIFEST} belongs to another report than summary.json (report_id "
                         f"{manifest['report_id']} != {report_id}); the folder is mixed: {_fix(folder)}")
    for segment in manifest["segments"]:
        for key in ("vectors", "rows"):
            if segment.get(key) not in manifest["files"]:
                raise InputError(f"{folder}: the manifest's segment file {segment.get(key)!r} is not among its "
                                 f"files; {_fix(folder)}")
    quantiser = manifest.get("quantiser")
    if quantiser is not None and quantiser.get("file") not in manifest["files"]:
        raise InputError(f"{folder}: the manifest's quantiser file is not among its files; {_fix(folder)}")
    how = _verify(folder, manifest)
    dim, dtype = int(manifest["dim"]), np.dtype(manifest["dtype"])
    vectors, rows = [], []
    for segment in manifest["segments"]:
        try:
            mat = np.load(folder / segment["vectors"], mmap_mode="r", allow_pickle=False)
            table = pq.read_table(folder / segment["rows"])
        except (OSError, ValueError) as exc:
            raise InputError(f"{folder}: {segment['vectors']} or {segment['rows']} cannot be read ({exc}); "
                             f"{_fix(folder)}") from exc
        if mat.ndim != 2 or mat.shape != (int(segment["n_rows"]), dim) or mat.dtype != dtype or \
                table.num_rows != int(segment["n_rows"]):
            raise InputError(f"{folder}: {segment['vectors']} holds {mat.dtype} {mat.shape} and {segment['rows']} "
                             f"{table.num_rows} rows, the manifest says {dtype} ({segment['n_rows']}, {dim}); "
                             f"{_fix(folder)}")
        vectors.append(mat)
        rows.append(table)
    if sum(len(v) for v in vectors) != int(manifest["n_rows"]):
        raise InputError(f"{folder}: the segments hold {sum(len(v) for v in vectors)} rows, the manifest says "
                         f"{manifest['n_rows']}; {_fix(folder)}")
    centroids = None
    if quantiser is not None:
        with np.load(folder / quantiser["file"], allow_pickle=False) as archive:
            centroids = np.asarray(archive["centroids"], dtype=np.float32)
        if centroids.shape != (int(quantiser["buckets"]), dim) or \
                any(not {"bucket", "bucket_cos"} <= set(t.column_names) for t in rows):
            raise InputError(f"{folder}: the quantiser does not fit the index ({centroids.shape} centroids for "
                             f"{dim} dims); {_fix(folder)}")
    return OpenIndex(folder=folder, manifest=manifest, vectors=vectors, rows=rows, centroids=centroids,
                     verified=how)


# ------------------------------------------------------------------------------ appending
def append_segment(index: OpenIndex, vectors: np.ndarray, rows: pa.Table, buckets: np.ndarray | None,
                   bucket_cos: np.ndarray | None, source: str) -> dict:
    """Append one segment to the opened ``index`` (whose folder the caller holds locked): new files,
    then the new manifest replaces the old one; return it. The rows table must have the index's
    columns (types cast by the caller)."""
    folder = index.folder
    old = index.manifest
    for stale in folder.iterdir():   # a killed append's files, never listed by a manifest
        if (_OWN_FILE.fullmatch(stale.name) and stale.name not in old["files"]) or _OWN_TEMP.fullmatch(stale.name):
            stale.unlink(missing_ok=True)
    number = len(old["segments"])
    while any((folder / name).exists() for name in _segment_names(number)):
        number += 1
    vec_name, rows_name = _segment_names(number)
    vectors = np.asarray(vectors)
    if vectors.dtype != np.dtype(old["dtype"]) or vectors.ndim != 2 or vectors.shape[1] != int(old["dim"]):
        raise InputError(f"the rows to append are {vectors.dtype} {vectors.shape}; the index holds "
                         f"{old['dtype']} rows of {old['dim']} dims")
    _save_npy(folder / vec_name, vectors)
    write_parquet(folder / rows_name, _rows_table(rows, buckets, bucket_cos))
    files = dict(old["files"])
    files[vec_name] = _file_entry(folder / vec_name)
    files[rows_name] = _file_entry(folder / rows_name)
    if (buckets is None) != (old.get("quantiser") is None):
        raise InputError(f"{folder}: the rows to append {'lack' if buckets is None else 'have'} buckets and the index "
                         f"{'has' if buckets is None else 'has no'} quantiser")
    manifest = dict(old, n_rows=int(old["n_rows"]) + int(vectors.shape[0]), files=files,
                    segments=list(old["segments"]) + [{"vectors": vec_name, "rows": rows_name,
                                                       "n_rows": int(vectors.shape[0]), "source": str(source),
                                                       "added_at": _now()}])
    manifest["fingerprint"] = fingerprint_of(manifest)
    write_json(folder / MANIFEST, manifest)   # the commit: atomic rename
    return manifest


def describe(manifest: dict) -> dict:
    """What summary.json records of an index."""
    quantiser = manifest.get("quantiser")
    return {"fingerprint": manifest["fingerprint"], "rows": int(manifest["n_rows"]), "dim": int(manifest["dim"]),
            "dtype": manifest["dtype"], "segments": len(manifest["segments"]),
            "buckets": None if quantiser is None else int(quantiser["buckets"]), "columns": list(manifest["columns"])}
