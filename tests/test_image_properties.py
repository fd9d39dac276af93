"""image_properties: what the pixels say, on generated images with planted truth.

The store: 300 images of 5 classes (96 x 96, JPEG and PNG), class 0 mostly dark (48 of its 60),
15 Gaussian-blurred and 12 grayscale images in the other classes, and beside them a corrupt file,
a truncated JPEG, a missing file, a tiny and a very wide image, and three paths that leave the image
root (``..``, an absolute path, a symlink pointing out) whose target is a readable image: they must
never be opened.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw, ImageFilter

import tamis
from tamis.checks.image_properties import ImageProperties, _average_ranks, _kth_without, _measure
from tamis.cli import main

N_PER_CLASS, CLASSES, SIZE = 60, 5, 96
FLAG_NAMES = ("unreadable", "dark", "bright", "blurry", "grayscale", "odd_size", "odd_aspect")


def _picture(rng: np.random.Generator, w: int = SIZE, h: int = SIZE) -> np.ndarray:
    """A colourful picture: a gradient, 6-10 shapes, a little sensor noise (float RGB 0..255)."""
    a, b = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
    t = np.linspace(0, 1, w)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, h)[:, None, None]
    img = Image.fromarray(((a * (1 - t) + b * t) * np.ones((h, w, 3)) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(6, 11)):
        x0, y0 = rng.integers(0, max(1, w - 8)), rng.integers(0, max(1, h - 8))
        box = [x0, y0, x0 + rng.integers(6, max(7, w // 2)), y0 + rng.integers(6, max(7, h // 2))]
        colour = tuple(int(c) for c in rng.integers(20, 236, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=colour)
    return np.clip(np.asarray(img, dtype=np.float64) + rng.normal(0, 6, (h, w, 3)), 0, 255)


def _save(img: Image.Image, path: Path) -> None:
    img.save(path, quality=90)


def make_store(base: Path, seed: int = 0) -> dict:
    """The planted store under ``base / "root"``; the image outside it is ``base / "outside.png"``."""
    rng = np.random.default_rng(seed)
    root = base / "root"
    (root / "img").mkdir(parents=True)
    n = N_PER_CLASS * CLASSES
    labels = np.repeat(np.arange(CLASSES), N_PER_CLASS)
    others = rng.permutation(np.arange(N_PER_CLASS, n))
    truth = {name: set() for name in FLAG_NAMES}
    truth["dark"] = set(range(int(0.8 * N_PER_CLASS)))               # class 0: 48 of its 60 images
    truth["blurry"] = set(others[:15].tolist())
    truth["grayscale"] = set(others[15:27].tolist())
    paths = []
    for i in range(n):
        arr = _picture(rng)
        if i in truth["dark"]:     # under-exposed: mean luma 0.03 .. 0.11
            arr = arr * rng.uniform(0.03, 0.11) / ((arr @ [0.299, 0.587, 0.114]).mean() / 255)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        if i in truth["blurry"]:
            img = img.filter(ImageFilter.GaussianBlur(2.0))
        if i in truth["grayscale"]:
            img = img.convert("L")
            if i % 2:
                img = img.convert("RGB")   # three equal channels, as many grayscale JPEGs are stored
        name = f"img/{i:04d}." + ("png" if i % 5 == 0 else "jpg")
        _save(img, root / name)
        paths.append(name)
    # the specials, appended after the 300 (their labels cycle through the classes)
    special = {}
    (root / "img" / "corrupt.png").write_bytes(b"this is no image" * 10)
    special["corrupt"] = "img/corrupt.png"
    jpeg = root / "img" / "full.jpg"
    _save(Image.fromarray(_picture(rng).astype(np.uint8)), jpeg)
    (root / "img" / "truncated.jpg").write_bytes(jpeg.read_bytes()[:400])
    jpeg.unlink()
    special["truncated"] = "img/truncated.jpg"
    special["missing"] = "img/missing.jpg"
    _save(Image.fromarray(_picture(rng, 12, 12).astype(np.uint8)), root / "img" / "tiny.png")
    special["tiny"] = "img/tiny.png"
    _save(Image.fromarray(_picture(rng, 400, 48).astype(np.uint8)), root / "img" / "wide.jpg")
    special["wide"] = "img/wide.jpg"
    outside = base / "outside.png"
    _save(Image.fromarray(_picture(rng).astype(np.uint8)), outside)
    special["dotdot"] = "../outside.png"
    special["absolute"] = str(outside)
    os.symlink(outside, root / "img" / "link.png")
    special["symlink"] = "img/link.png"
    rows = {}
    for key, path in special.items():
        rows[key] = len(paths)
        paths.append(path)
    labels = np.concatenate([labels, np.arange(len(special)) % CLASSES])
    truth["unreadable"] = {rows["corrupt"], rows["truncated"], rows["missing"]}
    truth["odd_size"] = {rows["tiny"]}
    truth["odd_aspect"] = {rows["wide"]}
    emb = np.random.default_rng(1).normal(size=(len(paths), 8)).astype(np.float32)
    return {"root": root, "outside": outside, "rows": rows, "truth": truth,
            "columns": {"embeddings": emb, "labels": labels, "image_paths": np.array(paths)}}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The planted store, scanned once with a spy on ``PIL.Image.open`` recording every file opened."""
    data = make_store(tmp_path_factory.mktemp("images"))
    opened: list[str] = []
    real_open = Image.open

    def spy(fp, *args, **kwargs):
        opened.append(os.path.realpath(getattr(fp, "name", fp)))
        return real_open(fp, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Image, "open", spy)
        report = tamis.scan(data["columns"], device="cpu", checks=["image_properties"], image_root=data["root"])
    return dict(data, report=report, opened=opened)


