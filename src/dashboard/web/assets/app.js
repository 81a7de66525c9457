// netpulse dashboard. Loads the three API views (each with its history), then follows the event
// stream, where every report arrives as the same views with one row; draws tables, sparklines and
// uPlot charts. While the stream is refused (every place taken) it polls the API instead; while
// nothing arrives (the server is gone) everything is marked stale. A time range other than live
// draws the sparklines and the chart from the recorded history (/api/v1/history) while the
// tables stay live. Plain JS, no build step, nothing loaded from elsewhere.
"use strict";

const HISTORY = 300;
const $ = (id) => document.getElementById(id);

// ---- state -------------------------------------------------------------------------------------

const state = {
  targets: { t: [], items: [], interval_ms: 1000, connectivity: null, time: null },
  interfaces: { t: [], items: [] },
  balancers: { t: [], items: [], recent_s: 0 },
  selectedTarget: null,
  selectedIface: null,
  paused: false,
  // The recorded history shown instead of the live window (null: live); see "time ranges".
  range: null,
};

// What the page reports about itself (read by tests and by anyone curious in the console).
const stats = {
  updates: 0, polls: 0, stream: "connecting", stale: false, renderMs: { last: 0, max: 0, sum: 0, n: 0 }, reconnects: 0,
  rangeLoads: 0,
};
window.netpulse = { state, stats };

// Appends `inc`'s columns from row `from` on to `old`'s (or starts them, padded to `rows` before),
// keeping HISTORY.
function mergeColumns(old, inc, rows, from) {
  const out = old || {};
  for (const k of Object.keys(inc)) {
    let a = out[k];
    if (!a) a = out[k] = new Array(rows).fill(null);
    for (let i = from; i < inc[k].length; i++) a.push(inc[k][i]);
    if (a.length > HISTORY) a.splice(0, a.length - HISTORY);
  }
  return out;
}

// A section's update: a full view (replace) or an event's (or a poll's) newest rows, appended to
// the matching items. Returns whether it brought a report the page did not have.
function applySection(section, view, key, full) {
  if (!view) return false;
  const last = section.t.length ? section.t[section.t.length - 1] : -Infinity;
  const newer = view.t.length > 0 && view.t[view.t.length - 1] > last;
  if (full) {
    Object.assign(section, view);
    section.items = view[key];
    return newer;
  }
  // Rows the page already has (a poll overlapping the last one) are skipped.
  let from = 0;
  while (from < view.t.length && view.t[from] <= last) from++;
  if (from === view.t.length) return false;
  const rows = section.t.length;
  const byName = new Map(section.items.map((it) => [it.target || it.name, it]));
  for (const k of Object.keys(view)) if (k !== key && k !== "t") section[k] = view[k];
  section.items = view[key].map((it) => {
    const old = byName.get(it.target || it.name);
    if (Array.isArray(it.history)) {
      // Balancers: one set of columns per backend.
      const prev = old && old.history && old.history.length === it.history.length ? old.history : [];
      it.history = it.history.map((cols, i) => mergeColumns(prev[i], cols, rows, from));
    } else {
      it.history = mergeColumns(old && old.history, it.history, rows, from);
    }
    return it;
  });
  for (let i = from; i < view.t.length; i++) section.t.push(view.t[i]);
  if (section.t.length > HISTORY) section.t.splice(0, section.t.length - HISTORY);
  return true;
}

// Applies the three views; when they bring a new report, the page is fresh again.
function applyAll(views, full) {
  const a = applySection(state.targets, views.targets, "targets", full);
  const b = applySection(state.interfaces, views.interfaces, "interfaces", full);
  const c = applySection(state.balancers, views.balancers, "balancers", full);
  if (a || b || c) fresh();
  return a || b || c;
}

// ---- formatting --------------------------------------------------------------------------------

const dash = "–";
function ms(v) {
  if (v == null) return dash;
  return (v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0)) + " ms";
}
function pct(v) {
  if (v == null) return dash;
  if (v === 0) return "0%";
  return (v < 10 ? v.toFixed(1) : v.toFixed(0)) + "%";
}
function si(v, units) {
  let i = 0;
  while (Math.abs(v) >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return (i === 0 ? v.toFixed(0) : v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0)) + " " + units[i];
}
const bytes = (v) => (v == null ? dash : si(v, ["B", "kB", "MB", "GB", "TB"]));
const byteRate = (v) => (v == null ? dash : si(v, ["B/s", "kB/s", "MB/s", "GB/s"]));
const bitRate = (v) => (v == null ? dash : si(v * 8, ["bit/s", "kbit/s", "Mbit/s", "Gbit/s"]));
const perSec = (v) => (v == null ? dash : (v < 10 ? v.toFixed(1) : v.toFixed(0)) + "/s");
function ago(iso) {
  if (!iso) return "";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return Math.floor(s) + "s ago";
  if (s < 3600) return Math.floor(s / 60) + "m " + Math.floor(s % 60) + "s ago";
  if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m ago";
  return Math.floor(s / 86400) + "d ago";
}

// ---- small DOM helpers -------------------------------------------------------------------------

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}
// Writes text only when it changed (a thousand rows per second stay cheap).
function setText(e, text) {
  if (e.textContent !== text) e.textContent = text;
}
function setClass(e, cls) {
  if (e.className !== cls) e.className = cls;
}

