"""``report.html``: the whole report in one file that opens offline, in any browser.

The page is built by ``assets/report.js`` from the data embedded in the file as JSON in a
``<script type="application/json">`` tag (``<``, ``>`` and ``&`` escaped as ``\\u003c`` ...,
so no value can close the tag). The script and style are inlined from the package's assets
and allowed by a Content-Security-Policy that names their hashes, so nothing else on the
page can run (no inline handlers, no remote loads). The page writes every data value with
``textContent``: a label like ``<img onerror=...>`` shows as text.

Large columns travel as base64 typed arrays (coordinates float32, label codes int32, issue
flags as a uint32 bit mask, scores float32), so a 1M-row report stays usable: about
8 bytes per row per numeric column, plus the ids and paths as JSON strings.

Thumbnails (optional, need Pillow) are made at report time into ``thumbs/<row>.jpg`` beside
the report, at most ``max_thumbnails`` of at most ``thumb_size`` pixels, flagged rows first
(worst first, taking turns across issue types). A sample's path is resolved against
``image_root`` (default: the store's folder; the working directory for in-memory stores) and
only read when it resolves, symlinks followed, to a regular file inside ``image_root``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import shutil
import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .._version import __version__
from ..engine.projection import coords_by_row
from ..errors import ConfigError, InputError
from ..io.atomic import atomic_path, default_dir_mode, write_text
from .model import Report

log = logging.getLogger("tamis")

#: nearest neighbours listed per sample in the side panel
MAX_NEIGHBORS = 10
#: leak pairs embedded (most similar first)
MAX_PAIRS = 50_000
#: paths tried per thumbnail wanted (plus 1000) before giving up: a wrong image root costs no full pass
MAX_ATTEMPTS_PER_THUMBNAIL = 5
#: images larger than this are not opened for thumbnails
MAX_IMAGE_BYTES = 64 << 20
THUMBS_DIR = "thumbs"
#: the label-error check's suggested label, under the names it has had (the first present is shown)
SUGGESTED_LABEL_COLUMNS = ("suggested_label", "label_error_suggested_label")


def write_html_report(report: Report, out_dir: str | os.PathLike, *, coords: Any = None, neighbors: Any = None,
                      image_root: str | os.PathLike | None = None, max_thumbnails: int = 2000,
                      thumb_size: int = 96) -> Path:
    """Write ``report.html`` (and ``thumbs/``) into ``out_dir``; return the HTML file's path.

    Parameters
    ----------
    report : the scan's :class:`~tamis.report.model.Report`.
    out_dir : folder of the report (created if needed).
    coords : optional (N, 2 or 3) array of map coordinates, one row per input row, NaN where a
        row has none (an invalid embedding); the first two axes are drawn. Default: the report's
        ``projection`` table, when it has one.
    neighbors : optional (N, k) int array: each input row's nearest input rows, -1 = none.
    image_root : folder the samples' paths are resolved against and confined to.
    max_thumbnails, thumb_size : bounds on the thumbnails made (0 thumbnails: none).
    """
    if not isinstance(max_thumbnails, (int, np.integer)) or max_thumbnails < 0:
        raise ConfigError(f"max_thumbnails={max_thumbnails!r}; give an integer >= 0")
    if not isinstance(thumb_size, (int, np.integer)) or not 16 <= thumb_size <= 512:
        raise ConfigError(f"thumb_size={thumb_size!r}; give an integer between 16 and 512 (pixels)")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: the output path is a file; give a folder for the report")
    out.mkdir(parents=True, exist_ok=True)
    n = report.samples.num_rows
    if coords is None and "projection" in report.tables:
        coords = coords_by_row(report.tables["projection"], n)
    xy = _coords(coords, n)
    nn = _neighbors(neighbors, n)
    root = _image_root(report, image_root)
    thumbs, thumbs_note = _make_thumbnails(report, out, root, max_thumbnails, thumb_size)
    payload = _payload(report, xy, coords, nn, thumbs, thumbs_note)
    html = render(payload)
    path = out / "report.html"
    write_text(path, html)
    return path


# ---------------------------------------------------------------------- page
def render(payload: dict) -> str:
    """The HTML page for ``payload`` (the JSON-able dict :func:`_payload` builds)."""
    js = _asset("report.js")
    css = _asset("report.css")
    for text, tag in ((js, "</script"), (css, "</style")):
        if tag in text.lower():
            raise RuntimeError(f"a packaged asset contains {tag!r}, which would end its inline tag")
    data = json.dumps(payload, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    csp = ("default-src 'none'; "
           f"script-src '{_sha256(js)}'; style-src '{_sha256(css)}'; "
           "img-src 'self' file: data: blob:; base-uri 'none'; form-action 'none'")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{csp}\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<title>tamis report</title>\n"
            f"<style>{css}</style>\n</head>\n<body>\n"
            "<noscript>This report needs JavaScript to show its data.</noscript>\n"
            "<div id=\"app\"></div>\n"
            f"<script type=\"application/json\" id=\"tamis-data\">{data}</script>\n"
            f"<script>{js}</script>\n</body>\n</html>\n")


def _asset(name: str) -> str:
    return resources.files("tamis.report").joinpath("assets").joinpath(name).read_text(encoding="utf-8")


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


# ---------------------------------------------------------------------- data
def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes()) \
        .decode("ascii")


def _coords(coords: Any, n: int) -> np.ndarray | None:
    if coords is None:
        return None
    a = np.asarray(getattr(coords, "get", lambda: coords)(), dtype=np.float32)
    if a.ndim != 2 or a.shape[0] != n or a.shape[1] < 2:
        raise InputError(f"coords has shape {a.shape}; expected ({n}, 2) or ({n}, 3): one row per input row, "
                         "NaN where a row has no point")
    xy = np.ascontiguousarray(a[:, :2])
    xy[~np.isfinite(xy).all(axis=1)] = np.nan
    return xy


def _neighbors(neighbors: Any, n: int) -> np.ndarray | None:
    if neighbors is None:
        return None
    a = np.asarray(getattr(neighbors, "get", lambda: neighbors)())
    if a.ndim != 2 or a.shape[0] != n or not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"neighbors has shape {a.shape} and dtype {a.dtype}; expected an ({n}, k) integer "
                         "array of input rows, -1 where there is none")
    a = a[:, :MAX_NEIGHBORS].astype(np.int32)
    a[(a < 0) | (a >= n)] = -1
    return a


def _encode(values: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list[str]]:
    """(codes, names): codes index the distinct values in sorted order; -1 for nulls."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if pa.types.is_null(arr.type):
        return np.full(len(arr), -1, dtype=np.int32), []
    uniq = pc.unique(pc.drop_null(arr))
    uniq = uniq.take(pc.array_sort_indices(uniq))
    codes = pc.index_in(arr, value_set=uniq).fill_null(-1)
    return np.asarray(codes, dtype=np.int32), [_text(v) for v in uniq.to_pylist()]


