"""The HTML report in a real headless Chromium (Playwright), its thumbnails, and the PNG plots.

Browser tests skip only where /usr/bin/chromium or the playwright package is missing (CI installs
both with .ci/install-browser.sh and the dev extra). Playwright never downloads a browser here: it
drives Debian's Chromium through ``executable_path``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

import tamis
from tamis.engine.projection import project
from tamis.report.html import write_html_report
from tamis.report.thumbnails import resolve_inside

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
HAS_PIL = importlib.util.find_spec("PIL") is not None
HOSTILE_LABEL = "<img src=x onerror=alert(1)>"
HOSTILE_ID = "</script><script>alert(2)</script>"


# ---------------------------------------------------------------------- a small planted store
def write_png(path: Path, color) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 40), color).save(path)


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """A 90-row store with planted copies, a conflict, a leak, a hostile label and id, real PNGs
    inside ``images/`` for rows 0-9, and three paths that escape it (rows 10-12)."""
    base = tmp_path_factory.mktemp("store")
    root = base / "images"
    root.mkdir()
    rng = np.random.default_rng(7)
    n0, d, k = 84, 16, 4
    centers = rng.normal(size=(k, d)) * 3
    labels = rng.integers(0, k, n0)
    emb = centers[labels] + rng.normal(size=(n0, d))
    split = np.where(np.arange(n0) % 4 == 0, "test", "train").astype(object)
    src = np.array([1, 5, 9, 13, 17, 21])  # all train rows
    emb = np.concatenate([emb, emb[src]]).astype(np.float32)
    labels = np.concatenate([labels, labels[src]]).astype(object)
    labels = np.array([f"class {v}" for v in labels], dtype=object)
    labels[n0 + 2] = "class 9"          # a conflicting copy
    split = np.concatenate([split, ["train", "train", "train", "train", "test", "train"]])  # n0 + 4 leaks
    labels[3] = HOSTILE_LABEL
    n = len(labels)
    paths = np.array([f"img/{i:03d}.png" for i in range(n)], dtype=object)
    ids = np.array([f"s{i:03d}" for i in range(n)], dtype=object)
    ids[7] = HOSTILE_ID
    for i in range(10):
        write_png(root / paths[i], (20 * i, 120, 200)) if HAS_PIL else None
    outside = base / "secret.png"
    if HAS_PIL:
        write_png(outside, (255, 0, 0))
        os.symlink(outside, root / "img" / "link.png")
    paths[10] = "../secret.png"                 # climbs out
    paths[11] = str(outside)                    # absolute, elsewhere
    paths[12] = "img/link.png"                  # a symlink inside that points outside
    cols = {"embeddings": emb, "labels": labels, "split": split, "image_paths": paths, "ids": ids}
    report = tamis.scan(cols, device="cpu")
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    coords = project(x, method="pca")
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    neighbors = np.argsort(-sim, axis=1)[:, :5]
    out = base / "report"
    html = write_html_report(report, out, coords=coords, neighbors=neighbors, image_root=root)
    return {"report": report, "html": html, "out": out, "root": root, "paths": paths, "labels": labels,
            "ids": ids, "coords": coords, "n": n, "outside": outside}


# ---------------------------------------------------------------------- the browser
def _browser_missing() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing (install it with .ci/install-browser.sh)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is missing (pip install playwright)"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Page:
    """One page of the report, with its console errors and dialogs recorded."""

    def __init__(self, browser, html: Path):
        self.context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.goto(html.as_uri())
        self.page.wait_for_function("window.tamisReport !== undefined && (tamisReport.pointCount() === 0 || "
                                    "tamisReport.drawnCount() > 0)", timeout=15000)

    def js(self, expr: str):
        return self.page.evaluate(expr)


@pytest.fixture
def page(browser, scanned):
    p = Page(browser, scanned["html"])
    yield p
    p.context.close()


def test_report_opens_offline_with_no_console_errors(page, scanned):
    html = scanned["html"].read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the page must load nothing remotely"
    assert page.js("tamisReport.pointCount()") == scanned["n"]
    assert page.js("tamisReport.drawnCount()") == scanned["n"]
    page.page.click("#galleries .tabs button[data-issue='near_duplicate']")
    page.page.click("#galleries .tabs button[data-issue='leakage']")
    page.page.click("#galleries .tabs button[data-issue='conflicting_labels']")
    page.page.wait_for_timeout(200)
    assert page.page.locator("#galleries .pane[data-issue='leakage'] .group").count() >= 1
    assert page.errors == []


def test_embeddings_only_store_with_invalid_rows_opens(browser, tmp_path):
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(40, 8)).astype(np.float32)
    emb[3] = np.nan
    report = tamis.scan(emb, device="cpu")
    coords = np.full((40, 2), np.nan, dtype=np.float32)
    valid = np.flatnonzero(np.isfinite(emb).all(axis=1))
    coords[valid] = project(emb[valid] / np.linalg.norm(emb[valid], axis=1, keepdims=True), method="pca")
    page = Page(browser, write_html_report(report, tmp_path, coords=coords))
    try:
        assert page.js("tamisReport.pointCount()") == 39
        page.js("tamisReport.select(3)")
        assert page.page.locator("#panel-fields [data-field=map]").count() == 1
        page.page.click("#galleries .tabs button[data-issue='invalid']")
        assert page.page.locator("#galleries .pane[data-issue='invalid'] .card").count() == 1
        assert page.errors == []
    finally:
        page.context.close()


def test_clicking_a_point_shows_its_label(page, scanned):
    page.js("document.getElementById('scatter').scrollIntoView({block: 'center'})")
    for row in range(scanned["n"]):  # the first row drawn on top at its own position
        pos = page.js(f"tamisReport.screenPosition({row})")
        if page.js(f"tamisReport.rowAt({pos['x']}, {pos['y']})") == row:
            break
    page.page.mouse.click(pos["x"], pos["y"])
    fields = page.page.locator("#panel-fields")
    fields.wait_for()
    assert fields.locator("[data-field=row]").inner_text() == str(row)
    assert fields.locator("[data-field=label]").inner_text() == scanned["labels"][row]
    assert page.page.locator("#panel-scores").inner_text().count("_score") == len(
        [c for c in scanned["report"].samples.column_names if c.endswith("_score")])
    assert page.page.locator("#panel-neighbors li").count() == 5
    assert page.errors == []


def test_excluding_two_samples_downloads_exactly_their_paths(page, scanned, tmp_path):
    a, b = 20, 40
    page.js(f"tamisReport.select({b})")
    page.page.click("#sample-panel button.exclude")            # from the side panel
    page.page.click("#galleries .tabs button[data-issue='class_imbalance']")
    page.js(f"tamisReport.select({a})")
    page.page.click("#sample-panel button.exclude")
    assert page.page.locator("#selection-count").inner_text() == "Excluded: 2"
    page.page.click("#sample-panel button.exclude")            # toggles back ...
    assert page.page.locator("#selection-count").inner_text() == "Excluded: 1"
    page.page.click("#sample-panel button.exclude")            # ... and on again
    with page.page.expect_download() as info:
        page.page.click("#download-exclude")
    target = tmp_path / "exclude.txt"
    info.value.save_as(target)
    assert info.value.suggested_filename == "exclude.txt"
    assert target.read_text(encoding="utf-8").splitlines() == [scanned["paths"][a], scanned["paths"][b]]
    assert page.errors == []


def test_group_exclude_button_takes_the_copies(page, scanned):
    groups = scanned["report"].tables["groups"].to_pylist()
    first = page.page.locator("#galleries .pane[data-issue] .group").first
    gid = int(first.get_attribute("data-group"))
    first.locator(".group-head button.exclude").click()
    copies = sorted(g["row"] for g in groups if g["group_id"] == gid and not g["keep"])
    assert page.js("tamisReport.excluded()") == copies


def test_hostile_text_is_shown_as_text_and_never_runs(page, scanned):
    html = scanned["html"].read_text(encoding="utf-8")
    assert HOSTILE_ID not in html and HOSTILE_LABEL not in html  # escaped inside the JSON
    page.js("tamisReport.select(3)")
    assert page.page.locator("#panel-fields [data-field=label]").inner_text() == HOSTILE_LABEL
    page.js("tamisReport.select(7)")
    assert page.page.locator("#panel-fields [data-field=id]").inner_text() == HOSTILE_ID
    page.js("document.getElementById('scatter').scrollIntoView({block: 'center'})")
    pos = page.js("tamisReport.screenPosition(3)")
    page.page.mouse.move(pos["x"], pos["y"])
    if page.js(f"tamisReport.rowAt({pos['x']}, {pos['y']})") == 3:
        assert page.page.locator("#scatter-tooltip").inner_text().startswith(HOSTILE_LABEL)
    assert page.page.get_by_text(HOSTILE_LABEL, exact=True).count() >= 1  # the class table, the panel
    page.page.wait_for_timeout(300)
    assert page.page.locator("img[src='x']").count() == 0
    assert page.dialogs == []
    assert page.errors == []


@pytest.mark.skipif(not HAS_PIL, reason="Pillow is not installed (pip install pillow)")
def test_thumbnails_are_made_inside_image_root_only(scanned, browser):
    thumbs = {int(p.stem) for p in (scanned["out"] / "thumbs").glob("*.jpg")}
    assert thumbs == set(range(10))  # rows 0-9 have real PNGs; 10-12 escape image_root
    root = scanned["root"].resolve()
    assert resolve_inside(root, "img/000.png") == root / "img" / "000.png"
    for escaping in ("../secret.png", str(scanned["outside"]), "img/link.png", "img/../../secret.png", "", None):
        assert resolve_inside(root, escaping) is None
    page = Page(browser, scanned["html"])
    try:
        page.js("tamisReport.select(0)")
        img = page.page.locator("#sample-panel img.big")
        img.wait_for()
        page.page.wait_for_function("document.querySelector('#sample-panel img.big').complete")
        assert page.js("document.querySelector('#sample-panel img.big').naturalWidth") > 0
        assert page.errors == []
    finally:
        page.context.close()


@pytest.mark.skipif(not HAS_PIL, reason="Pillow is not installed (pip install pillow)")
def test_escaping_paths_are_never_opened(scanned, tmp_path, monkeypatch):
    from PIL import Image

    opened = []
    real_open = Image.open

    def spy(fp, *args, **kwargs):
        opened.append(Path(getattr(fp, "name", fp)).resolve())
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", spy)
    write_html_report(scanned["report"], tmp_path, image_root=scanned["root"], max_thumbnails=50)
    root = scanned["root"].resolve()
    assert opened and all(p.is_relative_to(root) for p in opened)
    assert scanned["outside"].resolve() not in opened
    assert len(list((tmp_path / "thumbs").glob("*.jpg"))) == 10


def test_thumbnails_are_bounded_and_optional(scanned, tmp_path):
    write_html_report(scanned["report"], tmp_path / "a", image_root=scanned["root"], max_thumbnails=3)
    assert len(list((tmp_path / "a" / "thumbs").glob("*.jpg"))) == (3 if HAS_PIL else 0)
    write_html_report(scanned["report"], tmp_path / "b", image_root=scanned["root"], max_thumbnails=0)
    assert not (tmp_path / "b" / "thumbs").exists()


def test_embedded_data_round_trips(scanned, tmp_path):
    html = write_html_report(scanned["report"], tmp_path).read_text(encoding="utf-8")
    blob = re.search(r'<script type="application/json" id="tamis-data">(.*?)</script>', html, re.S).group(1)
    data = json.loads(blob)
    assert data["columns"]["id"][7] == HOSTILE_ID and data["labels"].count(HOSTILE_LABEL) == 1
    assert data["coords"] is None and data["summary"]["issues"] == scanned["report"].counts()
    assert sorted(data["exclusions"]) == sorted(scanned["report"].exclusions["row"].to_pylist())


def test_map_stored_in_the_report_is_used(scanned, tmp_path):
    from dataclasses import replace

    import pyarrow as pa

    samples = scanned["report"].samples
    for axis, name in enumerate("xy"):
        samples = samples.append_column(f"pca_{name}", pa.array(scanned["coords"][:, axis].astype(np.float64)))
    report = replace(scanned["report"], samples=samples)
    html = write_html_report(report, tmp_path).read_text(encoding="utf-8")
    data = json.loads(re.search(r'id="tamis-data">(.*?)</script>', html, re.S).group(1))
    assert data["coords"] is not None and data["meta"]["projection"]["dims"] == 2


def test_suggested_label_is_shown(browser, scanned, tmp_path):
    from dataclasses import replace

    import pyarrow as pa

    samples = scanned["report"].samples
    samples = samples.drop_columns([c for c in ("suggested_label",) if c in samples.column_names])
    suggested = [None] * scanned["n"]
    suggested[30] = "class 9"
    report = replace(scanned["report"], samples=samples.append_column("suggested_label", pa.array(suggested)))
    page = Page(browser, write_html_report(report, tmp_path, coords=scanned["coords"]))
    try:
        page.js("tamisReport.select(30)")
        assert page.page.locator("#panel-fields [data-field=suggested_label]").inner_text() == "class 9"
        page.js("tamisReport.select(31)")
        assert page.page.locator("#panel-fields [data-field=suggested_label]").count() == 0
        assert page.errors == []
    finally:
        page.context.close()


def test_bad_arguments(scanned, tmp_path):
    with pytest.raises(tamis.InputError, match="coords"):
        write_html_report(scanned["report"], tmp_path, coords=np.zeros((3, 2)))
    with pytest.raises(tamis.InputError, match="neighbors"):
        write_html_report(scanned["report"], tmp_path, neighbors=np.zeros((scanned["n"], 2)))
    with pytest.raises(tamis.ConfigError, match="image_root"):
        write_html_report(scanned["report"], tmp_path, image_root=tmp_path / "nope")


# ---------------------------------------------------------------------- PNG plots
@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib is not installed")
def test_write_plots(scanned, tmp_path):
    from tamis.report.plots import write_plots

    written = write_plots(scanned["report"], tmp_path, coords=scanned["coords"])
    # the map, then one plot per drawable panel the checks declared, in check order
    assert [p.name for p in written] == ["projection.png", "near_duplicate_histogram.png",
                                         "class_imbalance_class_counts.png"]
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    assert [p.name for p in write_plots(scanned["report"], tmp_path / "nomap")] == \
        ["near_duplicate_histogram.png", "class_imbalance_class_counts.png"]
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_the_page_says_what_drew_the_map(browser, scanned, tmp_path):
    emb = np.random.default_rng(3).normal(size=(scanned["n"], 8)).astype(np.float32)
    report = tamis.scan({"embeddings": emb, "labels": scanned["labels"]}, device="cpu", projection="umap")
    proj = report.summary["projection"]
    assert proj["method"] == "umap" and proj["layout"]["implementation"] == "tamis"
    html = write_html_report(report, tmp_path / "r")
    p = Page(browser, html)
    try:
        about = p.page.locator("#projection-about").inner_text()
        assert "UMAP (tamis)" in about and "epochs" in about and f"{scanned['n']:,} points" in about
        assert p.js("tamisReport.drawnCount()") == scanned["n"]
        assert p.errors == []
    finally:
        p.context.close()


@pytest.fixture(scope="module")
def scanned_3d(tmp_path_factory):
    """A 3-D map of four clusters, drawn by tamis' UMAP, and the report page of it."""
    rng = np.random.default_rng(11)
    centers = rng.normal(size=(4, 12)) * 3
    labels = rng.integers(0, 4, 240)
    emb = (centers[labels] + rng.normal(size=(240, 12))).astype(np.float32)
    cols = {"embeddings": emb, "labels": np.array([f"c{v}" for v in labels], dtype=object),
            "image_paths": np.array([f"img/{i:03d}.png" for i in range(240)], dtype=object)}
    report = tamis.scan(cols, device="cpu", projection="umap", projection_dims=3)
    out = tmp_path_factory.mktemp("report3d")
    return {"report": report, "html": write_html_report(report, out), "n": 240}


