"""What the pixels say: exposure, contrast, colour, sharpness, size and readability of each image,
and the classes whose images differ from the rest's in them (a shortcut a model will learn).

Images are read where the store's paths name readable files under the scan's image root
(``--image-root``, default the store's folder; :mod:`tamis.io.images`): a path that leaves it
(``..``, an absolute path elsewhere, a symlink pointing out) is never opened. Without an image root
(an in-memory store given none), or when none of a sample of the paths is a file under it, the
scan skips the check and says why. Rows with an unusable embedding are left out, as by every check
but ``invalid``; rows that share a path are read once.

Reading: a thread pool of ``threads`` (default min(16, 2 x CPUs); Pillow releases the GIL while
decoding and resizing), with a progress bar. Each image is decoded at reduced size, JPEGs in the DCT
domain (``Image.draft``: 1/2, 1/4 or 1/8 scale, still at least ``size``), then shrunk to at most
``size`` (256) pixels a side (16-bit and float images: every k-th pixel); the statistics are those of
that image, so every image is measured at one scale whatever its resolution, in float32 planes.
``width``, ``height`` and the file size are the original's.

Per image (samples columns ``image_<property>``; null where the row was not read):

- ``brightness``: mean luma (Rec. 601: 0.299 R + 0.587 G + 0.114 B), 0 black .. 1 white;
- ``contrast``: standard deviation of the luma (0 .. 0.5);
- ``colourfulness``: Hasler and Suesstrunk (2003), ``sqrt(sd(rg)^2 + sd(yb)^2) + 0.3 sqrt(mean(rg)^2 +
  mean(yb)^2)`` with ``rg = R - G``, ``yb = (R + G) / 2 - B``, in units of the full range (the paper's
  value / 255: "not colourful" is below about 0.06);
- ``grayscale``: a one-channel image, or one whose channels differ by more than 3/255 (JPEG rounding)
  in at most 1 % of its pixels;
- ``sharpness``: the blur measure, the variance of the 3 x 3 Laplacian of the luma standardised to unit
  variance (``var(Laplacian(Y)) / var(Y)``), lower = blurrier; standardising makes it blind to
  exposure and contrast; 0 for a flat image, null under 3 x 3 pixels;
- ``width``, ``height`` (pixels), ``aspect`` (width / height), ``file_size`` (bytes);
- ``status``: ``ok``, or why the row has no values: ``corrupt`` (Pillow cannot decode it: not an image,
  truncated, a decompression bomb), ``missing``, ``not a file``, ``outside`` (the image root; never
  opened), ``too big`` (over ``max_bytes``, 64 MiB; not opened), ``no path``; null for a row with an
  unusable embedding.

Flags (``image_flags``, comma-separated; the row is flagged when it has any):

- ``unreadable``: ``corrupt``, ``missing`` or ``not a file`` (a training loader would fail on it);
  these rows are excluded (``exclude="unreadable"``); paths outside the root and files over
  ``max_bytes`` are not judged;
- ``dark``: brightness below ``dark_below`` (0.15), ``bright``: above ``bright_above`` (0.9). Absolute
  cut-offs, because brightness is a calibrated quantity (a share of the display range) and a cut-off
  relative to the store fails exactly when the problem is common, as in a class of dark images; they
  apply while the images below (above) them are at most ``max_share`` (0.5) of the read ones: in a
  store of night scenes dark is the norm, not an issue;
- ``blurry``: sharpness low for the store, ``log(sharpness)`` more than ``blur_z`` (3.5) robust
  standard deviations (1.4826 x MAD, at least log(2) / 3) under its median: the Laplacian's variance
  has no absolute scale (content, resolution and compression move it), so only the store can say
  what sharp is. Judged (and the median and MAD taken) on the images not flagged dark or bright: in
  those, 8-bit quantisation and compression noise dominate the Laplacian;
- ``grayscale``: grayscale while grayscale images are at most ``max_share`` of the read ones;
- ``odd_size``: ``log(width x height)`` further than ``odd_z`` (3.5, Iglewicz and Hoaglin's cut-off
  for the modified z-score) robust standard deviations from the store's median, and at least a
  factor 4 in area; ``odd_aspect``: ``log(aspect)`` likewise, at least a factor 2.

Score, lower = worse, 0.5 at each flag's cut-off: ``unreadable`` 0; dark ``0.5 b / dark_below``;
bright ``0.5 (1 - b) / (1 - bright_above)``; blurry ``0.5 (1 + (z + blur_z) / blur_z)``; odd size and
aspect ``1 - 0.5 d`` (``d`` the distance over the allowed one); grayscale 0.45; each clipped to
[0, 1], the row's score the lowest (1 where nothing applies). A row is flagged exactly when its
score is below 0.5.

The bias table (``image_bias.parquet``, with labels): for each property and each class with at least
``min_class_rows`` (10) read rows, the area under the ROC curve of the property separating the class
from the rest of the read rows (ties count a half; the Mann-Whitney U over the two sizes):
``effect = |2 AUC - 1|`` (0 = the class looks like the rest, 1 = no overlap; Cliff's delta's size),
``direction`` ``lower`` or ``higher``, the class's and the rest's medians, and a two-sided p-value
(normal approximation with the tie correction). Strongest first: a class whose images are mostly
dark, or mostly grayscale, is a shortcut a model will learn. ``summary -> shortcuts`` lists the rows
with effect >= ``min_effect`` (0.5) and p < 0.001.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import Interval, Options
from ..io.images import FOUND, MAX_IMAGE_BYTES, MISSING, NOT_A_FILE, TOO_BIG, locate, open_inside
from .base import Check, CheckResult, plain
from .views import Field, Samples, Table

#: per-image properties, in the order of the samples columns and of the bias table's ties
PROPERTIES = ("brightness", "contrast", "colourfulness", "grayscale", "sharpness", "width", "height", "aspect",
              "file_size")
#: the flags, in the order they are listed in ``image_flags``
FLAGS = ("unreadable", "dark", "bright", "blurry", "grayscale", "odd_size", "odd_aspect")
#: statuses whose rows are flagged unreadable (the others are not judged)
UNREADABLE = ("corrupt", MISSING, NOT_A_FILE)
#: paths sampled before the scan to see whether the image root holds any of them
ROOT_SAMPLE = 100
#: rows handed to the thread pool at a time (bounds the futures held)
BATCH = 1024
#: Rec. 601 luma weights
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
#: a pixel's channels may differ by this much (of 255) in a grayscale image (JPEG rounding)
GRAY_TOLERANCE = 3
#: the score of a grayscale image in a mostly-colour store (a flag with no degree)
GRAYSCALE_SCORE = 0.45
#: the least robust standard deviation of log(sharpness), and of log(area) / log(aspect) when the
#: store's own is smaller (all images alike): the cut-offs below are then at least these factors
MIN_LOG_SPREAD = {"sharpness": math.log(2) / 3, "area": math.log(4), "aspect": math.log(2)}


class ImageProperties(Check):
    name = "image_properties"
    requires = ("paths",)
    description = ("dark, bright, blurry, grayscale, odd-sized and unreadable images under the image root, and "
                   "classes whose images differ from the rest (shortcuts)")
    gallery = Samples(fields=(Field("image_flags", "flags"),), score_caption="image score")
    panels = (Table(title="Image properties by class: a class that differs is a shortcut a model can learn",
                    table="image_bias", columns=("property", "label", "effect", "direction", "rows",
                                                 "class_median", "rest_median", "p_value")),)
    _parameter_constraints = {
        "size": Interval(int, 16, 4096),
        "threads": Interval(int, 1, 256, none_ok=True),
        "dark_below": Interval(float, 0, 1),
        "bright_above": Interval(float, 0, 1, closed="left"),
        "blur_z": Interval(float, 0, None, closed="neither"),
        "odd_z": Interval(float, 0, None, closed="neither"),
        "max_share": Interval(float, 0, 1),
        "min_class_rows": Interval(int, 2, None),
        "min_effect": Interval(float, 0, 1),
        "max_bytes": Interval(int, 1, None),
        "exclude": Options(("unreadable", "none")),
    }

    def __init__(self, size: int = 256, threads: int | None = None, dark_below: float = 0.15,
                 bright_above: float = 0.9, blur_z: float = 3.5, odd_z: float = 3.5, max_share: float = 0.5,
                 min_class_rows: int = 10, min_effect: float = 0.5, max_bytes: int = MAX_IMAGE_BYTES,
                 exclude: str = "unreadable") -> None:
        self.size = size
        self.threads = threads
        self.dark_below = dark_below
        self.bright_above = bright_above
        self.blur_z = blur_z
        self.odd_z = odd_z
        self.max_share = max_share
        self.min_class_rows = min_class_rows
        self.min_effect = min_effect
        self.max_bytes = max_bytes
        self.exclude = exclude

    # ------------------------------------------------------------------ can it run here
    def context_skip_reason(self, ctx) -> str | None:
        root = ctx.image_root
        if root is None:
            return ("needs a folder to read the images from, and the store is in memory: pass image_root=DIR "
                    "(--image-root DIR)")
        paths = _paths(ctx)
        rows = ctx.valid_rows
        rows = rows[np.linspace(0, len(rows) - 1, min(ROOT_SAMPLE, len(rows))).astype(np.int64)] if len(rows) else rows
        sample = [paths[r] for r in rows if paths[r]]
        if not any(locate(root, p, self.max_bytes)[1] in (FOUND, TOO_BIG) for p in sample):
            example = f" (e.g. {sample[0]!r})" if sample else ""
            return (f"finds none of {len(sample)} sampled paths{example} as a file under the image root {root}: "
                    "give the folder the paths are relative to (--image-root DIR)")
        return None

    # ------------------------------------------------------------------ the pass
    def _run(self, ctx) -> CheckResult:
        n = ctx.n
        root = ctx.image_root
        values = {p: np.full(n, np.nan) for p in PROPERTIES}
        status = np.full(n, None, dtype=object)
        errors: dict[str, int] = {}
        if root is None:
            note = self.context_skip_reason(ctx)
        else:
            note = None
            self._read(ctx, root, values, status, errors)
        read = status == "ok"
        flags, score, thresholds, notes = self._flags(values, status, read)
        judged = np.array([s == "ok" or s in UNREADABLE for s in status], dtype=bool)
        row_flag = np.zeros(n, dtype=bool)
        names = np.full(n, None, dtype=object)
        for name in FLAGS:
            row_flag |= flags[name]
        for r in np.flatnonzero(row_flag):
            names[r] = ",".join(f for f in FLAGS if flags[f][r])
        scores = np.where(judged, score, np.nan)
        counts = {name: int(flags[name].sum()) for name in FLAGS}
        summary: dict[str, Any] = {
            "image_root": None if root is None else str(root),
            "n_read": int(read.sum()),
            "status": dict(sorted(Counter(s for s in status if s is not None).items())),
            "flags": counts,
            "thresholds": thresholds,
            "medians": {p: _median_or_none(values[p][read]) for p in PROPERTIES},
            "decode_errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:10]),
        }
        if note or notes:
            summary["notes"] = ([note] if note else []) + notes
        tables: dict[str, pa.Table] = {}
        if ctx.store.labels is not None:
            bias = self._bias(ctx, values, read)
            tables["image_bias"] = bias
            strong = [r for r in bias.to_pylist() if r["effect"] >= self.min_effect and r["p_value"] < 1e-3]
            summary["shortcuts"] = [{"property": r["property"], "label": plain(r["label"]), "effect": r["effect"],
                                     "direction": r["direction"], "rows": r["rows"]} for r in strong[:20]]
        exclude = np.flatnonzero(flags["unreadable"]) if self.exclude == "unreadable" else np.empty(0, np.int64)
        columns: dict[str, Any] = {}
        for p in PROPERTIES:
            v = values[p]
            if p == "grayscale":
                columns[f"image_{p}"] = pa.array(v == 1, mask=~read)
            elif p in ("width", "height", "file_size"):
                have = np.isfinite(v)
                columns[f"image_{p}"] = pa.array(np.where(have, v, 0).astype(np.int64), mask=~have)
            else:
                columns[f"image_{p}"] = v
        columns["image_status"] = pa.array(status.tolist(), type=pa.string())
        columns["image_flags"] = pa.array(names.tolist(), type=pa.string())
        return CheckResult(flags=row_flag, scores=scores, summary=summary, tables=tables, exclude=exclude,
                           columns=columns)

    def _read(self, ctx, root, values: dict, status: np.ndarray, errors: dict) -> None:
        """Fill ``values`` and ``status`` for the valid rows, each distinct path read once."""
        from PIL import Image  # a dependency; imported when images are read, not with tamis

        paths = _paths(ctx)
        first: dict[str, int] = {}
        copies = []
        for r in ctx.valid_rows.tolist():
            p = paths[r]
            if p in first:
                copies.append((r, first[p]))
            else:
                first[p] = r
        rows = list(first.values())
        size, max_bytes = self.size, self.max_bytes

        def one(row: int) -> tuple:
            real, where, nbytes = locate(root, paths[row], max_bytes)
            if real is None:
                return where, nbytes, None, None
            try:
                return "ok", nbytes, _measure(Image, real, size), None
            except Exception as exc:  # noqa: BLE001 - Pillow raises many types for a bad file: it is unreadable
                return "corrupt", nbytes, None, f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"

        threads = self.threads or min(16, 2 * (os.cpu_count() or 1))
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tamis-images")
        with ctx.progress.task("image properties", total=len(rows)) as advance:
            try:
                self._read_batches(rows, one, pool, advance, values, status, errors)
            finally:   # Ctrl-C: the images not started yet are dropped, not read
                pool.shutdown(wait=True, cancel_futures=True)
        for row, src in copies:
            status[row] = status[src]
            for p in PROPERTIES:
                values[p][row] = values[p][src]

    @staticmethod
    def _read_batches(rows: list, one, pool, advance, values: dict, status: np.ndarray, errors: dict) -> None:
        """Read ``rows`` with ``one`` on ``pool``, :data:`BATCH` at a time (a bounded number of futures)."""
        for start in range(0, len(rows), BATCH):
            batch = rows[start:start + BATCH]
            for row, (where, nbytes, measured, error) in zip(batch, pool.map(one, batch)):
                status[row] = where
                if nbytes:
                    values["file_size"][row] = nbytes
                if measured is not None:
                    for p, v in zip(("brightness", "contrast", "colourfulness", "grayscale", "sharpness", "width",
                                     "height"), measured):
                        values[p][row] = v
                    values["aspect"][row] = measured[5] / measured[6] if measured[6] else np.nan
                if error is not None:
                    key = error.split(":")[0]
                    errors[key] = errors.get(key, 0) + 1
            advance(len(batch))

    # ------------------------------------------------------------------ flags and scores
    def _flags(self, values: dict, status: np.ndarray, read: np.ndarray) -> tuple[dict, np.ndarray, dict, list]:
        n = len(status)
        flags = {name: np.zeros(n, dtype=bool) for name in FLAGS}
        score = np.ones(n)
        notes: list[str] = []
        thresholds: dict[str, Any] = {"dark_below": self.dark_below, "bright_above": self.bright_above}
        flags["unreadable"] = np.isin(status, list(UNREADABLE))
        score[flags["unreadable"]] = 0.0
        n_read = int(read.sum())
        if n_read == 0:
            return flags, score, thresholds, notes
        b = values["brightness"]
        gray = read & (values["grayscale"] == 1)
        with np.errstate(invalid="ignore"):
            for name, hit, part in (("dark", read & (b < self.dark_below),
                                     np.clip(0.5 * b / max(self.dark_below, 1e-9), 0, 1)),
                                    ("bright", read & (b > self.bright_above),
                                     np.clip(0.5 * (1 - b) / max(1 - self.bright_above, 1e-9), 0, 1)),
                                    ("grayscale", gray, np.where(gray, GRAYSCALE_SCORE, 1.0))):
                share = hit.sum() / n_read
                if share > self.max_share:
                    notes.append(f"{name} not flagged: {100 * share:.0f} % of the read images are {name}, the "
                                 f"store's norm (max_share {self.max_share})")
                    continue
                flags[name] = hit
                score = np.where(read, np.minimum(score, part), score)
        # blurry: robust z of log(sharpness) against the store's own distribution, among the images not
        # flagged dark or bright (in those, quantisation and compression noise dominate the Laplacian)
        exposed = read & ~flags["dark"] & ~flags["bright"]
        with np.errstate(divide="ignore", invalid="ignore"):
            log_sharp = np.log(values["sharpness"])
        robust = _robust(log_sharp, exposed, MIN_LOG_SPREAD["sharpness"])
        if robust is not None:
            centre, spread = robust
            with np.errstate(invalid="ignore"):
                z = (log_sharp - centre) / spread
            flags["blurry"] = exposed & (z < -self.blur_z)
            part = np.clip(0.5 * (1 + (np.nan_to_num(z, nan=0.0, neginf=-1e9) + self.blur_z) / self.blur_z), 0, 1)
            score = np.where(exposed, np.minimum(score, part), score)
            thresholds["sharpness_below"] = float(math.exp(centre - self.blur_z * spread))
        # odd size and aspect: distance from the store's median in log space, over the allowed one
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = {"odd_size": np.log(values["width"] * values["height"]), "odd_aspect": np.log(values["aspect"])}
        for name, key in (("odd_size", "area"), ("odd_aspect", "aspect")):
            robust = _robust(logs[name], read, 0.0)
            if robust is None:
                continue
            centre, spread = robust
            allowed = max(self.odd_z * spread, MIN_LOG_SPREAD[key])
            distance = np.abs(logs[name] - centre) / allowed
            flags[name] = read & (distance > 1)
            part = np.clip(1 - 0.5 * np.nan_to_num(distance, nan=0.0, posinf=2.0), 0, 1)
            score = np.where(read, np.minimum(score, part), score)
            thresholds[f"{key}_range"] = [float(math.exp(centre - allowed)), float(math.exp(centre + allowed))]
        return flags, score, thresholds, notes

    # ------------------------------------------------------------------ the bias table
    def _bias(self, ctx, values: dict, read: np.ndarray) -> pa.Table:
        names = ctx.label_names
        codes = ctx.label_codes
        rows_out = []
        for order, prop in enumerate(PROPERTIES):
            have = read & np.isfinite(values[prop])
            x = values[prop][have]
            y = codes[have]
            m = len(x)
            if m < 2 * self.min_class_rows or np.all(x == x[0]):
                continue
            ranks, tie_term = _average_ranks(x)
            sizes = np.bincount(y, minlength=len(names))
            rank_sums = np.bincount(y, weights=ranks, minlength=len(names))
            by_class = x[np.lexsort((x, y))]        # each class's values, sorted, one after the other
            starts = np.concatenate([[0], np.cumsum(sizes)])
            everything = np.sort(x)
            for c in np.flatnonzero((sizes >= self.min_class_rows) & (m - sizes >= self.min_class_rows)):
                n1, n2 = int(sizes[c]), m - int(sizes[c])
                u = rank_sums[c] - n1 * (n1 + 1) / 2
                auc = u / (n1 * n2)
                sigma = math.sqrt(n1 * n2 / 12 * ((m + 1) - tie_term / (m * (m - 1))))
                p_value = math.erfc(abs(u - n1 * n2 / 2) / sigma / math.sqrt(2)) if sigma > 0 else 1.0
                own = by_class[starts[c]:starts[c + 1]]
                rest_median = 0.5 * (_kth_without(everything, own, (n2 - 1) // 2) +
                                     _kth_without(everything, own, n2 // 2))
                direction = "lower" if auc < 0.5 else "higher" if auc > 0.5 else "same"
                rows_out.append((prop, int(c), float(abs(2 * auc - 1)), direction, n1, float(auc),
                                 float(0.5 * (own[(n1 - 1) // 2] + own[n1 // 2])), float(rest_median),
                                 float(p_value), order))
        rows_out.sort(key=lambda r: (-r[2], r[8], r[9], r[1]))
        label_values = pa.array(names, type=ctx.label_type)
        return pa.table({
            "property": pa.array([r[0] for r in rows_out], pa.string()),
            "label": label_values.take(pa.array([r[1] for r in rows_out], pa.int64())),
            "effect": pa.array([r[2] for r in rows_out], pa.float64()),
            "direction": pa.array([r[3] for r in rows_out], pa.string()),
            "rows": pa.array([r[4] for r in rows_out], pa.int64()),
            "auc": pa.array([r[5] for r in rows_out], pa.float64()),
            "class_median": pa.array([r[6] for r in rows_out], pa.float64()),
            "rest_median": pa.array([r[7] for r in rows_out], pa.float64()),
            "p_value": pa.array([r[8] for r in rows_out], pa.float64()),
        })


# ---------------------------------------------------------------------- one image
def _measure(image_module: Any, real, size: int) -> tuple:
    """``(brightness, contrast, colourfulness, grayscale, sharpness, width, height)`` of the image at
    ``real``, decoded at reduced size (see the module docstring); raises for a file Pillow cannot read."""
    planes, one_channel, width, height = _decode(image_module, real, size)
    if len(planes) == 1:
        luma, colourfulness, grayscale = planes[0], 0.0, True
    else:
        r, g, b = planes
        luma = np.float32(LUMA[0]) * r + np.float32(LUMA[1]) * g + np.float32(LUMA[2]) * b
        rg = r - g
        yb = np.float32(0.5) * (r + g) - b
        (m_rg, v_rg), (m_yb, v_yb) = _mean_var(rg), _mean_var(yb)
        colourfulness = math.sqrt(v_rg + v_yb) + 0.3 * math.sqrt(m_rg * m_rg + m_yb * m_yb)
        tolerance = np.float32((GRAY_TOLERANCE + 0.5) / 255)
        coloured = np.count_nonzero((np.abs(rg) > tolerance) | (np.abs(g - b) > tolerance))
        grayscale = one_channel or coloured <= 0.01 * rg.size
    brightness, variance = _mean_var(luma)
    contrast = math.sqrt(variance)
    return brightness, contrast, float(colourfulness), float(grayscale), _sharpness(luma, variance), \
        int(width), int(height)


def _decode(image_module: Any, real, size: int) -> tuple[list[np.ndarray], bool, int, int]:
    """The image at ``real`` as float32 planes in [0, 1] (one, or R, G, B) of at most ``size`` pixels
    a side, whether the file has one channel, and the original's width and height."""
    with open_inside(real) as fh, image_module.open(fh) as img:
        width, height = img.size
        img.draft("RGB", (size, size))   # JPEG: decode at 1/2, 1/4 or 1/8 scale, still >= size
        one_channel = img.mode in ("1", "L", "LA", "I", "F") or img.mode.startswith("I;16")
        if img.mode in ("I", "F") or img.mode.startswith("I;16"):
            raw = np.asarray(img, dtype=np.float32)   # 16-bit / float: every pixel, then every k-th
            step = max(1, math.ceil(max(raw.shape) / size))
            raw = np.ascontiguousarray(raw[::step, ::step])
            top = float(raw.max()) if raw.size else 1.0
            return [np.clip(raw / np.float32(1 if top <= 1 else 255 if top <= 255 else 65535), 0, 1)], True, \
                width, height
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")   # transparent pixels on white, as the thumbnails show them
            img = image_module.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.getchannel("A"))
        elif img.mode == "1":
            img = img.convert("L")
        elif img.mode not in ("L", "RGB"):   # P, CMYK, YCbCr, LAB, HSV, ...
            img = img.convert("RGB")
        img.thumbnail((size, size))
        bands = img.split() if img.mode == "RGB" else (img,)
        scale = np.float32(1 / 255)
        return [np.asarray(band, dtype=np.float32) * scale for band in bands], one_channel, width, height


