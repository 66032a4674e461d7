// The dashboard: reads the admin API (same origin) every few seconds and draws it. Every value
// goes into the page as text (never as HTML): inventory templates come from client paths.
"use strict";

const REFRESH_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";
// The sides' colours (both over 5:1 on white) and dash patterns, so that a side is told apart
// without its colour too.
const SIDES = {
  legacy: { name: "legacy", color: "#1f4e9c", dash: "" },
  new: { name: "new", color: "#a34f00", dash: "5 3" },
};
const MUTED = "#4a4a4a", GRID = "#d0d0d0";
// A chart of recent points spans at least this much, so that the first minutes are not a dot
// at the right edge of an empty hour.
const MIN_SPAN_S = 300;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : String(c));
  return e;
}

function svgEl(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function pct(x) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  const p = x * 100;
  return (p === 0 || p >= 10 ? p.toFixed(0) : p.toFixed(1)) + "%";
}

function ms(x) {
  return x === null || x === undefined ? "–" : x >= 100 ? x.toFixed(0) + " ms" : x.toFixed(1) + " ms";
}

function num(x) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (x === 0) return "0";
  const a = Math.abs(x);
  if (a >= 1e6) return (x / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
  if (a >= 1e4) return (x / 1e3).toFixed(0) + "k";
  // Trailing zeros dropped: 2.5, not 2.50.
  return String(+(a >= 100 ? x.toFixed(0) : a >= 10 ? x.toFixed(1) : x.toFixed(2)));
}

function clock(t) {
  return new Date(t * 1000).toISOString().slice(11, 16);
}

// The smallest 1, 2, 2.5 or 5 times a power of ten at or above `v`: the top of a y axis.
function niceCeil(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v * 0.999999) return m * p;
  return 10 * p;
}

async function getJson(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}

// The frame every chart shares: an SVG of `w` x `h` with a y axis (0, half, top, as `fmt`
// writes them) and a text alternative; returns the SVG and the plot's scales.
function frame(w, h, yTop, fmt, label) {
  const m = { left: 44, right: 8, top: 8, bottom: 20 };
  const svg = svgEl("svg", { viewBox: `0 0 ${w} ${h}`, width: w, height: h, role: "img", "aria-label": label, class: "chart-svg" });
  svg.append(svgEl("title", {}, label));
  const plot = { x0: m.left, x1: w - m.right, y0: h - m.bottom, y1: m.top };
  const sy = (y) => plot.y0 - (Math.min(y, yTop) / yTop) * (plot.y0 - plot.y1);
  for (const tick of [0, yTop / 2, yTop]) {
    const y = sy(tick);
    svg.append(svgEl("line", { x1: plot.x0, x2: plot.x1, y1: y, y2: y, stroke: GRID, "stroke-width": 1 }));
    svg.append(svgEl("text", { x: plot.x0 - 5, y: y + 4, "text-anchor": "end", class: "tick" }, fmt(tick)));
  }
  return { svg, plot, sy };
}

// A line chart of each side's [t, value] points over [from, to], with time along the bottom.
function lineChart(sides, opts) {
  const all = sides.flatMap((s) => s.points);
  const top = opts.yMax ?? niceCeil(Math.max(0, ...all.map((p) => p[1])));
  const summary = sides.map((s) => `${s.side.name} ${s.points.length ? opts.fmt(s.points[s.points.length - 1][1]) : "no data"}`).join(", ");
  const { svg, plot, sy } = frame(opts.width, opts.height, top, opts.fmt, `${opts.label}, latest: ${summary}`);
  const sx = (t) => plot.x0 + ((t - opts.from) / Math.max(opts.to - opts.from, 1)) * (plot.x1 - plot.x0);
  for (const [t, anchor] of [[opts.from, "start"], [(opts.from + opts.to) / 2, "middle"], [opts.to, "end"]]) {
    svg.append(svgEl("text", { x: sx(t), y: opts.height - 5, "text-anchor": anchor, class: "tick" }, clock(t)));
  }
  for (const s of sides) {
    if (s.points.length === 0) continue;
    const g = svgEl("g", { "data-side": s.side.name, "data-points": s.points.length });
    g.append(svgEl("polyline", {
      fill: "none", stroke: s.side.color, "stroke-width": 2, "stroke-dasharray": s.side.dash,
      "stroke-linejoin": "round", points: s.points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" "),
    }));
    // Points as dots while they are few (a lone point must show); the latest one always.
    const dots = s.points.length <= 40 ? s.points : [s.points[s.points.length - 1]];
    for (const p of dots) {
      g.append(svgEl("circle", { cx: sx(p[0]).toFixed(1), cy: sy(p[1]).toFixed(1), r: 2.5, fill: s.side.color }));
    }
    svg.append(g);
  }
  return svg;
}