def _flagged(report, name: str) -> set[int]:
    return {r for r, f in enumerate(report.samples["image_flags"].to_pylist()) if f and name in f.split(",")}


def _precision_recall(found: set[int], truth: set[int]) -> tuple[float, float]:
    hit = len(found & truth)
    return hit / max(1, len(found)), hit / max(1, len(truth))


@pytest.mark.parametrize("flag, least_precision", [("dark", 1.0), ("blurry", 0.9), ("grayscale", 1.0),
                                                   ("unreadable", 1.0), ("odd_size", 1.0), ("odd_aspect", 1.0)])
def test_planted_flags_are_found(planted, flag, least_precision):
    precision, recall = _precision_recall(_flagged(planted["report"], flag), planted["truth"][flag])
    assert recall == 1.0 and precision >= least_precision, (flag, precision, recall)


def test_flags_scores_and_counts_agree(planted):
    report = planted["report"]
    s = report.samples
    flags = s["is_image_properties_issue"].to_numpy(zero_copy_only=False)
    scores = s["image_properties_score"].to_numpy(zero_copy_only=False).astype(float)
    judged = ~np.isnan(scores)
    assert np.array_equal(flags[judged], scores[judged] < 0.5), "a row is flagged exactly when its score is below 0.5"
    assert not planted["truth"]["bright"] and not _flagged(report, "bright")
    summary = report.summary["checks"]["image_properties"]
    assert summary["flags"] == {name: len(_flagged(report, name)) for name in FLAG_NAMES}
    assert summary["status"] == {"ok": 302, "corrupt": 2, "missing": 1, "outside": 3}
    rows = planted["rows"]
    scores_of = {key: scores[row] for key, row in rows.items()}
    assert scores_of["corrupt"] == 0 and scores_of["missing"] == 0
    excluded = set(report.exclusions["row"].to_pylist())
    assert excluded == planted["truth"]["unreadable"], "unreadable rows (only) go on the exclusion list"


def test_paths_leaving_the_image_root_are_never_opened(planted):
    report, rows = planted["report"], planted["rows"]
    outside = os.path.realpath(planted["outside"])
    assert outside not in planted["opened"]
    assert len(planted["opened"]) == 302 + 2, "every image inside the root is opened once, corrupt ones included"
    status = report.samples["image_status"].to_pylist()
    scores = report.samples["image_properties_score"].to_pylist()
    for key in ("dotdot", "absolute", "symlink"):
        assert status[rows[key]] == "outside" and scores[rows[key]] is None
        assert report.samples["image_brightness"][rows[key]].as_py() is None


def test_the_dark_class_is_ranked_first(planted):
    bias = planted["report"].tables["image_bias"]
    assert bias.column_names[:4] == ["property", "label", "effect", "direction"] and "rows" in bias.column_names
    table = bias.to_pylist()
    assert table[0]["label"] == 0
    effects = [r["effect"] for r in table]
    assert effects == sorted(effects, reverse=True)
    dark = next(r for r in table if r["property"] == "brightness" and r["label"] == 0)
    assert dark["direction"] == "lower" and dark["effect"] >= 0.7 and dark["rows"] == 60   # its specials are unread
    assert dark["p_value"] < 1e-10
    others = [r["effect"] for r in table if r["label"] != 0]
    assert dark["effect"] > max(others) + 0.3, "no other class comes near"
    brightness = [r for r in table if r["property"] == "brightness"]
    assert brightness[0]["label"] == 0
    shortcuts = planted["report"].summary["checks"]["image_properties"]["shortcuts"]
    assert shortcuts and {s["label"] for s in shortcuts} == {0}


