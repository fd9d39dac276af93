"""The shape of the package: no import circles, no import from a lower floor to a higher one,
views that never name a check, and a new check that reaches report.html through its declaration."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import tamis
from tamis.checks import REGISTRY
from tamis.checks.base import Check, CheckResult
from tamis.checks.views import Field, Groups, Pairs, Table

PACKAGE = Path(tamis.__file__).parent

#: floors, lowest first: a module may import its own floor or one below, never one above
FLOORS = [
    ("tamis._version", "tamis.errors", "tamis._optional"),
    ("tamis.config", "tamis.engine.backend", "tamis.kernels"),
    ("tamis.io",),
    ("tamis.engine",),
    ("tamis.checks",),
    ("tamis.report",),
    ("tamis.pipeline",),
    ("tamis.cli", "tamis.demo", "tamis.__main__", "tamis"),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every tamis module ``name`` imports, at the top or inside a function (a lazy import is an import)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in modules else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != name}


def _floor(name: str) -> int:
    best = None
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (level, len(prefix))
    assert best is not None, f"{name} has no floor in FLOORS; add its room there"
    return best[0]


def test_no_import_goes_up_a_floor():
    modules = _modules()
    upward = [f"{name} (floor {_floor(name)}) imports {dep} (floor {_floor(dep)})"
              for name, path in sorted(modules.items()) for dep in sorted(_imports(name, path, modules))
              if _floor(dep) > _floor(name)]
    assert upward == []


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every import circle a depth-first walk of ``graph`` closes, as ``a -> b -> a``."""
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    return cycles


def test_no_import_cycle():
    modules = _modules()
    assert _cycles({name: _imports(name, path, modules) for name, path in modules.items()}) == []


def test_the_walk_sees_lazy_imports_and_cycles(tmp_path):
    """The two tests above can fail: a function-level import is counted."""
    modules = {"tamis.report.model": tmp_path / "model.py", "tamis.report.folder": tmp_path / "folder.py"}
    modules["tamis.report.model"].write_text("def save():\n    from .folder import write_report\n")
    assert _imports("tamis.report.model", modules["tamis.report.model"], modules) == {"tamis.report.folder"}
    assert _floor("tamis.engine.search.ivf") == 3 and _floor("tamis.engine.backend") == 1
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_views_never_name_a_check():
    """report.html, the plots and the folder writer draw what checks declare, never a check by name."""
    room = PACKAGE / "report"
    texts = {p.name: p.read_text(encoding="utf-8") for p in room.rglob("*") if p.suffix in (".py", ".js", ".css")}
    names = set(REGISTRY)   # the checks, and the tables their views name
    for cls in REGISTRY.values():
        for view in (cls.gallery, *cls.panels):
            names.update(v for k, v in view.as_dict().items() if k in ("table", "facts") and v)
            slider = view.as_dict().get("slider")
            names.update([slider["table"]] if slider else [])     # the pairs a gallery's slider regroups
    names -= {"samples", "groups", "pairs", "crosstab", "histogram", "table"}   # the views' own kinds
    for cls in REGISTRY.values():   # the columns the views name
        for view in (cls.gallery, *cls.panels):
            spec = view.as_dict()
            names.update(f["column"] for f in list(spec.get("fields") or []) + [spec.get("field") or {}] if f)
            names.update(c[0] for c in list(spec.get("member_columns") or []) + list(spec.get("fact_columns") or []))
            names.update([spec["where"][0]] if spec.get("where") else [])
    names -= {"label", "split", "kind"}   # every report's own columns, and the views' kind key
    named = [(file, name) for file, text in texts.items() for name in sorted(names)
             if re.search(rf"[\"']{name}[\"']", text)]
    assert named == []
    by_literal = [(file, m.group(0)) for file, text in texts.items()
                  for m in re.finditer(r"tables(\.get\(|\[)\s*[\"'][^\"']+[\"']", text)]
    assert by_literal == [], "a view reads a table by name"


# ---------------------------------------------------------------------- a new check, declared once
class Clumps(Check):
    """Rows whose first embedding coordinate rounds to the same value as another row's (a toy)."""

    name = "clumps"
    requires = ("embeddings",)
    description = "rows that share a rounded first coordinate"
    gallery = Groups(table="clumps", facts="clump_sizes", fact_columns=(("size", "size", "number"),),
                     exclude="group")
    panels = (Table(title="Clump sizes", table="clump_sizes"),)

    def __init__(self):
        pass

    def _run(self, ctx) -> CheckResult:
        key = np.round(np.asarray(ctx.store.embeddings[:, 0], dtype=np.float64), 0)
        values, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
        flags = counts[inverse] >= 2
        rows = np.flatnonzero(flags)
        group = inverse[rows]
        table = pa.table({"group_id": pa.array(group, pa.int64()), "row": pa.array(rows, pa.int64())})
        sizes = pa.table({"group_id": pa.array(np.unique(group), pa.int64()),
                          "size": pa.array(counts[np.unique(group)], pa.int64())})
        scores = np.where(flags, 0.5, 1.0)
        return CheckResult(flags=flags, scores=scores, summary={"n": int(flags.sum())},
                           tables={"clumps": table, "clump_sizes": sizes})