// The burn-down: a bar per day (by date, so days without traffic are gaps) of the share new
// sides served.
function burnDownChart(days) {
  const dayNo = (d) => Math.round(Date.parse(d + "T00:00:00Z") / 86400000);
  const first = dayNo(days[0].date), last = dayNo(days[days.length - 1].date);
  const label = `Share served by new sides per day: ${days.map((d) => `${d.date} ${pct(d.new_share)}`).join(", ")}`;
  const w = 1000, h = 170;
  const { svg, plot, sy } = frame(w, h, 1, (v) => pct(v), days.length > 14
    ? `Share served by new sides per day, ${days.length} days from ${days[0].date} (${pct(days[0].new_share)}) to ${days[days.length - 1].date} (${pct(days[days.length - 1].new_share)})`
    : label);
  const slot = (plot.x1 - plot.x0) / (last - first + 1);
  const bars = svgEl("g", { class: "bars" });
  for (const d of days) {
    const x = plot.x0 + (dayNo(d.date) - first) * slot;
    const y = sy(d.new_share);
    const bar = svgEl("rect", {
      x: (x + Math.min(2, slot * 0.15)).toFixed(1), y: y.toFixed(1), width: Math.max(1, slot - 2 * Math.min(2, slot * 0.15)).toFixed(1),
      height: Math.max(0, plot.y0 - y).toFixed(1), fill: SIDES.new.color, "data-date": d.date,
    });
    bar.append(svgEl("title", {}, `${d.date}: ${pct(d.new_share)} of ${d.requests} requests`));
    bars.append(bar);
  }
  svg.append(bars);
  // Dates under the bars, left to right, as many as fit without touching; the latest always.
  const at = (i) => plot.x0 + (dayNo(days[i].date) - first + 0.5) * slot;
  const room = 80;
  const shown = [];
  for (let i = 0; i < days.length; i++) {
    const last = i === days.length - 1;
    if (shown.length && at(i) - at(shown[shown.length - 1]) < room) {
      if (!last) continue;
      shown.pop();
    }
    shown.push(i);
  }
  for (const i of shown) {
    const cx = at(i);
    const anchor = cx - plot.x0 < room / 2 ? "start" : plot.x1 - cx < room / 2 ? "end" : "middle";
    const x = anchor === "start" ? Math.max(plot.x0, cx - slot / 2) : anchor === "end" ? Math.min(plot.x1, cx + slot / 2) : cx;
    svg.append(svgEl("text", { x: x.toFixed(1), y: h - 5, "text-anchor": anchor, class: "tick" }, days[i].date));
  }
  return svg;
}

function legend() {
  return el("p", { class: "legend" }, ...Object.values(SIDES).map((s) => {
    const key = svgEl("svg", { width: 26, height: 10, "aria-hidden": "true" });
    key.append(svgEl("line", { x1: 1, x2: 25, y1: 5, y2: 5, stroke: s.color, "stroke-width": 2.5, "stroke-dasharray": s.dash }));
    return el("span", { class: s.name }, key, " " + s.name);
  }));
}