def test_effect_is_the_auc_of_the_class_against_the_rest(planted):
    from sklearn.metrics import roc_auc_score

    report = planted["report"]
    s = report.samples
    read = np.array([v == "ok" for v in s["image_status"].to_pylist()])
    x = s["image_brightness"].to_numpy(zero_copy_only=False).astype(float)[read]
    y = np.asarray(planted["columns"]["labels"])[read]
    checked = 0
    for row in report.tables["image_bias"].to_pylist():
        if row["property"] == "brightness":
            auc = roc_auc_score(y == row["label"], x)
            assert row["auc"] == pytest.approx(auc) and row["effect"] == pytest.approx(abs(2 * auc - 1))
            assert row["class_median"] == np.median(x[y == row["label"]])
            assert row["rest_median"] == np.median(x[y != row["label"]])
            checked += 1
    assert checked == CLASSES
    ranks, ties = _average_ranks(np.array([3.0, 1.0, 3.0, 2.0]))
    assert ranks.tolist() == [3.5, 1.0, 3.5, 2.0] and ties == 6.0


def test_order_statistics_of_the_rest_match_numpy():
    rng = np.random.default_rng(3)
    for _ in range(50):
        x = rng.integers(0, 6, rng.integers(3, 40)).astype(float)     # many ties
        take = rng.random(len(x)) < 0.4
        if take.all() or not take.any():
            continue
        rest = np.sort(x[~take])
        for k in range(len(rest)):
            assert _kth_without(np.sort(x), np.sort(x[take]), k) == rest[k]


def test_samples_columns_after_a_cli_scan(planted, tmp_path):
    store = tmp_path / "store" / "s.npz"
    store.parent.mkdir()
    np.savez(store, **planted["columns"])
    out = tmp_path / "report"
    code = main(["scan", str(store), "--image-root", str(planted["root"]), "--out", str(out), "--no-projection",
                 "--checks", "invalid,image_properties", "-q"])
    assert code == 0
    samples = pq.read_table(out / "samples.parquet")
    for column in ("image_brightness", "image_contrast", "image_colourfulness", "image_grayscale", "image_sharpness",
                   "image_width", "image_height", "image_aspect", "image_file_size", "image_status", "image_flags",
                   "is_image_properties_issue", "image_properties_score"):
        assert column in samples.column_names, column
    wide = planted["rows"]["wide"]
    assert samples["image_width"][wide].as_py() == 400 and samples["image_height"][wide].as_py() == 48
    assert samples["image_aspect"][wide].as_py() == pytest.approx(400 / 48)
    assert samples["image_grayscale"].to_pylist().count(True) == 12
    bias = pq.read_table(out / "image_bias.parquet")
    assert bias["label"][0].as_py() == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["issues"]["image_properties"] == len(
        set().union(*[planted["truth"][f] for f in FLAG_NAMES]))
    assert summary["config"]["image_root"] == str(planted["root"])
    assert "image_bias" in json.dumps(summary["report"]["panels"])
    assert "Image properties by class" in (out / "report.html").read_text()


def test_the_store_folder_is_the_default_image_root(planted, tmp_path):
    store = planted["root"] / "store.npz"
    np.savez(store, **planted["columns"])
    try:
        report = tamis.scan(str(store), device="cpu", checks=["image_properties"])
    finally:
        store.unlink()
    assert report.summary["checks"]["image_properties"]["n_read"] == 302
    assert report.summary["checks"]["image_properties"]["image_root"] == str(planted["root"].resolve())


def test_skipped_with_a_reason_without_an_image_root_or_paths(planted, tmp_path):
    cols = planted["columns"]
    memory = tamis.scan(cols, device="cpu", projection="none")
    skipped = {s["check"]: s["reason"] for s in memory.summary["checks_skipped"]}
    assert "image_properties" not in memory.summary["checks_run"]
    assert "in memory" in skipped["image_properties"] and "--image-root" in skipped["image_properties"]
    no_paths = tamis.scan({"embeddings": cols["embeddings"], "labels": cols["labels"]}, device="cpu")
    assert {s["check"]: s["reason"] for s in no_paths.summary["checks_skipped"]}["image_properties"] == \
        "needs paths, which the store does not have"
    elsewhere = tamis.scan(cols, device="cpu", image_root=tmp_path)   # a root holding none of the paths
    reason = {s["check"]: s["reason"] for s in elsewhere.summary["checks_skipped"]}["image_properties"]
    assert "finds none of 100 sampled paths" in reason and str(tmp_path.resolve()) in reason
    with pytest.raises(tamis.ConfigError, match="image_properties.*image_root=DIR"):
        tamis.scan(cols, device="cpu", checks=["image_properties"])
    with pytest.raises(tamis.ConfigError, match="is not a folder"):
        tamis.scan(cols, device="cpu", image_root=tmp_path / "nope")


