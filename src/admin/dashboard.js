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

// An axis's milliseconds: short enough for the axis ("2500 ms", "7.5 ms").
function msTick(x) {
  return (x >= 10 ? x.toFixed(0) : String(+x.toFixed(1))) + " ms";
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
  const m = { left: 58, right: 8, top: 8, bottom: 20 };
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
  const { svg, plot, sy } = frame(opts.width, opts.height, top, opts.tick || opts.fmt, `${opts.label}, latest: ${summary}`);
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
  // A date is about 62 px wide at the axis's size; the first is left-aligned, the last
  // right-aligned, the others centred on their bar.
  const at = (i) => plot.x0 + (dayNo(days[i].date) - first + 0.5) * slot;
  const width = 62, gap = 10;
  const extent = (i) => {
    const cx = at(i);
    if (cx - width / 2 < plot.x0) return ["start", Math.max(plot.x0, cx - slot / 2), width];
    if (cx + width / 2 > plot.x1) return ["end", Math.min(plot.x1, cx + slot / 2), width];
    return ["middle", cx, width];
  };
  const left = ([anchor, x, w]) => (anchor === "start" ? x : anchor === "end" ? x - w : x - w / 2);
  const shown = [];
  for (let i = 0; i < days.length; i++) {
    while (shown.length && left(extent(i)) < left(extent(shown[shown.length - 1])) + width + gap) {
      if (i !== days.length - 1) break;
      shown.pop();
    }
    if (shown.length && left(extent(i)) < left(extent(shown[shown.length - 1])) + width + gap) continue;
    shown.push(i);
  }
  for (const i of shown) {
    const [anchor, x] = extent(i);
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

// Route cards by route id, built once and updated in place: a value being typed, the focus and
// an open or closed chart section stay as the user left them across refreshes.
const cards = new Map();
// Charts are drawn for this many routes at first (the busiest first); the others on demand.
const CHARTS_OPEN = 8;

function makeCard(r, index) {
  const card = el("article", { class: "route", "data-route": r.id });
  const heading = el("h3", {}, el("bdi", {}, r.id), " ", el("code", {}, el("bdi", {}, r.path)));
  card.setAttribute("aria-label", `route ${r.id}`);
  const dl = el("dl", {});
  const fields = {};
  const row = (key, label) => {
    fields[key] = el("dd", { class: key }, "–");
    dl.append(el("div", {}, el("dt", {}, label), fields[key]));
  };
  row("shift", "shift");
  row("new-share", "on the new side");
  row("requests", "requests");
  row("legacy", "legacy");
  row("new", "new");
  fields.dl = dl;
  const charts = el("div", { class: "small-charts" });
  const details = el("details", {}, el("summary", {}, "Charts"), charts);
  details.open = index < CHARTS_OPEN;
  const c = { r, card, fields, charts, details, series: null, shown: r.shift };
  details.addEventListener("toggle", () => details.open && drawCharts(c));
  card.append(heading, dl, details);
  if (r.new) card.append(shiftForm(c));
  return c;
}

function updateCard(c, r, series) {
  c.r = r;
  c.series = series;
  c.fields.shift.textContent = r.shift;
  c.fields["new-share"].textContent = r.requests ? pct(r.new_share) : "–";
  c.fields.requests.textContent = r.requests;
  for (const side of ["legacy", "new"]) {
    const d = r.sides[side];
    c.fields[side].replaceChildren(el("bdi", {}, r[side] || "none"), ` · errors ${pct(d.error_rate)} · p99 ${ms(d.p99_ms)}`);
  }
  // Rows a route has only with a feature on (a reload may turn it on or off).
  const sh = r.shadow;
  const compared = sh ? sh.matched + sh.mismatched : 0;
  optionalRow(c, "shadow", sh && (`${sh.percent} copied · ${compared} compared · ${sh.mismatched} mismatched (${pct(compared ? sh.mismatch_rate : null)})`
    + (sh.dropped ? ` · ${sh.dropped} dropped` : "") + (sh.errors ? ` · ${sh.errors} failed` : "")), sh && sh.mismatched > 0);
  const ro = r.rollout;
  optionalRow(c, "rollout", ro && (`${ro.phase} at ${ro.shift} (step ${ro.step} of ${ro.steps.length}${ro.next ? ", next " + ro.next : ""})`
    + (ro.reason ? ` · ${ro.reason}` : "")), ro && (ro.phase === "rolled-back" || ro.phase === "aborted"));
  optionalRow(c, "fallbacks", r.fallbacks === undefined ? null : `${r.fallbacks} served by legacy after the new side failed`, r.fallbacks > 0);
  // What strangle answered itself on the route (refusals, the route's own answers), by status.
  const refused = Object.entries(r.refused || {});
  optionalRow(c, "refused", refused.length ? refused.map(([status, n]) => `${n} × ${status}`).join(" · ") + " answered by strangle" : null, false);
  // The field follows the route's shift until the user types in it (a draft is kept).
  if (c.input && c.input.value === c.shown) c.input.value = r.shift;
  c.shown = r.shift;
  if (c.details.open) drawCharts(c);
}

// A card's row for a feature: shown with `text`, removed when the feature is off (`text` null).
function optionalRow(c, key, text, down) {
  if (text == null) {
    if (c.fields[key]) {
      c.fields[key].parentElement.remove();
      delete c.fields[key];
    }
    return;
  }
  if (!c.fields[key]) {
    c.fields[key] = el("dd", { class: key }, "–");
    c.fields.dl.append(el("div", {}, el("dt", {}, key), c.fields[key]));
  }
  c.fields[key].textContent = text;
  c.fields[key].classList.toggle("down", !!down);
}

function drawCharts(c) {
  const { r, series } = c;
  const s = (series && series.routes && series.routes[r.id]) || { legacy: [], new: [] };
  const every = (series && series.resolution_s) || 10;
  const to = (series && series.to) || Date.now() / 1000;
  const firstT = Math.min(...[...s.legacy, ...s.new].map((p) => p.t), to);
  const from = Math.max((series && series.from) || 0, Math.min(firstT, to - MIN_SPAN_S));
  // Requests per second: the interval still running is divided by the seconds it has had.
  const rate = (p) => p.requests / Math.max(1, Math.min(every, to - p.t));
  const charts = [
    ["requests/s", rate, num],
    ["5xx share", (p) => (p.requests ? p["5xx"] / p.requests : 0), pct, undefined, 1],
    ["p99 latency", (p) => p.p99_ms, ms, msTick, undefined, (p) => p.requests > 0],
  ];
  c.charts.replaceChildren(...charts.map(([title, f, fmt, tick, yMax, keep]) => {
    const sides = ["legacy", "new"].map((side) => ({
      side: SIDES[side],
      points: (s[side] || []).filter(keep || (() => true)).map((p) => [p.t, f(p)]),
    }));
    const svg = lineChart(sides, { label: `${r.id}: ${title}`, fmt, tick, yMax, from, to, width: 340, height: 120 });
    return el("figure", {}, el("figcaption", {}, title), svg);
  }));
}

function renderRoutes(status) {
  const routes = document.getElementById("routes");
  if (status.routes.length === 0) {
    routes.replaceChildren(el("p", {}, "No routes configured."));
    cards.clear();
    return;
  }
  if (!routes.querySelector(".legend")) routes.replaceChildren(legend());
  const seen = new Set();
  let before = routes.querySelector(".legend");
  status.routes.forEach((r, i) => {
    let c = cards.get(r.id);
    if (!c) {
      c = makeCard(r, i);
      cards.set(r.id, c);
    }
    updateCard(c, r, status.series);
    seen.add(r.id);
    // Moved only when out of place (moving a node takes the focus out of it).
    if (before.nextElementSibling !== c.card) before.after(c.card);
    before = c.card;
  });
  for (const [id, c] of cards) {
    if (!seen.has(id)) {
      c.card.remove();
      cards.delete(id);
    }
  }
}

// A percent as the API takes it: "25%", "0.5%", or a bare number read as percent.
function percentOf(text) {
  const m = /^\s*(\d{1,3}(?:\.\d{1,2})?)\s*%?\s*$/.exec(text);
  if (!m || Number(m[1]) > 100) return null;
  return m[1] + "%";
}

function shiftForm(c) {
  const id = "shift-" + c.r.id;
  const input = el("input", { id, type: "text", inputmode: "decimal", value: c.r.shift, size: "6", autocomplete: "off", "aria-describedby": id + "-error" });
  const button = el("button", { type: "submit" }, "Set shift…");
  const problem = el("span", { id: id + "-error", class: "field-error", role: "alert" });
  const form = el("form", { class: "shift-form" }, el("label", { for: id }, `New shift for ${c.r.id}`), input, button, problem);
  c.input = input;
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const percent = percentOf(input.value);
    if (!percent) {
      problem.textContent = "Write a share from 0% to 100%, like 25% or 0.5%.";
      input.focus();
      return;
    }
    problem.textContent = "";
    input.value = percent;
    confirmShift(c, percent);
  });
  return form;
}

