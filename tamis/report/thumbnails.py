"""Thumbnails for the report page.

Thumbnails (optional, need Pillow) are made at report time into ``thumbs/<row>.jpg`` beside
the report, at most ``limit`` of at most ``size`` pixels, flagged rows first (worst first,
taking turns across issue types). A sample's path is resolved against the image root
(:func:`image_root`: the folder given, else the store's folder, else -- for an in-memory store --
the working directory) and only read when it resolves, symlinks followed, to a regular file
inside that root: the one rule of :mod:`tamis.io.images` (:func:`~tamis.io.images.resolve_inside`).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..io.atomic import atomic_path, move_into_place, staged_folder
from ..io.images import check_image_root, open_inside, resolve_inside, store_folder
from ..io.labels import encode
from .model import Report

log = logging.getLogger("tamis")

#: paths tried per thumbnail wanted (plus 1000) before giving up: a wrong image root costs no full pass
MAX_ATTEMPTS_PER_THUMBNAIL = 5
#: paths tried before giving up when not one of them was a readable image (a store whose images
#: are elsewhere should not cost a path resolution for every one of thousands of rows)
GIVE_UP_AFTER = 256
THUMBS_DIR = "thumbs"
#: the prefix of the folder thumbnails are made in before they replace ``thumbs/``
THUMBS_STAGING = ".thumbs-"


def image_root(report: Report, image_root: str | os.PathLike | None) -> Path | None:
    """The folder sample paths are resolved against and confined to (resolved), or None when
    the store's folder is gone; ``image_root`` given must be a folder. An in-memory store's
    thumbnails come from the working directory."""
    if image_root is not None:
        return check_image_root(image_root)
    source = str(report.summary.get("store", {}).get("source", "memory"))
    return Path.cwd().resolve() if source == "memory" else store_folder(source)


def _thumbnail_order(report: Report) -> list[int]:
    """Rows that get a thumbnail first: each issue type's flagged rows worst first, taking turns
    across types (duplicate groups member by member), then, with a group column, the other rows
    of those rows' groups (the other crops of a flagged crop's image, which its side panel lists),
    then every other row in input order."""
    s = report.samples
    queues = []
    for name in report.issue_types:
        rows = np.flatnonzero(report.flags(name))
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
    if "group" in s.column_names and order:
        codes, _ = encode(s["group"])
        wanted = np.zeros(int(codes.max()) + 2, dtype=bool)
        wanted[codes[order]] = True
        wanted[-1] = False                                   # code -1: no group
        order.extend(r for r in np.flatnonzero(wanted[codes]).tolist() if r not in seen)
        seen.update(order)
    order.extend(r for r in range(s.num_rows) if r not in seen)
    return order


def make_thumbnails(report: Report, out: Path, root: Path | None, limit: int,
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
    made: list[int] = []
    with staged_folder(out, prefix=THUMBS_STAGING) as stage:
        def one(row: int) -> int | None:
            real = resolve_inside(root, paths[row])
            if real is None:
                return None
            return row if _thumbnail(Image, real, stage / f"{row}.jpg", size) else None

        with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            pos = 0
            while len(made) < limit and pos < len(order):  # rounds, so unreadable files do not eat the quota
                want = limit - len(made) if made or pos >= GIVE_UP_AFTER else min(limit, GIVE_UP_AFTER - pos)
                batch = [r for r in order[pos:pos + want] if paths[r]]
                pos += want
                made.extend(r for r in pool.map(one, batch) if r is not None)
                if not made and pos >= GIVE_UP_AFTER:
                    break
        made.sort()
        if made:
            move_into_place(stage, out / THUMBS_DIR)
    note = None if made else (f"no thumbnails: none of the first {min(pos, len(order)):,} paths is a readable image "
                              f"inside {root} (give --image-root)")
    return made, note


def _thumbnail(image_module: Any, src: Path, dst: Path, size: int) -> bool:
    """Write a JPEG of at most size x size pixels of ``src`` to ``dst``; False when ``src`` is no
    image Pillow can read (corrupt, truncated, a decompression bomb, not an image)."""
    try:
        with open_inside(src) as fh, image_module.open(fh) as img:
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


def _floats(values) -> np.ndarray:
    arr = values.combine_chunks()
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64)


__all__ = ["make_thumbnails", "image_root", "resolve_inside", "THUMBS_DIR"]
