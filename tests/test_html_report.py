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


# ---------------------------------------------------------------------- the near-duplicate threshold slider
def _planted_sweep_store():
    """67 rows: 50 random directions, partners planted at cosines across 0.905 ... 0.999 (chains
    that merge below the scan's 0.95), an exact copy; ids out of row order (so a group's first id
    is not its smallest row)."""
    rng = np.random.default_rng(5)
    d, n0 = 48, 50
    base = rng.normal(size=(n0, d))
    base /= np.linalg.norm(base, axis=1, keepdims=True)

    def partner(u, cos):
        w = rng.normal(size=d)
        w -= (w @ u) * u
        w /= np.linalg.norm(w)
        return cos * u + np.sqrt(1 - cos * cos) * w

    rows = list(base)
    for i, c in enumerate([0.999, 0.985, 0.962, 0.955, 0.945, 0.935, 0.925, 0.912, 0.905, 0.99, 0.975, 0.94]):
        rows.append(partner(base[i], c))
    for r, c in [(n0 + 0, 0.93), (n0 + 2, 0.96), (n0 + 4, 0.915), (n0 + 9, 0.98)]:
        rows.append(partner(rows[r], c))
    rows.append(rows[20].copy())
    emb = np.array(rows, dtype=np.float32)
    n = len(emb)
    ids = np.array([f"id-{v:04d}" for v in rng.permutation(n) * 7 % 1000], dtype=object)
    labels = np.array([f"c{v % 3}" for v in range(n)], dtype=object)
    return {"embeddings": emb, "ids": ids, "labels": labels}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    cols = _planted_sweep_store()
    n = len(cols["ids"])
    report = tamis.scan(cols, device="cpu")
    coords = np.column_stack([np.arange(n) % 10, np.arange(n) // 10]).astype(np.float64)   # no two points meet
    html = write_html_report(report, tmp_path_factory.mktemp("swept"), coords=coords)
    return {"cols": cols, "report": report, "html": html, "n": n}


NEAR = "#galleries .pane[data-issue='near_duplicate']"


def _page_data(html: Path) -> dict:
    text = html.read_text(encoding="utf-8")
    return json.loads(re.search(r'id="tamis-data">(.*?)</script>', text, re.DOTALL).group(1))


def _b64(text: str, dtype: str) -> np.ndarray:
    import base64

    return np.frombuffer(base64.b64decode(text), dtype=dtype)


def _groups_of_table(table) -> dict[str, list]:
    """group id -> [member rows ascending, the kept row] from a groups table."""
    out: dict[str, list] = {}
    for g in table.to_pylist():
        rows, kept = out.get(str(g["group_id"]), ([], -1))
        out[str(g["group_id"])] = [sorted([*rows, g["row"]]), g["row"] if g["keep"] else kept]
    return out


def _page_groups(page) -> dict[str, list]:
    """group id -> [member rows ascending, the kept row] as the gallery shows them (every page of it)."""
    more = page.page.locator(f"{NEAR} > div > button.more")
    while more.count() and more.first.is_visible():
        more.first.click()
    return page.js(f"""Object.fromEntries(Array.from(document.querySelectorAll("{NEAR} .group")).map((g) => {{
        const cards = Array.from(g.querySelectorAll(".card"));
        const kept = cards.filter((c) => c.querySelector(".kept")).map((c) => +c.dataset.row);
        return [g.dataset.group, [cards.map((c) => +c.dataset.row).sort((a, b) => a - b),
                                  kept.length === 1 ? kept[0] : -1]];
    }}))""")


def _shown_counts(page) -> dict:
    """The near-duplicate count where the page shows it: the issues card, the gallery's tab, the map's toggle."""
    text = lambda selector: page.page.locator(selector).inner_text()   # noqa: E731
    return {"card": text("#issue-counts tr[data-issue='near_duplicate'] td.num"),
            "tab": text("#galleries .tabs button[data-issue='near_duplicate'] .count"),
            "map": text("#projection .scatter-tools label:has(input[data-issue='near_duplicate']) .count")}


def _counts(count: int) -> dict:
    return {"card": str(count), "tab": f" ({count})", "map": f" ({count})"}


def _rescan(swept, threshold):
    """The check itself at another threshold: the truth the slider must reproduce."""
    return tamis.scan(swept["cols"], device="cpu", threshold=threshold, checks=["near_duplicate"])


def _rows(report) -> list[int]:
    return np.flatnonzero(report.flags("near_duplicate")).tolist()


def test_slider_carries_the_sweeps_pairs(swept):
    report = swept["report"]
    sweep = report.tables["sweep_pairs"]
    summary = report.summary["checks"]["near_duplicate"]
    assert summary["pairs_from"] == 0.90 and summary["threshold"] == 0.95
    assert sweep.num_rows == summary["sweep"][0]["n_pairs"] > summary["n_pairs"] == report.tables["pairs"].num_rows
    slider = _page_data(swept["html"])["galleries"]["near_duplicate"]["slider"]
    assert slider["floor"] == 0.90 and slider["threshold"] == 0.95 and slider["keep_policy"] == "first"
    values, a = _b64(slider["values"], "<f4"), _b64(slider["row_a"], "<i4")
    assert len(values) == sweep.num_rows and np.all(np.diff(values) <= 0)       # largest first
    assert sorted(zip(a.tolist(), values.tolist())) == \
        sorted(zip(sweep["row_a"].to_pylist(), sweep["similarity"].to_pylist()))  # float32 as the check compared
    rank = _b64(slider["id_rank"], "<i4")                                         # ids are out of row order
    assert np.argsort(rank).tolist() == np.argsort(swept["cols"]["ids"], kind="stable").tolist()


def test_slider_at_the_scans_threshold_gives_the_checks_groups(browser, swept):
    expected = _groups_of_table(swept["report"].tables["groups"])
    assert len(expected) >= 4
    page = Page(browser, swept["html"])
    try:
        page.page.click("#galleries .tabs button[data-issue='near_duplicate']")
        assert _page_groups(page) == expected                                   # the check's own table
        assert page.js("tamisReport.setThreshold('near_duplicate', 0.97)")       # away and back: regrouped in JS
        assert page.js("tamisReport.setThreshold('near_duplicate', 0.95)")
        assert _page_groups(page) == expected
        assert page.page.locator(f"{NEAR} .group-head", has_text="not a group at the scan").count() == 0
        assert _shown_counts(page) == _counts(swept["report"].counts()["near_duplicate"])
        assert page.js("tamisReport.flagged('near_duplicate')") == _rows(swept["report"])
        assert page.errors == []
    finally:
        page.context.close()


@pytest.mark.parametrize("threshold", [0.92, 0.97])
def test_moving_the_slider_regroups_as_the_check_would(browser, swept, threshold):
    truth = _rescan(swept, threshold)
    expected = _groups_of_table(truth.tables["groups"])
    at_scan = _groups_of_table(swept["report"].tables["groups"])
    count = truth.counts()["near_duplicate"]
    if threshold < 0.95:   # down: the pairs between the thresholds add rows and merge groups
        assert count > swept["report"].counts()["near_duplicate"] and expected != at_scan
    else:                  # up: groups go
        assert count < swept["report"].counts()["near_duplicate"] and len(expected) < len(at_scan)
    page = Page(browser, swept["html"])
    try:
        page.page.click("#galleries .tabs button[data-issue='near_duplicate']")
        page.page.fill(f"{NEAR} input.threshold-value", str(threshold))
        page.page.dispatch_event(f"{NEAR} input.threshold-value", "change")
        assert page.page.locator(f"{NEAR} input.threshold").input_value() == str(threshold)
        assert _page_groups(page) == expected        # members, ids and the kept member (the first id)
        assert _shown_counts(page) == _counts(count)
        assert page.js("tamisReport.flagged('near_duplicate')") == _rows(truth)
        # the map draws the new flags: with only this issue shown, exactly its rows can be picked
        page.js("document.getElementById('scatter').scrollIntoView({block: 'center'})")
        page.page.uncheck("#toggle-clean")
        for box in page.page.locator("#projection input[data-issue]").all():
            if box.get_attribute("data-issue") != "near_duplicate":
                box.uncheck()
        page.page.wait_for_timeout(150)
        picked = []
        for row in range(swept["n"]):
            pos = page.js(f"tamisReport.screenPosition({row})")
            if page.js(f"tamisReport.rowAt({pos['x']}, {pos['y']})") == row:
                picked.append(row)
        assert picked == _rows(truth)
        page.page.click(f"{NEAR} button.threshold-reset")      # back to the scan's threshold
        assert _page_groups(page) == at_scan
        assert _shown_counts(page) == _counts(swept["report"].counts()["near_duplicate"])
        assert page.errors == []
    finally:
        page.context.close()


def test_slider_keys_move_by_thousandths_and_the_histogram_line_follows(browser, swept):
    page = Page(browser, swept["html"])
    try:
        page.page.click("#galleries .tabs button[data-issue='near_duplicate']")
        slider = page.page.locator(f"{NEAR} input.threshold")
        assert slider.get_attribute("min") == "0.9" and slider.get_attribute("max") == "1"
        assert page.js("tamisReport.markers()") == [{"check": "near_duplicate", "key": "threshold", "value": 0.95}]
        slider.focus()
        for _ in range(30):
            page.page.keyboard.press("ArrowLeft")
        page.page.wait_for_timeout(200)
        value = float(page.page.locator(f"{NEAR} input.threshold-value").input_value())
        assert value < 0.95 and round(value, 3) == value
        assert page.js("tamisReport.flagged('near_duplicate')") == _rows(_rescan(swept, value))
        assert f"pairs \u2265 {value:.3f}" in page.page.locator(f"{NEAR} .threshold-state").inner_text()
        assert page.js("tamisReport.markers()")[0]["value"] == value
        assert page.errors == []
    finally:
        page.context.close()


def test_slider_bound_carries_only_the_pairs_at_the_threshold(swept, tmp_path, monkeypatch):
    import tamis.report.html as html_module

    report = swept["report"]
    n_pairs = report.summary["checks"]["near_duplicate"]["n_pairs"]
    monkeypatch.setattr(html_module, "MAX_SLIDER_PAIRS", n_pairs)            # the sweep's pairs are more
    slider = _page_data(write_html_report(report, tmp_path / "a"))["galleries"]["near_duplicate"]["slider"]
    values = _b64(slider["values"], "<f4")
    assert slider["floor"] == 0.95 and slider["lowest"] == 0.90
    assert len(values) == n_pairs and values.min() >= np.float32(0.95)
    monkeypatch.setattr(html_module, "MAX_SLIDER_PAIRS", n_pairs - 1)        # even those are too many
    slider = _page_data(write_html_report(report, tmp_path / "b"))["galleries"]["near_duplicate"]["slider"]
    assert set(slider) == {"note"} and "more than the page carries" in slider["note"]


def test_slider_floor_shown_when_bounded(browser, swept, tmp_path, monkeypatch):
    import tamis.report.html as html_module

    monkeypatch.setattr(html_module, "MAX_SLIDER_PAIRS", swept["report"].summary["checks"]["near_duplicate"]["n_pairs"])
    page = Page(browser, write_html_report(swept["report"], tmp_path))
    try:
        page.page.click("#galleries .tabs button[data-issue='near_duplicate']")
        assert page.page.locator(f"{NEAR} input.threshold").get_attribute("min") == "0.95"
        assert "more than the page carries" in page.page.locator(f"{NEAR} .slider").inner_text()
        assert page.js("tamisReport.setThreshold('near_duplicate', 0.5)")        # held at the floor
        assert page.page.locator(f"{NEAR} input.threshold-value").input_value() == "0.95"
        assert page.js("tamisReport.flagged('near_duplicate')") == _rows(swept["report"])
        assert page.errors == []
    finally:
        page.context.close()


def test_rows_flagged_outside_the_groups_stay_flagged(browser, swept, tmp_path):
    from dataclasses import replace

    import pyarrow as pa

    report = swept["report"]
    flags = report.flags("near_duplicate").copy()
    extra = int(np.flatnonzero(~flags)[0])           # flagged by the check for something else than a group
    flags[extra] = True
    column = report.samples.column_names.index("is_near_duplicate_issue")
    samples = report.samples.set_column(column, "is_near_duplicate_issue", pa.array(flags))
    summary = {**report.summary, "issues": {**report.summary["issues"], "near_duplicate": int(flags.sum())}}
    page = Page(browser, write_html_report(replace(report, samples=samples, summary=summary), tmp_path))
    try:
        assert page.js("tamisReport.setThreshold('near_duplicate', 0.97)")
        truth = _rescan(swept, 0.97).flags("near_duplicate")
        assert not truth[extra]
        truth[extra] = True
        assert page.js("tamisReport.flagged('near_duplicate')") == np.flatnonzero(truth).tolist()
        assert page.page.locator("#issue-counts tr[data-issue='near_duplicate'] td.num").inner_text() == \
            str(int(truth.sum()))
        assert "stay flagged" in page.page.locator(f"{NEAR} .slider").inner_text()
        assert page.errors == []
    finally:
        page.context.close()


# ---------------------------------------------------------------------- object crops: a row's group
@pytest.fixture(scope="module")
def cropped(tmp_path_factory):
    """20 crops of 8 images (image k has k % 4 + 1 crops), PNGs for the first 10 crops."""
    base = tmp_path_factory.mktemp("crops")
    rng = np.random.default_rng(2)
    image = np.repeat(np.arange(8), [k % 4 + 1 for k in range(8)])
    n = len(image)
    emb = rng.normal(size=(n, 12)).astype(np.float32)
    paths = np.array([f"crops/{i:03d}.png" for i in range(n)], dtype=object)
    if HAS_PIL:
        for i in range(10):
            write_png(base / paths[i], (10 * i, 90, 160))
    cols = {"embeddings": emb, "labels": np.array([f"obj{i % 3}" for i in range(n)], dtype=object),
            "image_paths": paths, "image_id": np.array([f"img-{k}" for k in image], dtype=object),
            "ids": np.array([f"crop{i}" for i in range(n)], dtype=object)}
    report = tamis.scan(cols, device="cpu")
    assert report.summary["store"]["columns"].get("groups") == "image_id"
    if "group" not in report.samples.column_names:     # the samples carry the store's group column
        from dataclasses import replace

        import pyarrow as pa

        report = replace(report, samples=report.samples.append_column("group", pa.array(cols["image_id"])))
    coords = np.column_stack([np.arange(n) % 6, np.arange(n) // 6]).astype(np.float64)
    html = write_html_report(report, base / "report", coords=coords, image_root=base)
    return {"report": report, "html": html, "image": image, "cols": cols, "n": n}


def test_a_crop_shows_the_other_crops_of_its_image(browser, cropped):
    image, cols = cropped["image"], cropped["cols"]
    thumbs = set(range(10)) if HAS_PIL else set()
    data = _page_data(cropped["html"])
    assert data["group"] == {"caption": "image_id", "names": [f"img-{k}" for k in range(8)]}
    assert cropped["report"].tables["sweep_pairs"].num_rows == 0                       # no pair: no slider
    assert data["galleries"]["near_duplicate"]["kind"] == "samples"
    page = Page(browser, cropped["html"])
    try:
        for row in (0, 7, cropped["n"] - 1, 1):
            page.js(f"tamisReport.select({row})")
            fields = page.page.locator("#panel-fields")
            assert fields.locator("[data-field=group]").inner_text() == cols["image_id"][row]
            assert "image_id" in page.page.locator("#sample-panel").inner_text()
            siblings = [int(r) for r in np.flatnonzero(image == image[row]) if r != row]
            assert page.js("Array.from(document.querySelectorAll('#panel-siblings .sibling'), (e) => +e.dataset.row)") \
                == siblings
            for q in siblings:
                tile = page.page.locator(f"#panel-siblings .sibling[data-row='{q}']")
                assert cols["ids"][q] in tile.inner_text() and cols["labels"][q] in tile.inner_text()
                assert tile.locator("img.thumb").count() == (1 if q in thumbs else 0)
            if not siblings:
                assert "only row" in page.page.locator("#panel-siblings").inner_text()
        page.js("tamisReport.select(1)")
        page.page.locator("#panel-siblings .sibling[data-row='2']").click()    # a sibling opens its own panel
        assert page.page.locator("#panel-fields [data-field=row]").inner_text() == "2"
        if HAS_PIL:
            page.page.wait_for_function("Array.from(document.querySelectorAll('#panel-siblings img.thumb'))"
                                        ".every((i) => i.complete && i.naturalWidth > 0)")
        # gallery cards name the image
        tab = next(n for n in cropped["report"].issue_types if cropped["report"].counts()[n] > 0)
        page.page.click(f"#galleries .tabs button[data-issue='{tab}']")
        first = page.page.locator(f"#galleries .pane[data-issue='{tab}'] .card").first
        row = int(first.get_attribute("data-row"))
        assert first.locator(".group-of").inner_text() == f"image_id: {cols['image_id'][row]}"
        assert page.errors == []
    finally:
        page.context.close()


def test_no_group_column_no_sibling_list(page, scanned):
    page.js("tamisReport.select(1)")
    assert page.page.locator("#panel-siblings").count() == 0
    assert page.page.locator("#panel-fields [data-field=group]").count() == 0
    assert page.page.locator("#galleries .card .group-of").count() == 0


def test_thumbnails_of_a_flagged_crops_image_come_next(cropped):
    from dataclasses import replace

    import pyarrow as pa

    from tamis.report.thumbnails import _thumbnail_order

    image, n = cropped["image"], cropped["n"]
    samples = cropped["report"].samples
    flagged = np.isin(np.arange(n), [3, 11])              # one crop of image 2 (rows 3-5), one of image 5 (11-12)
    for name in samples.column_names:
        if name.startswith("is_") and name.endswith("_issue"):
            samples = samples.set_column(samples.column_names.index(name), name,
                                         pa.array(flagged & name.startswith("is_outlier")))
    order = _thumbnail_order(replace(cropped["report"], samples=samples))
    assert sorted(order) == list(range(n))
    assert sorted(order[:2]) == [3, 11] and order[2:5] == [4, 5, 12]     # then the other crops of their images
    assert order[5:] == [r for r in range(n) if r not in (3, 4, 5, 11, 12)]
    assert image[4] == image[5] == image[3] and image[12] == image[11]
