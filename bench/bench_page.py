"""How smooth report.html's map is with many points, 2-D and 3-D, in headless Chromium.

Writes a report of ``--n`` rows (random labels, a clustered 2-D and 3-D map, 1 % of the rows
flagged) with :func:`tamis.report.html.write_html_report`, opens it in Debian's Chromium through
Playwright, and prints: the page's load time, the full frame time at rest (every point drawn),
and, in 3-D, the time of a rotation step (re-projecting every point, then drawing) and how many
points a frame draws while moving (the page thins out frames slower than its 30 ms budget).

    python bench/bench_page.py --n 1000000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tamis  # noqa: E402
from tamis.report.html import write_html_report  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def build(n: int, dims: int, out: Path) -> Path:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 50, n)
    centres = rng.normal(scale=8.0, size=(50, dims))
    coords = centres[labels] + rng.normal(size=(n, dims))
    cols = {"labels": labels, "pred_probs": np.full((n, 50), 1.0 / 50, dtype=np.float32)}
    report = tamis.scan(cols, checks=["class_imbalance"], device="cpu")
    return write_html_report(report, out, coords=coords.astype(np.float32))


def measure(html: Path, dims: int) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        clock = time.perf_counter()
        page.goto(html.as_uri())
        page.wait_for_function("window.tamisReport !== undefined && tamisReport.drawnCount() > 0", timeout=300_000)
        loaded = time.perf_counter() - clock
        row = {"dims": dims, "points": page.evaluate("tamisReport.pointCount()"), "load_s": round(loaded, 2),
               "full_frame_ms": round(page.evaluate("tamisReport.frameMs()"), 1)}
        if dims == 3:
            steps = page.evaluate("""() => {
                const t0 = performance.now();
                for (let i = 0; i < 10; i++) tamisReport.rotate(0.05, 0.01);
                return (performance.now() - t0) / 10; }""")
            page.wait_for_timeout(500)
            row["rotate_and_redraw_ms"] = round(steps + page.evaluate("tamisReport.frameMs()"), 1)
            box = page.locator("#scatter").bounding_box()
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(x, y)
            page.mouse.down()
            clock = time.perf_counter()
            for step in range(20):
                page.mouse.move(x + 5 * step, y + 2 * step)
            row["drag_20_moves_s"] = round(time.perf_counter() - clock, 2)
            row["points_drawn_while_moving"] = page.evaluate("tamisReport.drawnCount()")
            page.mouse.up()
        browser.close()
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--out", type=Path, default=Path("/tmp/tamis-bench-page"))
    args = p.parse_args(argv)
    for dims in (2, 3):
        html = build(args.n, dims, args.out / f"d{dims}")
        print(json.dumps(measure(html, dims)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