def _mean_var(x: np.ndarray) -> tuple[float, float]:
    """Mean and (population) variance of ``x``, centred first (no cancellation for a flat image);
    NumPy's pairwise sums, so the same bits in any thread."""
    mean = x.mean(dtype=np.float32)
    d = x - mean
    d *= d
    return float(mean), float(d.mean(dtype=np.float32))


def _sharpness(luma: np.ndarray, variance: float) -> float:
    """Variance of the 3 x 3 Laplacian of the luma standardised to unit variance (0 for a flat image,
    NaN for one under 3 x 3 pixels)."""
    if luma.shape[0] < 3 or luma.shape[1] < 3:
        return float("nan")
    if variance < (0.5 / 255) ** 2:
        return 0.0
    lap = luma[1:-1, :-2] + luma[1:-1, 2:]
    lap += luma[:-2, 1:-1]
    lap += luma[2:, 1:-1]
    lap -= np.float32(4) * luma[1:-1, 1:-1]
    return _mean_var(lap)[1] / variance


# ---------------------------------------------------------------------- helpers
def _paths(ctx) -> list:
    """The store's paths as Python strings (None where there is none)."""
    return [None if p is None else str(p) for p in ctx.store.paths.to_pylist()]


def _robust(x: np.ndarray, rows: np.ndarray, least: float) -> tuple[float, float] | None:
    """``(median, spread)`` of the finite values of ``x`` over ``rows``: the spread is the MAD x 1.4826
    (a standard deviation for normal data), at least ``least``; None when there is no finite value."""
    have = rows & np.isfinite(x)
    if not have.any():
        return None
    centre = float(np.median(x[have]))
    return centre, max(1.4826 * float(np.median(np.abs(x[have] - centre))), least)


def _average_ranks(x: np.ndarray) -> tuple[np.ndarray, float]:
    """1-based ranks of ``x`` with ties averaged, and the tie term sum(t^3 - t) over tied groups."""
    values, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average = ends - (counts - 1) / 2.0
    return average[inverse], float((counts.astype(np.float64) ** 3 - counts).sum())


def _kth_without(everything: np.ndarray, part: np.ndarray, k: int) -> float:
    """The ``k``-th smallest (from 0) of the sorted ``everything`` once the sorted ``part`` (a part of
    it) is taken out: a binary search over ``everything``, O(log^2 m) instead of a pass over the rest."""
    lo, hi = 0, len(everything) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        value = everything[mid]
        left = np.searchsorted(everything, value, "right") - np.searchsorted(part, value, "right")
        if left >= k + 1:
            hi = mid
        else:
            lo = mid + 1
    return float(everything[lo])


def _median_or_none(x: np.ndarray) -> float | None:
    """The median of the finite values of ``x``, None when there is none."""
    x = x[np.isfinite(x)]
    return float(np.median(x)) if len(x) else None