class Tagged(Check):
    """Flags every third row; shows a per-sample column of its own in its cards."""

    name = "tagged"
    requires = ("embeddings",)
    description = "every third row"
    gallery = tamis.checks.views.Samples(fields=(Field("tag", "tag"),))

    def __init__(self):
        pass

    def _run(self, ctx) -> CheckResult:
        flags = np.arange(ctx.n) % 3 == 0
        return CheckResult(flags=flags, scores=np.where(flags, 0.0, 1.0),
                           columns={"tag": np.where(flags, "third", None).astype(object)})


class Twins(Check):
    """Rows i and i + 20 of the toy store are twins; each row has a camera of its own."""

    name = "twins"
    requires = ("embeddings",)
    description = "rows twenty apart"
    gallery = Pairs(table="twins", value="closeness", field=Field("camera", "camera"))

    def __init__(self):
        pass

    def _run(self, ctx) -> CheckResult:
        a = np.arange(0, ctx.n // 2)
        flags = np.zeros(ctx.n, dtype=bool)
        flags[a + ctx.n // 2] = True
        table = pa.table({"row_a": a, "row_b": a + ctx.n // 2, "closeness": np.linspace(0.5, 1.0, len(a))})
        cameras = np.array([f"cam{i % 3}" for i in range(ctx.n)], dtype=object)
        return CheckResult(flags=flags, scores=np.where(flags, 0.0, 1.0), tables={"twins": table},
                           columns={"camera": cameras})


@pytest.fixture()
def with_new_checks(monkeypatch):
    monkeypatch.setitem(REGISTRY, Clumps.name, Clumps)
    monkeypatch.setitem(REGISTRY, Tagged.name, Tagged)
    monkeypatch.setitem(REGISTRY, Twins.name, Twins)


def _page_data(html: Path) -> dict:
    text = html.read_text(encoding="utf-8")
    data = re.search(r'<script type="application/json" id="tamis-data">(.*?)</script>', text, re.S).group(1)
    return json.loads(data)


def test_a_new_check_reaches_the_report_through_its_declaration(with_new_checks, tmp_path):
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(40, 8)).astype(np.float32)
    emb[:, 0] = np.repeat(np.arange(10), 4) * 3.0          # ten clumps of four
    emb[36:, 0] = [100.0, 103.0, 106.0, 109.0]             # the last four are alone
    out = tmp_path / "report"
    report = tamis.scan({"embeddings": emb}, device="cpu", checks=["clumps", "tagged", "twins"], out=out)
    assert report.counts() == {"clumps": 36, "tagged": 14, "twins": 20}
    data = _page_data(out / "report.html")
    gallery = data["galleries"]["clumps"]
    assert gallery["kind"] == "groups" and gallery["exclude"] == "group"
    assert gallery["facts"]["0"] == [["size", "4"]]
    panel = next(p for p in data["panels"] if p["check"] == "clumps")
    assert panel["kind"] == "table" and panel["columns"] == ["group_id", "size"] and len(panel["rows"]) == 9
    assert data["fields"]["tag"]["caption"] == "tag"
    assert data["fields"]["camera"]["names"] == ["cam0", "cam1", "cam2"]
    twins = data["galleries"]["twins"]
    assert twins["kind"] == "pairs" and twins["n_total"] == 20 and twins["field"]["column"] == "camera"
    assert (out / "clumps.parquet").is_file() and (out / "clump_sizes.parquet").is_file()


def test_a_new_check_shows_in_the_browser(with_new_checks, tmp_path):
    from tests.test_html_report import Page, _browser_missing

    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    from tests.test_html_report import CHROMIUM, CHROMIUM_ARGS

    emb = np.random.default_rng(3).normal(size=(40, 8)).astype(np.float32)
    emb[:, 0] = np.repeat(np.arange(10), 4) * 3.0
    out = tmp_path / "report"
    tamis.scan({"embeddings": emb}, device="cpu", checks=["clumps", "tagged", "twins"], out=out)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = Page(browser, out / "report.html")
            groups = page.page.locator("#galleries .pane[data-issue='clumps'] .group")
            assert groups.count() == 10
            head = groups.first.locator(".group-head")
            assert "size: 4" in head.inner_text()
            head.locator("button.exclude").click()
            assert page.js("tamisReport.excluded()") == [0, 1, 2, 3]
            assert page.page.locator("#panel-clumps-clump_sizes tbody tr").count() == 10
            page.page.click("#galleries .tabs button[data-issue='tagged']")
            assert "tag: third" in page.page.locator("#galleries .pane[data-issue='tagged'] .card").first.inner_text()
            page.js("tamisReport.select(3)")
            assert page.page.locator("#panel-fields [data-field=tag]").inner_text() == "third"
            page.page.click("#galleries .tabs button[data-issue='twins']")
            first = page.page.locator("#galleries .pane[data-issue='twins'] .group").first
            assert "closeness 1.0000" in first.inner_text() and "cam1 \u2194 cam0" in first.inner_text()  # rows 19 and 39
            assert page.errors == []
        finally:
            browser.close()