let palette = {};
function readPalette() {
  const css = getComputedStyle(document.documentElement);
  const v = (n) => css.getPropertyValue("--" + n).trim();
  palette = {
    fg: v("fg"), muted: v("muted"), grid: v("grid"), lost: v("lost"), failed: v("failed"), band: v("band"),
    accent: v("accent"), series: [0, 1, 2, 3, 4, 5, 6, 7].map((i) => v("s" + i)),
  };
}

// ---- sparklines (our own canvas: cheap, drawn only while visible) -------------------------------

const visible = new WeakSet();
const observer = "IntersectionObserver" in window
  ? new IntersectionObserver((entries) => {
    for (const e of entries) {
      if (e.isIntersecting) { visible.add(e.target); if (e.target.draw) e.target.draw(); } else visible.delete(e.target);
    }
  })
  : null;

function sparkCanvas() {
  const c = el("canvas");
  c.width = 100 * (window.devicePixelRatio || 1);
  c.height = 24 * (window.devicePixelRatio || 1);
  if (observer) observer.observe(c); else visible.add(c);
  return c;
}

// Columns a sparkline is divided into: a minute's worth at first, then as many as there are rows.
const slots = (n) => Math.min(HISTORY, Math.max(n, 60));

// One column per interval: the median round trip as a bar, a lost probe as a full red bar, a
// failed one as a full orange bar: a loss never looks like a slow answer.
function drawRttSpark(c, h) {
  if (!visible.has(c)) return;
  const ctx = c.getContext("2d"), W = c.width, H = c.height;
  ctx.clearRect(0, 0, W, H);
  const n = h.rtt_med_ms.length;
  if (!n) return;
  const bw = W / slots(n);
  let max = 0;
  for (const v of h.rtt_max_ms) if (v != null && v > max) max = v;
  const x0 = W - n * bw;
  for (let i = 0; i < n; i++) {
    const x = x0 + i * bw, w = Math.max(1, bw);
    if (h.lost[i] > 0) { ctx.fillStyle = palette.lost; ctx.fillRect(x, 0, w, H); continue; }
    if (h.failed[i] > 0) { ctx.fillStyle = palette.failed; ctx.fillRect(x, 0, w, H); continue; }
    const v = h.rtt_med_ms[i];
    if (v == null) continue;
    const y = max > 0 ? Math.max(1, (v / max) * (H - 2)) : 1;
    ctx.fillStyle = palette.accent;
    ctx.fillRect(x, H - y, w, y);
  }
}

// An area of received plus sent bytes per second.
function drawRateSpark(c, h) {
  if (!visible.has(c)) return;
  const ctx = c.getContext("2d"), W = c.width, H = c.height;
  ctx.clearRect(0, 0, W, H);
  const n = h.rx_bytes_per_sec.length;
  const sum = [];
  let max = 0;
  for (let i = 0; i < n; i++) {
    const a = h.rx_bytes_per_sec[i], b = h.tx_bytes_per_sec[i];
    const v = a == null && b == null ? null : (a || 0) + (b || 0);
    sum.push(v);
    if (v > max) max = v;
  }
  const bw = W / slots(n), x0 = W - n * bw;
  ctx.fillStyle = palette.accent;
  for (let i = 0; i < n; i++) {
    if (sum[i] == null) continue;
    const y = max > 0 ? Math.max(1, (sum[i] / max) * (H - 2)) : 1;
    ctx.fillRect(x0 + i * bw, H - y, Math.max(1, bw), y);
  }
}

// ---- uPlot charts ------------------------------------------------------------------------------

// A time axis tick (local time) on one line, so ticks a few seconds apart never overlap
// (uPlot's default adds the date and hour under some ticks): HH:MM:SS over a few hours, HH:MM
// over two days, MM-DD HH:MM over longer (the recorded ranges).
function clock(t, span) {
  const d = new Date(t * 1000), two = (n) => String(n).padStart(2, "0");
  const hm = `${two(d.getHours())}:${two(d.getMinutes())}`;
  if (span > 2 * 86400) return `${two(d.getMonth() + 1)}-${two(d.getDate())} ${hm}`;
  if (span > 3 * 3600) return hm;
  return `${hm}:${two(d.getSeconds())}`;
}

function axes(fmt, size) {
  const a = { stroke: palette.muted, grid: { stroke: palette.grid, width: 1 }, ticks: { stroke: palette.grid, width: 1 } };
  const span = (u) => (u.scales.x.max ?? 0) - (u.scales.x.min ?? 0);
  return [
    Object.assign({}, a, { space: 80, values: (u, vals) => vals.map((v) => clock(v, span(u))) }),
    Object.assign({}, a, { size: size || 64, values: (u, vals) => vals.map(fmt) }),
  ];
}

function chartWidth(box) {
  return Math.max(280, box.clientWidth || 480);
}