def test_rows_sharing_a_path_are_read_once_and_invalid_rows_are_left_out(planted, monkeypatch):
    cols = planted["columns"]
    rows = np.r_[np.arange(20), np.arange(10)]          # rows 20..29 repeat 0..9's paths
    emb = cols["embeddings"][rows].copy()
    emb[3] = np.nan
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: opened.append(fp.name) or real_open(fp, *a, **k))
    report = tamis.scan({"embeddings": emb, "labels": cols["labels"][rows], "image_paths": cols["image_paths"][rows]},
                        device="cpu", checks=["image_properties"], image_root=planted["root"])
    assert len(opened) == len(set(opened)) == 20, "each distinct path of a valid row is opened once"
    b = report.samples["image_brightness"].to_numpy(zero_copy_only=False).astype(float)
    assert np.isnan(b[3]) and not np.isnan(b[23]), "row 3's embedding is invalid, row 23 (same path) is not"
    np.testing.assert_array_equal(np.delete(b[20:], 3), np.delete(b[:10], 3))
    assert report.samples["image_properties_score"][3].as_py() is None


def test_answers_do_not_depend_on_the_threads(planted):
    cols = planted["columns"]
    results = []
    for threads in (1, 5):
        report = tamis.scan(cols, device="cpu", checks=["image_properties"], image_root=planted["root"],
                            params={"image_properties": {"threads": threads}})
        results.append(report)
    a, b = results
    assert a.samples.equals(b.samples)
    assert a.tables["image_bias"].equals(b.tables["image_bias"])


def test_dark_is_not_flagged_where_it_is_the_norm(planted):
    """A store of mostly dark images (night scenes): dark is its norm, not an issue; the bias still shows."""
    cols = planted["columns"]
    report = tamis.scan(cols, device="cpu", checks=["image_properties"], image_root=planted["root"],
                        params={"image_properties": {"max_share": 0.1}})
    summary = report.summary["checks"]["image_properties"]
    assert summary["flags"]["dark"] == 0 and any("dark not flagged" in note for note in summary["notes"])
    assert report.tables["image_bias"]["label"][0].as_py() == 0


# ---------------------------------------------------------------------- one image
@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "1", "I;16", "CMYK"])
def test_measure_reads_every_common_mode(tmp_path, mode):
    grey = Image.new("L", (40, 30), 128)
    ImageDraw.Draw(grey).rectangle([10, 10, 20, 20], fill=200)
    img = grey.convert(mode) if mode != "I;16" else Image.fromarray((np.asarray(grey, np.uint16) * 257))
    path = tmp_path / ("x.tiff" if mode in ("I;16", "CMYK") else "x.png")
    img.save(path)
    brightness, contrast, colourfulness, grayscale, sharpness, width, height = _measure(Image, path, 256)
    assert (width, height) == (40, 30) and grayscale == 1.0 and colourfulness == pytest.approx(0, abs=1e-6)
    if mode != "1":   # "1" thresholds 128 and 200 both to white
        assert brightness == pytest.approx((128 * 1089 + 200 * 121) / 1200 / 255, abs=0.01)
        assert contrast > 0.05 and sharpness > 0


def test_measure_of_flat_and_coloured_images(tmp_path):
    Image.new("RGB", (32, 32), (255, 0, 0)).save(tmp_path / "red.png")
    b, c, colour, gray, sharp, *_ = _measure(Image, tmp_path / "red.png", 256)
    assert b == pytest.approx(0.299, abs=1e-3) and c < 1e-6 and sharp == 0 and gray == 0.0
    assert colour == pytest.approx(0.3 * np.hypot(1.0, 0.5), abs=1e-4)    # Hasler-Suesstrunk: mean term only
    Image.new("RGB", (2, 2), (10, 10, 10)).save(tmp_path / "tiny.png")
    assert np.isnan(_measure(Image, tmp_path / "tiny.png", 256)[4])
    big = Image.fromarray(_picture(np.random.default_rng(0), 1024, 768).astype(np.uint8))
    big.save(tmp_path / "big.jpg", quality=90)
    *_, width, height = _measure(Image, tmp_path / "big.jpg", 256)
    assert (width, height) == (1024, 768), "the original's size, whatever the decoded one"


def test_parameters_are_validated_when_run_starts(planted):
    from tamis.engine.backend import cpu_backend
    from tamis.engine.context import RunContext
    from tamis.io.readers import load_store

    ctx = RunContext(load_store(planted["columns"]), cpu_backend())
    with pytest.raises(tamis.ConfigError, match="dark_below"):
        ImageProperties(dark_below=2.0).run(ctx)