function routeCard(r, series) {
  const s = (series && series.routes && series.routes[r.id]) || { legacy: [], new: [] };
  const every = (series && series.resolution_s) || 10;
  const to = (series && series.to) || Date.now() / 1000;
  const firstT = Math.min(...[...s.legacy, ...s.new].map((p) => p.t), to);
  const from = Math.max((series && series.from) || 0, Math.min(firstT, to - MIN_SPAN_S));
  const card = el("article", { class: "route", "data-route": r.id, "aria-labelledby": "route-" + r.id });
  card.append(el("h3", { id: "route-" + r.id }, r.id + " ", el("code", {}, r.path)));
  const dl = el("dl", {});
  const row = (k, v, cls) => dl.append(el("div", {}, el("dt", {}, k), el("dd", cls ? { class: cls } : {}, v)));
  row("shift", r.shift, "shift");
  row("on the new side", r.requests ? pct(r.new_share) : "–", "new-share");
  row("requests", r.requests, "requests");
  for (const side of ["legacy", "new"]) {
    const d = r.sides[side];
    row(side, `${r[side] || "none"} · errors ${pct(d.error_rate)} · p99 ${ms(d.p99_ms)}`, side);
  }
  card.append(dl);
  // Requests per second: the interval still running is divided by the seconds it has had.
  const rate = (p) => p.requests / Math.max(1, Math.min(every, to - p.t));
  const charts = [
    ["requests/s", rate, num],
    ["5xx share", (p) => (p.requests ? p["5xx"] / p.requests : 0), pct, 1],
    ["p99 latency", (p) => p.p99_ms, ms, undefined, (p) => p.requests > 0],
  ];
  const grid = el("div", { class: "small-charts" });
  for (const [title, f, fmt, yMax, keep] of charts) {
    const sides = ["legacy", "new"].map((side) => ({
      side: SIDES[side],
      points: (s[side] || []).filter(keep || (() => true)).map((p) => [p.t, f(p)]),
    }));
    const svg = lineChart(sides, { label: `${r.id}: ${title}`, fmt, yMax, from, to, width: 340, height: 120 });
    grid.append(el("figure", {}, el("figcaption", {}, title), svg));
  }
  card.append(grid);
  if (r.new) card.append(shiftForm(r));
  return card;
}

function shiftForm(r) {
  const id = "shift-" + r.id;
  const input = el("input", { id, type: "text", inputmode: "decimal", value: r.shift, size: "6", autocomplete: "off" });
  const button = el("button", { type: "submit" }, "Set shift…");
  const form = el("form", { class: "shift-form" }, el("label", { for: id }, `New shift for ${r.id}`), input, button);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    confirmShift(r, input.value.trim());
  });
  return form;
}

// Asks before changing a shift; the PUT goes only when "Change it" is chosen (Escape, Cancel
// or closing the dialog otherwise changes nothing), and a refusal is shown in the dialog.
function confirmShift(r, percent) {
  const dialog = document.getElementById("confirm");
  const error = document.getElementById("confirm-error");
  const token = document.getElementById("confirm-token");
  document.getElementById("confirm-text").textContent =
    `Route ${r.id} (${r.path}): from ${r.shift} to ${percent}. The config file is changed, so it stays after a restart.`;
  error.textContent = "";
  const ask = () => {
    // A value left from the last answer must not count as this one's (Escape keeps it).
    dialog.returnValue = "";
    dialog.showModal();
    token.focus();
  };
  dialog.onclose = async () => {
    if (dialog.returnValue !== "ok") {
      document.getElementById("shift-" + r.id)?.focus();
      return;
    }
    const headers = { "content-type": "application/json" };
    if (token.value) headers.authorization = "Bearer " + token.value;
    try {
      const resp = await fetch(`/routes/${encodeURIComponent(r.id)}/shift`, {
        method: "PUT",
        headers,
        body: JSON.stringify({ percent }),
      });
      if (!resp.ok) {
        const body = await resp.json().catch(() => ({}));
        error.textContent = `Not changed: ${body.error || resp.status}`;
        ask();
        return;
      }
      setStatus(`Route ${r.id}: shift set to ${percent}.`);
      await refresh();
      document.getElementById("shift-" + r.id)?.focus();
    } catch (err) {
      error.textContent = "Not changed: " + err;
      ask();
    }
  };
  ask();
}

function setStatus(text) {
  document.getElementById("notice").textContent = text;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows.map((cells) => el("tr", {}, ...cells.map((c) =>
    c instanceof Node ? c : el("td", typeof c === "number" ? { class: "num" } : {}, c)))));
}