// Marks each interval with a lost (red) or failed (orange) probe: a tick at the top of the plot
// and a faint column through it, so a loss is seen even where the line has a gap.
function lossMarks(u) {
  const t = u.data[0], lost = u.lossData && u.lossData.lost, failed = u.lossData && u.lossData.failed;
  if (!lost) return;
  const ctx = u.ctx, { left, top, width, height } = u.bbox;
  const step = t.length > 1 ? Math.abs(u.valToPos(t[1], "x", true) - u.valToPos(t[0], "x", true)) : 4;
  const w = Math.max(2 * devicePixelRatio, step * 0.8);
  ctx.save();
  for (let i = 0; i < t.length; i++) {
    const color = lost[i] > 0 ? palette.lost : failed[i] > 0 ? palette.failed : null;
    if (!color) continue;
    const x = u.valToPos(t[i], "x", true);
    if (x < left - w || x > left + width + w) continue;
    ctx.fillStyle = color;
    ctx.globalAlpha = 0.15;
    ctx.fillRect(x - w / 2, top, w, height);
    ctx.globalAlpha = 1;
    ctx.fillRect(x - w / 2, top, w, 10 * devicePixelRatio);
  }
  ctx.restore();
}

function rttChart(box) {
  const opts = {
    width: chartWidth(box), height: 240,
    scales: { y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
    axes: axes((v) => v + " ms"),
    series: [
      {},
      // An interval where no probe settled is no news (a loss is marked, not left out).
      { label: "median", stroke: palette.accent, width: 2, value: (u, v) => ms(v), spanGaps: true },
      { label: "min", stroke: palette.band, width: 1, value: (u, v) => ms(v) },
      { label: "max", stroke: palette.band, width: 1, value: (u, v) => ms(v) },
    ],
    bands: [{ series: [3, 2], fill: palette.band }],
    hooks: { draw: [lossMarks] },
  };
  return new uPlot(opts, [[], [], [], []], box);
}

function rateChart(box) {
  const opts = {
    width: chartWidth(box), height: 220,
    scales: { y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
    axes: axes(byteRate, 84),
    series: [
      {},
      { label: "receive", stroke: palette.series[0], width: 2, value: (u, v) => byteRate(v) },
      { label: "transmit", stroke: palette.series[1], width: 2, value: (u, v) => byteRate(v) },
    ],
  };
  return new uPlot(opts, [[], [], []], box);
}

// Requests per second to each backend (solid) and its errors per second (dashed, same colour).
function backendChart(box, backends) {
  const series = [{}];
  backends.forEach((b, i) => {
    const color = palette.series[i % palette.series.length];
    series.push({ label: b.addr, stroke: color, width: 2, value: (u, v) => perSec(v) });
    series.push({ label: b.addr + " errors", stroke: color, width: 1, dash: [4, 3], value: (u, v) => perSec(v) });
  });
  const opts = {
    width: chartWidth(box), height: 200,
    // The table says which colour is which backend (and has the numbers).
    legend: { show: false },
    scales: { y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
    axes: axes((v) => v + "/s"),
    series,
  };
  return new uPlot(opts, series.map(() => []), box);
}

const charts = new Map(); // container element -> uPlot
function resizeCharts() {
  for (const [box, u] of charts) u.setSize({ width: chartWidth(box), height: u.height });
}

// ---- targets -----------------------------------------------------------------------------------

const targetRows = new Map(); // name -> { tr, cells, canvas }

function targetRow(name) {
  let row = targetRows.get(name);
  if (row) return row;
  const tr = el("tr");
  tr.dataset.target = name;
  const cells = {};
  for (const k of ["name", "status", "loss1m", "loss", "last", "avg", "p95", "jitter"]) {
    cells[k] = tr.appendChild(el("td", k === "name" ? "name" : ["status"].includes(k) ? "" : "num"));
  }
  const canvas = sparkCanvas();
  tr.appendChild(el("td")).appendChild(canvas);
  tr.addEventListener("click", () => { state.selectedTarget = name; render(); });
  // Counters since the start, on hover (written when asked for, not on every update).
  tr.addEventListener("mouseenter", () => {
    const t = row.data;
    if (t) cells.name.title = `${t.target}: ${t.probe} probe; ${t.sent_total} sent, ${t.received_total} answered since start`;
  });
  row = { tr, cells, canvas, data: null };
  // A long name may wrap after each "/" (and anywhere, if a part is still too long).
  for (const part of name.split(/(?<=\/)(?=[^/])/)) {
    cells.name.appendChild(document.createTextNode(part));
    cells.name.appendChild(el("wbr"));
  }
  cells.name.title = name;
  canvas.draw = () => fillTargetRow(row);
  targetRows.set(name, row);
  return row;
}

function fillTargetRow(row) {
  const { tr, cells, canvas, data: t } = row;
  if (!t) return;
  setText(cells.status, t.up ? "up" : "down");
  setClass(cells.status, t.up ? "up" : "down");
  setText(cells.loss1m, pct(t.loss_1m_pct));
  setText(cells.loss, pct(t.loss_pct));
  setText(cells.last, ms(t.rtt_last_ms));
  setText(cells.avg, ms(t.rtt_avg_ms));
  setText(cells.p95, ms(t.rtt_p95_ms));
  setText(cells.jitter, ms(t.jitter_ms));
  setClass(tr, t.target === state.selectedTarget ? "selected" : "");
  drawRttSpark(canvas, rangeSpark(t.target) || t.history);
}

function renderTargets() {
  const s = state.targets, tbody = $("targets").tBodies[0];
  const names = s.items.map((t) => t.target);
  if (state.selectedTarget == null || !names.includes(state.selectedTarget)) {
    // Start on a target that is down, if any: that is what needs looking at.
    const down = s.items.find((t) => !t.up);
    state.selectedTarget = (down || s.items[0] || {}).target ?? null;
  }
  // Rebuild the row order only when the set of targets changes.
  if (tbody.children.length !== names.length || names.some((n, i) => tbody.children[i].dataset.target !== n)) {
    for (const n of [...targetRows.keys()]) if (!names.includes(n)) { observer && observer.unobserve(targetRows.get(n).canvas); targetRows.delete(n); }
    tbody.replaceChildren(...names.map((n) => targetRow(n).tr));
  }
  let up = 0;
  for (const t of s.items) {
    if (t.up) up++;
    const row = targetRow(t.target);
    row.data = t;
    // Rows out of view are filled in when they scroll into it: a thousand targets cost what
    // the twenty on screen do.
    if (visible.has(row.canvas)) fillTargetRow(row);
  }
  setText($("targets-note"), s.items.length ? `${up} of ${s.items.length} up · every ${s.interval_ms} ms` : "none");
  const sel = s.items.find((t) => t.target === state.selectedTarget);
  const box = $("target-chart");
  setText($("target-title"), sel ? sel.target : "");
  const r = state.range;
  setText($("history-head"), r ? "Last " + r.label : "History");
  setText($("chart-what"), r ? `round trip per ${r.step_s ? human(r.step_s) : "step"} over the last ${r.label} (recorded)` : "round trip per interval");
  if (!sel) return;
  let u = charts.get(box);
  if (!u) { u = rttChart(box); charts.set(box, u); }
  if (r) {
    // The recorded series: no line across the steps nothing was recorded in (netpulse was not running).
    if (!r.chart || r.chart.target !== sel.target) {
      // Another target's chart is not shown under this one's name while this one's loads.
      if (u.drawn) { u.drawn = null; u.lossData = null; u.setData([[], [], [], []]); }
      loadRangeChart();
      return;
    }
    const c = r.chart;
    if (u.drawn === c) return;
    u.series[1].spanGaps = false;
    u.lossData = c;
    u.setData([c.t, c.rtt_med_ms, c.rtt_min_ms, c.rtt_max_ms]);
    u.drawn = c;
    return;
  }
  u.series[1].spanGaps = true;
  u.drawn = null;
  u.lossData = sel.history;
  u.setData([s.t, sel.history.rtt_med_ms, sel.history.rtt_min_ms, sel.history.rtt_max_ms]);
}

// ---- interfaces --------------------------------------------------------------------------------

const ifaceRows = new Map();

function ifaceRow(name) {
  let row = ifaceRows.get(name);
  if (row) return row;
  const tr = el("tr");
  tr.dataset.iface = name;
  const cells = {};
  for (const k of ["name", "state", "rx", "tx", "rxTotal", "txTotal", "errs"]) {
    cells[k] = tr.appendChild(el("td", k === "name" ? "name" : k === "state" ? "" : "num"));
  }
  const canvas = sparkCanvas();
  tr.appendChild(el("td")).appendChild(canvas);
  tr.addEventListener("click", () => { state.selectedIface = name; render(); });
  row = { tr, cells, canvas };
  ifaceRows.set(name, row);
  return row;
}

function rateCell(td, v) {
  // "1.20 MB/s" with the bit rate under it, the way link speeds are quoted.
  if (!td.firstChild) { td.appendChild(el("span")); td.appendChild(el("br")); td.appendChild(el("small")); }
  setText(td.firstChild, byteRate(v));
  setText(td.lastChild, bitRate(v));
}

function renderInterfaces() {
  const s = state.interfaces, tbody = $("interfaces").tBodies[0];
  const showDown = $("show-down").checked;
  const items = s.items.filter((i) => showDown || i.up);
  if (state.selectedIface == null || !items.some((i) => i.name === state.selectedIface)) {
    // The busiest interface that is up.
    const rate = (i) => (i.rx_bytes_per_sec || 0) + (i.tx_bytes_per_sec || 0);
    const best = items.filter((i) => i.up).sort((a, b) => rate(b) - rate(a))[0] || items[0];
    state.selectedIface = best ? best.name : null;
  }
  const names = items.map((i) => i.name);
  if (tbody.children.length !== names.length || names.some((n, i) => tbody.children[i].dataset.iface !== n)) {
    tbody.replaceChildren(...names.map((n) => ifaceRow(n).tr));
  }
  for (const i of items) {
    const { tr, cells, canvas } = ifaceRow(i.name);
    setText(cells.name, i.name);
    setText(cells.state, i.up ? "up" : "down");
    setClass(cells.state, i.up ? "up" : "down");
    rateCell(cells.rx, i.rx_bytes_per_sec);
    rateCell(cells.tx, i.tx_bytes_per_sec);
    setText(cells.rxTotal, bytes(i.rx_bytes));
    setText(cells.txTotal, bytes(i.tx_bytes));
    setText(cells.errs, `${i.rx_errors + i.tx_errors} / ${i.rx_dropped + i.tx_dropped}`);
    setClass(tr, (i.up ? "" : "dim ") + (i.name === state.selectedIface ? "selected" : ""));
    canvas.draw = () => drawRateSpark(canvas, i.history);
    canvas.draw();
  }
  const sel = items.find((i) => i.name === state.selectedIface);
  const box = $("iface-chart");
  setText($("iface-title"), sel ? sel.name : "");
  if (!sel) return;
  let u = charts.get(box);
  if (!u) { u = rateChart(box); charts.set(box, u); }
  u.setData([s.t, sel.history.rx_bytes_per_sec, sel.history.tx_bytes_per_sec]);
}

// ---- balancers ---------------------------------------------------------------------------------

const balancerCards = new Map(); // name -> { card, totals, tbody, rows, chartBox, key }

function totalsLine(b) {
  if (b.http) {
    const h = b.http, r = h.responses;
    const classes = ["2xx", "3xx", "4xx", "5xx"].filter((c) => r[c] > 0).map((c) => `${r[c]} ${c}`).join(", ");
    return `${h.requests} requests (${classes || "none answered yet"}) · ${h.retries} retried · ` +
      `${h.no_backend} with no backend · ${h.clients_active} clients connected, ${h.clients_accepted} in all`;
  }
  if (b.udp) {
    const u = b.udp, dropped = Object.values(u.drops).reduce((a, n) => a + n, 0);
    return `${u.requests} datagrams · ${u.replies} replies · ${dropped} dropped · ` +
      `${u.flows_open} flows open, ${u.flows_opened} opened, ${u.flows_evicted} evicted`;
  }
  return "";
}

// Whether a balancer's weights say something: one configured, or measured from the probes.
function weighted(b) {
  return b.backends.some((x) => x.effective_weight !== 1 || x.weight_why);
}

// A weight as the table shows it: 1, 0.07, 4.5, 120.
function weight(v) {
  if (v == null) return dash;
  return String(Number(v >= 10 ? v.toFixed(0) : v >= 1 ? v.toFixed(1) : v.toFixed(2)));
}

function balancerCard(b) {
  const key = b.name + "|" + b.backends.map((x) => x.addr).join(",") + "|" + weighted(b);
  let card = balancerCards.get(b.name);
  if (card && card.key === key) return card;
  const root = el("div", "balancer");
  root.dataset.balancer = b.name;
  const title = root.appendChild(el("h3"));
  const totals = root.appendChild(el("p", "totals muted"));
  const split = root.appendChild(el("div", "split backends"));
  const table = split.appendChild(el("div", "scroll")).appendChild(el("table"));
  const head = table.appendChild(el("thead")).appendChild(el("tr"));
  const udp = b.proto === "udp";
  // [key, heading, class, what it means]
  const cols = [
    ["Backend", "Backend", "", ""],
    ["Health", "Health", "health", "state, since when, and why"],
    ...(weighted(b) ? [["Weight", "Weight", "weight", "the weight the strategy gives it now (configured × measured from its probes) and why"]] : []),
    ["Req/s", udp ? "Datagrams/s" : "Req/s", "num", udp ? "datagrams sent to it per second" : "requests sent to it per second"],
    ["Errors", udp ? "No reply" : "Errors", "num", udp
      ? "datagrams sent to it that got no reply in the span (a late reply counts against the span it was sent in)"
      : "requests to it that failed (refused, reset, timed out) or got a 5xx, in the span"],
    ["p50", "p50", "num", "time to the response head, median over the span"],
    ["p99", "p99", "num", "time to the response head, 99th percentile over the span"],
    ["Share", "Share", "", "its share of the balancer's traffic over the span"],
    ["Requests", udp ? "Datagrams" : "Requests", "num", "since the start"],
    ["Sent / received", "Sent / received", "num", "bytes since the start"],
  ];
  if (!udp) cols.push(["Conns (idle)", "Conns (idle)", "num", "connections to it open (of them idle in the pool)"]);
  for (const [, heading, cls, title] of cols) {
    const th = head.appendChild(el("th", cls, heading));
    if (title) th.title = title;
  }
  const tbody = table.appendChild(el("tbody"));
  let rowsMade = 0;
  const rows = b.backends.map((x) => {
    const tr = tbody.appendChild(el("tr"));
    tr.dataset.backend = x.addr;
    const cells = {};
    for (const [c, , cls] of cols) cells[c] = tr.appendChild(el("td", c === "Backend" ? "name" : cls || ""));
    const swatch = cells.Backend.appendChild(el("span", "swatch"));
    swatch.style.background = palette.series[rowsMade++ % palette.series.length];
    cells.Backend.appendChild(el("span"));
    const health = cells.Health;
    health.appendChild(el("b"));
    health.appendChild(el("small"));
    health.appendChild(el("div", "why"));
    if (cells.Weight) { cells.Weight.appendChild(el("b")); cells.Weight.appendChild(el("div", "why")); }
    const share = cells.Share.appendChild(el("span", "share")).appendChild(el("i"));
    cells.Share.appendChild(el("span"));
    return { tr, cells, share };
  });
  const fig = split.appendChild(el("figure", "detail"));
  fig.appendChild(el("figcaption", "muted", udp
    ? "datagrams per second per backend (solid) and those without a reply (dashed)"
    : "requests per second per backend (solid) and errors (dashed)"));
  const chartBox = fig.appendChild(el("div", "chart"));
  if (card) { charts.delete(card.chartBox); card.root.remove(); }
  card = { root, title, totals, tbody, rows, chartBox, key };
  balancerCards.set(b.name, card);
  return card;
}

function renderBalancers() {
  const s = state.balancers, list = $("balancers");
  $("balancers-panel").hidden = s.items.length === 0;
  if (!s.items.length) return;
  setText($("balancers-note"), `rates over the last ${Math.round(s.recent_s)} s`);
  const wanted = s.items.map((b) => balancerCard(b).root);
  if (list.children.length !== wanted.length || wanted.some((r, i) => list.children[i] !== r)) list.replaceChildren(...wanted);
  for (const b of s.items) {
    const card = balancerCard(b);
    setText(card.title, `${b.name} · ${b.proto} on ${b.listen || "?"} · ${b.strategy}`);
    setText(card.totals, totalsLine(b));
    b.backends.forEach((x, i) => {
      const { tr, cells, share } = card.rows[i];
      const r = (b.recent && b.recent[i]) || {};
      const c = x.http || x.udp || {};
      setText(cells.Backend.lastChild, x.addr);
      const [state_, since, why] = cells.Health.children;
      setText(state_, x.state);
      setClass(state_, x.state);
      setText(since, x.since ? " since " + ago(x.since) : "");
      since.title = x.since || "";
      const eject = x.ejected_for_ms ? `ejected for ${Math.ceil(x.ejected_for_ms / 1000)} s more` : "";
      const reason = [x.why, eject].filter(Boolean).join(" · ");
      setText(why, reason);
      // The whole reason on hover (the cell wraps it, but a long one is cut at two lines).
      if (cells.Health.title !== reason) cells.Health.title = reason;
      if (cells.Weight) {
        // "weight 0.07: rtt 21 ms (34× the median), no loss": the figure in bold, the reason
        // under it, the whole on hover.
        const [figure, because] = cells.Weight.children, said = x.weight_why || "";
        setText(figure, weight(x.effective_weight));
        setText(because, said.replace(/^weight [0-9.]+(: |, )?/, ""));
        if (cells.Weight.title !== said) cells.Weight.title = said;
      }
      setText(cells["Req/s"], perSec(r.requests_per_s));
      setText(cells.Errors, pct(r.error_pct));
      setText(cells.p50, ms(r.p50_ms));
      setText(cells.p99, ms(r.p99_ms));
      share.style.width = (r.share_pct || 0) + "%";
      setText(cells.Share.lastChild, pct(r.share_pct));
      setText(cells.Requests, String(x.http ? c.requests : c.datagrams_sent ?? 0));
      // Sent over received, on two lines: the table stays narrow enough for its chart.
      const io = cells["Sent / received"];
      if (!io.firstChild) { io.appendChild(el("span")); io.appendChild(el("br")); io.appendChild(el("span")); }
      setText(io.firstChild, bytes(c.bytes_sent));
      setText(io.lastChild, bytes(c.bytes_received));
      if (cells["Conns (idle)"]) setText(cells["Conns (idle)"], `${c.connections} (${c.idle})`);
      setClass(tr, x.state === "up" ? "" : "dim");
    });
    let u = charts.get(card.chartBox);
    if (!u) { u = backendChart(card.chartBox, b.backends); charts.set(card.chartBox, u); }
    const data = [s.t];
    b.backends.forEach((_, i) => {
      const h = b.history[i] || { requests_per_s: [], errors_per_s: [] };
      data.push(h.requests_per_s, h.errors_per_s);
    });
    u.setData(data);
  }
}

// ---- time ranges: the recorded history instead of the live window -------------------------------

// Each range: its length, and the step of the sparklines (about a hundred columns, as wide as
// they are). The chart's step is the server's choice (at most a thousand points).
const RANGES = {
  "1h": { label: "1 h", spark: "30s" },
  "24h": { label: "24 h", spark: "15m" },
  "7d": { label: "7 d", spark: "2h" },
  "30d": { label: "30 d", spark: "6h" },
};
// A range on screen is fetched again this often (new steps come in at its end).
const RANGE_REFRESH_MS = 30000;

function human(secs) {
  if (secs % 86400 === 0) return secs / 86400 + " d";
  if (secs % 3600 === 0) return secs / 3600 + " h";
  if (secs % 60 === 0) return secs / 60 + " min";
  return secs + " s";
}

// A series of /api/v1/history as the columns the live charts draw: x in seconds, the median and
// the min–max band, lost probes and failed ones (refused, unreachable) for the marks.
function columns(series) {
  const out = { t: [], rtt_med_ms: [], rtt_min_ms: [], rtt_max_ms: [], lost: [], failed: [] };
  for (const p of series) {
    out.t.push(p.t_ms / 1000);
    out.rtt_med_ms.push(p.rtt_p50_ms);
    out.rtt_min_ms.push(p.rtt_min_ms);
    out.rtt_max_ms.push(p.rtt_max_ms);
    out.lost.push(p.lost);
    out.failed.push(Math.max(0, p.sent - p.received - p.lost));
  }
  return out;
}

async function fetchHistory(query) {
  const r = await fetch("/api/v1/history?" + query, { cache: "no-store" });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || "/api/v1/history: " + r.status);
  return body;
}

// The sparkline of `target` over the range shown (empty if it has nothing recorded in it), or
// null when live.
function rangeSpark(target) {
  const r = state.range;
  if (!r || !r.spark) return null;
  return r.spark.get(target) || columns([]);
}

function setRangeNote(text) {
  setText($("range-note"), text);
}

// Fetches the chart of the selected target over the range.
async function loadRangeChart() {
  const r = state.range, target = state.selectedTarget;
  if (!r || target == null || r.chartLoading === target) return;
  r.chartLoading = target;
  try {
    const a = await fetchHistory(`since=${r.name}&target=${encodeURIComponent(target)}`);
    if (state.range !== r) return;
    if (a.history === "off") return historyOff();
    r.step_s = a.step_s;
    const t = a.targets[0];
    r.chart = Object.assign(columns(t ? t.series : []), { target, step_s: a.step_s, since: a.since, until: a.until });
    stats.rangeLoads++;
    setRangeNote("");
  } catch (e) {
    if (state.range === r) setRangeNote("history: " + e.message);
  } finally {
    if (r.chartLoading === target) r.chartLoading = null;
  }
  schedule();
}

// Fetches the sparklines of every target over the range, and the chart.
async function loadRange() {
  const r = state.range;
  if (!r) return;
  try {
    const a = await fetchHistory(`since=${r.name}&step=${RANGES[r.name].spark}`);
    if (state.range !== r) return;
    if (a.history === "off") return historyOff();
    r.spark = new Map(a.targets.map((t) => [t.target, columns(t.series)]));
  } catch (e) {
    if (state.range === r) setRangeNote("history: " + e.message);
  }
  await loadRangeChart();
}

// The monitor records nothing: back to live, saying why.
function historyOff() {
  pickRange("live");
  setRangeNote("no recorded history (netpulse runs with --no-history)");
}

let rangeTimer = null;
function pickRange(name) {
  clearInterval(rangeTimer);
  rangeTimer = null;
  for (const b of $("ranges").querySelectorAll("button")) b.setAttribute("aria-pressed", String(b.dataset.range === name));
  setRangeNote("");
  if (!RANGES[name]) {
    state.range = null;
  } else {
    state.range = { name, label: RANGES[name].label, spark: null, chart: null, step_s: null, chartLoading: null };
    loadRange();
    rangeTimer = setInterval(loadRange, RANGE_REFRESH_MS);
  }
  schedule();
}

// ---- the whole page ----------------------------------------------------------------------------

function renderHeader() {
  const s = state.targets, v = $("verdict");
  const report = s.time ? "report " + new Date(s.time).toLocaleTimeString() : "";
  if (stats.stale) {
    // What is on the page is old: say so instead of a verdict that may no longer hold.
    setText(v, "no data — reconnecting");
    setClass(v, "badge stale");
    setText($("summary"), report ? "last " + report + " (" + ago(s.time) + ")" : "");
    return;
  }
  if (s.connectivity) {
    setText(v, s.connectivity);
    setClass(v, "badge " + s.connectivity);
  }
  const down = s.items.filter((t) => !t.up).map((t) => t.target);
  setText($("summary"), [down.length ? "down: " + down.slice(0, 5).join(", ") + (down.length > 5 ? ` and ${down.length - 5} more` : "") : "", report].filter(Boolean).join(" · "));
}

function setStream(what) {
  stats.stream = what;
  const e = $("stream");
  const text = {
    live: "live", connecting: "connecting…", reconnecting: "reconnecting…",
    polling: "polling (event stream busy)",
  }[what] || what;
  setText(e, state.paused ? "paused (p resumes)" : text);
  setClass(e, "stream " + (state.paused ? "paused" : what));
  e.title = what === "polling"
    ? "every event stream place is taken: the page asks the API each interval and tries the stream again"
    : "the live event stream";
}

// ---- staleness: the page says when what it shows is old ----------------------------------------

let lastDataAt = 0;
function setStale(on) {
  if (stats.stale === on) return;
  stats.stale = on;
  document.body.classList.toggle("stale", on);
  renderHeader();
}
// A new report arrived (from the stream or a poll).
function fresh() {
  lastDataAt = performance.now();
  setStale(false);
}
// No report for three intervals (at least 5 s) is no data, whatever the stream says.
function checkStale() {
  const limit = Math.max(5000, 3 * (state.targets.interval_ms || 1000));
  if (lastDataAt && performance.now() - lastDataAt > limit) setStale(true);
  else if (stats.stale) renderHeader(); // "(12s ago)" goes on
}

let queued = false, eventAt = 0;
function render() {
  queued = false;
  if (state.paused) return;
  const t0 = performance.now();
  renderHeader();
  renderTargets();
  renderBalancers();
  renderInterfaces();
  const t1 = performance.now();
  void document.body.offsetHeight; // style and layout count too
  stats.renderMs.layoutMs = performance.now() - t1;
  if (eventAt) {
    // From the event's arrival to a laid-out page.
    const took = performance.now() - eventAt;
    const r = stats.renderMs;
    r.last = took; r.max = Math.max(r.max, took); r.sum += took; r.n++;
    (r.each = r.each || []).push(Math.round(took)); if (r.each.length > 60) r.each.shift();
    r.jsMs = performance.now() - t0 - r.layoutMs;
    eventAt = 0;
  }
}
function schedule() {
  if (!queued) { queued = true; requestAnimationFrame(render); }
}

// The three views, with `rows` of history (all by default).
async function fetchViews(rows) {
  const q = rows == null ? "" : "?history=" + rows;
  const get = (p) => fetch(p + q, { cache: "no-store" }).then((r) => { if (!r.ok) throw new Error(p + ": " + r.status); return r.json(); });
  const [targets, interfaces, balancers] = await Promise.all(
    [get("/api/v1/targets"), get("/api/v1/interfaces"), get("/api/v1/balancers")]);
  return { targets, interfaces, balancers };
}

// Everything again, history included (the page starts, or comes back after a gap).
async function loadAll() {
  applyAll(await fetchViews(), true);
  schedule();
}

// While the stream is refused: the newest rows from the API each interval.
let pollTimer = null;
function startPolling() {
  if (pollTimer) return;
  const every = Math.max(1000, state.targets.interval_ms || 1000);
  pollTimer = setInterval(async () => {
    if (state.paused) return;
    const last = state.targets.t.length ? state.targets.t[state.targets.t.length - 1] : 0;
    // The rows since the last one the page has (more than one if a poll came late).
    const since = (Date.now() / 1000 - last) * 1000 / (state.targets.interval_ms || 1000);
    const rows = last ? Math.min(HISTORY, Math.max(2, Math.ceil(since) + 1)) : null;
    try {
      if (applyAll(await fetchViews(rows), rows == null)) stats.updates++;
      if (stats.stream !== "live") setStream("polling");
      stats.polls++;
      schedule();
    } catch (e) {
      setStream("reconnecting");
      setStale(true);
    }
  }, every);
}
function stopPolling() {
  clearInterval(pollTimer);
  pollTimer = null;
}

let source = null, retryTimer = null;
function connect() {
  clearTimeout(retryTimer);
  if (source) source.close();
  const es = (source = new EventSource("/api/v1/events"));
  let ready = false;
  const early = [];
  es.onopen = async () => {
    setStream("live");
    stopPolling();
    ready = false;
    try { await loadAll(); } catch (e) { console.warn("netpulse: cannot load the views", e); }
    ready = true;
    for (const v of early.splice(0)) applyAll(v, false);
    schedule();
  };
  es.addEventListener("report", (ev) => {
    const arrived = performance.now();
    const views = JSON.parse(ev.data);
    stats.parseMs = performance.now() - arrived;
    if (!ready) { early.push(views); return; }
    eventAt = eventAt || arrived;
    applyAll(views, false);
    stats.updates++;
    schedule();
  });
  es.onerror = async () => {
    if (es.readyState !== EventSource.CLOSED) {
      // The stream broke (the server went away, or cut a page that fell behind); the browser
      // reconnects by itself. What is on the page is old until a report arrives.
      setStream("reconnecting");
      setStale(true);
      return;
    }
    // The browser gave up: the server answered with an error, such as 503 when every stream
    // place is taken. The API may still answer: poll it, and try the stream again later.
    stats.reconnects++;
    retryTimer = setTimeout(connect, 5000);
    if (pollTimer) return; // polling already
    try {
      await loadAll();
      if (source !== es) return;
      setStream("polling");
      startPolling();
    } catch (e) {
      setStream("reconnecting");
      setStale(true);
    }
  };
}

function togglePause() {
  state.paused = !state.paused;
  $("pause").textContent = state.paused ? "Resume" : "Pause";
  setStream(stats.stream);
  if (!state.paused) schedule();
}

function moveSelection(step) {
  const names = state.targets.items.map((t) => t.target);
  if (!names.length) return;
  const i = Math.max(0, Math.min(names.length - 1, names.indexOf(state.selectedTarget) + step));
  state.selectedTarget = names[i];
  const row = targetRows.get(names[i]);
  if (row) row.tr.scrollIntoView({ block: "nearest" });
  schedule();
}

function start() {
  readPalette();
  $("pause").addEventListener("click", togglePause);
  for (const b of $("ranges").querySelectorAll("button")) b.addEventListener("click", () => pickRange(b.dataset.range));
  $("show-down").addEventListener("change", schedule);
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.target.tagName === "INPUT") return;
    if (e.key === "p") togglePause();
    else if (e.key === "ArrowDown") { moveSelection(1); e.preventDefault(); }
    else if (e.key === "ArrowUp") { moveSelection(-1); e.preventDefault(); }
  });
  window.addEventListener("resize", resizeCharts);
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
    // The charts take their colours when made: make them again.
    readPalette();
    for (const u of charts.values()) u.destroy();
    charts.clear();
    for (const c of balancerCards.values()) c.key = null;
    balancerCards.clear();
    $("balancers").replaceChildren();
    schedule();
  });
  setInterval(checkStale, 1000);
  connect();
  // Data even when the stream does not open soon (its places are all taken, or it hangs).
  setTimeout(() => { if (!lastDataAt) loadAll().catch(() => {}); }, 3000);
}

start();