// Asks before changing a shift; the PUT goes only when "Change it" is chosen (Escape, Cancel
// or closing the dialog otherwise changes nothing), and a refusal is shown in the dialog. The
// PUT says which shift the change was decided on: if someone changed it meanwhile, the proxy
// refuses (409) and the dialog shows the shift it has now.
function confirmShift(c, percent) {
  const dialog = document.getElementById("confirm");
  const error = document.getElementById("confirm-error");
  const token = document.getElementById("confirm-token");
  let from = c.r.shift;
  const describe = () => {
    document.getElementById("confirm-text").textContent =
      `Route ${c.r.id} (${c.r.path}): from ${from} to ${percent}. The config file is changed, so it stays after a restart.`;
  };
  describe();
  error.textContent = "";
  const ask = () => {
    // A value left from the last answer must not count as this one's.
    dialog.returnValue = "";
    dialog.showModal();
    token.focus();
  };
  const done = () => {
    // The token is not kept for the next change: each one is typed again.
    token.value = "";
    c.input.focus();
  };
  dialog.onclose = async () => {
    if (dialog.returnValue !== "ok") return done();
    const headers = { "content-type": "application/json" };
    if (token.value) headers.authorization = "Bearer " + token.value;
    try {
      const resp = await fetch(`/routes/${encodeURIComponent(c.r.id)}/shift`, {
        method: "PUT",
        headers,
        body: JSON.stringify({ percent, from }),
      });
      if (!resp.ok) {
        const body = await resp.json().catch(() => ({}));
        error.textContent = `Not changed: ${body.error || resp.status}`;
        if (resp.status === 409) {
          const now = await getJson("/status").catch(() => null);
          const r = now && now.routes.find((x) => x.id === c.r.id);
          if (r) {
            from = r.shift;
            describe();
          }
        }
        ask();
        return;
      }
      const answer = await resp.json().catch(() => ({}));
      notice(`Route ${c.r.id}: shift set from ${answer.from || from} to ${answer.to || percent}.`, false);
      await refresh();
      done();
    } catch (err) {
      error.textContent = "Not changed: " + err;
      ask();
    }
  };
  ask();
}