function renderBurnDown(b) {
  const line = document.getElementById("burn-down-line");
  const chart = document.getElementById("burn-down-chart");
  if (!b || b.days.length === 0) {
    line.textContent = "No traffic yet.";
    chart.replaceChildren();
    fill(document.querySelector("#burn-down-table tbody"), []);
    return;
  }
  const before = b.before ? `, ${b.new_share > b.before.new_share ? "up" : b.new_share < b.before.new_share ? "down" : "as"} from ${pct(b.before.new_share)} on ${b.before.date}` : "";
  line.textContent = `${pct(b.new_share)} of requests no longer reach the monolith (${b.date})${before}.`;
  chart.replaceChildren(burnDownChart(b.days));
  fill(document.querySelector("#burn-down-table tbody"), b.days.slice().reverse().map((d) => [d.date, pct(d.new_share), d.requests]));
}

function render(status, history, inventory) {
  document.getElementById("headline-share").textContent = pct(status.new_share);
  document.getElementById("headline-requests").textContent = status.requests;
  document.getElementById("recent-seconds").textContent = status.recent.seconds + " s";
  document.getElementById("recent-share").textContent = pct(status.recent.new_share) + " on new sides";
  renderBurnDown(status.burn_down);

  // A shift being typed is not redrawn under the user.
  const editing = document.activeElement && document.activeElement.closest("#routes .shift-form input");
  if (!editing) {
    const routes = document.getElementById("routes");
    const cards = status.routes.map((r) => routeCard(r, status.series));
    const focused = document.activeElement && document.activeElement.id;
    routes.replaceChildren(...(cards.length ? [legend(), ...cards] : [el("p", {}, "No routes configured.")]));
    if (focused && focused.startsWith("shift-")) document.getElementById(focused)?.focus();
  }

  const ups = [];
  for (const [name, u] of Object.entries(status.upstreams || {})) {
    if (u.addresses.length === 0) ups.push([name, u.kind, "–", "–"]);
    for (const a of u.addresses) {
      const state = a.up ? "in rotation" : a.ejected ? "ejected" : a.healthy === false ? "unhealthy" : "out of rotation";
      const td = el("td", state === "in rotation" ? {} : { class: "down" }, state === "in rotation" ? state : "⚠ " + state);
      ups.push([name, u.kind, el("td", {}, el("code", {}, a.address)), td]);
    }
  }
  fill(document.querySelector("#upstreams tbody"), ups);

  fill(document.querySelector("#inventory tbody"), inventory.rows.map((r) => [
    pct(r.share), r.requests, el("td", {}, el("code", {}, r.template)),
    r.source === "_default" ? "unmatched" : r.source, r.methods.join(", "), pct(r.error_rate), ms(r.p99_ms),
  ]));

  const items = history.entries.slice().reverse().map((e) => {
    const what = e.kind === "shift"
      ? `shift ${e.route}: ${e.from ? e.from + " → " : ""}${e.to}`
      : e.ok ? "reload applied" : `reload refused: ${(e.error || "").split("\n")[0]}`;
    const who = e.how + (e.client ? " from " + e.client : "");
    return el("li", {}, el("time", { datetime: e.at }, e.at.replace("T", " ").slice(0, 19)), ` ${what} (${who})`);
  });
  document.getElementById("history").replaceChildren(...items);
  document.getElementById("updated").textContent = "Updated " + new Date().toISOString().slice(11, 19) + " UTC";
  document.body.dataset.loaded = "1";
}

async function refresh() {
  try {
    const [status, history, inventory] = await Promise.all([
      getJson("/status?series=1h"), getJson("/history?limit=20"), getJson("/inventory?limit=20"),
    ]);
    // A dialog being answered is not redrawn under the user.
    if (!document.getElementById("confirm").open) render(status, history, inventory);
  } catch (err) {
    setStatus("Cannot reach the admin API: " + err.message);
  }
}

document.getElementById("confirm-cancel").addEventListener("click", () => document.getElementById("confirm").close("cancel"));
refresh();
setInterval(refresh, REFRESH_MS);
