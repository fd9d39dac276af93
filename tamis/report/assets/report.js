/* tamis report: builds the page from the JSON in #tamis-data.
 *
 * Every value that comes from the data (labels, ids, paths, split names) is written with
 * textContent or as an attribute value, never parsed as HTML. The scatter draws into an
 * ImageData buffer (one Uint32 per pixel) and keeps a pick buffer of row numbers beside it,
 * so hovering and clicking cost one lookup whatever the number of points.
 */
(function () {
  "use strict";

  const D = JSON.parse(document.getElementById("tamis-data").textContent);

  // ------------------------------------------------------------------ decoding
  function bytes(s) {
    const bin = atob(s);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  const f32 = (s) => (s == null ? null : new Float32Array(bytes(s).buffer));
  const i32 = (s) => (s == null ? null : new Int32Array(bytes(s).buffer));
  const u32 = (s) => (s == null ? null : new Uint32Array(bytes(s).buffer));

  const N = D.meta.n_rows;
  const C = D.columns;
  const ids = C.id;
  const paths = C.path;
  const labelCode = i32(C.label);
  const splitCode = i32(C.split);
  const flags = u32(C.flags);
  // per-sample columns the checks' galleries show (label and split are C.label / C.split)
  const FIELDS = {};
  for (const col of Object.keys(D.fields || {})) {
    const f = D.fields[col];
    FIELDS[col] = { caption: f.caption, codes: i32(f.codes), names: f.names };
  }
  const LABELS = D.labels;
  const SPLITS = D.splits;
  const ISSUES = D.issue_types;
  const scores = {};
  for (const k of Object.keys(C.scores)) scores[k] = f32(C.scores[k]);
  // the map: coords holds DIMS values per row (2 or 3); P the 2-D view of it (the rotated 3-D map), Z its depth
  const DIMS = D.coords && D.meta.projection && D.meta.projection.dims === 3 ? 3 : 2;
  const coords = D.coords ? f32(D.coords) : null;
  const P = coords && DIMS === 3 ? new Float32Array(2 * N) : coords;
  const Z = coords && DIMS === 3 ? new Float32Array(N) : null;
  const nnK = D.neighbors ? D.neighbors.k : 0;
  const nnRows = D.neighbors ? i32(D.neighbors.rows) : null;
  const hasThumb = new Uint8Array(N);
  for (const r of D.thumbs) hasThumb[r] = 1;
  // the group column (the image an object crop comes from): codes into D.group.names, -1 = none;
  // groupRows[groupStart[g] .. groupStart[g + 1]) are the rows of group g, ascending
  const groupCode = C.group ? i32(C.group) : null;
  const GROUP = D.group || { caption: "group", names: [] };
  let groupStart = null, groupRows = null;
  if (groupCode) {
    groupStart = new Int32Array(GROUP.names.length + 1);
    for (let r = 0; r < N; r++) if (groupCode[r] >= 0) groupStart[groupCode[r] + 1]++;
    for (let g = 0; g < GROUP.names.length; g++) groupStart[g + 1] += groupStart[g];
    groupRows = new Int32Array(groupStart[GROUP.names.length]);
    const fill = groupStart.slice(0, GROUP.names.length);
    for (let r = 0; r < N; r++) if (groupCode[r] >= 0) groupRows[fill[groupCode[r]]++] = r;
  }

  const labelOf = (r) => (labelCode[r] >= 0 ? LABELS[labelCode[r]] : "(no label)");
  const splitOf = (r) => (splitCode[r] >= 0 ? SPLITS[splitCode[r]] : "");
  const idOf = (r) => (ids[r] == null ? String(r) : ids[r]);
  const groupOf = (r) => (groupCode && groupCode[r] >= 0 ? GROUP.names[groupCode[r]] : null);
  // the value of a declared field for row r, or null
  function fieldOf(column, r) {
    if (column === "label") return labelCode[r] >= 0 ? LABELS[labelCode[r]] : null;
    if (column === "split") return splitCode[r] >= 0 ? SPLITS[splitCode[r]] : null;
    const f = FIELDS[column];
    return f && f.codes[r] >= 0 ? f.names[f.codes[r]] : null;
  }
  const bitOf = (name) => (1 << ISSUES.indexOf(name)) >>> 0;
  const fmt = (x, d) => (x == null || Number.isNaN(x) ? "—" : Number(x).toFixed(d));
  const fmtInt = (x) => Number(x).toLocaleString("en-US");
  const thumbSrc = (r) => "thumbs/" + (r | 0) + ".jpg";

  // ------------------------------------------------------------------ DOM helper
  function h(tag, props, ...kids) {
    const e = document.createElement(tag);
    if (props) {
      for (const k of Object.keys(props)) {
        const v = props[k];
        if (v == null) continue;
        if (k === "class") e.className = v;
        else if (k === "text") e.textContent = v;
        else if (k === "style") e.style.cssText = v;  // CSSOM: allowed by the page's style-src hash policy
        else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
        else e.setAttribute(k, v);
      }
    }
    for (const c of kids) if (c != null) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  }

  // ------------------------------------------------------------------ colours
  const TAB20 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
    "#c7c7c7", "#dbdb8d", "#9edae5"];
  const ISSUE_COLORS = ["#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#1f77b4",
    "#2ca02c", "#7f7f7f"];
  const CLEAN = "#c4c9d4";
  function hexRgb(hex) { const v = parseInt(hex.slice(1), 16); return [(v >> 16) & 255, (v >> 8) & 255, v & 255]; }
  function hslRgb(hh, s, l) {
    const a = s * Math.min(l, 1 - l);
    const f = (n) => { const k = (n + hh / 30) % 12; return Math.round(255 * (l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1)))); };
    return [f(0), f(8), f(4)];
  }
  const pack = (rgb) => ((255 << 24) | (rgb[2] << 16) | (rgb[1] << 8) | rgb[0]) >>> 0;
  const css = (rgb) => "rgb(" + rgb[0] + "," + rgb[1] + "," + rgb[2] + ")";
  function labelRgb(code) {
    if (code < 0) return hexRgb(CLEAN);
    if (code < TAB20.length) return hexRgb(TAB20[code]);
    return hslRgb((code * 137.508) % 360, 0.55, 0.5);
  }
  const issueRgb = (i) => (i < ISSUE_COLORS.length ? hexRgb(ISSUE_COLORS[i]) : hslRgb((i * 97) % 360, 0.7, 0.45));

  // ------------------------------------------------------------------ exclusion selection
  const STORE_KEY = "tamis-exclude:" + D.meta.key;
  const excluded = new Set(loadSelection());
  const exclButtons = new Set();
  function loadSelection() {
    try {
      const v = JSON.parse(window.localStorage.getItem(STORE_KEY) || "[]");
      return Array.isArray(v) ? v.filter((r) => Number.isInteger(r) && r >= 0 && r < N) : [];
    } catch (e) { return []; }
  }
  function saveSelection() {
    try { window.localStorage.setItem(STORE_KEY, JSON.stringify(Array.from(excluded))); } catch (e) { /* private mode */ }
  }
  function setExcluded(rows, on) {
    for (const r of rows) { if (on) excluded.add(r); else excluded.delete(r); }
    saveSelection();
    refreshSelection();
  }
  function excludeButton(rows, label, card) {
    const b = h("button", { class: "exclude", type: "button" });
    b._rows = rows; b._label = label || "Exclude"; b._card = card || null;
    b.addEventListener("click", (ev) => {
      ev.stopPropagation();
      setExcluded(rows, !rows.every((r) => excluded.has(r)));
    });
    exclButtons.add(b);
    paintButton(b);
    return b;
  }
  function paintButton(b) {
    const on = b._rows.length > 0 && b._rows.every((r) => excluded.has(r));
    b.classList.toggle("on", on);
    b.textContent = on ? "Excluded \u2713" : b._label;
    b.title = on ? "click to keep again" : "add to exclude.txt";
    if (b._card) b._card.classList.toggle("excluded", on);
  }
  function refreshSelection() {
    selCount.textContent = "Excluded: " + fmtInt(excluded.size);
    for (const b of exclButtons) {
      if (!b.isConnected) { exclButtons.delete(b); continue; }
      paintButton(b);
    }
  }
  function excludeLines() {
    return Array.from(excluded).sort((a, b) => a - b).map((r) => (paths[r] != null ? paths[r] : idOf(r)));
  }
  function downloadExclude() {
    const text = excludeLines().map((l) => l + "\n").join("");
    const url = URL.createObjectURL(new Blob([text], { type: "text/plain" }));
    const a = h("a", { href: url, download: "exclude.txt" });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 2000);
  }

  // ------------------------------------------------------------------ page frame
  const app = document.getElementById("app");
  const selCount = h("span", { class: "selection", id: "selection-count" });
  const header = h("header", { class: "top" },
    h("h1", { text: "tamis report" }),
    h("span", { class: "source", title: D.meta.source, text: D.meta.source }),
    h("span", { class: "source", text: fmtInt(N) + " rows \u00b7 " + (D.meta.created_at || "") }),
    h("span", { class: "spacer" }),
    selCount,
    h("button", { type: "button", id: "download-exclude", class: "primary", onclick: downloadExclude }, "Download exclude.txt"),
    h("button", { type: "button", id: "add-tamis-exclusions", title: "add every row tamis' keep policies exclude",
      onclick: () => setExcluded(D.exclusions, true) }, "Add tamis' exclusions (" + fmtInt(D.exclusions.length) + ")"),
    h("button", { type: "button", id: "clear-exclude", onclick: () => setExcluded(Array.from(excluded), false) }, "Clear"));
  const main = h("main");
  app.append(header, main);

  // ------------------------------------------------------------------ summary
  const countRows = {}, countSpans = {};   // where each issue's count is shown: the card, the tabs, the map's toggles
  function countCells(count) {
    const frac = N ? count / N : 0;
    return [h("td", { class: "num", text: fmtInt(count) }),
      h("td", null, h("span", { class: "bar bad", style: "width:" + Math.max(count ? 2 : 0, Math.round(frac * 160)) + "px" }),
        (100 * frac).toFixed(1) + "%")];
  }
  const countSpan = (name) => {
    const count = D.summary.issues[name];
    const span = h("span", { class: "count", text: count != null ? " (" + fmtInt(count) + ")" : "" });
    (countSpans[name] = countSpans[name] || []).push(span);
    return span;
  };
  function setIssueCount(name, count) {   // a gallery's slider regrouped the issue's rows
    D.summary.issues[name] = count;
    const tr = countRows[name];
    if (tr) tr.replaceChildren(tr.firstChild, ...countCells(count));
    for (const span of countSpans[name] || []) span.textContent = " (" + fmtInt(count) + ")";
  }
  function issuesCard() {
    const tbody = h("tbody");
    const entries = Object.entries(D.summary.issues);
    for (const [name, count] of entries) {
      const tr = h("tr", { "data-issue": name }, h("td", { text: name }), ...countCells(count));
      countRows[name] = tr;
      tbody.append(tr);
    }
    const card = h("div", null, h("h2", { text: "Issues" }),
      h("table", { class: "data", id: "issue-counts" },
        h("thead", null, h("tr", null, h("th", { text: "issue" }), h("th", { class: "num", text: "rows" }), h("th", { text: "share" }))),
        tbody));
    card.append(h("p", { class: "note", text: fmtInt(D.summary.n_excluded) + " rows on tamis' exclusion list." }));
    for (const s of D.summary.checks_skipped) card.append(h("p", { class: "note", text: "skipped " + s.check + ": " + s.reason }));
    return card;
  }

  // ------------------------------------------------------------------ declared panels
  const panelIds = new Set();
  function panelId(p) {   // unique even when one check declares two panels of one table
    const base = "panel-" + p.check + "-" + (p.table || p.key);
    let id = base;
    for (let i = 2; panelIds.has(id) && id !== p._id; i++) id = base + "-" + i;
    panelIds.add(id);
    p._id = id;
    return id;
  }

  function crosstabCard(p) {
    const card = h("div", null, h("h2", { text: p.title }));
    const cc = p.rows;
    if (!cc.length) { card.append(h("p", { class: "muted", text: "No rows." })); return card; }
    const colNames = [];
    for (const r of cc) if (!colNames.includes(r[p.column])) colNames.push(r[p.column]);
    colNames.sort((a, b) => (a == null ? -1 : b == null ? 1 : String(a).localeCompare(String(b))));
    const byRow = new Map();
    for (const r of cc) {
      if (!byRow.has(r[p.row])) byRow.set(r[p.row], {});
      byRow.get(r[p.row])[r[p.column] == null ? "" : "s:" + r[p.column]] = r;
    }
    const whole = (l) => { const cells = byRow.get(l); const c = cells[""]; if (c) return c[p.value] || 0;
      let t = 0; for (const k of Object.keys(cells)) t += cells[k][p.value] || 0; return t; };
    const rowKeys = Array.from(byRow.keys()).sort((a, b) => whole(b) - whole(a));
    const headRow = h("tr", null, h("th", { text: p.row }));
    for (const s of colNames) headRow.append(h("th", { class: "num", text: s == null ? "all" : s }));
    const tbody = h("tbody");
    const table = h("table", { class: "data crosstab", id: panelId(p) }, h("thead", null, headRow), tbody);
    let shown = 0;
    const more = h("button", { type: "button", class: "more" });
    function next() {
      const end = Math.min(rowKeys.length, shown + 50);
      for (; shown < end; shown++) {
        const l = rowKeys[shown];
        const cells = byRow.get(l);
        const tr = h("tr", null, h("td", { text: l == null ? "(null)" : l }));
        for (const s of colNames) {
          const c = cells[s == null ? "" : "s:" + s];
          const td = h("td", { class: "num" });
          if (c) {
            td.append(fmtInt(c[p.value]) + (p.share ? " (" + (100 * (c[p.share] || 0)).toFixed(1) + "%)" : ""));
            if (p.mark && c[p.mark]) { td.classList.add("rare"); td.title = p.mark; }
          }
          tr.append(td);
        }
        tbody.append(tr);
      }
      more.textContent = "Show all " + fmtInt(rowKeys.length) + " rows";
      more.style.display = shown < rowKeys.length ? "" : "none";
    }
    more.addEventListener("click", () => { while (shown < rowKeys.length) next(); });
    next();
    card.append(h("div", { class: "scroll" }, table), more);
    return card;
  }

  function histogramCard(p) {
    const card = h("div", null, h("h2", { text: p.title }));
    const canvas = h("canvas", { class: "hist", id: panelId(p) });
    card.append(canvas, h("p", { class: "note", text: p.note + (p.marker_value != null ? " (" + p.marker + " " + fmt(p.marker_value, 3) + ")" : "") }));
    const hist = { edges: p.edges, counts: p.counts, threshold: p.marker_value, label: p.marker };
    new ResizeObserver(() => drawHistogram(canvas, hist)).observe(canvas);
    markers.push({ check: p.check, key: p.marker, value: () => hist.threshold,
      move: (v) => { hist.threshold = v; drawHistogram(canvas, hist); } });
    return card;
  }

  function tableCard(p) {
    const card = h("div", null, h("h2", { text: p.title }));
    const headRow = h("tr");
    for (const c of p.columns) headRow.append(h("th", { text: c }));
    const tbody = h("tbody");
    for (const row of p.rows) {
      const tr = h("tr");
      row.forEach((v) => tr.append(h("td", { class: typeof v === "number" ? "num" : null, text: v == null ? "\u2014" : String(v) })));
      tbody.append(tr);
    }
    card.append(h("div", { class: "scroll" }, h("table", { class: "data", id: panelId(p) }, h("thead", null, headRow), tbody)));
    if (p.n_total > p.rows.length) card.append(h("p", { class: "note", text: "The first " + fmtInt(p.rows.length) + " of " + fmtInt(p.n_total) + " rows." }));
    return card;
  }

  const PANELS = { crosstab: crosstabCard, histogram: histogramCard, table: tableCard };
  const markers = [];   // histogram lines at a check's summary value (a slider moves its own)

  function drawHistogram(canvas, hist) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, hh = canvas.clientHeight;
    if (!w || !hh) return;
    canvas.width = Math.round(w * dpr); canvas.height = Math.round(hh * dpr);
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, hh);
    const L = 46, R = 10, T = 10, B = 26;
    const e = hist.edges, c = hist.counts;
    const x0 = e[0], x1 = e[e.length - 1];
    const ymax = Math.log10(1 + Math.max(1, ...c));
    const X = (v) => L + ((v - x0) / (x1 - x0 || 1)) * (w - L - R);
    const Y = (v) => hh - B - (Math.log10(1 + v) / ymax) * (hh - T - B);
    g.fillStyle = "#2f6fdf";
    for (let i = 0; i < c.length; i++) {
      if (!c[i]) continue;
      const xa = X(e[i]), xb = X(e[i + 1]);
      g.fillRect(xa + 0.5, Y(c[i]), Math.max(1, xb - xa - 1), hh - B - Y(c[i]));
    }
    g.strokeStyle = "#667085"; g.fillStyle = "#667085"; g.font = "11px system-ui, sans-serif"; g.lineWidth = 1;
    g.beginPath(); g.moveTo(L, hh - B + 0.5); g.lineTo(w - R, hh - B + 0.5); g.moveTo(L - 0.5, T); g.lineTo(L - 0.5, hh - B); g.stroke();
    const span = x1 - x0, step = span > 0.06 ? 0.02 : span > 0.03 ? 0.01 : 0.005;
    g.textAlign = "center";
    for (let v = Math.ceil(x0 / step) * step; v <= x1 + 1e-9; v += step) g.fillText(v.toFixed(3), X(v), hh - 8);
    g.textAlign = "right";
    for (let p = 0; Math.pow(10, p) <= Math.max(...c); p++) g.fillText(fmtInt(Math.pow(10, p)), L - 5, Y(Math.pow(10, p)) + 4);
    if (hist.threshold != null) {
      const xt = X(hist.threshold);
      g.strokeStyle = "#c8372d"; g.setLineDash([4, 3]); g.beginPath(); g.moveTo(xt, T); g.lineTo(xt, hh - B); g.stroke(); g.setLineDash([]);
      g.fillStyle = "#c8372d"; g.textAlign = xt > w / 2 ? "right" : "left";
      g.fillText((hist.label || "") + " " + fmt(hist.threshold, 3), xt + (xt > w / 2 ? -4 : 4), T + 10);
    }
  }

  const summaryGrid = h("div", { class: "grid" }, issuesCard());
  for (const p of D.panels) if (PANELS[p.kind]) summaryGrid.append(PANELS[p.kind](p));
  main.append(h("section", { id: "summary" }, summaryGrid));

  // ------------------------------------------------------------------ scatter
  const MAX_DRAW = 3000000;          // more visible points than this: draw a regular subset, and say so
  const FRAME_BUDGET_MS = 30;        // while panning/zooming, thin out when a full frame takes longer
  const S = {
    W: 0, H: 0, dpr: 1, scale: 1, cx: 0, cy: 0, img: null, buf: null, pick: null, colors: new Uint32Array(N),
    colorBy: "label", enabled: 0xffffffff >>> 0, showClean: true, selected: -1, hover: -1,
    interacting: false, lastFullMs: 0, drawn: 0, stride: 1, pending: false, pendingFull: false, idleTimer: 0,
    bounds: null, n: 0, clean: null, flagged: null,
    yaw: 0.6, pitch: 0.35, center: [0, 0, 0], radius: 1, zbuf: null,
  };
  const scatterSection = h("section", { id: "projection" });
  main.append(scatterSection);
  const wrap = h("div", { class: "scatter-wrap" });
  const canvas = h("canvas", { id: "scatter", "aria-label": "projection of the samples" });
  const tooltip = h("div", { class: "tooltip", id: "scatter-tooltip" });
  const statusEl = h("span", { class: "muted", id: "scatter-status" });
  const legend = h("div", { class: "legend", id: "scatter-legend" });
  const g2 = canvas.getContext("2d");

  function buildScatter() {
    const proj = D.meta.projection || {};
    const title = "Projection" + (proj.method ? " (" + proj.method.toUpperCase() + ")" : "");
    scatterSection.append(h("h2", { text: title }));
    if (!coords) {
      scatterSection.append(h("p", { class: "muted", text: "No projection in this report (scan with --projection umap, tsne or pca)." }));
      return;
    }
    if (proj.description) scatterSection.append(h("p", { class: "muted", id: "projection-about", text: proj.description }));
    if (proj.fallback_reason) scatterSection.append(h("p", { class: "note warn", text: proj.method.toUpperCase() + " was used: " + proj.fallback_reason }));
    // rows with a point, flagged ones drawn last so issues stay visible
    let nClean = 0, nFlag = 0;
    const lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
    for (let r = 0; r < N; r++) {
      if (!hasPoint(r)) continue;
      for (let d = 0; d < DIMS; d++) {
        const v = coords[DIMS * r + d];
        if (v < lo[d]) lo[d] = v; if (v > hi[d]) hi[d] = v;
      }
      if (flags[r]) nFlag++; else nClean++;
    }
    sortPoints();
    S.n = nClean + nFlag;
    if (!S.n) { scatterSection.append(h("p", { class: "muted", text: "No row has a point on the map." })); return; }
    if (DIMS === 3) {
      // rotate about the box's centre; the view fits the sphere around it, so no angle crops the map
      S.center = [0, 1, 2].map((d) => (lo[d] + hi[d]) / 2);
      let r2 = 0;
      for (let r = 0; r < N; r++) {
        if (!hasPoint(r)) continue;
        let q = 0;
        for (let d = 0; d < 3; d++) { const v = coords[3 * r + d] - S.center[d]; q += v * v; }
        if (q > r2) r2 = q;
      }
      S.radius = Math.sqrt(r2) || 1;
      S.bounds = [-S.radius, S.radius, -S.radius, S.radius];
      rotateView();
    } else {
      S.bounds = [lo[0], hi[0], lo[1], hi[1]];
    }

    const colorSel = h("select", { id: "color-by" },
      h("option", { value: "label" }, "label"), h("option", { value: "issue" }, "issue type"));
    colorSel.addEventListener("change", () => { S.colorBy = colorSel.value; recolor(); requestDraw(true); });
    const tools = h("div", { class: "scatter-tools" }, h("label", null, "Colour by ", colorSel));
    const cleanBox = h("input", { type: "checkbox", id: "toggle-clean" });
    cleanBox.checked = true;
    cleanBox.addEventListener("change", () => { S.showClean = cleanBox.checked; requestDraw(true); });
    tools.append(h("label", { title: "rows no check flagged" }, cleanBox, h("span", { class: "swatch", style: "background:" + CLEAN }), "no issue"));
    ISSUES.forEach((name, i) => {
      const box = h("input", { type: "checkbox", id: "toggle-" + i, "data-issue": name });
      box.checked = true;
      box.addEventListener("change", () => {
        S.enabled = box.checked ? (S.enabled | bitOf(name)) >>> 0 : (S.enabled & ~bitOf(name)) >>> 0;
        requestDraw(true);
      });
      tools.append(h("label", null, box, h("span", { class: "swatch", style: "background:" + css(issueRgb(i)) }),
        name, countSpan(name)));
    });
    tools.append(h("button", { type: "button", id: "reset-view", onclick: () => { fitView(); requestDraw(true); } }, "Reset view"), statusEl);
    scatterSection.append(tools);
    wrap.append(canvas, tooltip);
    scatterSection.append(wrap, legend,
      h("p", { class: "note", id: "scatter-help", text: DIMS === 3
        ? "3-D map: drag to rotate, Shift+drag to pan, wheel to zoom, click a point for its details. Nearer points hide farther ones; rows flagged by a check are drawn on top."
        : "Drag to pan, wheel to zoom, click a point for its details. Rows flagged by a check are drawn on top." }));
    recolor();
    new ResizeObserver(resize).observe(wrap);
    canvas.addEventListener("pointerdown", onDown);
    canvas.addEventListener("pointermove", onMove);
    canvas.addEventListener("pointerup", onUp);
    canvas.addEventListener("pointerleave", () => { if (!S.drag) setHover(-1, 0, 0); });
    canvas.addEventListener("wheel", onWheel, { passive: false });
  }

  // rows with a point, flagged ones apart: drawn last, so issues stay visible
  function sortPoints() {
    let nClean = 0, nFlag = 0;
    for (let r = 0; r < N; r++) if (hasPoint(r)) { if (flags[r]) nFlag++; else nClean++; }
    S.clean = new Int32Array(nClean); S.flagged = new Int32Array(nFlag);
    let a = 0, b = 0;
    for (let r = 0; r < N; r++) {
      if (!hasPoint(r)) continue;
      if (flags[r]) S.flagged[b++] = r; else S.clean[a++] = r;
    }
  }
  // the rows of issue ``name`` are now ``rows`` (a gallery's slider regrouped them): flags, colours, map
  function setIssueRows(name, rows) {
    const bit = bitOf(name), off = ~bit;
    for (let r = 0; r < N; r++) flags[r] &= off;
    for (let i = 0; i < rows.length; i++) flags[rows[i]] |= bit;
    setIssueCount(name, rows.length);
    if (!coords || !S.n) return;
    sortPoints();
    recolor();
    requestDraw(true);
    redrawOverlay();
  }

  function hasPoint(r) {
    for (let d = 0; d < DIMS; d++) { const v = coords[DIMS * r + d]; if (!(v === v)) return false; }
    return true;
  }

  // 3-D: P (screen-plane x, y) and Z (depth, larger = nearer) of every row for the current yaw
  // (about the vertical axis) and pitch (about the horizontal one); an orthographic view
  function rotateView() {
    const cy = Math.cos(S.yaw), sy = Math.sin(S.yaw), cp = Math.cos(S.pitch), sp = Math.sin(S.pitch);
    const [c0, c1, c2] = S.center;
    for (let r = 0; r < N; r++) {
      const x = coords[3 * r] - c0, y = coords[3 * r + 1] - c1, z = coords[3 * r + 2] - c2;
      const x1 = cy * x + sy * z, z1 = -sy * x + cy * z;
      P[2 * r] = x1;
      P[2 * r + 1] = cp * y - sp * z1;
      Z[r] = sp * y + cp * z1;
    }
  }
  function rotate(dYaw, dPitch) {
    S.yaw += dYaw;
    S.pitch = Math.max(-1.55, Math.min(1.55, S.pitch + dPitch));
    rotateView();
  }

  function recolor() {
    const cols = S.colors;
    legend.replaceChildren();
    if (S.colorBy === "label") {
      const lut = LABELS.map((_, c) => pack(labelRgb(c)));
      const none = pack(hexRgb(CLEAN));
      for (let r = 0; r < N; r++) cols[r] = labelCode[r] >= 0 ? lut[labelCode[r]] : none;
      const counts = new Array(LABELS.length).fill(0);
      for (let r = 0; r < N; r++) if (labelCode[r] >= 0) counts[labelCode[r]]++;
      const order = counts.map((c, i) => i).filter((i) => counts[i] > 0).sort((p, q) => counts[q] - counts[p]);
      for (const c of order.slice(0, 30)) {
        legend.append(h("span", { title: LABELS[c] }, h("span", { class: "swatch", style: "background:" + css(labelRgb(c)) }), LABELS[c]));
      }
      if (order.length > 30) legend.append(h("span", { class: "muted", text: "+ " + (order.length - 30) + " more labels" }));
    } else {
      const lut = ISSUES.map((_, i) => pack(issueRgb(i)));
      const clean = pack(hexRgb(CLEAN));
      for (let r = 0; r < N; r++) {
        const f = flags[r];
        cols[r] = f ? lut[31 - Math.clz32(f & -f)] : clean;
      }
      legend.append(h("span", { class: "muted", text: "A row with several issues takes the colour of the first one listed." }));
    }
  }

  function fitView() {
    const [x0, x1, y0, y1] = S.bounds;
    const sx = x1 - x0 || 1, sy = y1 - y0 || 1;
    S.scale = Math.min(S.W / sx, S.H / sy) * 0.92;
    S.cx = (x0 + x1) / 2; S.cy = (y0 + y1) / 2;
  }

  function resize() {
    const dpr = Math.min(2, window.devicePixelRatio || 1);
    const W = Math.max(1, Math.round(wrap.clientWidth * dpr)), H = Math.max(1, Math.round(wrap.clientHeight * dpr));
    if (W === S.W && H === S.H && dpr === S.dpr) return;
    const first = !S.img;
    if (!first) S.scale *= dpr / S.dpr;
    S.W = W; S.H = H; S.dpr = dpr;
    canvas.width = W; canvas.height = H;
    S.img = g2.createImageData(W, H);
    S.buf = new Uint32Array(S.img.data.buffer);
    S.pick = new Int32Array(W * H);
    if (DIMS === 3) S.zbuf = new Float32Array(W * H);
    if (first) fitView();
    draw(true);
  }

  function pointSize() {
    const base = S.n <= 10000 ? 5 : S.n <= 100000 ? 3 : 2;
    return Math.max(1, Math.round(base * S.dpr));
  }

  function requestDraw(full) {
    S.pendingFull = S.pendingFull || full;
    if (S.pending) return;
    S.pending = true;
    requestAnimationFrame(() => { S.pending = false; const f = S.pendingFull; S.pendingFull = false; draw(f); });
  }

  function draw(full) {
    if (!S.img) return;
    const t0 = performance.now();
    const W = S.W, H = S.H, buf = S.buf, pick = S.pick, cols = S.colors;
    buf.fill(0xffffffff);
    pick.fill(-1);
    const zbuf = S.zbuf, flagLift = 4 * S.radius + 1;
    if (zbuf) zbuf.fill(-Infinity);
    const visible = S.n;
    let stride = Math.max(1, Math.ceil(visible / MAX_DRAW));
    if (!full && S.lastFullMs > FRAME_BUDGET_MS) stride = Math.max(stride, Math.ceil(S.lastFullMs / FRAME_BUDGET_MS));
    const sz = pointSize(), half = sz >> 1, sc = S.scale, cx = S.cx, cy = S.cy, W2 = W / 2, H2 = H / 2;
    const enabled = S.enabled | 0, showClean = S.showClean;
    let drawn = 0;
    for (const list of [S.clean, S.flagged]) {
      for (let j = 0; j < list.length; j += stride) {
        const r = list[j];
        const f = flags[r] | 0;
        if (f === 0 ? !showClean : (f & enabled) === 0) continue;
        const x0 = Math.floor((P[2 * r] - cx) * sc + W2) - half;
        const y0 = Math.floor(H2 - (P[2 * r + 1] - cy) * sc) - half;
        if (x0 >= W || y0 >= H || x0 + sz <= 0 || y0 + sz <= 0) continue;
        const c = cols[r];
        const xa = Math.max(0, x0), xb = Math.min(W, x0 + sz), ya = Math.max(0, y0), yb = Math.min(H, y0 + sz);
        if (zbuf) {
          // flagged rows stay on top: depths lie in [-radius, radius], so an offset of 4 radius + 1 puts
          // every flagged row in front of every clean one and keeps the nearest first among each
          const depth = Z[r] + (f === 0 ? 0 : flagLift);
          for (let y = ya; y < yb; y++) {
            const o = y * W;
            for (let x = xa; x < xb; x++) if (depth >= zbuf[o + x]) { zbuf[o + x] = depth; buf[o + x] = c; pick[o + x] = r; }
          }
        } else {
          for (let y = ya; y < yb; y++) {
            const o = y * W;
            for (let x = xa; x < xb; x++) { buf[o + x] = c; pick[o + x] = r; }
          }
        }
        drawn++;
      }
    }
    g2.putImageData(S.img, 0, 0);
    drawOverlay();
    const ms = performance.now() - t0;
    if (stride === 1 || full) { S.lastFullMs = ms; }
    S.drawn = drawn; S.stride = stride;
    let text = fmtInt(S.n) + " points";
    if (stride > 1) text += " \u00b7 showing 1 in " + stride + (full ? " (too many to draw each)" : " while moving");
    statusEl.textContent = text;
  }

  function toScreen(r) {
    return [(P[2 * r] - S.cx) * S.scale + S.W / 2, S.H / 2 - (P[2 * r + 1] - S.cy) * S.scale];
  }
  function ring(r, color, radius, width) {
    if (r < 0 || !hasPoint(r)) return;
    const [x, y] = toScreen(r);
    g2.beginPath(); g2.arc(x, y, radius * S.dpr, 0, 2 * Math.PI);
    g2.lineWidth = width * S.dpr; g2.strokeStyle = color; g2.stroke();
  }
  function drawOverlay() {
    if (S.selected >= 0 && nnRows) {
      for (let j = 0; j < nnK; j++) { const q = nnRows[S.selected * nnK + j]; if (q >= 0) ring(q, "#ff7f0e", 5, 1.5); }
    }
    ring(S.selected, "#111827", 8, 2.5);
    ring(S.hover, "#2f6fdf", 6, 1.5);
  }
  function redrawOverlay() { if (S.img) { g2.putImageData(S.img, 0, 0); drawOverlay(); } }

  function canvasPoint(ev) {
    const rect = canvas.getBoundingClientRect();
    return [(ev.clientX - rect.left) * (S.W / rect.width), (ev.clientY - rect.top) * (S.H / rect.height), ev.clientX - rect.left, ev.clientY - rect.top];
  }
  function pickAt(px, py) {
    const R = Math.round(4 * S.dpr);
    const x0 = Math.round(px), y0 = Math.round(py);
    let best = -1, bestD = Infinity;
    for (let dy = -R; dy <= R; dy++) {
      const y = y0 + dy;
      if (y < 0 || y >= S.H) continue;
      for (let dx = -R; dx <= R; dx++) {
        const x = x0 + dx;
        if (x < 0 || x >= S.W) continue;
        const r = S.pick[y * S.W + x];
        if (r >= 0) { const d = dx * dx + dy * dy; if (d < bestD) { bestD = d; best = r; } }
      }
    }
    return best;
  }
  function setHover(r, mx, my) {
    if (r !== S.hover) { S.hover = r; redrawOverlay(); }
    if (r < 0) { tooltip.style.display = "none"; return; }
    tooltip.textContent = labelOf(r) + "\n" + idOf(r);
    tooltip.style.display = "block";
    tooltip.style.left = Math.min(mx + 14, wrap.clientWidth - 160) + "px";
    tooltip.style.top = (my + 14) + "px";
  }
  function onDown(ev) {
    canvas.setPointerCapture(ev.pointerId);
    S.drag = { x: ev.clientX, y: ev.clientY, moved: false, pan: DIMS !== 3 || ev.shiftKey };
  }
  function onMove(ev) {
    const [px, py, mx, my] = canvasPoint(ev);
    if (S.drag) {
      const dx = ev.clientX - S.drag.x, dy = ev.clientY - S.drag.y;
      if (!S.drag.moved && dx * dx + dy * dy < 9) return;
      S.drag.moved = true;
      S.drag.x = ev.clientX; S.drag.y = ev.clientY;
      if (S.drag.pan) {
        const k = S.W / canvas.getBoundingClientRect().width;
        S.cx -= (dx * k) / S.scale; S.cy += (dy * k) / S.scale;
      } else {
        rotate(dx * 0.008, dy * 0.008);
      }
      setHover(-1, 0, 0);
      interact();
      return;
    }
    setHover(pickAt(px, py), mx, my);
  }
  function onUp(ev) {
    const drag = S.drag; S.drag = null;
    if (drag && !drag.moved) {
      const [px, py] = canvasPoint(ev);
      const r = pickAt(px, py);
      if (r >= 0) select(r);
    }
  }
  function onWheel(ev) {
    ev.preventDefault();
    const [px, py] = canvasPoint(ev);
    const dataX = S.cx + (px - S.W / 2) / S.scale, dataY = S.cy - (py - S.H / 2) / S.scale;
    S.scale *= Math.exp(-ev.deltaY * (ev.deltaMode === 1 ? 0.05 : 0.0015));
    S.cx = dataX - (px - S.W / 2) / S.scale; S.cy = dataY + (py - S.H / 2) / S.scale;
    interact();
  }
  function interact() {
    S.interacting = true;
    requestDraw(false);
    clearTimeout(S.idleTimer);
    S.idleTimer = setTimeout(() => { S.interacting = false; requestDraw(true); }, 150);
  }

  buildScatter();

  // ------------------------------------------------------------------ side panel
  const panel = h("aside", { class: "panel", id: "sample-panel", "aria-live": "polite" });
  document.body.append(panel);
  function closePanel() { panel.classList.remove("open"); document.body.classList.remove("panel-open"); S.selected = -1; redrawOverlay(); }
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") closePanel(); });

  function select(r) {
    S.selected = r;
    showRow(r);
    redrawOverlay();
  }

  function showRow(r) {
    const kids = [];
    kids.push(h("h3", null, h("span", { text: "Row " + r }),
      h("button", { type: "button", title: "close (Esc)", onclick: closePanel }, "\u00d7")));
    if (hasThumb[r]) kids.push(h("img", { class: "big", src: thumbSrc(r), alt: "" }));
    const dl = h("dl", { id: "panel-fields" });
    const field = (k, v, id) => dl.append(h("dt", { text: k }), h("dd", { text: v, "data-field": id }));
    field("row", String(r), "row");
    field("id", idOf(r), "id");
    field("path", paths[r] == null ? "\u2014" : paths[r], "path");
    field("label", labelOf(r), "label");
    for (const col of Object.keys(FIELDS)) {
      const v = fieldOf(col, r);
      if (v != null) field(FIELDS[col].caption, v, col);
    }
    if (SPLITS.length) field("split", splitOf(r) || "\u2014", "split");
    if (groupOf(r) != null) field(GROUP.caption, groupOf(r), "group");
    if (!(coords && hasPoint(r))) field("map", "no point (no usable embedding or no projection)", "map");
    kids.push(dl);
    if (groupOf(r) != null) kids.push(...siblings(r));
    const fl = h("div");
    ISSUES.forEach((name) => { if (flags[r] & bitOf(name)) fl.append(h("span", { class: "flag", text: name })); });
    if (fl.childNodes.length) kids.push(fl);
    const names = Object.keys(scores);
    if (names.length) {
      const tb = h("tbody");
      for (const k of names) tb.append(h("tr", null, h("td", { text: k + "_score" }), h("td", { class: "num", text: fmt(scores[k][r], 4) })));
      kids.push(h("table", { class: "data", id: "panel-scores" }, h("thead", null, h("tr", null, h("th", { text: "score" }), h("th", { class: "num", text: "value (lower = worse)" }))), tb));
    }
    kids.push(h("p", null, excludeButton([r], "Exclude this sample")));
    if (nnRows) {
      const ul = h("ul", { class: "nn", id: "panel-neighbors" });
      for (let j = 0; j < nnK; j++) {
        const q = nnRows[r * nnK + j];
        if (q < 0) continue;
        ul.append(h("li", { title: paths[q] == null ? idOf(q) : paths[q], onclick: () => select(q) },
          "#" + q + " \u00b7 " + labelOf(q) + " \u00b7 " + idOf(q)));
      }
      kids.push(h("h3", { text: "Nearest neighbours" }), ul.childNodes.length ? ul : h("p", { class: "muted", text: "none" }));
    }
    panel.replaceChildren(...kids);
    panel.classList.add("open");
    document.body.classList.add("panel-open");
    refreshSelection();
  }

  // the other rows of r's group (the other crops of its image), thumbnails where there are some
  const MAX_SIBLINGS = 48;
  function siblings(r) {
    const g = groupCode[r];
    const others = [];
    for (let i = groupStart[g]; i < groupStart[g + 1]; i++) if (groupRows[i] !== r) others.push(groupRows[i]);
    const head = h("h3", { text: "Other rows of " + GROUP.caption + " " + GROUP.names[g] + " (" + fmtInt(others.length) + ")" });
    if (!others.length) return [head, h("p", { class: "muted", id: "panel-siblings", text: "none: the only row of its " + GROUP.caption }) ];
    const box = h("div", { class: "siblings", id: "panel-siblings" });
    for (const q of others.slice(0, MAX_SIBLINGS)) {
      const c = h("div", { class: "sibling", "data-row": String(q), title: paths[q] == null ? idOf(q) : paths[q], onclick: () => select(q) });
      c.append(hasThumb[q] ? h("img", { class: "thumb", src: thumbSrc(q), alt: "", loading: "lazy" })
        : h("div", { class: "nothumb", text: paths[q] == null ? "no path" : "no thumbnail" }));
      const f = flags[q] ? ISSUES.filter((name) => flags[q] & bitOf(name)) : [];
      c.append(h("div", { class: "lbl", text: labelOf(q) }), h("div", { class: "sub", text: "#" + q + " \u00b7 " + idOf(q) }));
      if (f.length) c.append(h("div", { class: "sub flagged", text: f.join(", ") }));
      box.append(c);
    }
    const out = [head, box];
    if (others.length > MAX_SIBLINGS) out.push(h("p", { class: "note", text: "The first " + MAX_SIBLINGS + " of " + fmtInt(others.length) + "." }));
    return out;
  }

  // ------------------------------------------------------------------ galleries
  const galleries = h("section", { id: "galleries" }, h("h2", { text: "Issues, worst first" }));
  main.append(galleries);
  if (D.meta.thumbs_note) galleries.append(h("p", { class: "note", text: D.meta.thumbs_note }));
  const tabs = h("div", { class: "tabs", role: "tablist" });
  const body = h("div");
  galleries.append(tabs, body);

  function card(r, extras) {
    const c = h("div", { class: "card", title: paths[r] == null ? idOf(r) : paths[r], "data-row": String(r) });
    c.append(hasThumb[r] ? h("img", { class: "thumb", src: thumbSrc(r), alt: "", loading: "lazy" })
      : h("div", { class: "nothumb", text: paths[r] == null ? "no path" : "no thumbnail" }));
    c.append(h("div", { class: "lbl", text: labelOf(r) }), h("div", { class: "sub", text: idOf(r) }));
    if (groupOf(r) != null) c.append(h("div", { class: "sub group-of", title: GROUP.caption, text: GROUP.caption + ": " + groupOf(r) }));
    for (const x of extras || []) c.append(x);
    c.append(excludeButton([r], "Exclude", c));
    c.addEventListener("click", () => select(r));
    return c;
  }
  const sub = (text, cls) => h("div", { class: cls || "sub", text: text });

  function paged(container, items, render, size) {
    let shown = 0;
    const more = h("button", { type: "button", class: "more" });
    function next() {
      const end = Math.min(items.length, shown + (size || 60));
      for (; shown < end; shown++) container.append(render(items[shown]));
      more.textContent = "Show more (" + fmtInt(items.length - shown) + " left)";
      more.style.display = shown < items.length ? "" : "none";
      refreshSelection();
    }
    more.addEventListener("click", next);
    return { more, next };
  }

  const scoreKey = (name, r) => { const s = scores[name]; const v = s ? s[r] : 0; return v === v ? v : 2; };

  function flaggedRows(name) {
    const bit = bitOf(name), rows = [];
    for (let r = 0; r < N; r++) if (flags[r] & bit) rows.push(r);
    rows.sort((a, b) => scoreKey(name, a) - scoreKey(name, b) || a - b);
    return rows;
  }

  function sampleList(name, pane, extras) {
    const rows = flaggedRows(name);
    if (!rows.length) { pane.append(h("p", { class: "muted", text: "No rows flagged." })); return; }
    const cards = h("div", { class: "cards" });
    const p = paged(cards, rows, (r) => card(r, extras(r)), 120);
    pane.append(cards, p.more);
    p.next();
  }

  // ------------------------------------------------------------------ declared galleries
  const scoreLine = (spec, name) => (r) => [sub((spec.score_caption || "score") + " " + fmt(scores[name] ? scores[name][r] : NaN, 3))];
  const fieldLines = (fields, r) => (fields || []).map((f) => sub(f.caption + ": " + (fieldOf(f.column, r) == null ? "\u2014" : fieldOf(f.column, r))))
    .filter((x, i) => fields[i].column !== "split" || SPLITS.length);

  function samplesGallery(spec, name, pane) {
    sampleList(name, pane, (r) => fieldLines(spec.fields, r).concat(scoreLine(spec, name)(r)));
  }

  const GROUP_CARDS = 60;   // cards shown at first per group
  function groupsGallery(spec, name, pane) {
    const gid = i32(spec.group_id), row = i32(spec.row), keep = bytes(spec.keep);
    const declared = new Map();   // the check's own groups, by id
    for (let i = 0; i < gid.length; i++) {
      let g = declared.get(gid[i]);
      if (!g) { g = { id: gid[i], rows: [], keep: [], facts: (spec.facts || {})[String(gid[i])] || [] }; declared.set(gid[i], g); }
      g.rows.push(row[i]); g.keep.push(!!keep[i]);
    }
    const groupScore = (g) => {   // worst member's score, computed once per group
      if (g.score === undefined) { let m = Infinity; for (const r of g.rows) m = Math.min(m, scoreKey(name, r)); g.score = m; }
      return g.score;
    };
    const count = h("p", { class: "note group-count" });
    const box = h("div");
    const moreSlot = h("div");
    function renderGroup(g) {
      const copies = g.rows.filter((r, i) => !g.keep[i]);
      const targets = spec.exclude === "copies" && copies.length ? copies : g.rows.slice();
      const head = h("div", { class: "group-head" }, h("strong", { text: "Group " + g.id }),
        h("span", { text: g.rows.length + " rows" }));
      for (const [caption, text] of g.facts) head.append(h("span", { class: "muted", text: text ? caption + ": " + text : caption }));
      if (g.fresh) head.append(h("span", { class: "muted", text: "not a group at the scan\u2019s threshold" }));
      head.append(excludeButton(targets, targets.length < g.rows.length ? "Exclude copies" : "Exclude group"));
      const cards = h("div", { class: "cards" });
      const member = (i) => card(g.rows[i], spec.exclude === "copies" && g.keep[i] ? [sub(g.keptBy || "kept", "kept")] : scoreLine(spec, name)(g.rows[i]));
      // a large group (a chain at a low threshold) shows its kept member and the first rows, and more on demand
      let order = g.rows.map((_, i) => i);
      if (order.length > GROUP_CARDS) order = order.filter((i) => g.keep[i]).concat(order.filter((i) => !g.keep[i]));
      const p = paged(cards, order, member, GROUP_CARDS);
      p.next();
      return h("div", { class: "group", "data-group": String(g.id) }, head, cards, p.more);
    }
    function show(list, extra) {
      list.sort((a, b) => groupScore(a) - groupScore(b) || a.id - b.id);
      let rows = 0;
      for (const g of list) rows += g.rows.length;
      count.textContent = fmtInt(list.length) + " groups, " + fmtInt(rows) + " rows" + (extra || "") + (spec.exclude === "copies" ?
        "; \u201cExclude copies\u201d excludes every member but the one kept." : ".");
      box.replaceChildren();
      const p = paged(box, list, renderGroup, 40);
      moreSlot.replaceChildren(p.more);
      p.next();
    }
    const sl = spec.slider;
    if (sl && sl.note) pane.append(h("p", { class: "note", text: sl.note }));
    if (sl && sl.values != null) pane.append(thresholdSlider(sl, name, declared, show));
    pane.append(count, box, moreSlot);
    show(Array.from(declared.values()));
  }

  // A slider over a groups gallery: the check's pairs, largest value first, regrouped at t in the
  // page (union-find; a group's id its smallest row). A group the check found keeps the check's
  // choice; another keeps the member with the smallest id (the check's "first" policy). The
  // issue's flags, its counts and the map follow; tamis' exclusion list stays the scan's.
  function thresholdSlider(sl, name, declared, show) {
    const a = i32(sl.row_a), b = i32(sl.row_b), val = f32(sl.values);
    const rank = sl.id_rank ? i32(sl.id_rank) : null;
    const parent = new Int32Array(N), seen = new Uint32Array(N);
    let epoch = 0;
    // rows the check flagged outside its groups (e.g. for a match elsewhere) stay flagged at every t
    const inGroup = new Uint8Array(N), outside = [];
    for (const g of declared.values()) for (const r of g.rows) inGroup[r] = 1;
    for (let r = 0; r < N; r++) if ((flags[r] & bitOf(name)) && !inGroup[r]) outside.push(r);
    const find = (x) => { while (parent[x] !== x) { parent[x] = parent[parent[x]]; x = parent[x]; } return x; };
    // the groups at t: [{id, rows (ascending), keep, ...}], and every row in one
    function groupsAt(t) {
      const tf = Math.fround(t);
      let lo = 0, hi = val.length;
      while (lo < hi) { const m = (lo + hi) >>> 1; if (val[m] >= tf) lo = m + 1; else hi = m; }
      const m = lo;
      epoch++;
      const touched = [];
      for (let i = 0; i < m; i++) {
        const p = a[i], q = b[i];
        if (seen[p] !== epoch) { seen[p] = epoch; parent[p] = p; touched.push(p); }
        if (seen[q] !== epoch) { seen[q] = epoch; parent[q] = q; touched.push(q); }
      }
      for (let i = 0; i < m; i++) {
        const ra = find(a[i]), rb = find(b[i]);
        if (ra < rb) parent[rb] = ra; else if (rb < ra) parent[ra] = rb;   // the root is the smallest row
      }
      const rows = Int32Array.from(touched).sort();
      const flagged = outside.length ? Int32Array.from(touched.concat(outside.filter((r) => seen[r] !== epoch))).sort() : rows;
      const byId = new Map();
      for (const r of rows) {
        const root = find(r);
        let g = byId.get(root);
        if (!g) { g = { id: root, rows: [] }; byId.set(root, g); }
        g.rows.push(r);
      }
      const list = [];
      for (const g of byId.values()) {
        const own = declared.get(g.id);
        if (own && own.rows.length === g.rows.length) { list.push(own); continue; }   // the same rows: the check's group
        let best = 0;
        for (let i = 1; i < g.rows.length; i++) {
          const r = g.rows[i], q = g.rows[best];
          if ((rank ? rank[r] - rank[q] : r - q) < 0) best = i;
        }
        g.keep = g.rows.map((_, i) => i === best);
        g.facts = []; g.fresh = true; g.keptBy = "kept (first id)";
        list.push(g);
      }
      return { list, rows, flagged, pairs: m };
    }
    const digits = Math.max(3, (String(sl.threshold).split(".")[1] || "").length);
    const range = h("input", { type: "range", class: "threshold", min: String(sl.floor), max: "1", step: "any",
      value: String(sl.threshold), "aria-label": "threshold" });
    const number = h("input", { type: "number", class: "threshold-value", min: String(sl.floor), max: "1", step: "0.001",
      value: String(sl.threshold), "aria-label": "threshold value" });
    const reset = h("button", { type: "button", class: "threshold-reset" }, "Back to " + sl.threshold);
    const state = h("span", { class: "muted threshold-state" });
    let current = sl.threshold, pending = false;
    function apply(t) {
      t = Math.min(1, Math.max(sl.floor, t));
      if (!(t === t)) return;
      current = t;
      range.value = String(t);
      number.value = String(t);
      const res = groupsAt(t);
      const at = t === sl.threshold;
      state.textContent = fmtInt(res.pairs) + " pairs \u2265 " + t.toFixed(digits) + (at ? " (the scan\u2019s threshold)" : "");
      show(res.list, at ? "" : " at " + t.toFixed(digits) + " (the scan: " + sl.threshold + ")");
      setIssueRows(name, res.flagged);
      for (const mk of markers) if (mk.check === name && mk.key === sl.key) mk.move(t);
    }
    // dragging: thousandths, and the scan's own threshold when within half of one
    const snap = (v) => (Math.abs(v - sl.threshold) < 0.0005 ? sl.threshold : Math.round(v * 1000) / 1000);
    range.addEventListener("input", () => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => { pending = false; const t = snap(parseFloat(range.value)); if (t !== current) apply(t); });
    });
    number.addEventListener("change", () => apply(parseFloat(number.value)));
    reset.addEventListener("click", () => apply(sl.threshold));
    sliders[name] = apply;
    let policy = "A group the scan did not find keeps the member with the smallest id";
    if (sl.keep_policy && sl.keep_policy !== "first") policy += " (the scan keeps by \u201c" + sl.keep_policy + "\u201d, which needs data this page lacks)";
    const floorNote = sl.floor > sl.lowest ? " (the scan found " + fmtInt(sl.n_table) + " pairs from " + sl.lowest +
      ", more than the page carries: the slider starts at the scan\u2019s threshold)" : "";
    return h("div", { class: "slider", "data-issue": name },
      h("label", null, "threshold ", range), number, reset, state,
      h("p", { class: "note", text: "Regroups the " + fmtInt(val.length) + " pairs at or above " + sl.floor + floorNote +
        " in this page; the counts, the map and this gallery follow" +
        (outside.length ? " (the " + fmtInt(outside.length) + " rows the scan flagged outside its groups stay flagged)" : "") + ". " + policy +
        ". tamis\u2019 exclusion list stays the scan\u2019s." }));
  }
  const sliders = {};   // issue -> apply(t), for the automation hook

  function pairsGallery(spec, name, pane) {
    const a = i32(spec.row_a), b = i32(spec.row_b), val = f32(spec.values);
    const idx = Array.from({ length: a.length }, (_, i) => i);
    if (spec.n_total > a.length) pane.append(h("p", { class: "note", text: "The " + fmtInt(a.length) + " largest of " + fmtInt(spec.n_total) + " pairs." }));
    const bit = ISSUES.includes(name) ? bitOf(name) : 0;
    const box = h("div");
    const p = paged(box, idx, (i) => {
      const pair = [a[i], b[i]];
      const flagged = pair.filter((r) => flags[r] & bit);
      const head = h("div", { class: "group-head" }, h("strong", { text: spec.value + " " + fmt(val[i], 4) }));
      if (spec.field) head.append(h("span", { text: (fieldOf(spec.field.column, a[i]) || "\u2014") + " \u2194 " + (fieldOf(spec.field.column, b[i]) || "\u2014") }));
      head.append(excludeButton(flagged.length ? flagged : pair, "Exclude flagged"));
      const cards = h("div", { class: "cards" });
      for (const r of pair) cards.append(card(r, spec.field ? fieldLines([spec.field], r) : []));
      return h("div", { class: "group" }, head, cards);
    }, 40);
    pane.append(box, p.more);
    p.next();
  }

  const GALLERIES = { samples: samplesGallery, groups: groupsGallery, pairs: pairsGallery };

  const panes = {};
  function openTab(name) {
    for (const b of tabs.children) b.classList.toggle("active", b.dataset.issue === name);
    for (const k of Object.keys(panes)) panes[k].style.display = k === name ? "" : "none";
    if (!panes[name]) {
      const pane = h("div", { class: "pane", "data-issue": name });
      panes[name] = pane;
      body.append(pane);
      const spec = D.galleries[name] || { kind: "samples", fields: [] };
      (GALLERIES[spec.kind] || samplesGallery)(spec, name, pane);
      refreshSelection();
    }
  }
  if (!ISSUES.length) galleries.append(h("p", { class: "muted", text: "No check ran." }));
  for (const name of ISSUES) {
    tabs.append(h("button", { type: "button", role: "tab", "data-issue": name, onclick: () => openTab(name) },
      name, countSpan(name)));
  }
  if (ISSUES.length) openTab(ISSUES.find((n) => D.summary.issues[n] > 0) || ISSUES[0]);

  refreshSelection();

  // ------------------------------------------------------------------ test and automation hooks
  window.tamisReport = {
    pointCount: () => S.n,
    drawnCount: () => S.drawn,
    frameMs: () => S.lastFullMs,
    dims: () => (coords ? DIMS : 0),
    view: () => ({ yaw: S.yaw, pitch: S.pitch, scale: S.scale }),
    rotate(dYaw, dPitch) { rotate(dYaw, dPitch); requestDraw(true); },
    screenPosition(r) {
      if (!coords || !hasPoint(r)) return null;
      const rect = canvas.getBoundingClientRect();
      const [x, y] = toScreen(r);
      return { x: rect.left + (x * rect.width) / S.W, y: rect.top + (y * rect.height) / S.H };
    },
    rowAt(clientX, clientY) {
      const rect = canvas.getBoundingClientRect();
      return pickAt((clientX - rect.left) * (S.W / rect.width), (clientY - rect.top) * (S.H / rect.height));
    },
    select,
    // move a gallery's threshold slider (its pane is opened first); false where the issue has none
    setThreshold(name, t) { openTab(name); if (!sliders[name]) return false; sliders[name](t); return true; },
    markers: () => markers.map((m) => ({ check: m.check, key: m.key, value: m.value() })),
    flagged(name) { const bit = bitOf(name), out = []; for (let r = 0; r < N; r++) if (flags[r] & bit) out.push(r); return out; },
    excluded: () => Array.from(excluded).sort((a, b) => a - b),
    excludeLines,
  };
})();