// The notice line: a problem stays until a refresh succeeds; news for a while.
let noticeUntil = 0;
function notice(text, problem) {
  const n = document.getElementById("notice");
  n.textContent = text;
  n.classList.toggle("problem", problem);
  noticeUntil = problem ? Infinity : Date.now() + 15000;
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

  renderRoutes(status);

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
    pct(r.share), r.requests, el("td", {}, el("code", {}, el("bdi", {}, r.template))),
    el("td", {}, el("bdi", {}, r.source === "_default" ? "unmatched" : r.source)), r.methods.join(", "), pct(r.error_rate), ms(r.p99_ms),
  ]));

  const items = history.entries.slice().reverse().map((e) => {
    // Each value from the API in an isolate of its own: a right-to-left mark in one cannot turn
    // the rest of the line around.
    const b = (v) => el("bdi", {}, v);
    const what = e.kind === "shift"
      ? ["shift ", b(e.route), ": ", ...(e.from ? [b(e.from), " → "] : []), b(e.to)]
      : e.kind === "rollout" ? ["rollout ", b(e.route), ": ", b(e.event), " (", b(e.reason), ")"]
      : e.ok ? ["reload applied"] : ["reload refused: ", b((e.error || "").split("\n")[0])];
    const who = [" (", b(e.how), ...(e.client ? [" from ", b(e.client)] : []), ")"];
    return el("li", {}, el("time", { datetime: e.at }, b(e.at.replace("T", " ").slice(0, 19))), " ", ...what, ...who);
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
    if (Date.now() > noticeUntil) notice("", false);
  } catch (err) {
    notice("Cannot reach the admin API: " + err.message, true);
  }
}

document.getElementById("confirm-cancel").addEventListener("click", () => document.getElementById("confirm").close("cancel"));
refresh();
setInterval(refresh, REFRESH_MS);