def _front_row(p, n):
    """A row drawn on top at its own screen position (so a click there picks it)."""
    for row in range(n):
        pos = p.js(f"tamisReport.screenPosition({row})")
        if pos and p.js(f"tamisReport.rowAt({pos['x']}, {pos['y']})") == row:
            return row, pos
    raise AssertionError("no row is on top at its own position")


def test_3d_map_rotates_on_drag_and_a_click_selects_and_excludes(browser, scanned_3d):
    samples = scanned_3d["report"].samples
    assert {"umap_x", "umap_y", "umap_z"} <= set(samples.column_names)
    p = Page(browser, scanned_3d["html"])
    try:
        p.js("document.getElementById('scatter').scrollIntoView({block: 'center'})")
        assert p.js("tamisReport.dims()") == 3
        assert "drag to rotate" in p.page.locator("#scatter-help").inner_text()
        assert p.js("tamisReport.drawnCount()") == scanned_3d["n"]
        before = p.js("tamisReport.view()")
        start = {r: p.js(f"tamisReport.screenPosition({r})") for r in (0, 1, 2)}
        box = p.page.locator("#scatter").bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        p.page.mouse.move(cx, cy)
        p.page.mouse.down()
        for step in range(1, 11):
            p.page.mouse.move(cx + 12 * step, cy + 4 * step)
        p.page.mouse.up()
        after = p.js("tamisReport.view()")
        assert after["yaw"] > before["yaw"] + 0.5 and after["pitch"] > before["pitch"]
        assert after["scale"] == before["scale"]           # a drag rotates; it does not zoom or pan
        moved = [r for r in start if p.js(f"tamisReport.screenPosition({r})") != start[r]]
        assert moved == [0, 1, 2]
        # shift+drag pans: the view angles stay
        p.page.keyboard.down("Shift")
        p.page.mouse.move(cx, cy)
        p.page.mouse.down()
        p.page.mouse.move(cx + 40, cy + 10)
        p.page.mouse.move(cx + 80, cy + 20)
        p.page.mouse.up()
        p.page.keyboard.up("Shift")
        assert p.js("tamisReport.view()")["yaw"] == after["yaw"]
        p.page.mouse.wheel(0, -300)                        # wheel zooms
        p.page.wait_for_timeout(300)
        assert p.js("tamisReport.view()")["scale"] > after["scale"]
        row, pos = _front_row(p, scanned_3d["n"])
        p.page.mouse.click(pos["x"], pos["y"])
        fields = p.page.locator("#panel-fields")
        fields.wait_for()
        assert fields.locator("[data-field=row]").inner_text() == str(row)
        p.page.click("#sample-panel button.exclude")
        assert p.js("tamisReport.excluded()") == [row]
        assert p.errors == []
    finally:
        p.context.close()