def _text(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _column(table: pa.Table, name: str) -> pa.ChunkedArray:
    """Column ``name`` of ``table``, or nulls where an older report lacks it."""
    if name in table.column_names:
        return table[name]
    return pa.chunked_array([pa.nulls(table.num_rows, pa.string())])


def _strings(values: pa.ChunkedArray) -> list[str | None]:
    return [None if v is None else _text(v) for v in values.to_pylist()]


def _floats(values: pa.ChunkedArray) -> np.ndarray:
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    return np.asarray(arr.cast(pa.float32()).to_numpy(zero_copy_only=False), dtype=np.float32)


def _jsonable(obj: Any) -> Any:
    """``obj`` with NaN / inf as None and NumPy scalars as Python numbers (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def _issue_types(report: Report) -> list[str]:
    cols = set(report.samples.column_names)
    named = [c for c in report.summary.get("checks_run", []) if f"is_{c}_issue" in cols]
    extra = [c[3:-6] for c in report.samples.column_names
             if c.startswith("is_") and c.endswith("_issue") and c[3:-6] not in named]
    return named + extra


def _payload(report: Report, xy: np.ndarray | None, coords: Any, nn: np.ndarray | None,
             thumbs: list[int], thumbs_note: str | None) -> dict:
    s = report.samples
    n = s.num_rows
    issues = _issue_types(report)
    if len(issues) > 32:
        raise RuntimeError(f"the HTML report packs issue flags in 32 bits; this report has {len(issues)} types")
    mask = np.zeros(n, dtype=np.uint32)
    for bit, name in enumerate(issues):
        flags = np.asarray(s[f"is_{name}_issue"].fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
        mask |= flags.astype(np.uint32) << np.uint32(bit)
    labels, label_names = _encode(_column(s, "label"))
    splits, split_names = _encode(_column(s, "split"))
    ids = _strings(s["id"]) if "id" in s.column_names else [str(r) for r in range(n)]
    cols: dict[str, Any] = {
        "id": ids,
        "path": _strings(_column(s, "path")),
        "label": _b64(labels),
        "split": _b64(splits),
        "flags": _b64(mask),
        "scores": {c[:-6]: _b64(_floats(s[c])) for c in s.column_names if c.endswith("_score")},
    }
    suggested = next((c for c in SUGGESTED_LABEL_COLUMNS if c in s.column_names), None)
    if suggested is not None:
        sug = _strings(s[suggested])
        index = {name: i for i, name in enumerate(label_names)}
        for v in sug:
            if v is not None and v not in index:
                index[v] = len(label_names)
                label_names.append(v)
        cols["suggested"] = _b64(np.array([-1 if v is None else index[v] for v in sug], dtype=np.int32))
    summary = report.summary
    nd = summary.get("checks", {}).get("near_duplicate", {})
    hist = nd.get("histogram")
    proj = summary.get("projection") or {}
    meta = {
        "source": str(summary.get("store", {}).get("source", "")),
        "created_at": summary.get("created_at"),
        "tamis_version": summary.get("tamis_version", __version__),
        "n_rows": n,
        "n_valid": summary.get("store", {}).get("n_valid", n),
        "key": hashlib.sha1(f"{summary.get('store', {}).get('source')}|{summary.get('created_at')}|{n}"
                            .encode("utf-8")).hexdigest()[:16],
        "thumbs_note": thumbs_note,
        "projection": {
            "method": proj.get("method"),
            "dims": int(np.shape(coords)[1]) if coords is not None else None,
            "fallback_reason": proj.get("fallback_reason"),
        },
    }
    payload = {
        "meta": meta,
        "summary": {
            "issues": summary.get("issues", {}),
            "checks_run": summary.get("checks_run", []),
            "checks_skipped": summary.get("checks_skipped", []),
            "n_excluded": summary.get("n_excluded", report.exclusions.num_rows),
        },
        "issue_types": issues,
        "labels": label_names,
        "splits": split_names,
        "columns": cols,
        "coords": _b64(xy) if xy is not None else None,
        "neighbors": {"k": int(nn.shape[1]), "rows": _b64(nn)} if nn is not None and nn.shape[1] else None,
        "thumbs": thumbs,
        "exclusions": np.asarray(report.exclusions["row"].to_numpy(zero_copy_only=False), dtype=np.int64).tolist(),
        "histogram": {"edges": hist["edges"], "counts": hist["counts"], "threshold": nd.get("threshold")}
        if hist else None,
        "class_counts": _class_counts(report.tables.get("class_counts")),
        "groups": _groups(report.tables.get("groups")),
        "conflicts": _conflicts(report.tables.get("conflicts")),
        "pairs": _pairs(report.tables.get("pairs")),
    }
    return _jsonable(payload)


def _class_counts(table: pa.Table | None) -> list[dict] | None:
    if table is None:
        return None
    rows = table.select([c for c in ("label", "split", "count", "fraction", "is_rare") if c in table.column_names])
    return [{k: (_text(v) if k in ("label", "split") and v is not None else v) for k, v in r.items()}
            for r in rows.to_pylist()]


def _groups(table: pa.Table | None) -> dict | None:
    if table is None or table.num_rows == 0:
        return None
    kind = table["kind"].to_pylist() if "kind" in table.column_names else ["near"] * table.num_rows

    def col(name: str, dtype: Any) -> str:
        if name not in table.column_names:
            return _b64(np.zeros(table.num_rows, dtype=dtype))
        values = table[name]
        return _b64(np.asarray(values.fill_null(False if pa.types.is_boolean(values.type) else 0)
                               .to_numpy(zero_copy_only=False)).astype(dtype))

    return {"group_id": col("group_id", np.int32), "row": col("row", np.int32),
            "exact": _b64(np.array([k == "exact" for k in kind], dtype=np.uint8)),
            "keep": col("keep", np.uint8), "conflicting": col("conflicting", np.uint8)}


def _conflicts(table: pa.Table | None) -> list[dict] | None:
    if table is None or table.num_rows == 0:
        return None
    out = []
    for r in table.to_pylist():
        counts = r.get("label_counts")
        try:
            parsed = json.loads(counts) if isinstance(counts, str) else {}
        except ValueError:
            parsed = {}
        out.append({"group_id": r.get("group_id"), "size": r.get("size"), "n_labels": r.get("n_labels"),
                    "majority_label": r.get("majority_label"), "entropy_bits": r.get("entropy_bits"),
                    "label_counts": [[str(k), v] for k, v in parsed.items()]})
    return out


def _pairs(table: pa.Table | None) -> dict | None:
    if table is None or table.num_rows == 0 or "cross_split" not in table.column_names:
        return None
    cross = table.filter(table["cross_split"].fill_null(False))
    if cross.num_rows == 0:
        return None
    sim = np.asarray(cross["similarity"].to_numpy(zero_copy_only=False), dtype=np.float32)
    order = np.lexsort((np.asarray(cross["row_a"]), -sim))[:MAX_PAIRS]
    return {"row_a": _b64(np.asarray(cross["row_a"], dtype=np.int32)[order]),
            "row_b": _b64(np.asarray(cross["row_b"], dtype=np.int32)[order]),
            "similarity": _b64(sim[order]), "n_total": cross.num_rows}


# ---------------------------------------------------------------------- thumbnails
def _image_root(report: Report, image_root: str | os.PathLike | None) -> Path | None:
    if image_root is not None:
        root = Path(image_root)
        if not root.is_dir():
            raise ConfigError(f"image_root {str(root)!r} is not a folder; give the folder the samples' paths "
                              "are relative to (--image-root DIR)")
        return root.resolve()
    source = str(report.summary.get("store", {}).get("source", "memory"))
    if source == "memory":
        return Path.cwd().resolve()
    src = Path(source)
    folder = src if src.is_dir() else src.parent
    return folder.resolve() if folder.is_dir() else None


def resolve_inside(root: Path, path: str | None) -> Path | None:
    """The file ``path`` names, relative to ``root``, or None when it is not a regular file inside
    ``root`` (after following symlinks), is too big, or does not exist. ``root`` must be resolved."""
    if not path or "\x00" in path:
        return None
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = root / candidate
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, a symlink loop, unreadable
        return None
    if not real.is_relative_to(root):
        return None
    try:
        st = os.stat(real)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_IMAGE_BYTES:
        return None
    return real


def _thumbnail_order(report: Report) -> list[int]:
    """Rows that get a thumbnail first: each issue type's flagged rows worst first, taking turns
    across types (duplicate groups member by member), then every other row in input order."""
    s = report.samples
    queues = []
    for name in _issue_types(report):
        flags = np.asarray(s[f"is_{name}_issue"].fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
        rows = np.flatnonzero(flags)
        if f"{name}_score" in s.column_names:
            score = np.nan_to_num(_floats(s[f"{name}_score"])[rows], nan=2.0)
            rows = rows[np.lexsort((rows, score))]
        queues.append(rows.tolist())
    order, seen = [], set()
    longest = max((len(q) for q in queues), default=0)
    for i in range(longest):
        for q in queues:
            if i < len(q) and q[i] not in seen:
                seen.add(q[i])
                order.append(q[i])
    order.extend(r for r in range(s.num_rows) if r not in seen)
    return order


def _make_thumbnails(report: Report, out: Path, root: Path | None, limit: int,
                     size: int) -> tuple[list[int], str | None]:
    """Thumbnails into ``out/thumbs`` (replacing an older set); the rows that got one, and a note."""
    if limit == 0 or "path" not in report.samples.column_names or \
            report.samples["path"].null_count == report.samples.num_rows:
        return [], None
    if root is None:
        return [], "no thumbnails: the store's folder was not found (give --image-root)"
    try:
        from PIL import Image
    except ImportError:
        return [], "no thumbnails: Pillow is not installed (pip install pillow)"
    paths = report.samples["path"].to_pylist()
    order = _thumbnail_order(report)[:MAX_ATTEMPTS_PER_THUMBNAIL * limit + 1000]
    stage = Path(tempfile.mkdtemp(prefix=".thumbs-", dir=out))
    os.chmod(stage, default_dir_mode())  # mkdtemp makes 0700; thumbs/ is served with report.html
    made: list[int] = []
    try:
        def one(row: int) -> int | None:
            real = resolve_inside(root, paths[row])
            if real is None:
                return None
            return row if _thumbnail(Image, real, stage / f"{row}.jpg", size) else None

        with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            pos = 0
            while len(made) < limit and pos < len(order):  # rounds, so unreadable files do not eat the quota
                want = limit - len(made)
                batch = [r for r in order[pos:pos + want] if paths[r]]
                pos += want
                made.extend(r for r in pool.map(one, batch) if r is not None)
        made.sort()
        if made:
            _swap_dir(stage, out / THUMBS_DIR)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    note = None if made else (f"no thumbnails: none of the first {len(order):,} paths is a readable image "
                              f"inside {root} (give --image-root)")
    return made, note


def _thumbnail(image_module: Any, src: Path, dst: Path, size: int) -> bool:
    """Write a JPEG of at most size x size pixels of ``src`` to ``dst``; False when ``src`` is no
    image Pillow can read (corrupt, truncated, a decompression bomb, not an image)."""
    try:
        with open(src, "rb") as fh, image_module.open(fh) as img:
            img.draft("RGB", (size * 2, size * 2))
            img.thumbnail((size, size))
            if img.mode in ("RGBA", "LA", "P"):
                img = img.convert("RGBA")
                canvas = image_module.new("RGB", img.size, (255, 255, 255))
                canvas.paste(img, mask=img.getchannel("A"))
                img = canvas
            elif img.mode != "RGB":
                img = img.convert("RGB")
            with atomic_path(dst) as tmp:
                img.save(tmp, format="JPEG", quality=85)
        return True
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files; no image is the answer
        log.debug("no thumbnail for %s: %s", src, exc)
        return False


def _swap_dir(new: Path, target: Path) -> None:
    """Put folder ``new`` at ``target``, replacing what was there."""
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}-old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


__all__ = ["write_html_report", "render", "resolve_inside"]
