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

What the page shows of each check is what the check declared (:mod:`tamis.checks.views`,
stored in ``summary.json -> report``): a gallery per issue type and summary panels, drawn by
kind; nothing here or in ``report.js`` names a check. Thumbnails: :mod:`.thumbnails`.

A groups gallery with a threshold slider (:class:`~tamis.checks.views.Slider`) carries the
pairs the check found at the slider's floor: ``row_a``, ``row_b`` (int32) and the similarity
(float32, the very values the check compared, so the page's groups at the check's threshold are
the check's), sorted by similarity, largest first, so the pairs at or above any threshold are a
prefix. At most :data:`MAX_SLIDER_PAIRS`: above it only the pairs at or above the check's
threshold travel (the slider's floor rises to that threshold, and the page says so), and with
more than that at the threshold itself the page has no slider and says why. The page regroups
them by union-find; a group the check did not find keeps the member with the smallest id
(``id_rank``: the ids' ascending order, ties by row, as the check's ``first`` policy; absent
where it is the row order).

With a group column (the image each object crop comes from: the samples' ``group``), the side
panel lists a sample's other rows of its group and the gallery cards name the group.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .._version import __version__
from ..errors import ConfigError, InputError
from ..io.atomic import output_folder, write_text
from ..io.labels import encode
from .model import Report
from .thumbnails import image_root as resolve_image_root
from .thumbnails import make_thumbnails

log = logging.getLogger("tamis")

#: nearest neighbours listed per sample in the side panel
MAX_NEIGHBORS = 10
#: rows of a pair gallery embedded (largest value first)
MAX_PAIRS = 50_000
#: rows of a table panel embedded
MAX_TABLE_ROWS = 1000
#: pairs a gallery's threshold slider carries (12 bytes each, 16 in base64); above it only the pairs at
#: or above the check's own threshold travel, and the slider's floor rises to that threshold
MAX_SLIDER_PAIRS = 2_000_000


def write_html_report(report: Report, out_dir: str | os.PathLike, *, coords: Any = None, neighbors: Any = None,
                      image_root: str | os.PathLike | None = None, max_thumbnails: int = 2000,
                      thumb_size: int = 96) -> Path:
    """Write ``report.html`` (and ``thumbs/``) into ``out_dir``; return the HTML file's path.

    Parameters
    ----------
    report : the scan's :class:`~tamis.report.model.Report`.
    out_dir : folder of the report (created if needed).
    coords : optional (N, 2 or 3) array of map coordinates, one row per input row, NaN where a
        row has none (an invalid embedding); a 3-D map is drawn rotatable. Default: the map the
        scan stored in the samples (``<method>_x``, ``_y``, ``_z``), when it made one.
    neighbors : optional (N, k) int array: each input row's nearest input rows, -1 = none.
        Default: the report's neighbour graph, when a check built one.
    image_root : folder the samples' paths are resolved against and confined to.
    max_thumbnails, thumb_size : bounds on the thumbnails made (0 thumbnails: none).
    """
    if not isinstance(max_thumbnails, (int, np.integer)) or max_thumbnails < 0:
        raise ConfigError(f"max_thumbnails={max_thumbnails!r}; give an integer >= 0")
    if not isinstance(thumb_size, (int, np.integer)) or not 16 <= thumb_size <= 512:
        raise ConfigError(f"thumb_size={thumb_size!r}; give an integer between 16 and 512 (pixels)")
    out = output_folder(out_dir)
    n = report.samples.num_rows
    coords = report.coordinates() if coords is None else coords
    neighbors = report.neighbour_rows() if neighbors is None else neighbors
    xy = _coords(coords, n)
    nn = _neighbors(neighbors, n)
    root = resolve_image_root(report, image_root)
    thumbs, thumbs_note = make_thumbnails(report, out, root, max_thumbnails, thumb_size)
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
    xy = np.ascontiguousarray(a[:, :3])   # a 3-D map keeps its third axis: the page rotates it
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


def _codes(values: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list[str]]:
    """The one label encoder's codes (int32 for the page) and the names as text."""
    codes, names = encode(values)
    return codes.astype(np.int32), [_text(v) for v in names]


def _text(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _column(table: pa.Table, name: str) -> pa.ChunkedArray:
    """Column ``name`` of ``table``, or nulls where an older report lacks it."""
    if name in table.column_names:
        return table[name]
    return pa.chunked_array([pa.nulls(table.num_rows, pa.string())])


class _Texts(list):
    """A list of str / None, JSON-ready as it is (:func:`_jsonable` passes it through: walking a
    column of 100k ids value by value was a tenth of a second per column)."""


def _strings(values: pa.ChunkedArray) -> list[str | None]:
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return _Texts(values.to_pylist())                   # already text (a pass of _text was 0.05 s per 100k)
    return _Texts(None if v is None else _text(v) for v in values.to_pylist())


def _floats(values: pa.ChunkedArray) -> np.ndarray:
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    return np.asarray(arr.cast(pa.float32()).to_numpy(zero_copy_only=False), dtype=np.float32)


def _jsonable(obj: Any) -> Any:
    """``obj`` with NaN / inf as None and NumPy scalars as Python numbers (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, _Texts):
        return obj
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def _payload(report: Report, xy: np.ndarray | None, coords: Any, nn: np.ndarray | None,
             thumbs: list[int], thumbs_note: str | None) -> dict:
    s = report.samples
    n = s.num_rows
    issues = report.issue_types
    if len(issues) > 32:
        raise RuntimeError(f"the HTML report packs issue flags in 32 bits; this report has {len(issues)} types")
    mask = np.zeros(n, dtype=np.uint32)
    for bit, name in enumerate(issues):
        mask |= report.flags(name).astype(np.uint32) << np.uint32(bit)
    labels, label_names = _codes(_column(s, "label"))
    splits, split_names = _codes(_column(s, "split"))
    ids = _strings(s["id"]) if "id" in s.column_names else _Texts(str(r) for r in range(n))
    group = _group_codes(s, summary=report.summary)
    cols: dict[str, Any] = {
        "id": ids,
        "path": _strings(_column(s, "path")),
        "label": _b64(labels),
        "split": _b64(splits),
        "flags": _b64(mask),
        "group": group[0] if group else None,
        "scores": {c[:-6]: _b64(_floats(s[c])) for c in s.column_names if c.endswith("_score")},
    }
    declared, panels = report.views()
    galleries = {name: _gallery(report, declared.get(name) or {"kind": "samples"}, name) for name in issues}
    summary = report.summary
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
            "description": proj.get("description"),
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
        "group": group[1] if group else None,
        "columns": cols,
        "fields": _fields(s, [g for g in galleries.values()]),
        "coords": _b64(xy) if xy is not None else None,
        "neighbors": {"k": int(nn.shape[1]), "rows": _b64(nn)} if nn is not None and nn.shape[1] else None,
        "thumbs": thumbs,
        "exclusions": np.asarray(report.exclusions["row"].to_numpy(zero_copy_only=False), dtype=np.int64).tolist(),
        "panels": [p for p in (_panel(report, spec) for spec in panels) if p is not None],
        "galleries": galleries,
    }
    return _jsonable(payload)


# ---------------------------------------------------------------------- declared views
def _where(table: pa.Table, where: Any) -> pa.Table | None:
    """``table`` filtered to rows whose column ``where[0]`` equals ``where[1]``; None when it lacks the column."""
    if not where:
        return table
    column, value = where
    if column not in table.column_names:
        return None
    return table.filter(pc.fill_null(pc.equal(table[column], pa.scalar(value)), False))


def _ints(table: pa.Table, name: str, dtype: Any, default: int = 0) -> str:
    if name not in table.column_names:
        return _b64(np.full(table.num_rows, default, dtype=dtype))
    values = table[name]
    filler = False if pa.types.is_boolean(values.type) else default
    return _b64(np.asarray(values.fill_null(filler).to_numpy(zero_copy_only=False)).astype(dtype))


def _group_codes(samples: pa.Table, summary: dict) -> tuple[str, dict] | None:
    """The samples' ``group`` column (the image each row comes from) as base64 int32 codes (-1 = none),
    and ``{"caption": the store's column name, "names": [...]}``; None without one."""
    if "group" not in samples.column_names or samples["group"].null_count == samples.num_rows:
        return None
    codes, names = _codes(samples["group"])
    caption = str((summary.get("store", {}).get("columns") or {}).get("groups") or "group")
    return _b64(codes), {"caption": caption, "names": names}


def _gallery(report: Report, spec: dict, name: str = "") -> dict:
    """The data a gallery of ``spec``'s kind needs; a gallery whose table is missing is a sample list.
    ``name``: the issue type (the check) whose summary a slider reads."""
    kind = spec.get("kind")
    table = report.tables.get(spec.get("table") or "")
    if kind in ("groups", "pairs") and table is not None:
        table = _where(table, spec.get("where"))
    slider = _slider(report, spec, name) if kind == "groups" else None
    if kind == "groups" and table is not None and (table.num_rows or slider) and \
            {"group_id", "row"} <= set(table.column_names):
        facts = _member_facts(table, spec)
        for gid, more in (_facts(report, spec) or {}).items():
            facts.setdefault(gid, []).extend(more)
        return {**spec, "group_id": _ints(table, "group_id", np.int32), "row": _ints(table, "row", np.int32),
                "keep": _ints(table, "keep", np.uint8), "facts": facts, "slider": slider}
    if kind == "pairs" and table is not None and table.num_rows and \
            {"row_a", "row_b", spec.get("value")} <= set(table.column_names):
        value = _floats(table[spec["value"]])
        order = np.lexsort((np.asarray(table["row_a"]), -value))[:MAX_PAIRS]
        return {**spec, "row_a": _b64(np.asarray(table["row_a"], dtype=np.int32)[order]),
                "row_b": _b64(np.asarray(table["row_b"], dtype=np.int32)[order]),
                "values": _b64(value[order]), "n_total": table.num_rows}
    fields = spec.get("fields") if kind == "samples" else ([spec["field"]] if spec.get("field") else [])
    return {"kind": "samples", "fields": fields or [], "score_caption": spec.get("score_caption", "score")}


def _slider(report: Report, spec: dict, name: str) -> dict | None:
    """The pairs a groups gallery's threshold slider regroups (see the module docstring), or
    ``{"note": why}`` when they are too many, or None when the gallery declares no slider, the
    report lacks its table (an older report) or the table holds no pair."""
    slider = spec.get("slider")
    if not slider:
        return None
    table = report.tables.get(slider.get("table") or "")
    checked = report.summary.get("checks", {}).get(name, {})
    threshold = checked.get(slider.get("threshold") or "")
    value = slider.get("value")
    if table is None or threshold is None or not {"row_a", "row_b", value} <= set(table.column_names):
        return None
    lowest = checked.get(slider.get("lowest") or "")
    floor = min(float(threshold), float(lowest)) if lowest is not None else float(threshold)
    sim = _floats(table[value])
    a = np.asarray(table["row_a"].to_numpy(zero_copy_only=False), dtype=np.int32)
    b = np.asarray(table["row_b"].to_numpy(zero_copy_only=False), dtype=np.int32)
    carried = sim >= np.float32(floor)
    if carried.sum() > MAX_SLIDER_PAIRS:
        floor = float(threshold)
        carried = sim >= np.float32(floor)
        if carried.sum() > MAX_SLIDER_PAIRS:
            return {"note": f"No threshold slider: {int(carried.sum()):,} pairs at the threshold "
                            f"{float(threshold):g}, more than the page carries ({MAX_SLIDER_PAIRS:,})."}
    if not carried.any():
        return None
    a, b, sim = a[carried], b[carried], sim[carried]
    order = np.lexsort((b, a, -sim))        # largest similarity first: the pairs at any threshold are a prefix
    policy = (checked.get("params") or {}).get(slider.get("keep_param") or "")
    return {"row_a": _b64(a[order]), "row_b": _b64(b[order]), "values": _b64(sim[order]),
            "threshold": float(threshold), "key": slider.get("threshold"), "floor": floor,
            "lowest": float(lowest) if lowest is not None else floor,
            "n_table": table.num_rows, "keep_policy": None if policy is None else _text(policy),
            "id_rank": _id_rank(report.samples)}


def _id_rank(samples: pa.Table) -> str | None:
    """Each row's place in the ids' ascending order (ties by row) as base64 int32, or None where the
    ids are in row order (or absent): the order a group's ``first`` member is chosen by."""
    if "id" not in samples.column_names or samples.num_rows == 0:
        return None
    ids = samples["id"].combine_chunks()
    if pa.types.is_dictionary(ids.type):
        ids = ids.cast(ids.type.value_type)
    rank = np.asarray(pc.rank(ids, sort_keys="ascending", tiebreaker="first"), dtype=np.int64) - 1
    if np.array_equal(rank, np.arange(len(rank))):
        return None
    return _b64(rank.astype(np.int32))


def _member_facts(table: pa.Table, spec: dict) -> dict:
    """group id -> ``[[caption, text], ...]`` from the gallery table's own ``member_columns``: a bool
    column gives its caption when any member is true, another its distinct values."""
    out: dict[str, list] = {}
    columns = [(c, caption) for c, caption in spec.get("member_columns") or [] if c in table.column_names]
    if not columns:
        return out
    for row in table.group_by("group_id").aggregate([(c, "distinct") for c, _ in columns]).to_pylist():
        facts = []
        for column, caption in columns:
            values = sorted(v for v in row[f"{column}_distinct"] if v is not None)
            if values and all(isinstance(v, bool) for v in values):
                if True in values:
                    facts.append([caption, ""])
            elif values:
                facts.append([caption, ", ".join(_text(v) for v in values)])
        if facts:
            out[str(row["group_id"])] = facts
    return out


def _facts(report: Report, spec: dict) -> dict | None:
    """group id -> ``[[caption, text], ...]`` from the ``facts`` table's declared columns."""
    table = report.tables.get(spec.get("facts") or "")
    if table is None or "group_id" not in table.column_names:
        return None
    columns = [c for c in spec.get("fact_columns") or [] if c[0] in table.column_names]
    out = {}
    for row in table.select(["group_id"] + [c[0] for c in columns]).to_pylist():
        out[str(row["group_id"])] = [[caption, _fact(row[column], fmt)] for column, caption, fmt in columns
                                     if row[column] is not None]
    return out


def _fact(value: Any, fmt: str) -> str:
    if fmt == "counts":
        try:
            parsed = json.loads(value) if isinstance(value, str) else dict(value)
        except (TypeError, ValueError):
            return _text(value)
        return ", ".join(f"{k} \u00d7{v}" for k, v in parsed.items())
    if fmt == "number" and isinstance(value, float):
        return f"{value:.4g}"
    return _text(value)


def _fields(samples: pa.Table, galleries: list[dict]) -> dict:
    """Every per-sample column a gallery shows (label and split travel as codes already): its
    caption, codes into ``names`` and the names, for the cards and the side panel."""
    out: dict[str, dict] = {}
    for gallery in galleries:
        for field in list(gallery.get("fields") or []) + ([gallery["field"]] if gallery.get("field") else []):
            column = field["column"]
            if column in out or column in ("label", "split") or column not in samples.column_names:
                continue
            codes, names = _codes(samples[column])
            out[column] = {"caption": field["caption"], "codes": _b64(codes), "names": names}
    return out


def _panel(report: Report, spec: dict) -> dict | None:
    """The data of one declared panel, or None when the report lacks it (a check that did not run)."""
    kind = spec.get("kind")
    if kind == "histogram":
        summary = report.summary.get("checks", {}).get(spec.get("check"), {})
        hist = summary.get(spec.get("key"))
        if not hist or not hist.get("counts"):
            return None
        marker = summary.get(spec["marker"]) if spec.get("marker") else None
        return {**spec, "edges": hist["edges"], "counts": hist["counts"], "marker_value": marker}
    table = report.tables.get(spec.get("table") or "")
    if table is None:
        return None
    if kind == "crosstab":
        wanted = [c for c in (spec["row"], spec["column"], spec["value"], spec.get("share"), spec.get("mark"))
                  if c and c in table.column_names]
        rows = [{k: (_text(v) if k in (spec["row"], spec["column"]) and v is not None else v) for k, v in r.items()}
                for r in table.select(wanted).to_pylist()]
        return {**spec, "rows": rows}
    if kind == "table":
        columns = [c for c in (spec.get("columns") or table.column_names) if c in table.column_names]
        head = table.select(columns).slice(0, min(MAX_TABLE_ROWS, spec.get("max_rows") or MAX_TABLE_ROWS))
        return {**spec, "columns": columns, "rows": [[_cell(v) for v in r.values()] for r in head.to_pylist()],
                "n_total": table.num_rows}
    return None


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    if isinstance(value, (int, bool)) or value is None:
        return value
    return _text(value)

__all__ = ["write_html_report", "render"]