def test_3d_map_draws_nearer_points_over_farther_ones(browser, scanned_3d, tmp_path):
    report = scanned_3d["report"]
    s = report.samples
    flagged = np.zeros(s.num_rows, dtype=bool)
    for name in s.column_names:
        if name.startswith("is_") and name.endswith("_issue"):
            flagged |= np.asarray(s[name].to_numpy(zero_copy_only=False), dtype=bool)
    a, b = (int(r) for r in np.flatnonzero(~flagged)[:2])        # two rows drawn alike but for depth
    coords = np.random.default_rng(0).uniform(-10, 10, size=(s.num_rows, 3))
    coords[[a, b]] = 0.0
    coords[a, 2], coords[b, 2] = 2.0, -2.0                       # same x, y; a in front along +z
    for r in np.flatnonzero(np.abs(coords[:, :2]).max(axis=1) < 2):
        if r not in (a, b):
            coords[r, :2] = 9.0                                  # nothing else near the centre
    html = write_html_report(report, tmp_path / "z", coords=coords)
    p = Page(browser, html)
    try:
        p.js("document.getElementById('scatter').scrollIntoView({block: 'center'})")
        view = p.js("tamisReport.view()")
        p.js(f"tamisReport.rotate({-view['yaw']}, {-view['pitch']})")   # look down the z axis
        p.page.wait_for_timeout(100)
        pos = p.js(f"tamisReport.screenPosition({a})")
        assert pos == p.js(f"tamisReport.screenPosition({b})")
        assert p.js(f"tamisReport.rowAt({pos['x']}, {pos['y']})") == a
        p.js("tamisReport.rotate(Math.PI, 0)")                           # from behind
        p.page.wait_for_timeout(100)
        pos = p.js(f"tamisReport.screenPosition({a})")
        assert p.js(f"tamisReport.rowAt({pos['x']}, {pos['y']})") == b
        assert p.errors == []
    finally:
        p.context.close()
